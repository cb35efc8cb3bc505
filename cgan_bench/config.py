"""Validate a composed config before any work starts: one line naming the key, the value and what is allowed."""
from omegaconf import DictConfig

from .heads import HEADS, build_head, head_params
from .data import LOADERS
from .train.losses import LOSSES


class ConfigError(ValueError):
    """A user error in the configuration (exit code 2, no traceback)."""


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate(cfg: DictConfig) -> None:
    head = cfg.head.name
    _check(head in HEADS, "head.name", head, f"registered heads are {', '.join(sorted(HEADS))}")
    _check_head_params(cfg)
    d = cfg.dataset
    _check(d.name in LOADERS, "dataset.name", d.name, f"known datasets are {', '.join(LOADERS)}")
    r = d.resolution
    _check(_is_int(r) and r >= 16 and (r & (r - 1)) == 0, "dataset.resolution", r,
           "a power of two >= 16 (the trunk halves it down to 8x8)")
    if d.name == "imagefolder":
        _check(bool(d.get("path")), "dataset.path", d.get("path"), "a folder with one sub-folder of images per class")
    _check(str(cfg.device) in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"), "device", cfg.device,
           "auto, cpu, cuda or cuda:N")
    _check(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")

    m = cfg.model
    for key in ("g_ch", "d_ch", "z_dim"):
        _check(_is_int(m[key]) and m[key] >= 1, f"model.{key}", m[key], "an integer >= 1")

    t = cfg.train
    for key in ("iterations", "n_dis", "batch_d", "batch_g", "log_every", "sample_every", "checkpoint_every"):
        _check(_is_int(t[key]) and t[key] >= 1, f"train.{key}", t[key], "an integer >= 1")
    _check(_is_num(t.lr) and t.lr > 0, "train.lr", t.lr, "a number > 0")
    for key in ("beta1", "beta2"):
        _check(_is_num(t[key]) and 0 <= t[key] < 1, f"train.{key}", t[key], "a number in [0, 1)")
    _check(_is_int(t.lr_decay_start) and 0 <= t.lr_decay_start, "train.lr_decay_start", t.lr_decay_start,
           "an integer >= 0 (the iteration where linear decay to 0 begins)")
    _check(t.loss in LOSSES, "train.loss", t.loss, f"one of {', '.join(LOSSES)}")
    _check(t.precision in ("auto", "fp32", "bf16", "tf32"), "train.precision", t.precision,
           "auto, fp32, bf16 or tf32")
    for key in ("compile", "channels_last"):
        _check(isinstance(t[key], bool), f"train.{key}", t[key], "true or false")
    _check(_is_num(t.max_abs_logit) and t.max_abs_logit > 0, "train.max_abs_logit", t.max_abs_logit, "a number > 0")

    e = cfg.eval
    _check(e.feature_space in ("inception", "classifier", "digit_channels"), "eval.feature_space", e.feature_space,
           "inception, classifier or digit_channels")
    _check(e.feature_space != "digit_channels" or d.name == "stacked_digits", "eval.feature_space", e.feature_space,
           "digit_channels reads one digit per RGB channel: only with dataset=stacked_digits")
    _check(e.real_split in ("train", "test"), "eval.real_split", e.real_split, "train or test")
    for key in ("n_fake", "n_generated", "curve_generated", "kid_subset_size", "batch_size", "prc_neighborhood",
                "coverage_k", "classifier_epochs"):
        _check(_is_int(e[key]) and e[key] >= 1, f"eval.{key}", e[key], "an integer >= 1")
    _check(_is_int(e.n_real) and (e.n_real >= 2 or e.n_real == -1), "eval.n_real", e.n_real,
           "an integer >= 2, or -1 for the whole real split")
    _check(_is_int(e.isc_splits) and 1 <= e.isc_splits <= e.n_generated, "eval.isc_splits", e.isc_splits,
           "an integer between 1 and eval.n_generated")
    _check(_is_int(e.diversity_pairs_max) and e.diversity_pairs_max >= 2, "eval.diversity_pairs_max",
           e.diversity_pairs_max, "an integer >= 2")
    _check(_is_int(e.every) and e.every >= 0, "eval.every", e.every, "an integer >= 0 (0 = final evaluation only)")
    _check(_is_num(e.collapse_threshold) and 0 <= e.collapse_threshold <= 1, "eval.collapse_threshold",
           e.collapse_threshold, "a share between 0 and 1")
    _check(_is_num(e.mode_collapse_fraction) and 0 <= e.mode_collapse_fraction <= 1, "eval.mode_collapse_fraction",
           e.mode_collapse_fraction, "a fraction between 0 and 1")


def _check_head_params(cfg: DictConfig) -> None:
    """Build the head once on the CPU with the configured sizes: bad head.* values fail here, not mid-run."""
    from .models import trunk_depth
    r = cfg.dataset.resolution
    if not (_is_int(r) and r >= 16 and (r & (r - 1)) == 0) or not _is_int(cfg.model.d_ch):
        return  # reported by the resolution/model checks
    try:
        build_head(cfg.head.name, n_classes=2, feature_dim=cfg.model.d_ch, n_blocks=trunk_depth(r)[0],
                   **head_params(cfg.head))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def check_against_data(cfg: DictConfig, n_train: int, n_classes: int) -> None:
    """Checks that need the loaded dataset (still before training starts)."""
    _check(cfg.train.batch_d <= n_train, "train.batch_d", cfg.train.batch_d,
           f"at most the {n_train} training images of {cfg.dataset.name}")
    per_class = cfg.eval.n_generated // n_classes
    _check(per_class >= 2, "eval.n_generated", cfg.eval.n_generated,
           f"at least 2 per class ({2 * n_classes} for {n_classes} classes)")


CHECKED_GROUPS = ("head", "dataset", "model", "train", "eval")


def check_group_overrides(argv: list[str], conf_dir) -> None:
    """`group=option[,option...]` on the command line must name existing options (and registered heads)."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in CHECKED_GROUPS or any(f in value for f in ("(", "*", "$")):
            continue
        options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        if key == "head":
            options = sorted(set(options) & set(HEADS))
        for choice in value.split(","):
            if choice not in options:
                what = "registered heads are" if key == "head" else "choose one of"
                raise ConfigError(f"{key}={choice} is not allowed: {what} {', '.join(options)}")
