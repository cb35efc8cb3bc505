"""train.precision=auto follows the hardware (capabilities mocked); fp32 is IEEE, tf32 allows TF32, both only
inside training steps; the resolved choice reaches status.json and the report."""
import json

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from cgan_bench.app import CONF_DIR
from cgan_bench.bench import synthetic_data
from cgan_bench.config import ConfigError, validate
from cgan_bench.report.collect import read_run
from cgan_bench.train import loop, precision
from cgan_bench.train.loop import Trainer, resume_relevant
from cgan_bench.train.precision import cpu_has_native_bf16, fp32_math, resolve_precision
from cgan_bench.train.run_dir import RunDir
from conftest import SMOKE, run_cli

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def flags() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


@pytest.fixture(autouse=True)
def keep_global_flags():
    before = flags()
    yield
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before


def make_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", "train=smoke", "model.g_ch=16", "model.d_ch=16",
                                           "model.z_dim=16", *overrides])
    validate(cfg)
    return cfg


def make_trainer(tmp_path, *overrides: str) -> Trainer:
    return Trainer(make_cfg(*overrides), synthetic_data(10, 16, CPU, n=64), RunDir(tmp_path / "run"), CPU)


def mock_cuda(monkeypatch, bf16: bool, capability: tuple[int, int]) -> list[dict]:
    calls = []

    def is_bf16_supported(**kwargs):
        calls.append(kwargs)
        return bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    return calls


# ---- the choice -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_picks_bf16_only_with_native_bf16(monkeypatch, native, want):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == want
    # explicit choices are kept whatever the CPU; there is no TF32 on a CPU
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("tf32", CPU) == "fp32"


@pytest.mark.parametrize("bf16, capability, want_auto, want_tf32", [
    (True, (9, 0), "bf16", "tf32"),  # Hopper
    (True, (8, 0), "bf16", "tf32"),  # Ampere
    (False, (7, 0), "fp32", "fp32"),  # Volta: no bf16, no TF32
    (True, (7, 5), "fp32", "fp32"),  # bf16 "supported" below Ampere is emulation: not native, not fast
])
def test_auto_on_cuda_picks_bf16_only_with_native_bf16(monkeypatch, bf16, capability, want_auto, want_tf32):
    calls = mock_cuda(monkeypatch, bf16, capability)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # the host CPU does not decide for a GPU
    assert resolve_precision("auto", CUDA) == want_auto
    assert resolve_precision("auto", torch.device("cuda:1")) == want_auto
    assert resolve_precision("tf32", CUDA) == want_tf32
    assert resolve_precision("fp32", CUDA) == "fp32" and resolve_precision("bf16", CUDA) == "bf16"
    assert calls and all(c.get("including_emulation") is False for c in calls)


def test_auto_on_other_devices_is_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", torch.device("meta")) == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="train.precision.*auto, fp32, bf16 or tf32"):
        make_cfg("train.precision=fp16")
    for value in ("auto", "fp32", "bf16", "tf32"):
        make_cfg(f"train.precision={value}")


def test_every_recipe_defaults_to_auto_except_smoke():
    for recipe in ("paper", "quick"):
        assert make_cfg(f"train={recipe}").train.precision == "auto"
    assert make_cfg().train.precision == "fp32"  # train=smoke: tests compare numbers


# ---- CPU capability detection -----------------------------------------------------------------------------
@pytest.mark.parametrize("caps, want", [({"avx512_bf16": True, "amx_bf16": False}, True),
                                        ({"avx512_bf16": False, "amx_bf16": True}, True),
                                        ({"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}, False)])
def test_cpu_detection_uses_torchs_capabilities(monkeypatch, caps, want):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: caps, raising=False)
    assert cpu_has_native_bf16() is want


@pytest.mark.parametrize("flag_line, want", [("flags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni", True),
                                             ("flags\t\t: fpu sse avx512f amx_bf16 amx_tile", True),
                                             ("flags\t\t: fpu sse avx2 avx512f avx512_vnni", False)])
def test_cpu_detection_falls_back_to_proc_cpuinfo(monkeypatch, tmp_path, flag_line, want):
    def unavailable(*a, **k):
        raise AttributeError("not in this torch build")

    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", unavailable, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", unavailable, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Xeon\n{flag_line}\n\n")
    monkeypatch.setattr(precision, "Path", lambda _: cpuinfo)
    assert cpu_has_native_bf16() is want
    monkeypatch.setattr(precision, "Path", lambda _: tmp_path / "absent")  # no /proc (other platforms)
    assert cpu_has_native_bf16() is False



@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
@pytest.mark.parametrize("isa, want", [("AVX512_CORE_VNNI", False), ("avx2", False), ("AVX512_CORE_BF16", True),
                                       ("AVX512_CORE_AMX", True), ("ALL", True)])
def test_onednn_isa_cap_below_bf16_means_no_native_bf16(monkeypatch, variable, isa, want):
    """oneDNN capped below AVX512_CORE_BF16 emulates bf16 (~2x slower than fp32), so `auto` must pick fp32
    even on a CPU whose flags have the instructions."""
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx512_bf16": True, "amx_bf16": True},
                        raising=False)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert cpu_has_native_bf16() is True
    monkeypatch.setenv(variable, isa)
    assert cpu_has_native_bf16() is want
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if want else "fp32")

# ---- the fp32 math ----------------------------------------------------------------------------------------
def test_fp32_math_sets_and_restores_the_flags_even_on_error():
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = "tf32", "none"
    with fp32_math("ieee"):
        assert flags() == ("ieee", "ieee")
    assert flags() == ("tf32", "none")
    with pytest.raises(RuntimeError):
        with fp32_math("tf32"):
            assert flags() == ("tf32", "tf32")
            raise RuntimeError("a failing step")
    assert flags() == ("tf32", "none")


def record_inside_step(trainer: Trainer) -> list[tuple]:
    """(activation dtype, conv fp32 math, matmul fp32 math) at every G forward during the steps."""
    seen = []
    trainer.G.linear.register_forward_hook(lambda m, i, out: seen.append((out.dtype, *flags())))
    return seen


@pytest.mark.parametrize("configured, resolved, before, inside", [
    ("fp32", "fp32", ("tf32", "none"), ("ieee", "ieee")),  # torch's default TF32 convs are switched off
    ("tf32", "tf32", ("ieee", "ieee"), ("tf32", "tf32")),
    ("bf16", "bf16", ("tf32", "none"), ("ieee", "ieee")),  # bf16 autocast, its fp32 parts IEEE
])
def test_training_step_runs_under_the_resolved_math_and_restores_it(tmp_path, monkeypatch, configured, resolved,
                                                                     before, inside):
    if configured == "tf32":  # TF32 exists only on CUDA >= 8.0: pretend the resolution found one
        monkeypatch.setattr(loop, "resolve_precision", lambda requested, device: "tf32")
    trainer = make_trainer(tmp_path, f"train.precision={configured}")
    assert trainer.precision == resolved
    seen = record_inside_step(trainer)
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
    trainer.step()
    assert flags() == before  # restored after the step
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float32
    assert len(seen) == 1 + trainer.cfg.train.n_dis and all(s == (dtype, *inside) for s in seen)


@pytest.mark.parametrize("native, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_auto_trainer_autocasts_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch, native, dtype):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    trainer = make_trainer(tmp_path, "train.precision=auto")
    assert trainer.precision == ("bf16" if native else "fp32")
    seen = []
    trainer.D.blocks[0].conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    losses = trainer.step()
    assert seen and set(seen) == {dtype}
    assert all(v.dtype == torch.float32 for v in losses.values())  # losses and logits stay fp32
    assert resume_relevant(trainer.cfg)["train.precision"] == "auto"  # the configured value is the resume contract


# ---- recording --------------------------------------------------------------------------------------------
def test_status_and_report_record_the_resolved_precision(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli(*SMOKE, "train.precision=auto", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    want = resolve_precision("auto", CPU)  # what this machine computes natively
    assert want in ("fp32", "bf16")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["train_precision"] == want
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["train"]["precision"] == "auto"
    assert read_run(run_dir)[0]["train_precision"] == want


def test_report_falls_back_to_the_config_for_runs_without_a_recorded_precision(tmp_path):
    run_dir = tmp_path / "old_run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"train": {"precision": "bf16"}}))
    RunDir(run_dir).write_status("completed", 2, 2, 1.0, 2.0)  # as written before train_precision existed
    assert "train_precision" not in json.loads((run_dir / "status.json").read_text())
    assert read_run(run_dir)[0]["train_precision"] == "bf16"


def test_domain_classifier_trains_in_ieee_fp32_even_where_tf32_is_allowed(tmp_path, monkeypatch):
    """The domain classifier is part of the metric: its training must not use TF32 on GPUs that have it, so
    one dataset gives one classifier on every GPU generation (the flags are restored afterwards)."""
    from cgan_bench.data import load_dataset
    from cgan_bench.metrics import classifier
    seen = []

    def fake_train(train, test, device, epochs, seed=0):
        seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision, seed))
        return classifier.DomainClassifier(train.n_classes), 0.5

    monkeypatch.setattr(classifier, "train_classifier", fake_train)
    data = load_dataset("digits", "train", 16)
    # set and restored by hand: torch's flags are __getattr__/__setattr__ of a module object, which pytest >= 9.2's
    # monkeypatch records as absent and fails to restore (AttributeError at teardown)
    flags = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    before = [f.fp32_precision for f in flags]
    try:
        for f in flags:
            f.fp32_precision = "tf32"
        classifier.load_or_train_classifier(data, data, "cpu", 1, cache_dir=str(tmp_path))
        classifier.load_or_train_classifier(data, data, "cpu", 1, cache_dir=str(tmp_path), seed=1)
        assert [f.fp32_precision for f in flags] == ["tf32", "tf32"]
    finally:
        for f, value in zip(flags, before):
            f.fp32_precision = value
    assert seen == [("ieee", "ieee", 0), ("ieee", "ieee", 1)]
    assert len(list((tmp_path / "classifiers").glob("*.pt"))) == 2  # the seeded one is cached apart
