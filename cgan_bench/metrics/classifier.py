"""A domain classifier: a small CNN trained once per dataset on its real training split and cached.

It is the feature space where Inception is meaningless or unavailable (the embedded 8x8 digits):
its penultimate features play the role of Inception's pool features (FID/KID/PR/coverage/diversity)
and its logits the role of Inception's logits (IS, class accuracy).
"""
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import ImageData
from ..io import atomic_torch_save
from ..train.precision import fp32_math
from .cache import cache_key, cache_root, fingerprint, load_or_build


class DomainClassifier(nn.Module):
    def __init__(self, n_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # keep the layout: digits differ by where strokes are
            nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.fc = nn.Linear(feature_dim, n_classes)

    def forward(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x_uint8.float() / 127.5 - 1.0)
        return features, self.fc(features)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the image (reflect padding), so the classifier generalises."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]].round().to(torch.uint8)


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageData, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x)[1].argmax(1) == y).sum().item()
                  for x, y in zip(data.images.split(batch_size), data.labels.split(batch_size)))
    return correct / len(data)


def train_classifier(train: ImageData, test: ImageData, device, epochs: int = 30, seed: int = 0) -> tuple[nn.Module, float]:
    """Train on `train`, report held-out accuracy on `test`. Uses its own RNG, never the run's.
    A progress bar on stderr counts the steps (minutes on a fresh cache); its postfix is the epoch and the
    last batch's loss (read back once per epoch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(train.n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    batches = -(-len(train) // 128)
    with tqdm(total=epochs * batches, desc=f"domain classifier ({train.name})", unit="step", dynamic_ncols=True,
              mininterval=1.0) as bar:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train), generator=g).to(train.labels.device)
            for idx in order.split(128):
                x = _augment(train.images[idx], g)
                loss = F.cross_entropy(model(x)[1], train.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
            sched.step()
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}")
    model.eval().requires_grad_(False)
    return model, accuracy(model, test)


def load_or_train_classifier(train: ImageData, test: ImageData, device, epochs: int,
                             cache_dir: str | None = None, seed: int | None = None) -> tuple[nn.Module, float]:
    """The cached classifier for this dataset/resolution, trained on first use (one writer at a time; an
    existing entry is read without a lock, a corrupt one moved aside and retrained: cache.load_or_build).
    `seed`: another initialisation and data order, cached apart (the fine-tune's independent classifier);
    None = the evaluation's own classifier."""
    suffix = "" if seed is None else f"-seed{seed}"
    key = cache_key(dataset=train.name, split="train", count=len(train), resolution=train.resolution,
                    feature_space=f"classifier-e{epochs}{suffix}")
    path = cache_root(cache_dir) / "classifiers" / f"{key}-{fingerprint(train)}.pt"

    def load(p):  # on the CPU first: a damaged file must fail here, a full device must not look like one
        state = torch.load(p, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):  # building the module must not move the run's RNG
            model = DomainClassifier(train.n_classes)
        model.load_state_dict(state["model"])
        return model.to(device), float(state["test_accuracy"])

    def save(p, trained):
        model, test_acc = trained
        atomic_torch_save(p, {"model": model.state_dict(), "test_accuracy": test_acc, "key": key})

    def build():  # IEEE fp32 like every metric: cuDNN may otherwise use TF32 on recent GPUs
        with fp32_math("ieee"):
            return train_classifier(train, test, device, epochs, seed=seed or 0)

    model, test_acc = load_or_build(path, load, build, save,
                                    what=f"the domain classifier for {train.name} ({epochs} epochs{suffix})")
    return model.eval().requires_grad_(False), test_acc
