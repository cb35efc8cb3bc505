"""Heads and networks: shapes, where labels matter, the projection formula, CBN, spectral norm, registry."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from cgan_bench.heads import HEADS, UnknownHeadError, build_head, head_class
from cgan_bench.models import Discriminator, Generator, trunk_depth
from cgan_bench.models.layers import CategoricalConditionalBatchNorm2d

N_CLASSES, CH = 10, 16
CONDITIONAL = ["projection", "concat", "acgan", "input_concat"]


def make_d(name: str, resolution: int = 32) -> Discriminator:
    torch.manual_seed(0)
    n_blocks, _ = trunk_depth(resolution)
    return Discriminator(build_head(name, n_classes=N_CLASSES, feature_dim=CH, n_blocks=n_blocks), resolution, CH)


def test_registry_has_the_five_heads():
    assert {"projection", "concat", "acgan", "input_concat", "none"} <= set(HEADS)


def test_unknown_head_names_the_registered_ones():
    with pytest.raises(UnknownHeadError) as err:
        head_class("nope")
    for name in HEADS:
        assert name in str(err.value)


CLASSIFIER_HEADS = {"acgan", "tac", "multi_hinge"}  # a K-way classifier on phi besides the adversarial logit
LABEL_FREE_ADV = {"acgan", "tac", "reacgan"}  # the label enters only through the auxiliary loss


@pytest.mark.parametrize("resolution", [16, 32])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_output_shapes(name, resolution):
    D = make_d(name, resolution)
    G = Generator(N_CLASSES, resolution, CH, z_dim=32)
    y = torch.randint(0, N_CLASSES, (4,))
    x = G(torch.randn(4, 32), y)
    assert x.shape == (4, 3, resolution, resolution) and x.min() >= -1 and x.max() <= 1
    out = D(x, y)
    assert out.adv.shape == (4,)
    if name in CLASSIFIER_HEADS:
        assert out.class_logits.shape == (4, N_CLASSES)
    else:
        assert out.class_logits is None


@pytest.mark.parametrize("name", sorted(HEADS))
def test_label_changes_output_only_for_conditional_heads(name):
    D = make_d(name).eval()  # eval: spectral norm's power iteration does not move between calls
    x = torch.randn(6, 3, 32, 32)
    y1, y2 = torch.zeros(6, dtype=torch.long), torch.full((6,), 3)
    with torch.no_grad():
        a, b = D(x, y1), D(x, y2)
    if name == "none":
        assert torch.equal(a.adv, b.adv)
    elif name in LABEL_FREE_ADV:  # the label enters through the auxiliary loss, not the logits
        assert torch.equal(a.adv, b.adv)
        mixed1, mixed2 = torch.arange(6) % 3, torch.arange(6) // 2  # other groupings (D2D-CE needs negatives)
        assert D.head.d_aux_loss(a, mixed1, a, mixed1) != D.head.d_aux_loss(a, mixed2, a, mixed2)
    else:
        assert (a.adv - b.adv).abs().max() > 1e-4


def test_projection_equals_linear_plus_inner_product():
    D = make_d("projection").eval()
    phi = torch.randn(5, CH)
    y = torch.tensor([0, 1, 2, 3, 9])
    with torch.no_grad():
        got = D.head(phi, y).adv
        w = D.head.linear.weight  # spectrally normalised weight (1, CH), no bias
        emb = D.head.embed.weight  # spectrally normalised embedding (K, CH)
    assert D.head.linear.bias is None
    expected = phi @ w[0] + (emb[y] * phi).sum(1)
    torch.testing.assert_close(got, expected)


def test_acgan_aux_losses_are_weighted_cross_entropy():
    n_blocks, _ = trunk_depth(32)
    head = build_head("acgan", N_CLASSES, CH, n_blocks, d_aux_weight=0.5, g_aux_weight=2.0)
    phi_r, phi_f = torch.randn(4, CH), torch.randn(4, CH)
    y_r, y_f = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    real, fake = head(phi_r, y_r), head(phi_f, y_f)
    expected_d = 0.5 * (F.cross_entropy(real.class_logits, y_r) + F.cross_entropy(fake.class_logits, y_f))
    torch.testing.assert_close(head.d_aux_loss(real, y_r, fake, y_f), expected_d)
    torch.testing.assert_close(head.g_aux_loss(fake, y_f), 2.0 * F.cross_entropy(fake.class_logits, y_f))


def test_concat_injects_at_the_middle_by_default_and_validates_stage():
    n_blocks, _ = trunk_depth(32)
    head = build_head("concat", N_CLASSES, CH, n_blocks, embed_dim=8)
    assert head.stage == n_blocks // 2 == 2
    D = Discriminator(head, 32, CH)
    assert D.blocks[2].conv1.in_channels == CH + 8  # the block after the injection sees the embedding
    with pytest.raises(ValueError, match="stage"):
        build_head("concat", N_CLASSES, CH, n_blocks, embed_dim=8, stage=0)


def test_conditional_bn_uses_the_class_parameters():
    torch.manual_seed(0)
    cbn = CategoricalConditionalBatchNorm2d(4, 3)
    with torch.no_grad():
        cbn.gamma.weight.copy_(torch.randn(3, 4))
        cbn.beta.weight.copy_(torch.randn(3, 4))
    x = torch.randn(8, 4, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    out = cbn(x, y)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normed = (x - mean) / torch.sqrt(var + 2e-5)  # shared batch statistics
    expected = normed * cbn.gamma.weight[y][:, :, None, None] + cbn.beta.weight[y][:, :, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # mixing weights (category morphing) interpolate the parameters
    w = torch.zeros(8, 3)
    w[:, 0], w[:, 1] = 0.25, 0.75
    mixed = cbn(x, w)
    g = 0.25 * cbn.gamma.weight[0] + 0.75 * cbn.gamma.weight[1]
    b = 0.25 * cbn.beta.weight[0] + 0.75 * cbn.beta.weight[1]
    torch.testing.assert_close(mixed, normed * g[None, :, None, None] + b[None, :, None, None], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_spectral_norm_on_every_discriminator_weight(name):
    D = make_d(name)
    weighted = [m for m in D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding))]
    assert weighted
    for m in weighted:
        assert parametrize.is_parametrized(m, "weight"), f"{type(m).__name__} without spectral norm"
    D.train()
    for _ in range(30):  # power iterations run on every training-mode forward
        D(torch.randn(2, 3, 32, 32), torch.randint(0, N_CLASSES, (2,)))
    for m in weighted:
        w = m.weight.detach()
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert abs(sigma.item() - 1.0) < 0.05, f"{type(m).__name__} sigma {sigma.item():.3f}"


def test_generator_has_no_spectral_norm_and_unconditional_final_bn():
    G = Generator(N_CLASSES, 32, CH)
    assert not any(parametrize.is_parametrized(m) for m in G.modules())
    assert type(G.bn) is torch.nn.BatchNorm2d and G.bn.affine


def test_trunk_depth_follows_resolution():
    assert trunk_depth(32) == (4, 2)  # Optimized(down), Block(down), Block, Block
    assert trunk_depth(16) == (3, 1)
    assert trunk_depth(64) == (5, 3)
    with pytest.raises(ValueError):
        trunk_depth(24)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_one_call_on_real_and_fake_splits_into_the_two_calls(name):
    """train.joint_d_forward: D on [real; fake] split back equals D on each (every head is per sample, every
    field of its output is split, real first)."""
    D = make_d(name).eval()  # eval: the same spectral-norm vectors in every call
    g = torch.Generator().manual_seed(1)
    x_real, x_fake = torch.randn(5, 3, 32, 32, generator=g), torch.randn(7, 3, 32, 32, generator=g)
    y_real, y_fake = torch.randint(0, N_CLASSES, (5,), generator=g), torch.randint(0, N_CLASSES, (7,), generator=g)
    with torch.no_grad():
        joint_real, joint_fake = D(torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake])).split(5)
        real, fake = D(x_real, y_real), D(x_fake, y_fake)
    for joint, alone in ((joint_real, real), (joint_fake, fake)):
        assert type(joint) is type(alone)
        for field, value in vars(alone).items():
            if value is None:
                assert getattr(joint, field) is None, field
            else:
                torch.testing.assert_close(getattr(joint, field), value, rtol=1e-5, atol=1e-5, msg=field)
