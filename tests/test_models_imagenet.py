"""The paper's ImageNet nets (model=sngan_64, model=sngan_128) on the one trunk the 32px models use.

Parameter counts are compared with a hand count written from the official Chainer code
(pfnet-research/sngan_projection: gen_models/resnet.py, resnet_64.py, dis_models/snresnet.py, snresnet_64.py), layer
by layer, independent of this project's model code:
  conv k x k, cin -> cout: k*k*cin*cout + cout        linear cin -> cout: cin*cout + cout
  conditional BN over c channels, K classes: 2*K*c (gamma and beta tables; batch statistics are buffers)
  spectral norm adds no parameters (its u, v vectors are buffers).
Neither the paper nor the code states parameter counts, so the hand count is the reference.
"""
import pytest
import torch
from hydra import compose, initialize_config_dir

from cgan_bench.app import CONF_DIR
from cgan_bench.bench import synthetic_data
from cgan_bench.config import ConfigError, validate
from cgan_bench.heads import HEADS
from cgan_bench.train.loop import Trainer, build_models
from cgan_bench.train.run_dir import RunDir

CPU = torch.device("cpu")


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def linear(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def cbn(n_classes: int, c: int) -> int:
    return 2 * n_classes * c


def g_block(n_classes: int, cin: int, cout: int) -> int:
    """gen_models/resblocks.py Block(upsample=True): b1 CBN(cin), c1 3x3 cin->cout, b2 CBN(cout), c2 3x3
    cout->cout, c_sc 1x1 cin->cout (learnable: the block upsamples)."""
    return cbn(n_classes, cin) + conv(3, cin, cout) + cbn(n_classes, cout) + conv(3, cout, cout) + conv(1, cin, cout)


def d_block(cin: int, cout: int, learnable_shortcut: bool = True) -> int:
    """dis_models/resblocks.py Block (hidden = cin): c1 3x3 cin->cin, c2 3x3 cin->cout, c_sc 1x1 cin->cout when
    the block downsamples or changes the width."""
    return conv(3, cin, cin) + conv(3, cin, cout) + (conv(1, cin, cout) if learnable_shortcut else 0)


def d_optimized_block(cin: int, cout: int) -> int:
    """dis_models/resblocks.py OptimizedBlock: c1 3x3 cin->cout, c2 3x3 cout->cout, c_sc 1x1 cin->cout."""
    return conv(3, cin, cout) + conv(3, cout, cout) + conv(1, cin, cout)


K = 1000  # ImageNet classes
FINAL_BN = 2 * 64  # G's last BN (unconditional): gamma and beta over 64 channels

G_128 = (linear(128, 4 * 4 * 1024)
         + g_block(K, 1024, 1024) + g_block(K, 1024, 512) + g_block(K, 512, 256) + g_block(K, 256, 128)
         + g_block(K, 128, 64)
         + FINAL_BN + conv(3, 64, 3))
D_128_PROJECTION = (d_optimized_block(3, 64)
                    + d_block(64, 128) + d_block(128, 256) + d_block(256, 512) + d_block(512, 1024)
                    + d_block(1024, 1024, learnable_shortcut=False)
                    + linear(1024, 1, bias=True)  # l7 = SNLinear(1024, 1): with bias in the ImageNet D
                    + K * 1024)  # l_y = SNEmbedID(1000, 1024)
D_128_CONCAT = (d_optimized_block(3, 64)
                + d_block(64, 128) + d_block(128, 256)
                + d_block(256 + 128, 512)  # block4 takes block3's output plus the 128-d label embedding
                + d_block(512, 1024) + d_block(1024, 1024, learnable_shortcut=False)
                + linear(1024, 1, bias=True)
                + K * 128)  # l_y = SNEmbedID(1000, 128)
G_64 = (linear(128, 4 * 4 * 1024)
        + g_block(K, 1024, 512) + g_block(K, 512, 256) + g_block(K, 256, 128) + g_block(K, 128, 64)
        + FINAL_BN + conv(3, 64, 3))
D_64_PROJECTION = (d_optimized_block(3, 64)
                   + d_block(64, 128) + d_block(128, 256) + d_block(256, 512) + d_block(512, 1024)
                   + linear(1024, 1, bias=True)
                   + K * 1024)
# the 32px CIFAR-10 SNGAN (gen_models/resnet_32.py, dis_models/snresnet_32.py): G ch 256, D ch 128
G_32 = linear(128, 4 * 4 * 256) + 3 * g_block(10, 256, 256) + 2 * 256 + conv(3, 256, 3)
D_32_PROJECTION = (d_optimized_block(3, 128) + d_block(128, 128) + 2 * d_block(128, 128, learnable_shortcut=False)
                   + linear(128, 1, bias=False) + 10 * 128)


def make_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", *overrides])
    validate(cfg)
    return cfg


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_hand_counts_are_the_expected_totals():
    """The hand counts written out as numbers (so an edit of the formulas above shows in review)."""
    assert (G_128, D_128_PROJECTION, D_128_CONCAT) == (41_996_931, 30_041_857, 30_538_625)
    assert (G_64, D_64_PROJECTION) == (17_974_915, 11_165_441)
    assert (G_32, D_32_PROJECTION) == (4_304_387, 1_055_104)


@pytest.mark.parametrize("overrides, n_classes, g_count, d_count", [
    (["model=sngan_128", "dataset.resolution=128", "head=projection"], K, G_128, D_128_PROJECTION),
    (["model=sngan_128", "dataset.resolution=128", "head=concat"], K, G_128, D_128_CONCAT),
    (["model=sngan_64", "dataset.resolution=64", "head=projection"], K, G_64, D_64_PROJECTION),
    (["model=sngan", "dataset=cifar10", "head=projection"], 10, G_32, D_32_PROJECTION),  # unchanged by the above
], ids=["128px-projection", "128px-concat", "64px-projection", "32px-cifar10-projection"])
def test_parameter_counts_match_the_hand_count(overrides, n_classes, g_count, d_count):
    G, D = build_models(make_cfg(*overrides), n_classes, CPU)
    assert n_params(G) == g_count
    assert n_params(D) == d_count


def test_128px_concat_enters_after_the_third_block():
    """SNResNetConcatDiscriminator: the 128-d embedding joins block3's 256 channels at 16x16, before block4."""
    cfg = make_cfg("model=sngan_128", "dataset.resolution=128", "head=concat")
    assert cfg.head.embed_dim == 128 and cfg.head.stage is None
    _, D = build_models(cfg, K, CPU)
    assert D.head.stage == 3
    assert [b.conv1.in_channels for b in D.blocks] == [3, 64, 128, 256 + 128, 512, 1024]
    assert D.head.embed.weight.shape == (K, 128)


def feature_sizes(D, x, y) -> list[tuple[int, int]]:
    """(channels, height) after each trunk block."""
    sizes = []
    hooks = [b.register_forward_hook(lambda m, i, out: sizes.append((out.shape[1], out.shape[2]))) for b in D.blocks]
    try:
        D(x, y)
    finally:
        for h in hooks:
            h.remove()
    return sizes


@pytest.mark.parametrize("model, resolution, d_sizes", [
    ("sngan_128", 128, [(4, 64), (8, 32), (16, 16), (32, 8), (64, 4), (64, 4)]),  # ends at 4x4, 16x the base width
    ("sngan_64", 64, [(4, 32), (8, 16), (16, 8), (32, 4), (64, 2)]),  # the official 64px D ends at 2x2
])
def test_feature_map_sizes_follow_the_official_nets(model, resolution, d_sizes):
    """At base width 4: G from a 4x4 map of 16x the base width to an image; D's maps halve and widen."""
    cfg = make_cfg(f"model={model}", f"dataset.resolution={resolution}", "model.g_ch=4", "model.d_ch=4")
    G, D = build_models(cfg, 5, CPU)
    assert G.linear.out_features == 4 * 4 * 64
    assert [b.conv2.out_channels for b in G.blocks] == [4 * m for m in cfg.model.g_mult[1:]]
    y = torch.tensor([0, 4])
    x = G(torch.randn(2, 128), y)
    assert x.shape == (2, 3, resolution, resolution)
    assert feature_sizes(D, x, y) == d_sizes


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_trains_on_the_128px_trunk(name):
    """Every head builds on the deep trunk (phi = the last block's 16x-width features) and gets gradients."""
    cfg = make_cfg("model=sngan_128", "dataset.resolution=128", "model.g_ch=2", "model.d_ch=2", f"head={name}")
    G, D = build_models(cfg, 5, CPU)
    y = torch.tensor([0, 1, 4])
    out = D(G(torch.randn(3, 128), y), y)
    assert out.adv.shape == (3,)
    loss = out.adv.sum() + D.head.d_aux_loss(out, y, out, y) + D.head.g_aux_loss(out, y)
    loss.backward()
    assert D.blocks[0].conv1.parametrizations.weight.original.grad.abs().sum() > 0
    assert G.blocks[0].conv1.weight.grad.abs().sum() > 0


def train_one_step(tmp_path, *overrides: str) -> tuple[dict, Trainer]:
    cfg = make_cfg("train=smoke", "model=sngan_128", "dataset.resolution=128", "train.batch_d=2",
                   "train.batch_g=2", *overrides)
    trainer = Trainer(cfg, synthetic_data(5, 128, CPU, n=8), RunDir(tmp_path / "run"), CPU)
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    losses = {k: v.item() for k, v in trainer.step().items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    changed = [k for k, v in trainer.D.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("original") for k in changed)  # D's weights moved
    return losses, trainer


def test_one_training_step_at_128px_narrow(tmp_path):
    """The full training step at 128px (n_classes 5, batch 2) with base width 4 instead of 64."""
    _, trainer = train_one_step(tmp_path, "model.g_ch=4", "model.d_ch=4")
    assert trainer.generator_info()["g_mult"] == [16, 16, 8, 4, 2, 1]


@pytest.mark.slow
def test_one_training_step_at_128px_full_width(tmp_path):
    """The paper's 128px nets (G 42M, D 30M parameters at 1000 classes) take one step on the CPU."""
    _, trainer = train_one_step(tmp_path)
    assert trainer.D.blocks[-1].conv2.out_channels == 1024


def test_load_generator_rebuilds_the_widened_generator(tmp_path):
    """A checkpoint of a sngan_64 run loads back through cgan_bench.load_generator (g_mult is stored)."""
    from cgan_bench.generator_api import load_generator
    cfg = make_cfg("train=smoke", "model=sngan_64", "dataset.resolution=64", "model.g_ch=2", "model.d_ch=2")
    trainer = Trainer(cfg, synthetic_data(5, 64, CPU, n=8), RunDir(tmp_path / "run"), CPU)
    trainer.checkpoint()
    loaded = load_generator(tmp_path / "run")
    assert [b.conv2.out_channels for b in loaded.G.blocks] == [16, 8, 4, 2]
    for k, v in trainer.G.state_dict().items():
        assert torch.equal(loaded.G.state_dict()[k], v), k


@pytest.mark.parametrize("overrides, needle", [
    (["model=sngan_128", "dataset.resolution=64"], "model.g_mult=[16, 16, 8, 4, 2, 1] is not allowed with "
                                                   "dataset.resolution=64: 5 integers"),
    (["model=sngan_64", "dataset.resolution=128"], "model.g_mult=[16, 8, 4, 2, 1] is not allowed with "
                                                   "dataset.resolution=128: 6 integers"),
    (["model=sngan_128", "dataset.resolution=128", "model.d_down=7"], "model.d_down=7 is not allowed"),
    (["model=sngan_128", "dataset.resolution=128", "model.d_mult=[1,0]"], "model.d_mult=[1, 0] is not allowed"),
    (["model=sngan_128", "dataset.resolution=128", "head=concat", "head.stage=6"], "head.stage=6 is not allowed"),
])
def test_a_model_that_does_not_fit_the_resolution_is_refused(overrides, needle):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=["wandb.mode=disabled", *overrides])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_paper_imagenet_recipe():
    """configs/sn_projection.yml on 4 GPUs: 16 real + 16 fake per GPU per D step, 32 fakes per GPU per G step."""
    t = make_cfg("train=paper_imagenet", "model=sngan_128", "dataset.resolution=128").train
    assert (t.iterations, t.lr_decay_start, t.n_dis, t.batch_d, t.batch_g) == (450_000, 400_000, 5, 64, 128)
    assert (t.lr, t.beta1, t.beta2, t.loss) == (2e-4, 0.0, 0.9, "hinge")
    paper = make_cfg("train=paper").train
    if "gpu_recipe" in paper:
        assert t.gpu_recipe is True


def test_an_imagenet_model_at_the_wrong_resolution_names_the_resolution_it_is_made_for():
    """`model=sngan_64` at the default resolution was refused with advice naming model=sngan_64 itself."""
    for model, made_for in (("sngan_64", 64), ("sngan_128", 128)):
        with pytest.raises(ConfigError) as err:
            validate(make_cfg(f"model={model}", "dataset.resolution=32"))
        assert f"this model is made for dataset.resolution={made_for}: set that" in str(err.value)
