"""train.cuda_graph (train/cuda_graph.py): the whole update replayed as one CUDA graph.

On a CPU: the refusals (one line, before data is loaded), and the two mechanisms the graph relies on that run
anywhere: the LR schedule fills the same lr tensor a graph reads (never replaces it), and checkpoints hold
plain floats whichever path wrote them. Where CUDA exists (`pytest -m cuda` on a GPU machine): the graph path
trains the same model as the eager step, and kill/resume, SIGTERM preemption and divergence detection work on it.
"""
import json
import signal

import pytest
import torch
from omegaconf import OmegaConf

from cgan_bench.train.cuda_graph import WARMUP, check_supported, learning_rates_as, plain_numbers
from cgan_bench.train.loop import linear_decay
from conftest import SMOKE, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def train_cfg(**train):
    return OmegaConf.create({"train": {"cuda_graph": True, "compile": False, "compile_mode": "default", **train}})


def test_each_unsupported_setting_is_refused_with_its_fix():
    cuda = torch.device("cuda:0")  # only its type is read: no GPU needed
    assert check_supported(train_cfg(), cuda, 1, False) is None
    assert check_supported(train_cfg(cuda_graph=False), torch.device("cpu"), 4, True) is None
    cases = {
        (torch.device("cpu"), 1, False, "default"): ("needs a CUDA device", "train.cuda_graph=false"),
        (cuda, 2, False, "default"): ("2 processes", "train.cuda_graph=false"),
        (cuda, 1, True, "default"): ("streamed from disk", "dataset.storage=device"),
        (cuda, 1, False, "reduce-overhead"): ("cannot nest", "train.compile_mode=default"),
        (cuda, 1, False, "max-autotune"): ("compile_mode=max-autotune", "train.compile_mode=default"),
    }
    for (device, world, streamed, mode), (problem, fix) in cases.items():
        line = check_supported(train_cfg(compile=True, compile_mode=mode), device, world, streamed)
        assert problem in line and fix in line and "\n" not in line


def test_the_cli_refuses_a_graph_on_the_cpu_in_one_line_before_loading_data(tmp_path):
    run_dir = tmp_path / "run"
    # CIFAR-10 is absent from this root and may not be downloaded: loading it first would fail differently
    r = run_cli("dataset=cifar10", *SMOKE, "device=cpu", "train.cuda_graph=true", "dataset.download=false",
                f"dataset.root={tmp_path / 'nothing_here'}", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "train.cuda_graph=true needs a CUDA device" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_the_schedule_fills_the_lr_tensor_a_graph_reads_and_matches_float_learning_rates():
    """A captured Adam step reads its lr tensor's address: the scheduler must write into that tensor (never
    assign a new one), and give the values the float schedule gives."""
    decay = linear_decay(10, 4)
    rates = {}
    for graphed in (False, True):
        p = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.Adam([p], lr=2e-4, betas=(0.0, 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
        learning_rates_as(opt, graphed, torch.device("cpu"))
        held = opt.param_groups[0]["lr"]
        assert isinstance(held, torch.Tensor) == graphed and opt.param_groups[0]["capturable"] == graphed
        opt.param_groups[0]["capturable"] = False  # Adam's capturable step runs on GPUs only; the lr is the point
        rates[graphed] = []
        for _ in range(10):
            p.grad = torch.ones(3)
            opt.step()
            sched.step()
            rates[graphed].append(float(opt.param_groups[0]["lr"]))
        assert not graphed or opt.param_groups[0]["lr"] is held  # the same tensor object, filled in place
        assert sched.base_lrs == [2e-4] and not isinstance(sched.base_lrs[0], torch.Tensor)  # no device syncs
    assert rates[True] == pytest.approx(rates[False], rel=1e-6)
    assert rates[False][3] == pytest.approx(2e-4) and rates[False][-1] == 0.0


def test_checkpoints_hold_plain_floats_whichever_path_wrote_them():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=2e-4, betas=(0.0, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(10, 0))
    learning_rates_as(opt, True, torch.device("cpu"))
    opt.param_groups[0]["capturable"] = False
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    saved_opt, saved_sched = plain_numbers(opt.state_dict()), plain_numbers(sched.state_dict())
    group = saved_opt["param_groups"][0]
    assert type(group["lr"]) is float and group["lr"] == pytest.approx(1.8e-4)
    assert isinstance(saved_opt["state"][0]["exp_avg"], torch.Tensor)  # Adam's moments untouched
    assert all(type(v) is float for v in saved_sched["_last_lr"] + saved_sched["base_lrs"])
    # an eager optimizer resumes it with a float learning rate; a graphed one gets its tensor back
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=1.0, betas=(0.0, 0.9))
    fresh.load_state_dict(saved_opt)
    learning_rates_as(fresh, False, torch.device("cpu"))
    assert type(fresh.param_groups[0]["lr"]) is float and fresh.param_groups[0]["lr"] == pytest.approx(1.8e-4)
    learning_rates_as(fresh, True, torch.device("cpu"))
    assert float(fresh.param_groups[0]["lr"]) == pytest.approx(1.8e-4)


def test_a_graphed_step_does_not_keep_its_trainer_alive():
    """GraphedStep holds the trainer's bound update weakly: no reference cycle, so a finished trainer's models,
    optimizer state and graph memory go as soon as the last reference does, not at the next cycle collection."""
    import gc
    import weakref

    from cgan_bench.train.cuda_graph import GraphedStep

    class Owner:
        def __init__(self):
            self.step = GraphedStep(self.update, torch.device("cpu"))

        def update(self):
            return {"loss": torch.ones(1)}

    owner = Owner()
    assert owner.step.update()["loss"].item() == 1.0  # the weak reference calls through while the owner lives
    alive = weakref.ref(owner)
    gc.disable()
    try:
        del owner
        assert alive() is None
    finally:
        gc.enable()
    assert GraphedStep(lambda: 5, torch.device("cpu")).update() == 5  # a plain function is held as it is



def test_the_last_warm_up_warns_at_host_syncs_and_restores_the_mode(monkeypatch):
    """The mechanics, with torch.cuda's stream and debug-mode calls stood in for (no GPU here): only the
    iteration just before the capture runs under sync_debug_mode "warn", and the previous mode comes back."""
    import contextlib

    from cgan_bench.train.cuda_graph import GraphedStep

    class FakeStream:
        def wait_stream(self, other):
            pass

    mode = {"now": 0}
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode["now"])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.update(now=m))
    seen = []
    step = GraphedStep(lambda: seen.append(mode["now"]) or {}, torch.device("cuda:0"), warmup=3)
    for _ in range(3):
        step()
    assert seen == [0, 0, "warn"] and mode["now"] == 0 and step.eager_iterations == 3


# ---- on a CUDA device ------------------------------------------------------------------------------
CUDA_RUN = [*SMOKE, "device=cuda", "train.cuda_graph=true"]


@needs_cuda
@pytest.mark.cuda
def test_graph_trains_the_same_model_as_the_eager_step(tmp_path):
    """WARMUP eager iterations, the capture (replayed once), then replays: the same losses and D weights as
    eager steps from the same seed, up to rounding. cuDNN's deterministic algorithms (no atomics in weight
    gradients), so that a difference means the graph path. Besides fp32 with both D-step forms: bf16 autocast
    inside the capture (what train.precision=auto runs on an H100, so what the timing rows run) and AC-GAN's
    cross-entropy path."""
    from test_fast_path import assert_same_training, trained_state
    n = WARMUP + 4
    variants = {"fp32": (["train.precision=fp32", "train.joint_d_forward=false"], 1e-4),
                "fp32_joint": (["train.precision=fp32", "train.joint_d_forward=true"], 1e-4),
                "bf16_joint": (["train.precision=bf16", "train.joint_d_forward=true"], 1e-2),
                "fp32_acgan": (["train.precision=fp32", "head=acgan"], 1e-4)}
    torch.backends.cudnn.deterministic = True
    try:
        for name, (overrides, tol) in variants.items():
            eager = trained_state(tmp_path / name, "train.cuda_graph=false", *overrides, iterations=n, device="cuda")
            graphed = trained_state(tmp_path / name, "train.cuda_graph=true", *overrides, iterations=n, device="cuda")
            assert_same_training(eager, graphed, tol=tol)
    finally:
        torch.backends.cudnn.deterministic = False


@needs_cuda
@pytest.mark.cuda
def test_a_graphed_run_resumed_from_its_checkpoint_state_continues_as_if_uninterrupted(tmp_path):
    """What a resume does (state_dict -> a new Trainer -> load_state_dict -> fit), in-process: 12 graphed
    iterations straight against 6 + a resumed 6 (the resumed trainer warms up and captures again). cuDNN's
    deterministic algorithms, so that a difference means the graph path, not atomics in a weight gradient."""
    from test_fast_path import make_trainer
    torch.backends.cudnn.deterministic = True
    try:
        straight = make_trainer(tmp_path / "a", "train.cuda_graph=true", "train.precision=fp32", device="cuda")
        for _ in range(12):
            straight.step()
        first = make_trainer(tmp_path / "b", "train.cuda_graph=true", "train.precision=fp32", device="cuda")
        for _ in range(6):
            first.step()
        state = first.state_dict()
        assert type(state["opt_d"]["param_groups"][0]["lr"]) is float  # checkpoints hold plain numbers
        resumed = make_trainer(tmp_path / "c", "train.cuda_graph=true", "train.precision=fp32", device="cuda")
        resumed.load_state_dict(state)
        for _ in range(6):
            resumed.step()
    finally:
        torch.backends.cudnn.deterministic = False
    for name in ("G", "D"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=f"{name}.{key}")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.slow
def test_graph_path_sigterm_preempts_and_divergence_is_detected(tmp_path):
    """SIGTERM lands in training (2000 iterations: replays are fast) and is honoured at the next iteration; a
    diverging run is caught at a log point after the capture (iteration 8 > WARMUP + 1)."""
    from test_reliability import start_cli, wait_for_iteration
    run_dir = tmp_path / "run"
    proc = start_cli(*CUDA_RUN, "train.iterations=2000", "train.checkpoint_every=1000", "train.log_every=1",
                     "train.sample_every=100000", f"hydra.run.dir={run_dir}")
    wait_for_iteration(run_dir, WARMUP + 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "preempted by SIGTERM" in err, err[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "preempted" and WARMUP + 3 <= status["iteration"] < 2000
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["iteration"] == status["iteration"]
    r = run_cli(*CUDA_RUN, "train.lr=1e30", "train.iterations=8", "train.log_every=8", "train.checkpoint_every=8",
                f"hydra.run.dir={tmp_path / 'diverged'}")
    assert r.returncode == 3 and "run diverged" in r.stderr and "at iteration 8" in r.stderr, r.stderr[-2000:]
