"""Multi-process data-parallel training (train/distributed.py) on the CPU with gloo: 2 ranks train the model one
process trains on the same global batch, stay identical across ranks, and their checkpoint resumes on 1 process.

SyncBatchNorm runs on GPUs only, so on the CPU G's batch norm normalises each rank's slice with its own
statistics, which differ from the global batch's. The equality with one process is therefore checked with G in
eval mode (batch norm from its running statistics: every sample independent of the rest of its batch); the
rest of the step (slicing, DDP's gradient averaging, D's spectral norm, Adam) is exactly what a run does.
"""
import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from cgan_bench.app import CONF_DIR
from cgan_bench.bench import synthetic_data
from cgan_bench.config import ConfigError
from cgan_bench.train import distributed
from cgan_bench.train.checkpoint import load_checkpoint
from cgan_bench.train.loop import Trainer
from conftest import SMOKE

CPU = torch.device("cpu")
OVERRIDES = ["train.batch_d=8", "train.batch_g=8", "train.n_dis=2"]
STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_trainer(*overrides: str) -> Trainer:
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", "device=cpu", *SMOKE, *OVERRIDES, *overrides])
    torch.manual_seed(0)  # the same data on every rank
    return Trainer(cfg, synthetic_data(10, 16, CPU, n=64), None, CPU)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """G's and D's parameters and buffers (spectral norm's u/v, batch norm's running statistics)."""
    return {**{f"G.{k}": v.clone() for k, v in trainer.G.state_dict().items()},
            **{f"D.{k}": v.clone() for k, v in trainer.D.state_dict().items()}}


def train(g_eval: bool, *overrides: str) -> tuple[Trainer, list[dict]]:
    """STEPS training steps; each step's weights (G in eval mode: batch norm independent of the batch split)."""
    trainer = make_trainer(*overrides)
    if g_eval:
        trainer.G.eval()
    history = []
    for _ in range(STEPS):
        trainer.step()
        history.append(weights(trainer))
    return trainer, history


@contextmanager
def gloo_group(rank: int, world: int, port: int):
    """This (spawned) process as rank `rank` of `world` in a gloo group on this machine, set up as torchrun would."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    assert distributed.setup("cpu")
    try:
        yield
    finally:
        distributed.teardown()


def _rank(rank: int, world: int, port: int, out: str) -> None:
    with gloo_group(rank, world, port):
        for g_eval in (True, False):
            _, history = train(g_eval)
            torch.save(history, os.path.join(out, f"rank{rank}_{'eval' if g_eval else 'train'}.pt"))
        _, history = train(True, JOINT)
        torch.save(history, os.path.join(out, f"rank{rank}_joint.pt"))
        _, history = train(True, REACGAN)
        torch.save(history, os.path.join(out, f"rank{rank}_reacgan.pt"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return {(r, mode): torch.load(out / f"rank{r}_{mode}.pt") for r in (0, 1)
            for mode in ("eval", "train", "joint", "reacgan")}


@pytest.fixture
def one_thread():
    """torch on 1 thread, as each spawned rank runs; the count is restored for the tests after (numerics of the
    layouts differ by thread count: test_fast_path)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


JOINT = "train.joint_d_forward=true"  # one D call on each rank's [real; fake] slices per D step
# a loss over pairs of samples: its negatives are the other classes' samples of the whole global batch, on every rank
REACGAN = "head=reacgan"


@pytest.mark.parametrize("mode, overrides", [("eval", []), ("joint", [JOINT]), ("reacgan", [REACGAN])])
def test_two_ranks_train_what_one_process_trains_on_the_same_global_batch(two_ranks, one_thread, mode, overrides):
    """Up to rounding: Adam's update is about lr * sign(gradient), so a gradient within rounding of 0 (a few in
    10^4 weights here) may move by up to 2 lr the other way; every other weight agrees to 1e-5."""
    trainer, single = train(True, *overrides)
    lr = trainer.cfg.train.lr
    for step, (one, ranked) in enumerate(zip(single, two_ranks[(0, mode)])):
        diff = torch.cat([(ranked[k].float() - one[k].float()).abs().flatten() for k in one])
        assert diff.max() <= 2 * lr + 1e-5, step
        assert (diff > 1e-5).float().mean() < 1e-3, step
    # and they really trained: the weights moved
    start = weights(make_trainer())
    assert any(not torch.allclose(start[k].float(), single[-1][k].float()) for k in start if "weight" in k)


@pytest.mark.parametrize("mode", ["eval", "train", "joint", "reacgan"])
def test_ranks_hold_identical_weights_after_every_step(two_ranks, mode):
    """G in train mode too: per-rank batch norm differs in its statistics, not in the averaged gradients;
    buffers (running statistics, u/v) are rank 0's, broadcast at each forward."""
    for step, (a, b) in enumerate(zip(two_ranks[(0, mode)], two_ranks[(1, mode)])):
        assert a.keys() == b.keys()
        for k in a:
            if "running" in k and mode == "train":
                continue  # each rank's last forward updated them with its own slice; rank 0's are saved
            assert torch.equal(a[k], b[k]), (step, k)


def test_global_batch_not_divisible_by_the_processes_is_refused(monkeypatch):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["device=cpu", *SMOKE, "train.batch_d=9"])
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match=r"train.batch_d=9 .*global batch.*multiple of 2"):
        distributed.check_config(cfg)
    cfg.train.batch_d = 8
    distributed.check_config(cfg)
    cfg.train.sync_bn = True
    with pytest.raises(ConfigError, match="sync_bn"):
        distributed.check_config(cfg)


def test_rank_comes_from_torchrun_or_slurm(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.env_world() == (0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.env_world() == (0, 1, 0)  # a Slurm job without MASTER_ADDR: one process per task
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert distributed.env_world() == (5, 8, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert distributed.env_world() == (2, 4, 2)  # torchrun's variables first (torchrun under srun)


@pytest.mark.slow
def test_torchrun_checkpoint_resumes_on_one_process(tmp_path):
    """2 processes train 2 iterations with the CLI (rank 0 alone writes), then 1 process resumes to 3."""
    run_dir = tmp_path / "run"
    args = ["device=cpu", *SMOKE, "train.iterations=2", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "cgan_bench", *args], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # rank 1 wrote nothing beside it
    assert load_checkpoint(run_dir / "checkpoints")["iteration"] == 2
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["phase"] == "train"] == [1, 2]  # once, not once per rank

    bad = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), "-m", "cgan_bench", *args[:-1], "train.batch_d=9",
                          f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert bad.returncode != 0 and bad.stderr.count("error: train.batch_d=9") == 1, bad.stderr[-3000:]  # rank 0's

    one = subprocess.run([sys.executable, "-m", "cgan_bench", *args[:-2], "train.iterations=3",
                          f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["phase"] == "train"] == [1, 2, 3]  # continued at 2, not from 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["iteration"] == 3
    assert load_checkpoint(run_dir / "checkpoints")["iteration"] == 3
