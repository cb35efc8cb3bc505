"""Validate a composed config before any work starts: one line naming the key, the value and what is allowed."""
import difflib
import os
import re
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .heads import HEADS, build_head, head_params
from .data import LOADERS
from .train.losses import LOSSES
from .train.checkpoint import BEST_DIRECTION, MODE_ONLY


class ConfigError(ValueError):
    """A user error in the configuration (exit code 2, no traceback)."""


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MAX_RESOLUTION = 256  # the largest official net is 128px (model=sngan_128); 4096 would try to allocate ~96 GB
MAX_SEED = 2**64 - 1  # torch.manual_seed's range (0 <= seed < 2**64)


def validate(cfg: DictConfig) -> None:
    check_known_keys(cfg)
    head = cfg.head.name
    _check(head in HEADS, "head.name", head, f"registered heads are {', '.join(sorted(HEADS))}")
    _check_head_params(cfg)
    d = cfg.dataset
    _check(d.name in LOADERS, "dataset.name", d.name, f"known datasets are {', '.join(LOADERS)}")
    r = d.resolution
    _check(_is_int(r) and r >= 16 and (r & (r - 1)) == 0, "dataset.resolution", r,
           "a power of two >= 16 (the trunk halves it down to 8x8)")
    _check(r <= MAX_RESOLUTION, "dataset.resolution", r,
           f"at most {MAX_RESOLUTION} (a power of two between 16 and {MAX_RESOLUTION}; the largest net is 128px)")
    if d.name == "imagefolder":
        _check(bool(d.get("path")), "dataset.path", d.get("path"), "a folder with one sub-folder of images per class")
        _check(isinstance(d.get("skip_bad_files", False), bool), "dataset.skip_bad_files", d.get("skip_bad_files"),
               "true (skip and count unreadable image files) or false (stop at the first one)")
        _check(d.get("storage", "auto") in ("auto", "device", "stream"), "dataset.storage", d.get("storage"),
               "auto (stream when the images would not fit in memory), device or stream")
        _check(_is_int(d.get("stream_workers", 4)) and d.get("stream_workers", 4) >= 0, "dataset.stream_workers",
               d.get("stream_workers"), "an integer >= 0 (background batch readers; 0 = none)")
    _check(str(cfg.device) in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"), "device", cfg.device,
           "auto, cpu, cuda or cuda:N")
    _check(_is_int(cfg.seed) and 0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed, "an integer between 0 and 2**64-1")
    # `resume=no` arrives as the string "no", which is truthy: it would resume (or skip a completed run)
    _check(isinstance(cfg.get("resume", True), bool), "resume", cfg.get("resume"),
           "true (continue or skip what the run directory holds) or false (start it over)")
    _check_wandb_mode(cfg)

    m = cfg.model
    for key in ("g_ch", "d_ch", "z_dim"):
        _check(_is_int(m[key]) and m[key] >= 1, f"model.{key}", m[key], "an integer >= 1")
    _check_model_shape(cfg)

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
    _check(t.compile_mode in ("default", "reduce-overhead", "max-autotune"), "train.compile_mode", t.compile_mode,
           "default, reduce-overhead or max-autotune (torch.compile's modes)")
    for key in ("compile", "channels_last"):
        _check(isinstance(t[key], bool), f"train.{key}", t[key], "true or false")
    _check(isinstance(t.get("sync_bn", False), bool), "train.sync_bn", t.get("sync_bn"), "true or false")
    _check(isinstance(t.get("cuda_graph", False), bool), "train.cuda_graph", t.get("cuda_graph"), "true or false")
    _check(isinstance(t.get("joint_d_forward", False), bool), "train.joint_d_forward", t.get("joint_d_forward"),
           "true or false")
    _check(isinstance(t.get("gpu_recipe", False), bool), "train.gpu_recipe", t.get("gpu_recipe"),
           "true (sized for a GPU: device=auto without CUDA refuses it) or false")
    _check(_is_num(t.max_abs_logit) and t.max_abs_logit > 0, "train.max_abs_logit", t.max_abs_logit, "a number > 0")

    e = cfg.eval
    _check(e.feature_space in ("inception", "classifier", "digit_channels"), "eval.feature_space", e.feature_space,
           "inception, classifier or digit_channels")
    _check(e.feature_space != "digit_channels" or d.name == "stacked_digits", "eval.feature_space", e.feature_space,
           "digit_channels reads one digit per RGB channel: only with dataset=stacked_digits")
    _check(e.real_split in ("train", "test"), "eval.real_split", e.real_split, "train or test")
    for key in ("n_fake", "n_generated", "curve_generated", "batch_size", "prc_neighborhood", "coverage_k",
                "classifier_epochs"):
        _check(_is_int(e[key]) and e[key] >= 1, f"eval.{key}", e[key], "an integer >= 1")
    _check(_is_int(e.kid_subset_size) and e.kid_subset_size >= 2, "eval.kid_subset_size", e.kid_subset_size,
           "an integer >= 2 (KID's unbiased estimate needs two images per side; 1000 is torch-fidelity's default)")
    _check(_is_int(e.n_real) and (e.n_real >= 2 or e.n_real == -1), "eval.n_real", e.n_real,
           "an integer >= 2, or -1 for the whole real split")
    _check(_is_int(e.isc_splits) and 1 <= e.isc_splits <= e.n_generated, "eval.isc_splits", e.isc_splits,
           "an integer between 1 and eval.n_generated")
    _check(_is_int(e.diversity_pairs_max) and e.diversity_pairs_max >= 2, "eval.diversity_pairs_max",
           e.diversity_pairs_max, "an integer >= 2")
    _check(_is_int(e.every) and e.every >= 0, "eval.every", e.every, "an integer >= 0 (0 = final evaluation only)")
    best = e.get("best_metric")
    _check(best is None or (isinstance(best, str) and best in BEST_DIRECTION), "eval.best_metric", best,
           f"null (keep no best checkpoint) or one of {', '.join(BEST_DIRECTION)}")
    _check(best not in MODE_ONLY or e.feature_space == "digit_channels", "eval.best_metric", best,
           "mode counts exist only with eval.feature_space=digit_channels (dataset=stacked_digits)")
    k, n_cls = e.get("intra_fid_per_class"), e.get("intra_fid_classes", -1)
    _check(k is None or (_is_int(k) and k >= 2), "eval.intra_fid_per_class", k,
           "null (intra-FID from the eval.n_generated pool) or an integer >= 2 (generated images per class)")
    _check(_is_int(n_cls) and (n_cls >= 1 or n_cls == -1), "eval.intra_fid_classes", n_cls,
           "-1 (every class) or an integer >= 1 (that many evenly spaced classes)")
    _check(n_cls == -1 or k is not None, "eval.intra_fid_classes", n_cls,
           "a class subset is for the per-class mode: set eval.intra_fid_per_class too, or leave it at -1")
    _check(best != "intra_fid_mean" or k is None, "eval.best_metric", best,
           "with eval.intra_fid_per_class set, curve evaluations measure no intra-FID; choose another (e.g. fid)")
    _check(_is_num(e.collapse_threshold) and 0 <= e.collapse_threshold <= 1, "eval.collapse_threshold",
           e.collapse_threshold, "a share between 0 and 1")
    _check(_is_num(e.mode_collapse_fraction) and 0 <= e.mode_collapse_fraction <= 1, "eval.mode_collapse_fraction",
           e.mode_collapse_fraction, "a fraction between 0 and 1")
    morph = cfg.get("figures", {}).get("morph_classes", [0, 1])
    _check(OmegaConf.is_list(morph) and len(morph) == 2 and all(_is_int(c) for c in morph),
           "figures.morph_classes", morph, "two class indices, e.g. [0, 1] (morphing from the first to the second)")
    if cfg.get("finetune") is not None:
        _check_finetune(cfg.finetune, e.feature_space)


WANDB_MODES = ("auto", "online", "offline", "disabled")  # auto: online with credentials, else offline
WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb itself accepts


def _check_wandb_mode(cfg: DictConfig) -> None:
    """wandb.mode, and WANDB_MODE where set (it wins over wandb.mode): a typo would otherwise end in wandb's
    multi-line validation error after the data has loaded, or be ignored."""
    mode = (cfg.get("wandb") or {}).get("mode", "auto")
    _check(mode in WANDB_MODES, "wandb.mode", mode, ", ".join(WANDB_MODES))
    env = os.environ.get("WANDB_MODE")
    if env:
        _check(env in WANDB_ENV_MODES, "the environment variable WANDB_MODE", env,
               f"{', '.join(WANDB_ENV_MODES[:3])} (it overrides wandb.mode), or unset it")


def _check_finetune(f: DictConfig, feature_space: str) -> None:
    """The fine-tune's own settings; the parent run itself is checked when the job starts (train/finetune.py).
    +sweep=finetune makes the parent mandatory (finetune.parent_required): without it, its jobs were ordinary
    default runs that differed in nothing."""
    if f.get("parent_required", False) and f.parent is None:
        raise ConfigError("finetune.parent is required here (+sweep=finetune fine-tunes a finished run): add "
                          "finetune.parent=runs/<a completed run>")
    _check(f.parent is None or (isinstance(f.parent, str) and f.parent != ""), "finetune.parent", f.parent,
           "null (an ordinary run) or the run directory of a completed run")
    _check(_is_num(f.weight) and 0 <= f.weight < float("inf"), "finetune.weight", f.weight,
           "a number >= 0 (0 = adversarial continuation only)")
    _check(_is_int(f.iterations) and f.iterations >= 1, "finetune.iterations", f.iterations, "an integer >= 1")
    _check(isinstance(f.classifier, str) and f.classifier != "", "finetune.classifier", f.classifier,
           "independent, domain or the path of a saved classifier")
    _check(f.classifier != "domain" or feature_space != "inception", "finetune.classifier", f.classifier,
           "the Inception space takes uint8 images (no gradient reaches G): use independent or a PATH")
    _check(f.lr is None or (_is_num(f.lr) and f.lr > 0), "finetune.lr", f.lr, "null (= train.lr) or a number > 0")
    _check(f.get("curve_points") is None or (_is_int(f.curve_points) and f.curve_points >= 1),
           "finetune.curve_points", f.get("curve_points"), "null (= keep eval.every) or an integer >= 1 (more "
           "than finetune.iterations: one every iteration)")


def _check_model_shape(cfg: DictConfig) -> None:
    """The trunks' channel multipliers (model.g_mult, d_mult, d_down: the ImageNet models) fit the resolution."""
    from .models import generator_widths, trunk_layout
    m, r = cfg.model, cfg.dataset.resolution
    for key in ("g_mult", "d_mult"):
        v = m.get(key)
        _check(v is None or (OmegaConf.is_list(v) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v)),
               f"model.{key}", v, "null (model.g_ch/d_ch everywhere) or a list of integers >= 1 (channel multipliers)")
    _check(m.get("d_down") is None or _is_int(m.get("d_down")), "model.d_down", m.get("d_down"),
           "null or an integer (how many D blocks halve the size)")
    def fits(resolution: int) -> bool:
        try:
            generator_widths(resolution, m.g_ch, m.get("g_mult"))
            trunk_layout(resolution, m.d_ch, m.get("d_mult"), m.get("d_down"))
            return True
        except ValueError:
            return False

    try:
        generator_widths(r, m.g_ch, m.get("g_mult"))
        trunk_layout(r, m.d_ch, m.get("d_mult"), m.get("d_down"))
    except ValueError as e:
        made_for = [str(x) for x in (16, 32, 64, 128, 256) if fits(x)]
        hint = f"this model is made for dataset.resolution={' or '.join(made_for)}: set that, or choose a model " \
            "for your resolution; " if made_for else ""
        raise ConfigError(f"{e} ({hint}the official ImageNet nets: model=sngan_64 for 64px, model=sngan_128 for "
                          "128px)") from None


def _check_head_params(cfg: DictConfig) -> None:
    """Build the head once on the CPU with the configured sizes: bad head.* values fail here, not mid-run."""
    from .models import trunk_layout
    r, m = cfg.dataset.resolution, cfg.model
    if not (_is_int(r) and 16 <= r <= MAX_RESOLUTION and (r & (r - 1)) == 0) or not _is_int(m.d_ch):
        return  # reported by the resolution/model checks
    try:
        layout = trunk_layout(r, m.d_ch, m.get("d_mult"), m.get("d_down"))
    except (TypeError, ValueError):
        return  # reported by _check_model_shape
    try:
        build_head(cfg.head.name, n_classes=2, feature_dim=layout[-1][0], n_blocks=len(layout),
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
    n_cls = cfg.eval.get("intra_fid_classes", -1)
    _check(n_cls <= n_classes, "eval.intra_fid_classes", n_cls,
           f"-1 or at most the {n_classes} classes of {cfg.dataset.name}")
    morph = list(cfg.get("figures", {}).get("morph_classes", [0, 1]))  # validate() checked its shape
    _check(n_classes < 2 or (all(0 <= c < n_classes for c in morph) and morph[0] != morph[1]),
           "figures.morph_classes", morph,
           f"two different class indices between 0 and {n_classes - 1} ({cfg.dataset.name} has {n_classes} classes)")


CHECKED_GROUPS = ("head", "dataset", "model", "train", "eval")  # the packaged groups; a user's are checked too


# ---- the config folders Hydra searches ----------------------------------------------------------------------
# The packaged conf/ plus what the user adds the Hydra way: `--config-dir DIR` (`-cd DIR`) and
# `hydra.searchpath=[file://DIR,DIR,pkg://module]` on the command line. The checks below read the same folders
# as Hydra's loader, so a user's `dataset/mine.yaml` is an option and its keys are known.

def _folder(entry: str) -> Path | None:
    """A search-path entry as a folder: file://DIR or DIR (relative to the working directory, as Hydra reads it);
    pkg://module where the module imports as a package folder; None otherwise (structured://, a missing module)."""
    scheme, sep, rest = entry.partition("://")
    if not sep:
        return Path(entry)
    if scheme == "file":
        return Path(rest)
    if scheme == "pkg":
        try:
            return Path(str(files(rest)))
        except (ImportError, TypeError, ValueError):  # not importable (zipped or missing): Hydra reports it
            return None
    return None


def user_config_dirs(argv: list[str]) -> list[Path]:
    """The folders `--config-dir`/`-cd` and `hydra.searchpath=[...]` add (in argv's order). A missing
    --config-dir is refused here (one line); a missing search-path entry is left to Hydra's warning."""
    found, i = [], 0
    while i < len(argv):
        arg, value = argv[i], None
        if arg in ("--config-dir", "-cd"):
            value, i = (argv[i + 1] if i + 1 < len(argv) else None), i + 1
        elif arg.startswith("--config-dir="):
            value = arg.partition("=")[2]
        elif arg.startswith("-cd") and not arg.startswith("-cd-"):
            value = arg[3:].removeprefix("=")
        elif arg.startswith("hydra.searchpath="):  # exactly Hydra's own test (a +/++ prefix is not honoured)
            try:
                from hydra.core.override_parser.overrides_parser import OverridesParser
                entries = OverridesParser.create().parse_overrides([arg])[0].value()
            except Exception:  # malformed: Hydra's parser reports it
                entries = []
            found += [f for f in map(_folder, entries if isinstance(entries, list) else []) if f is not None]
        if value is not None:
            if not Path(value).is_dir():
                raise ConfigError(f"--config-dir={value} is not allowed: no such folder")
            found.append(Path(value).absolute())
        i += 1
    return found


def hydra_config_dirs() -> tuple[str, ...] | None:
    """Inside a Hydra job: the folders of Hydra's own search path (hydra.runtime.config_sources) but Hydra's
    internal one; None outside Hydra (then the packaged conf/ alone)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return None
    sources = OmegaConf.select(HydraConfig.instance().cfg, "hydra.runtime.config_sources") or []
    dirs = (_folder(f"{s.schema}://{s.path}") for s in sources if s.provider != "hydra")
    return tuple(str(d) for d in dirs if d is not None and d.is_dir())


def _roots(conf_dir, argv: list[str]) -> tuple[str, ...]:
    """The packaged folder first, then the user's that exist (a missing search-path entry is Hydra's to report)."""
    return tuple(dict.fromkeys([str(conf_dir), *(str(d) for d in user_config_dirs(argv) if d.is_dir())]))


def group_options(roots, group: str) -> list[str]:
    """The options of a config group across the folders (`<root>/<group>/*.yaml`); for `head`, the packaged
    options only where a head of that name is registered (a user's head yaml names its head in head.name)."""
    options = set()
    for i, root in enumerate(roots):
        found = {p.stem for p in (Path(root) / group).glob("*.yaml")}
        options |= found & set(HEADS) if group == "head" and i == 0 else found
    return sorted(options)


def check_group_overrides(argv: list[str], conf_dir) -> None:
    """`group=option[,option...]` (also `+group=...`) on the command line must name existing options (and
    registered heads), in the packaged conf/ or a folder the user adds (--config-dir, hydra.searchpath)."""
    roots = _roots(conf_dir, argv)
    groups = {p.name for r in roots for p in Path(r).iterdir() if p.is_dir() and p.name != "hydra"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+")
        if not sep or arg.startswith("-") or key not in groups or any(f in value for f in ("(", "*", "$")):
            continue
        options = group_options(roots, key)
        for choice in value.split(","):
            if choice not in options:
                what = "registered heads are" if key == "head" else "choose one of"
                close = difflib.get_close_matches(choice, options, n=1, cutoff=0.6)
                hint = f" (did you mean {key}={close[0]}?)" if close else ""
                raise ConfigError(f"{key}={choice} is not allowed: {what} {', '.join(options)}{hint}")


# Keys outside the config files: `hydra` (Hydra checks its own schema; `+sweep=NAME` sets hydra.sweeper.*).
FREE_SUBTREES = ("hydra",)


def known_keys(conf_dir: str | tuple[str, ...] | None = None) -> frozenset[str]:
    """Every dotted key (folders and leaves) that some config file defines: conf/config.yaml plus every option
    of every group (conf/GROUP/*.yaml), each placed at its `# @package` (default: the group's name), so
    `+sweep=...` (sweep_name) and `+adam=X` (train.*) keys are known, and so is `+key=value` for a known key.
    `conf_dir`: a folder or a tuple of folders (the packaged one plus the user's); None: the folders of the
    running Hydra job's search path, else the packaged conf/."""
    if conf_dir is None:
        conf_dir = hydra_config_dirs() or (str(files("cgan_bench.conf")),)
    roots = (conf_dir,) if isinstance(conf_dir, (str, Path)) else conf_dir
    return _known_keys(tuple(str(r) for r in roots))


@lru_cache(maxsize=None)
def _known_keys(roots: tuple[str, ...]) -> frozenset[str]:
    keys: set[str] = set()
    for root in map(Path, roots):
        for yaml in sorted(root.rglob("*.yaml")):
            group = yaml.parent.relative_to(root).as_posix()
            try:
                text = yaml.read_text()
                node = OmegaConf.to_container(OmegaConf.create(text), resolve=False) or {}
            except Exception:  # unreadable or not YAML: Hydra reports it if the file is ever used
                continue
            package = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
            package = package.group(1) if package else ("_global_" if group == "." else group)
            package = "" if package == "_global_" else package.replace("_group_", group).replace("/", ".")
            if isinstance(node, dict):
                node.pop("defaults", None)
                _add_paths(node, package, keys)
    return frozenset(keys)


def _add_paths(node, prefix: str, out: set) -> None:
    if prefix:
        out.add(prefix)
    if isinstance(node, dict):
        for k, v in node.items():
            _add_paths(v, f"{prefix}.{k}" if prefix else str(k), out)


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def check_known_keys(cfg: DictConfig, conf_dir=None) -> None:
    """A key no config file defines (`+train.iteration=5`, a typo under +) is read by nobody: refuse it."""
    known = known_keys(conf_dir)
    tree = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    for path, value in _leaves(tree):
        parts = path.split(".")
        if parts[0] in FREE_SUBTREES or path in known:
            continue
        ancestors = [".".join(parts[:i]) for i in range(1, len(parts))]
        if any(a in known and not any(k.startswith(a + ".") for k in known) for a in ancestors):
            continue  # a known leaf given a mapping: its own check reports the value
        raise unknown_key(path, repr(value), conf_dir)


def unknown_key(path: str, shown: str, conf_dir=None) -> ConfigError:
    """`path=shown is not allowed: ... (did you mean the closest known key?)`."""
    known = known_keys(conf_dir)
    parts = path.split(".")
    leaves = sorted(k for k in known if not any(j.startswith(k + ".") for j in known) and not k.startswith("hydra."))
    close = difflib.get_close_matches(path, leaves, n=1, cutoff=0.6)
    parent = next((a for a in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if a in known), "")
    siblings = sorted({k[len(parent) + 1:].split(".")[0] for k in known if k.startswith(parent + ".")}) \
        if parent else sorted({k.split(".")[0] for k in known})
    hint = f"did you mean {close[0]}?" if close else \
        f"known {parent + '.' if parent else ''}keys are {', '.join(siblings)}"
    return ConfigError(f"{path}={shown} is not allowed: no config file defines this key ({hint})")


def check_key_overrides(argv: list[str], conf_dir) -> None:
    """`key=value`, `+key=value`, `++key=value` on the command line must name a key some config file defines
    (Hydra would answer a typo with a multi-line error, and accept `+train.iteration=5` that nobody reads).
    Keys of the user's folders (--config-dir, hydra.searchpath) are known too."""
    roots = _roots(conf_dir, argv)
    groups = {p.name for r in roots for p in Path(r).iterdir() if p.is_dir()}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or arg.startswith("-") or not key or key in groups or any(c in key for c in "/@$"):
            continue
        if key.split(".")[0] in FREE_SUBTREES or key in known_keys(roots):
            continue
        raise unknown_key(key, value, roots)
