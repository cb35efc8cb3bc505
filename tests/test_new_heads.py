"""The heads that came after the paper: tac, multi_hinge, reacgan (issue "The paper in full ...", item 5).

Each head's D and G auxiliary losses are compared with the loss written out here from the paper's formula in plain
numpy (float64, explicit loops), on a tiny hand-made batch; a few cases are checked against numbers worked out by
hand. The heads' weights are read back (spectral norm frozen in eval mode) to check what they compute from phi(x).
Each head then trains 20 iterations of the embedded default (digits, small model, train=quick) with finite losses.
"""
import inspect
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn.utils import parametrize

from cgan_bench.app import CONF_DIR
from cgan_bench.config import validate
from cgan_bench.data import load_dataset
from cgan_bench.heads import HEADS, build_head, head_class, head_params
from cgan_bench.heads.base import DiscriminatorOutput
from cgan_bench.heads.reacgan import EmbeddingOutput
from cgan_bench.heads.tac import TwinOutput
from cgan_bench.models import Discriminator, trunk_depth
from cgan_bench.train.loop import Trainer
from cgan_bench.train.run_dir import RunDir

NEW = ["tac", "multi_hinge", "reacgan"]
K, FEAT = 3, 5
N_BLOCKS = trunk_depth(16)[0]

# a tiny hand-made batch: 4 samples, labels with a repeated class (0 twice) so that D2D-CE's false negatives matter
PHI_REAL = np.array([[1.0, 0.5, -0.2, 0.0, 2.0], [0.3, -1.0, 0.8, 1.5, 0.1],
                     [-0.7, 0.2, 1.1, -0.4, 0.6], [0.9, 0.9, 0.0, -1.2, -0.5]])
PHI_FAKE = np.array([[0.2, -0.3, 0.4, 1.0, -1.0], [1.2, 0.0, -0.6, 0.3, 0.7],
                     [-0.1, 1.4, 0.5, 0.2, 0.0], [0.6, -0.8, -1.1, 0.9, 0.4]])
Y_REAL = np.array([0, 2, 0, 1])
Y_FAKE = np.array([1, 1, 2, 0])


def t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("config", overrides=["wandb.mode=disabled", *overrides])


def frozen_head(name: str, **params):
    """A head in eval mode (spectral norm's power iteration frozen), so its effective weights can be read back."""
    torch.manual_seed(0)
    return build_head(name, n_classes=K, feature_dim=FEAT, n_blocks=N_BLOCKS, **params).eval()


def w(module) -> np.ndarray:
    return module.weight.detach().double().numpy()


def b(module) -> np.ndarray:
    return module.bias.detach().double().numpy()


# ---- the losses, from the papers' formulas, in plain numpy --------------------------------------------------------
def ref_cross_entropy(logits, y):
    """mean_i -log( exp(l_iy) / sum_k exp(l_ik) )."""
    return float(np.mean([-(l[c] - np.log(np.sum(np.exp(l)))) for l, c in zip(logits, y)]))


def ref_multi_hinge(logits, y, margin):
    """Crammer-Singer: mean_i max(0, margin + max_{k != y_i} l_ik - l_iy_i)."""
    total = 0.0
    for l, c in zip(logits, y):
        wrong = max(l[k] for k in range(len(l)) if k != c)
        total += max(0.0, margin + wrong - l[c])
    return total / len(y)


def ref_d2d_ce(f, v, y, temperature, m_p, m_n):
    """Kang et al. 2021: mean_i -log( P_i / (P_i + sum_{j: y_j != y_i} exp(max(f_i.f_j - m_n, 0) / T)) ),
    P_i = exp(min(f_i.v_yi - m_p, 0) / T); f, v unit vectors."""
    total = 0.0
    for i in range(len(y)):
        pos = math.exp(min(float(f[i] @ v[i]) - m_p, 0.0) / temperature)
        neg = sum(math.exp(max(float(f[i] @ f[j]) - m_n, 0.0) / temperature) for j in range(len(y)) if y[j] != y[i])
        total += -math.log(pos / (pos + neg))
    return total / len(y)


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# ---- registry and config ------------------------------------------------------------------------------------------
def test_registry_lists_the_new_heads():
    assert set(NEW) <= set(HEADS)


@pytest.mark.parametrize("name", NEW)
def test_head_config_composes_and_matches_the_module_defaults(name):
    cfg = compose_cfg(f"head={name}")
    validate(cfg)
    params = head_params(cfg.head)
    defaults = {k: p.default for k, p in inspect.signature(head_class(name).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert params == defaults  # conf/head/NAME.yaml states every default of the module, with the same values
    head = build_head(name, n_classes=10, feature_dim=cfg.model.d_ch, n_blocks=N_BLOCKS, **params)
    D = Discriminator(head, 16, cfg.model.d_ch)
    out = D(torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert out.adv.shape == (6,)


@pytest.mark.parametrize("name", NEW)
def test_spectral_norm_on_every_head_weight(name):
    head = frozen_head(name)
    weighted = [m for m in head.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert weighted
    for m in weighted:
        assert parametrize.is_parametrized(m, "weight"), f"{name}: {type(m).__name__} without spectral norm"


# ---- TAC ----------------------------------------------------------------------------------------------------------
def test_tac_forward_reads_the_three_linear_layers():
    head = frozen_head("tac")
    with torch.no_grad():
        out = head(t(PHI_REAL), t(Y_REAL, torch.long))
    np.testing.assert_allclose(out.adv.numpy(), PHI_REAL @ w(head.linear)[0] + b(head.linear)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.class_logits.numpy(), PHI_REAL @ w(head.classifier).T + b(head.classifier),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.twin_logits.numpy(), PHI_REAL @ w(head.twin).T + b(head.twin), rtol=1e-5, atol=1e-5)


def aux_losses_and_class_logits(head) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The head's D and G auxiliary losses on the fixed real/fake batch, and its classifier's logits computed by
    hand (numpy) on both."""
    yr, yf = t(Y_REAL, torch.long), t(Y_FAKE, torch.long)
    with torch.no_grad():
        real, fake = head(t(PHI_REAL), yr), head(t(PHI_FAKE), yf)
        d, g = head.d_aux_loss(real, yr, fake, yf).item(), head.g_aux_loss(fake, yf).item()
    return (d, g, PHI_REAL @ w(head.classifier).T + b(head.classifier),
            PHI_FAKE @ w(head.classifier).T + b(head.classifier))


def test_tac_losses_match_the_paper():
    cls_w, twin_d, twin_g = 0.7, 1.3, 0.4
    head = frozen_head("tac", cls_weight=cls_w, twin_d_weight=twin_d, twin_g_weight=twin_g)
    d, g, c_real, c_fake = aux_losses_and_class_logits(head)
    mi_fake = PHI_FAKE @ w(head.twin).T + b(head.twin)
    # D: C on real data only, C_mi on fakes; G: C's CE on its fakes minus C_mi's
    expected_d = cls_w * ref_cross_entropy(c_real, Y_REAL) + twin_d * ref_cross_entropy(mi_fake, Y_FAKE)
    expected_g = cls_w * ref_cross_entropy(c_fake, Y_FAKE) - twin_g * ref_cross_entropy(mi_fake, Y_FAKE)
    assert d == pytest.approx(expected_d, rel=1e-5)
    assert g == pytest.approx(expected_g, rel=1e-5)


def test_tac_by_hand():
    """C's logits all 0 (CE = log 3); C_mi's fake logits (log 2, 0, 0) for class 0 (CE = -log(2/4) = log 2)."""
    head = frozen_head("tac", cls_weight=2.0, twin_d_weight=1.0, twin_g_weight=0.5)
    zeros = torch.zeros(1, 3)
    real = DiscriminatorOutput(adv=torch.zeros(1), class_logits=zeros)
    fake = TwinOutput(adv=torch.zeros(1), class_logits=zeros, twin_logits=torch.tensor([[math.log(2.0), 0.0, 0.0]]))
    y = torch.zeros(1, dtype=torch.long)
    assert head.d_aux_loss(real, y, fake, y).item() == pytest.approx(2.0 * math.log(3) + 1.0 * math.log(2), rel=1e-6)
    assert head.g_aux_loss(fake, y).item() == pytest.approx(2.0 * math.log(3) - 0.5 * math.log(2), rel=1e-6)


def test_tac_trains_c_on_real_only_and_c_mi_on_fake_only():
    head = frozen_head("tac")
    yr, yf = t(Y_REAL, torch.long), t(Y_FAKE, torch.long)
    real, fake = head(t(PHI_REAL), yr), head(t(PHI_FAKE), yf)
    tensors = {"real C": real.class_logits, "real C_mi": real.twin_logits, "fake C": fake.class_logits,
               "fake C_mi": fake.twin_logits}
    grads = dict(zip(tensors, torch.autograd.grad(head.d_aux_loss(real, yr, fake, yf), list(tensors.values()),
                                                  allow_unused=True)))
    assert grads["real C"] is not None and grads["fake C_mi"] is not None
    assert grads["fake C"] is None and grads["real C_mi"] is None
    # G maximises C_mi's cross-entropy: its gradient on C_mi's logits is minus the CE gradient
    g_mi, = torch.autograd.grad(head.g_aux_loss(fake, yf), [fake.twin_logits])
    ce_mi, = torch.autograd.grad(torch.nn.functional.cross_entropy(fake.twin_logits, yf), [fake.twin_logits])
    torch.testing.assert_close(g_mi, -ce_mi)


# ---- multi-hinge --------------------------------------------------------------------------------------------------
def test_multi_hinge_forward_is_projection_plus_k_logits():
    head = frozen_head("multi_hinge")
    with torch.no_grad():
        out = head(t(PHI_REAL), t(Y_REAL, torch.long))
    assert head.linear.bias is None
    expected_adv = PHI_REAL @ w(head.linear)[0] + (w(head.embed)[Y_REAL] * PHI_REAL).sum(1)
    np.testing.assert_allclose(out.adv.numpy(), expected_adv, rtol=1e-5, atol=1e-5)
    assert out.class_logits.shape == (4, K)
    np.testing.assert_allclose(out.class_logits.numpy(), PHI_REAL @ w(head.classifier).T + b(head.classifier),
                               rtol=1e-5, atol=1e-5)


def test_multi_hinge_losses_match_the_paper():
    d_w, g_w, g_margin = 0.8, 0.3, 0.6
    head = frozen_head("multi_hinge", d_aux_weight=d_w, g_aux_weight=g_w, g_margin=g_margin)
    d, g, c_real, c_fake = aux_losses_and_class_logits(head)
    assert d == pytest.approx(d_w * (ref_multi_hinge(c_real, Y_REAL, 1.0) + ref_multi_hinge(c_fake, Y_FAKE, 1.0)),
                              rel=1e-5)
    assert g == pytest.approx(g_w * ref_multi_hinge(c_fake, Y_FAKE, g_margin), rel=1e-5)


def test_multi_hinge_by_hand():
    """logits (2, 0, 1) for class 0: max(0, 1 + 1 - 2) = 0; (0, 3, -1) for class 2: max(0, 1 + 3 + 1) = 5 -> mean 2.5.
    With margin 0.5 for G: 0 and 4.5 -> 2.25."""
    head = frozen_head("multi_hinge", d_aux_weight=1.0, g_aux_weight=1.0, g_margin=0.5)
    out = DiscriminatorOutput(adv=torch.zeros(2), class_logits=torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]]))
    y = torch.tensor([0, 2])
    assert head.d_aux_loss(out, y, out, y).item() == pytest.approx(2 * 2.5)
    assert head.g_aux_loss(out, y).item() == pytest.approx(2.25)


# ---- ReACGAN ------------------------------------------------------------------------------------------------------
def test_reacgan_forward_normalises_embeddings_and_proxies():
    head = frozen_head("reacgan", embed_dim=4)
    with torch.no_grad():
        out = head(t(PHI_REAL), t(Y_REAL, torch.long))
    assert out.class_logits is None
    np.testing.assert_allclose(out.adv.numpy(), PHI_REAL @ w(head.linear)[0] + b(head.linear)[0], rtol=1e-5, atol=1e-5)
    f = unit(PHI_REAL @ w(head.embedding).T + b(head.embedding))
    v = unit(w(head.proxies)[Y_REAL])
    np.testing.assert_allclose(out.embed.numpy(), f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.proxy.numpy(), v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature,m_p,m_n", [(0.5, 0.98, 0.02), (0.25, 0.9, 0.1), (1.0, 0.0, 0.0)])
def test_reacgan_losses_match_the_paper(temperature, m_p, m_n):
    d_w, g_w = 0.5, 0.75
    head = frozen_head("reacgan", embed_dim=4, temperature=temperature, pos_margin=m_p, neg_margin=m_n,
                       d_aux_weight=d_w, g_aux_weight=g_w)
    yr, yf = t(Y_REAL, torch.long), t(Y_FAKE, torch.long)
    with torch.no_grad():
        real, fake = head(t(PHI_REAL), yr), head(t(PHI_FAKE), yf)
        d, g = head.d_aux_loss(real, yr, fake, yf).item(), head.g_aux_loss(fake, yf).item()

    def ref(phi, y):
        f = unit(phi @ w(head.embedding).T + b(head.embedding))
        return ref_d2d_ce(f, unit(w(head.proxies)[y]), y, temperature, m_p, m_n)

    assert d == pytest.approx(d_w * ref(PHI_REAL, Y_REAL), rel=1e-5)  # D: real data only
    assert g == pytest.approx(g_w * ref(PHI_FAKE, Y_FAKE), rel=1e-5)


def test_reacgan_by_hand_removes_false_negatives():
    """T = 0.5, m_p = 0.98, m_n = 0.02; f0 = f2 = (1, 0) of class 0, f1 = (0, 1) of class 1, proxies v0 = v1 = (1, 0).
    i = 0 (and 2): f.v = 1 -> exp(min(0.02, 0) / T) = 1; its only negative is f1 (f2 is a false negative, removed):
    f0.f1 = 0 -> exp(max(-0.02, 0) / T) = 1, so the loss is log 2.
    i = 1: f1.v1 = 0 -> exp(-0.98 / 0.5) = e^-1.96; negatives f0, f2: 1 + 1 -> loss log(1 + 2 e^1.96)."""
    head = frozen_head("reacgan", embed_dim=2)
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    out = EmbeddingOutput(adv=torch.zeros(3), embed=f, proxy=v)
    y = torch.tensor([0, 1, 0])
    expected = (2 * math.log(2) + math.log(1 + 2 * math.exp(1.96))) / 3
    assert head.d_aux_loss(out, y, out, y).item() == pytest.approx(0.5 * expected, rel=1e-6)
    assert head.g_aux_loss(out, y).item() == pytest.approx(0.5 * expected, rel=1e-6)
    # a batch of one class has no negatives: the loss is 0 (no NaN)
    same = torch.zeros(3, dtype=torch.long)
    assert head.d_aux_loss(out, same, out, same).item() == pytest.approx(0.0, abs=1e-7)


def test_reacgan_d_loss_ignores_fakes():
    head = frozen_head("reacgan", embed_dim=4)
    yr, yf = t(Y_REAL, torch.long), t(Y_FAKE, torch.long)
    real, fake = head(t(PHI_REAL), yr), head(t(PHI_FAKE), yf)
    grads = torch.autograd.grad(head.d_aux_loss(real, yr, fake, yf), [real.embed, fake.embed], allow_unused=True)
    assert grads[0] is not None and grads[1] is None


# ---- training -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train", 16)


@pytest.mark.parametrize("name", NEW)
def test_trains_20_iterations_of_the_embedded_default(tmp_path, digits, name):
    cfg = compose_cfg(f"head={name}", "train.iterations=20")  # digits, small model, train=quick: the defaults
    validate(cfg)
    trainer = Trainer(cfg, digits, RunDir(tmp_path / name), torch.device("cpu"))
    for it in range(20):
        values = {k: v.item() for k, v in trainer.step().items()}
        assert all(math.isfinite(v) for v in values.values()), f"{name} iteration {it}: {values}"
        assert abs(values["d_real"]) < cfg.train.max_abs_logit
    for p in trainer.D.parameters():
        assert torch.isfinite(p).all()
