"""The command line's own answers, before Hydra starts (app.cli): `--help` (the config groups and their options,
examples, where results land; Hydra's help stays at --hydra-help), `--version`, and the warning for a sweep recipe
given without -m."""
from importlib.resources import files
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, _roots, group_options

CONF_DIR = str(files("cgan_bench.conf"))  # the packaged config groups (app.py's Hydra config_path too)
GROUP_NOTES = {"dataset": "a dataset picks its default model, train and eval recipes",
               "train": "paper: the paper's recipe, for a GPU; quick: CPU-sized; smoke: a few iterations",
               "adam": "Adam/n_dis settings, used by +sweep=hparams",
               "sweep": "sweep recipes: run them with -m"}


def config_groups(argv: list[str]) -> dict[str, list[str]]:
    """{group: options} of the packaged conf/ plus the folders the user adds (--config-dir, hydra.searchpath)."""
    try:
        roots = _roots(CONF_DIR, argv)
    except ConfigError:  # a missing --config-dir: the packaged groups still make a help text
        roots = (CONF_DIR,)
    names = sorted({p.name for r in roots for p in Path(r).iterdir()
                    if p.is_dir() and p.name not in ("hydra", "__pycache__")})
    return {name: group_options(roots, name) for name in names}


def usage(argv: list[str]) -> str:
    """`python -m cgan_bench --help`: what one run is, the config groups and their options, a few examples,
    where results land (Hydra's own help stays at --hydra-help)."""
    defaults = {}
    for entry in OmegaConf.load(Path(CONF_DIR) / "config.yaml").get("defaults", []):
        if isinstance(entry, DictConfig):
            defaults.update({str(k): str(v) for k, v in entry.items()})
    groups = config_groups(argv)
    order = [g for g in defaults if g in groups] + [g for g in groups if g not in defaults]  # config.yaml's first
    groups = {g: groups[g] for g in order}
    width = max(len(g) for g in groups) + 2
    lines = []
    for group, options in groups.items():
        added = group not in defaults  # no default: added with +GROUP=OPTION
        shown = ", ".join(f"{o}*" if defaults.get(group) == o else o for o in options)
        lines.append(f"  {('+' if added else '') + group:<{width}}{shown}")
        if group in GROUP_NOTES:
            lines.append(f"  {'':<{width}}({GROUP_NOTES[group]})")
    return f"""\
usage: python -m cgan_bench [GROUP=OPTION ...] [KEY=VALUE ...]    (installed: cgan-bench ...)
       python -m cgan_bench -m +sweep=NAME [...]                  (a sweep: many runs, then one report)

One run trains one class-conditional GAN (one dataset x one discriminator head x one seed) with a train recipe,
then evaluates it (FID, intra-FID, KID, IS, class accuracy, precision/recall, ...) against the real data.

Config groups (GROUP=OPTION; * = default; from {CONF_DIR}):
{chr(10).join(lines)}

Other settings: seed=0  device=auto|cpu|cuda|cuda:N  resume=true|false  wandb.mode=auto|online|offline|disabled,
  and every key of a group, e.g. train.iterations=5000 eval.every=1000 (all of them: --cfg job)

Examples:
  python -m cgan_bench                                  digits, projection head, CPU-sized (a few minutes)
  python -m cgan_bench head=concat seed=1               another head and seed
  python -m cgan_bench dataset=cifar10                  the paper's recipe (needs a GPU; device=cpu to force it)
  python -m cgan_bench dataset=imagefolder dataset.path=/data/mine
  python -m cgan_bench -m +sweep=digits                 the embedded comparison, with its report
  python -m cgan_bench dataset=cifar10 --cfg job        print the composed config, run nothing

Where results land (relative to the current directory):
  a run:    runs/<time>_<dataset>_<head>_s<seed>/ (status.json, metrics.jsonl, per_class.csv, samples/,
            checkpoints/); choose it with hydra.run.dir=DIR, rerun the same command to resume
  a sweep:  multirun/<time>/<dataset>_<head>_s<seed>[_<key>-<value>...]/ per run, named by its settings (to add
            seeds, rerun with hydra.sweep.dir=multirun/<time>: finished jobs are skipped); the report in
            multirun/<time>/report/ (linked as report.md)
  caches:   eval.cache_dir, else $CGAN_BENCH_CACHE, else ~/.cache/cgan_bench

Hydra's own help (override syntax, --cfg, --multirun, launchers): python -m cgan_bench --hydra-help
"""


def version_line() -> str:
    from . import __version__
    return f"cgan-bench {__version__} (torch {torch.__version__})"


def sweep_without_multirun(argv: list[str]) -> str | None:
    """`+sweep=NAME` without -m: Hydra composes one job and ignores the recipe's sweep; say so (the run goes on)."""
    multirun = any(a in ("-m", "--multirun") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in argv)
    inspecting = any(a in ("-c", "--cfg", "--info", "-i", "--resolve") or a.startswith(("--cfg=", "--info="))
                     for a in argv)
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if sep and key.lstrip("+") == "sweep" and not multirun and not inspecting:
            return (f"warning: {arg} is a sweep recipe: without -m it trains one run and writes no report; "
                    f"add -m")
    return None


