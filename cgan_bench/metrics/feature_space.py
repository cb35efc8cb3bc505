"""Feature spaces: what images are embedded with before any metric is computed.

`inception`: torch-fidelity's TF-compatible InceptionV3 ('2048' pool features, 'logits_unbiased' for IS),
  the paper's space. Class accuracy uses a linear probe fit on real features (cached with them).
`classifier`: the harness's own domain classifier (penultimate features, its logits for IS and accuracy).
`digit_channels`: stacked digits: the digits' domain classifier applied to each RGB channel; the three feature
  vectors concatenated (so FID sees every channel), the red channel's logits for IS and class accuracy, and
  the per-channel digits for the exact mode counts (metrics/modes.py).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from torch import nn
from tqdm import tqdm

from ..data import ImageData
from ..train.precision import fp32_math
from .classifier import load_or_train_classifier

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class WeightsMissingError(RuntimeError):
    """Feature-extractor weights are absent and cannot be downloaded; the message says where they go."""


def default_inception_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights_path(configured: str | None) -> Path:
    """The weights file to use: eval.inception_weights, else torch-fidelity's cache (downloaded if possible)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"eval.inception_weights={path} does not exist; download {URL_INCEPTION_V3} "
                                      f"to that path, or leave eval.inception_weights unset to use {default_inception_path()}")
        return path
    path = default_inception_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            try:
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=False)
            except Exception as e:
                raise WeightsMissingError(
                    f"Inception weights {INCEPTION_FILE} are missing and could not be downloaded ({type(e).__name__}: "
                    f"{e}). Download {URL_INCEPTION_V3} and put it at {path} (or pass eval.inception_weights=PATH), "
                    f"or evaluate in the harness's own space with eval.feature_space=classifier.") from None
    return path


def exact_float32():
    """Metrics are computed with TF32 off, so numbers do not depend on the GPU generation."""
    return fp32_math("ieee")


@dataclass
class FeatureSpace:
    name: str  # written into every result as `feature_space`
    key: str  # cache identity (includes the classifier's recipe)
    model: nn.Module  # uint8 images -> (features, logits)
    classify: Callable[[torch.Tensor], torch.Tensor] | None = None  # features -> class logits; None = probe
    classifier_test_accuracy: float | None = None
    channel_digits: Callable[[torch.Tensor], torch.Tensor] | None = None  # features -> (N, 3) digits (stacked)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch_size: int,
                progress: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, IS logits) as float32 CPU tensors, one pass in large batches. `progress`: the label of a
        progress bar over the images (stderr), for the one-time reference pass; None = no bar."""
        feats, logits = [], []
        quiet = {"disable": True} if progress is None else {}  # with a bar, TQDM_DISABLE=1 still silences it
        with exact_float32(), tqdm(total=len(images), desc=progress, unit="img", dynamic_ncols=True, mininterval=1.0,
                                   **quiet) as bar:
            for batch in images.split(batch_size):
                f, l = self.model(batch)
                feats.append(f.float().cpu())
                logits.append(l.float().cpu())
                bar.update(len(batch))
        return torch.cat(feats), torch.cat(logits)


class _InceptionPoolAndLogits(nn.Module):
    def __init__(self, weights: Path | None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=None if weights is None else str(weights))

    def forward(self, x):
        return self.net(x)


class _DigitChannels(nn.Module):
    """uint8 stacked-digit images -> (3 channels' classifier features concatenated, channel 0's logits)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        out = [self.classifier(x[:, c:c + 1].expand(-1, 3, -1, -1)) for c in range(x.shape[1])]
        return torch.cat([f for f, _ in out], dim=1), out[0][1]


def digit_channel_space(resolution: int, device, classifier_epochs: int, cache_dir: str | None) -> FeatureSpace:
    """The `digit_channels` space: one digits classifier (cached, shared with dataset=digits) read per channel."""
    from ..data import load_dataset
    digits_train, digits_test = (load_dataset("digits", s, resolution).to(device) for s in ("train", "test"))
    classifier, acc = load_or_train_classifier(digits_train, digits_test, device, classifier_epochs, cache_dir)
    dim = classifier.fc.in_features

    def classify(features: torch.Tensor) -> torch.Tensor:
        return classifier.fc(features[:, :dim])

    def channel_digits(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([classifier.fc(features[:, k * dim:(k + 1) * dim]).argmax(1)
                                for k in range(features.shape[1] // dim)], dim=1)

    return FeatureSpace("digit_channels", f"digit_channels-e{classifier_epochs}", _DigitChannels(classifier),
                        classify=classify, classifier_test_accuracy=acc, channel_digits=channel_digits)


def make_feature_space(name: str, train: ImageData, test: ImageData, device, *, inception_weights: str | None = None,
                       classifier_epochs: int = 30, cache_dir: str | None = None) -> FeatureSpace:
    if name == "inception":
        weights = inception_weights_path(inception_weights)
        model = _InceptionPoolAndLogits(weights).to(device)
        return FeatureSpace("inception", f"inception-{weights.stem}", model)  # other weights, other cache
    if name == "classifier":
        model, acc = load_or_train_classifier(train, test, device, classifier_epochs, cache_dir)
        return FeatureSpace("classifier", f"classifier-e{classifier_epochs}", model, classify=model.fc,
                            classifier_test_accuracy=acc)
    if name == "digit_channels":
        return digit_channel_space(train.resolution, device, classifier_epochs, cache_dir)
    raise ValueError(f"unknown feature space {name!r}; choose inception, classifier or digit_channels")
