"""The fast-path options of the training step (issue 6) train the same model as the plain eager step.

Each option runs `Trainer.step` from the same seed and the same data and must end at the same losses,
discriminator (weights and spectral-norm vectors) and generator function, up to floating-point rounding.
G is compared by its output (batch statistics) rather than weight by weight: its conv biases feed a
BatchNorm that cancels them, so their gradients are rounding noise that Adam scales up to +-lr steps.
bf16 is not here: it changes numbers.
"""
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn.utils import parametrize

from cgan_bench.app import CONF_DIR
from cgan_bench.bench import synthetic_data
from cgan_bench.config import validate
from cgan_bench.train.loop import Trainer
from cgan_bench.train.precision import fp32_math
from cgan_bench.train.run_dir import RunDir


def make_trainer(run_dir, *overrides: str, device: str = "cpu") -> Trainer:
    """A Trainer of a small model on synthetic 16px data (10 classes), the options under test as overrides."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", "train=smoke", "train.n_dis=2", "model.g_ch=16",
                                           "model.d_ch=16", "model.z_dim=16", "train.lr=2e-3",
                                           "train.iterations=100",  # no LR decay to 0 within 3 steps
                                           "train.precision=fp32",  # not auto: bf16 on CPUs with AMX (see above)
                                           *overrides])
    validate(cfg)
    data = synthetic_data(10, 16, torch.device(device), n=256)
    return Trainer(cfg, data, RunDir(run_dir), torch.device(device))


def converge_power_iterations(D, n: int = 300) -> None:
    """Run spectral norm's power iteration n times on every SN weight (reading a weight in train mode runs one)."""
    with torch.no_grad():
        for _ in range(n):
            for module in D.modules():
                if parametrize.is_parametrized(module, "weight"):
                    module.weight


def trained_state(tmp_path, *overrides: str, iterations: int = 3, device: str = "cpu",
                  converged: bool = False) -> tuple[dict, list[dict]]:
    """converged: spectral norm's vectors converged before the first step (so that one power iteration per
    D step or two give the same sigma up to rounding)."""
    trainer = make_trainer(tmp_path / "_".join(overrides), *overrides, device=device)
    cfg = trainer.cfg
    if converged:
        converge_power_iterations(trainer.D)
    losses = [{k: v.item() for k, v in trainer.step().items()} for _ in range(iterations)]
    conv = trainer.D.blocks[0].conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cfg.train.channels_last
    state = {f"D.{k}": v for k, v in trainer.D.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(20, cfg.model.z_dim, generator=g), torch.arange(20) % 10
    with torch.no_grad(), fp32_math("ieee"):  # IEEE convolutions on a GPU too (torch's default allows TF32)
        state["G(z, y)"] = trainer.G.train()(z.to(device), y.to(device))
    state = {k: v.cpu() for k, v in state.items()}
    return state, losses


def assert_same_training(a, b, tol):
    (state_a, losses_a), (state_b, losses_b) = a, b
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        if state_a[key].is_floating_point():
            torch.testing.assert_close(state_b[key], state_a[key], rtol=tol, atol=tol, msg=key)
        else:
            assert torch.equal(state_b[key], state_a[key]), key
    for la, lb in zip(losses_a, losses_b):
        assert lb == pytest.approx(la, rel=tol, abs=tol)


def test_channels_last_trains_the_same_model(tmp_path):
    """At lr 2e-4: at 2e-3 the layouts' rounding differences grew to 4e-4 in D's weights within 3 steps when
    torch ran on 1 thread (a test before it had set that), against 5e-6 at 2e-4 on 1 or 2 threads."""
    assert_same_training(trained_state(tmp_path, "train.channels_last=false", "train.lr=2e-4"),
                         trained_state(tmp_path, "train.channels_last=true", "train.lr=2e-4"), tol=1e-4)


@pytest.mark.parametrize("head", ["projection", "acgan", "reacgan"])
def test_one_d_call_on_real_and_fake_trains_the_same_model(tmp_path, head):
    """train.joint_d_forward=true: each D step calls D once on [real; fake]. The forward is the same function,
    so with spectral norm's vectors converged (a learning rate small enough that they stay so) the losses, D's
    weights and G's function equal those of the paper's two calls; with a swapped or misaligned split they do
    not (acgan and reacgan: class losses on each half; reacgan's is a contrast within the batch)."""
    a = trained_state(tmp_path, f"head={head}", "train.joint_d_forward=false", "train.lr=2e-5", converged=True)
    b = trained_state(tmp_path, f"head={head}", "train.joint_d_forward=true", "train.lr=2e-5", converged=True)
    # the power-iteration vectors themselves differ by design (3 power iterations since convergence, not 6):
    # by up to 1e-3 of their unit norm at this learning rate; the weights they normalise agree to 1e-6
    vectors = [k for k in a[0] if k.endswith(("._u", "._v"))]
    assert len(vectors) >= 14
    for key in vectors:
        torch.testing.assert_close(b[0].pop(key), a[0].pop(key), rtol=0, atol=5e-3, msg=key)
    assert_same_training(a, b, tol=1e-4)


@pytest.mark.slow
def test_compiled_step_trains_the_same_model(tmp_path):
    """torch.compile of G and D: two D forwards per D step (real, fake) update the spectral-norm vectors in
    between; the compiled backward must still use the vectors of its own forward (it failed before
    `sn_power_iteration`), and the updates must match eager ones."""
    eager = trained_state(tmp_path, "train.compile=false")
    torch._dynamo.reset()
    compiled = trained_state(tmp_path, "train.compile=true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # it really ran compiled graphs
    assert any(k.endswith("_u") for k in compiled[0])  # the power-iteration state is compared too
    assert_same_training(eager, compiled, tol=1e-3)
    # the CUDA-graph mode (on a CPU it compiles without graphs): same training, and the mode reaches torch
    calls = []
    real_compile = torch.compile

    def recording_compile(model, **kwargs):
        calls.append(kwargs.get("mode"))
        return real_compile(model, **kwargs)

    torch.compile = recording_compile
    try:
        graphs = trained_state(tmp_path / "graphs", "train.compile=true", "train.compile_mode=reduce-overhead")
    finally:
        torch.compile = real_compile
    assert calls == ["reduce-overhead", "reduce-overhead"]  # G and D
    assert_same_training(eager, graphs, tol=1e-3)


def test_power_iteration_op_is_torchs_power_method():
    """The op the compiled path uses: same u, v bits as torch's own in-place update; its fake kernel and
    declared mutations pass torch's custom-op checks; a compiled forward in eval mode matches eager."""
    from torch.nn.utils.parametrizations import spectral_norm

    from cgan_bench.models.layers import sn, sn_power_iteration
    torch.manual_seed(0)
    reference = spectral_norm(torch.nn.Conv2d(3, 8, 3))
    module = reference.parametrizations.weight[0]
    w = module._reshape_weight_to_matrix(reference.parametrizations.weight.original.detach())
    u, v = module._u.clone(), module._v.clone()
    new_u, new_v = sn_power_iteration(w, u, v, 2, module.eps)
    module._power_method(w, 2)
    assert torch.equal(new_u, module._u) and torch.equal(new_v, module._v)
    assert torch.equal(u, module._u) and torch.equal(v, module._v)  # the op also updated its inputs in place
    assert new_u.data_ptr() != u.data_ptr()  # ...and returned copies, which backward may save safely
    torch.library.opcheck(sn_power_iteration, (w, u.clone(), v.clone(), 1, 1e-12))

    conv = sn(torch.nn.Conv2d(3, 8, 1)).eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(torch.compile(conv)(x), conv(x))


def test_each_iteration_draws_its_random_numbers_in_the_order_of_every_earlier_run(tmp_path):
    """The order pins what a seed trains (README's numbers): G step z then labels; each D step the real indices,
    then z and labels, then the dequantisation noise. Replayed from the same RNG state in that order, the draws
    must be the very batches D saw (a reordering, e.g. the noise before z, changes them)."""
    trainer = make_trainer(tmp_path, "train.n_dis=1")
    t, z_dim, data = trainer.cfg.train, trainer.cfg.model.z_dim, trainer.data
    seen = []
    hook = trainer.D.register_forward_pre_hook(lambda module, args: seen.append([a.detach().clone() for a in args]))
    state = torch.get_rng_state()
    trainer.step()
    hook.remove()
    torch.set_rng_state(state)
    torch.randn(t.batch_g, z_dim)  # the G step's z
    y_g = torch.randint(0, data.n_classes, (t.batch_g,))
    idx = torch.randint(0, len(data.labels), (t.batch_d,))
    torch.randn(t.batch_d, z_dim)  # the D step's z
    y_fake = torch.randint(0, data.n_classes, (t.batch_d,))
    x_real = data.images[idx].float() / 128.0 - 1.0
    x_real = x_real + torch.rand_like(x_real) / 128.0
    (_, g_step_labels), (d_real, d_real_labels), (_, d_fake_labels) = seen
    assert torch.equal(g_step_labels, y_g) and torch.equal(d_fake_labels, y_fake)
    assert torch.equal(d_real_labels, data.labels[idx])
    torch.testing.assert_close(d_real, x_real, rtol=0, atol=0)
