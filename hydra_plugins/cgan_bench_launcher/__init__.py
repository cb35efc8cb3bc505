"""cgan-bench's Hydra launchers. Hydra instantiates launchers only from the `hydra_plugins` namespace, so the
classes are named here; the code and the reasons are in cgan_bench/launch.py. Keep this module light: Hydra
imports every hydra_plugins module at start-up."""
from cgan_bench.launch import SurvivingJoblibLauncher


class JoblibLauncher(SurvivingJoblibLauncher):
    """`hydra/launcher=joblib` (cgan_bench.launch.register_launchers): Hydra's joblib launcher, whose sweep goes on
    when a worker dies."""
