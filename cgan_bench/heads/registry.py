"""A name -> head class registry (the torch-fidelity pattern): a module registers its head on import."""
from .base import Head

HEADS: dict[str, type[Head]] = {}


class UnknownHeadError(ValueError):
    pass


def register_head(name: str):
    def decorator(cls: type[Head]) -> type[Head]:
        if name in HEADS:
            raise ValueError(f"head {name!r} is registered twice ({HEADS[name].__module__} and {cls.__module__})")
        HEADS[name] = cls
        return cls
    return decorator


def head_class(name: str) -> type[Head]:
    if name not in HEADS:
        raise UnknownHeadError(
            f"unknown head {name!r}; registered heads: {', '.join(sorted(HEADS))} "
            f"(choose one with head=NAME; a new head is one module in cgan_bench/heads/ plus conf/head/NAME.yaml)")
    return HEADS[name]


def head_params(head_cfg) -> dict:
    """A head's own config values: conf/head/NAME.yaml minus its name."""
    return {k: v for k, v in head_cfg.items() if k != "name"}


def build_head(name: str, n_classes: int, feature_dim: int, n_blocks: int, **params) -> Head:
    """Instantiate a registered head; `params` are the head's own config values (conf/head/NAME.yaml)."""
    cls = head_class(name)
    try:
        return cls(n_classes=n_classes, feature_dim=feature_dim, n_blocks=n_blocks, **params)
    except TypeError as e:
        raise ValueError(f"head.* has a parameter head {name!r} does not take ({e}); see conf/head/{name}.yaml") from e
