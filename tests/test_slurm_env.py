"""Multi-GPU sweep jobs under Slurm (hydra/launcher=slurm_gpus): a task of a submitit job takes its rank, world size
and master address from Slurm's variables through submitit's TorchDistributedEnvironment (train/distributed.py),
and a multirun may run as several processes only there.

No Slurm here: the variables srun gives each task are set by hand (submitit's SlurmJobEnvironment reads only
the environment), and the end-to-end test stands in for sbatch/srun with local processes running submitit's own
DelayedSubmission pickles, as the tasks of a submitit job do.
"""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from cgan_bench.app import CONF_DIR
from cgan_bench.launch import register_launchers
from cgan_bench.train import distributed
from cgan_bench.train.loop import PreemptionSignals
from conftest import SMOKE, run_cli
from test_distributed import free_port, train

# what torchrun, srun and submitit put in a process's environment: cleared before every test
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
               "MASTER_PORT", "SUBMITIT_EXECUTOR", "SUBMITIT_PREEMPT_SIGNAL", "SLURM_JOB_ID", "SLURM_NTASKS",
               "SLURM_JOB_NUM_NODES", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_PROCID", "SLURM_LOCALID",
               "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


def slurm_task(rank: int, local_rank: int, ntasks: int, nodes: int, nodelist: str, job_id: str = "4242") -> dict:
    """The variables of one task of a submitit Slurm job (sbatch exports SUBMITIT_EXECUTOR, srun the rest)."""
    return {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job_id, "SLURM_NTASKS": str(ntasks),
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NODEID": str(rank // (ntasks // nodes)),
            "SLURM_JOB_NODELIST": nodelist, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local_rank)}


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)

    def set_env(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return set_env


def test_a_submitit_task_takes_rank_world_and_master_from_slurm(clean_env):
    """Rank 5 of 2 nodes x 4 GPUs: the second task on the second node; the master is the job's first node."""
    clean_env(**slurm_task(rank=5, local_rank=1, ntasks=8, nodes=2, nodelist="gpu[017-018]"))
    assert distributed.submitit_job()
    assert distributed.env_world() == (5, 8, 1)
    from submitit.helpers import TorchDistributedEnvironment
    d = TorchDistributedEnvironment()
    assert (d.master_addr, d.local_world_size) == ("gpu017", 4)
    port = d.master_port
    assert 20000 <= port <= 60000  # drawn from the job id: the same on every task of the job
    clean_env(**slurm_task(rank=0, local_rank=0, ntasks=8, nodes=2, nodelist="gpu[017-018]"))
    assert TorchDistributedEnvironment().master_port == port
    assert distributed.env_world() == (0, 8, 0)
    clean_env(MASTER_PORT="29611")  # a port the user exports wins
    assert TorchDistributedEnvironment().master_port == 29611


def test_no_submitit_job_for_a_plain_process_torchrun_or_an_allocation(clean_env):
    assert not distributed.submitit_job() and distributed.env_world() == (0, 1, 0)
    # a shell inside salloc/sbatch, not started by submitit: one process
    clean_env(SLURM_JOB_ID="7", SLURM_NTASKS="4", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_NODELIST="n1")
    assert not distributed.submitit_job() and distributed.env_world() == (0, 1, 0)
    # torchrun, also where it runs inside a submitit job: torchrun's variables
    clean_env(SUBMITIT_EXECUTOR="slurm", TORCHELASTIC_RUN_ID="x", RANK="3", WORLD_SIZE="4", LOCAL_RANK="3",
              MASTER_ADDR="n1")
    assert not distributed.submitit_job()
    assert distributed.env_world() == (3, 4, 3)


def test_multirun_refused_under_torchrun_allowed_in_a_submitit_job(clean_env):
    assert not distributed.refuses_multirun()  # one process
    clean_env(**slurm_task(rank=1, local_rank=1, ntasks=2, nodes=1, nodelist="localhost"))
    assert not distributed.refuses_multirun()  # each sweep job is one 2-task Slurm job: one run
    assert distributed.hydra_rank_overrides() == ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    clean_env(SLURM_PROCID="0", SLURM_LOCALID="0")
    assert distributed.hydra_rank_overrides() == []  # rank 0 writes Hydra's files
    clean_env(TORCHELASTIC_RUN_ID="x", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    assert distributed.refuses_multirun()


def test_multirun_under_torchrun_stops_with_one_line(clean_env, tmp_path):
    """Rank 0 of a faked 2-process torchrun start with -m: one line and exit code 2 before any process group."""
    r = run_cli("-m", "head=projection", *SMOKE, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
                env={"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "hydra/launcher=slurm_gpus" in errors[0]
    assert not list((tmp_path / "sweep").glob("*/status.json"))


def test_slurm_gpus_launcher_config_asks_slurm_for_one_task_per_gpu_and_sigusr2(tmp_path, monkeypatch):
    """The sbatch script the launcher has submitit write for hydra/launcher=slurm_gpus nodes=2: 2 x 4 tasks and
    GPUs, and submitit's SIGUSR2 300 s before the time limit (caught by train/loop.py, then submitit requeues)."""
    import submitit
    from hydra.core.plugins import Plugins
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit's Slurm executor looks for srun
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")

    class Submitted(Exception):
        pass

    class SbatchOnly(submitit.AutoExecutor):
        def map_array(self, fn, *iterables):
            raise Submitted(self._executor._make_submission_file_text("python -m submitit.core._submit", "uid"))

    monkeypatch.setattr(submitit, "AutoExecutor", SbatchOnly)
    register_launchers()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["hydra/launcher=slurm_gpus", "hydra.launcher.nodes=2",
                                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], return_hydra_config=True)
    launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)
    assert type(launcher).__module__ == "hydra_plugins.cgan_bench_launcher"
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Submitted) as sbatch:
        launcher.launch([["head=concat"]], initial_job_idx=0)
    lines = str(sbatch.value).splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --signal=USR2@300"):
        assert line in lines, line
    assert signal.SIGUSR2 in PreemptionSignals.SIGNALS  # the signal train/loop.py checkpoints and stops on


def _submitit_rank(rank: int, port: int, out: str) -> None:
    for k in LAUNCH_VARS:
        os.environ.pop(k, None)
    os.environ.update(slurm_task(rank, rank, ntasks=2, nodes=1, nodelist="localhost"), MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.setup("cpu")  # no MASTER_ADDR/RANK given: submitit's helper exported them
    try:
        assert (distributed.rank(), distributed.world_size()) == (rank, 2)
        assert os.environ["MASTER_ADDR"] == "localhost"
        _, history = train(g_eval=False)
        torch.save(history, os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.teardown()


def test_two_submitit_tasks_join_one_group_and_train_identical_weights(tmp_path):
    mp.spawn(_submitit_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for step, (a, b) in enumerate(zip(*ranks)):
        for k in a:
            if "running" not in k:  # batch norm's running statistics: each rank's own slice (test_distributed)
                assert torch.equal(a[k], b[k]), (step, k)
    first, last = ranks[0][0], ranks[0][-1]
    assert any(not torch.equal(first[k], last[k]) for k in first if "weight" in k)  # they really trained


# The end-to-end stand-in for Slurm: the sweep's process runs cgan_bench's CLI with submitit's executor replaced by
# one that, per sweep job, dumps submitit's DelayedSubmission and starts 2 local task processes with the Slurm
# variables of a 2-task job; each task records what Hydra writes and which job directory it resolved.
SUBMIT = textwrap.dedent("""
    import os, pickle, subprocess, sys
    from pathlib import Path
    import submitit
    from submitit.helpers import DelayedSubmission
    OUT, TASK, PORT = Path(sys.argv.pop(1)), sys.argv.pop(1), sys.argv.pop(1)

    class Job:
        def __init__(self, ret):
            self.ret = ret
        def results(self):
            return [self.ret]

    class TwoTaskSlurm:
        def __init__(self, cluster, folder, **kwargs):
            assert cluster == "slurm"
        def update_parameters(self, **params):
            (OUT / "params.pkl").write_bytes(pickle.dumps(params))
        def map_array(self, fn, *iterables):
            jobs = []
            for i, args in enumerate(zip(*iterables)):
                pkl = OUT / f"job{i}.pkl"
                DelayedSubmission(fn, *args).dump(pkl)
                env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": str(100 + i), "SLURM_NTASKS": "2",
                       "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
                       "MASTER_PORT": PORT}
                tasks = [subprocess.Popen([sys.executable, TASK, str(pkl), str(r)], cwd=os.getcwd(),
                                          env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
                         for r in (0, 1)]
                assert [t.wait() for t in tasks] == [0, 0]
                jobs.append(Job(pickle.loads((OUT / f"job{i}.0.out").read_bytes())))
            return jobs

    submitit.AutoExecutor = TwoTaskSlurm
    from cgan_bench.app import cli
    cli()
""")
TASK = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import cloudpickle
    import hydra.core.utils as hydra_utils
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from submitit.helpers import DelayedSubmission
    pkl, rank = Path(sys.argv[1]), int(sys.argv[2])
    seen = {"saved": [], "file_log": False, "job_dir": None}
    save_config, configure_log = hydra_utils._save_config, hydra_utils.configure_log

    def record_save(cfg, filename, output_dir):
        seen["saved"].append(str(Path(output_dir) / filename))
        return save_config(cfg, filename, output_dir)

    def record_log(log_config, *args, **kwargs):  # run_job calls it once the job's Hydra config is set
        seen["file_log"] = "file" in OmegaConf.to_container(log_config).get("handlers", {})
        seen["job_dir"] = HydraConfig.get().runtime.output_dir
        return configure_log(log_config, *args, **kwargs)

    hydra_utils._save_config, hydra_utils.configure_log = record_save, record_log
    delayed = DelayedSubmission.load(pkl)
    if rank == 1:
        time.sleep(1.1)  # a timestamp resolved again here would name another second
    ret = delayed.result()
    (pkl.parent / f"{pkl.stem}.{rank}.json").write_text(json.dumps(seen))
    (pkl.parent / f"{pkl.stem}.{rank}.out").write_bytes(cloudpickle.dumps(ret))  # as submitit pickles results
""")


@pytest.mark.slow
def test_a_sweep_job_is_one_two_task_run_that_rank_0_alone_writes(tmp_path):
    """hydra/launcher=slurm_gpus with 2 tasks: both ranks train one run in the same job directory (the default
    sweep dir holds a timestamp, resolved once when the sweep was submitted), Hydra's .hydra/ and job log come from
    rank 0 only, metrics are logged once, and the report is written."""
    import json
    (tmp_path / "submit.py").write_text(SUBMIT)
    (tmp_path / "task.py").write_text(TASK)
    (tmp_path / "work").mkdir()  # the submitting shell's folder, where Slurm starts every task
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in LAUNCH_VARS:
        env.pop(k, None)
    r = subprocess.run([sys.executable, str(tmp_path / "submit.py"), str(tmp_path), str(tmp_path / "task.py"),
                        str(free_port()), "-m", "head=projection", *SMOKE, "device=cpu",
                        "hydra/launcher=slurm_gpus", "hydra.launcher.gpus_per_node=2"],
                       capture_output=True, text=True, cwd=tmp_path / "work", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    params = pickle.loads((tmp_path / "params.pkl").read_bytes())
    assert params["tasks_per_node"] == 2 and params["slurm_signal_delay_s"] == 300
    seen = [json.loads((tmp_path / f"job0.{r}.json").read_text()) for r in (0, 1)]
    assert seen[0]["job_dir"] == seen[1]["job_dir"]
    job_dir = Path(seen[0]["job_dir"])
    sweep_dir = job_dir.parent
    assert list((tmp_path / "work").iterdir()) == [sweep_dir.parent]  # multirun/<time of submission>/
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".")) == \
        sorted([job_dir.name, "multirun.yaml", "report", "report.md"])
    assert sorted(seen[0]["saved"]) == sorted(str(job_dir / ".hydra" / f) for f in
                                             ("config.yaml", "hydra.yaml", "overrides.yaml"))
    assert seen[1]["saved"] == [] and seen[0]["file_log"] and not seen[1]["file_log"]
    status = json.loads((job_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["iteration"] == 2
    lines = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines if x["phase"] == "train"] == [1, 2]  # once, not once per rank


def test_plain_submitit_slurm_is_the_rank_aware_launcher_too():
    """hydra/launcher=submitit_slurm with tasks_per_node > 1 is also one data-parallel run per job: the same
    subclass keeps ranks > 0 from writing Hydra files; its settings stay the plugin's (one task, SIGUSR2 at 120 s)."""
    register_launchers()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.cgan_bench_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 1 and launcher.signal_delay_s == 120 and launcher.timeout_min == 60
