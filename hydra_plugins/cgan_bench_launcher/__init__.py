"""cgan-bench's Hydra launchers. Hydra instantiates launchers only from the `hydra_plugins` namespace, so the
classes are named here; the code and the reasons are in cgan_bench/launch.py. Keep this module light: Hydra
imports every hydra_plugins module at start-up."""
from cgan_bench.launch import SurvivingJoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher


class JoblibLauncher(SurvivingJoblibLauncher):
    """`hydra/launcher=joblib` (cgan_bench.launch.register_launchers): Hydra's joblib launcher, whose sweep goes on
    when a worker dies."""


class SlurmLauncher(_SubmititSlurmLauncher):
    """`hydra/launcher=slurm_gpus` (conf/hydra/launcher/slurm_gpus.yaml): Hydra's submitit Slurm launcher, one
    Slurm job per sweep job, whose tasks (one per GPU) are the ranks of one data-parallel run
    (cgan_bench/train/distributed.py). Every task runs Hydra's job; those of rank > 0 write no Hydra files
    (.hydra/, the job log), as app.cli arranges under torchrun."""

    def __call__(self, sweep_overrides, *args, **kwargs):
        from cgan_bench.train.distributed import hydra_rank_overrides
        return super().__call__([*sweep_overrides, *hydra_rank_overrides()], *args, **kwargs)
