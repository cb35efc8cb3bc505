"""One evaluation = one class-balanced generation + one feature pass; every metric comes from those features."""
import logging
import time

import pandas as pd
import torch
import torch_fidelity

from .. import __version__
from ..data import ImageData
from ..io import atomic_write_text
from ..train.run_dir import RunDir
from ..train.samples import to_uint8
from .compute import evenly_spaced, overall_metrics, per_class_metrics, summarize_per_class
from .feature_space import FeatureSpace, exact_float32
from .modes import balanced_subset, mode_metrics
from .reference import load_or_compute_noise_floor, load_or_compute_reference

SOFTWARE = f"cgan-bench {__version__}, torch {torch.__version__}, torch-fidelity {torch_fidelity.__version__}"
EVAL_NOISE_OFFSET = 7919  # evaluation noise seed = run seed + this, independent of the training RNG
log = logging.getLogger(__name__)


class EvaluationStopped(Exception):
    """An evaluation was abandoned between batches (a preemption signal arrived); nothing was written."""


class Evaluator:
    def __init__(self, eval_cfg, space: FeatureSpace, real: ImageData, run: RunDir, device, z_dim: int, seed: int,
                 tracker=None, held_out: ImageData | None = None):
        """`held_out`: real images never trained on; where the space counts modes (stacked digits), they give
        the real ceiling of the mode metrics, drawn in the same number per class as the generated ones."""
        self.cfg, self.space, self.run, self.device, self.z_dim, self.seed = eval_cfg, space, run, device, z_dim, seed
        self.tracker = tracker
        self.every = int(eval_cfg.every)
        self.n_classes, self.real_split = real.n_classes, real.split
        ref = load_or_compute_reference(space, real, eval_cfg.batch_size, eval_cfg.get("cache_dir"))
        self.real_features, self.real_labels = ref["features"], ref["labels"]
        n_real = len(real) if eval_cfg.n_real < 0 else min(eval_cfg.n_real, len(real))
        # a fixed, seeded subset of the real split for FID/KID/PR (the paper: 10k real)
        subset = torch.randperm(len(real), generator=torch.Generator().manual_seed(2020))[:n_real]
        self.fid_real = self.real_features[subset]
        self.probe = ref.get("probe")
        n_fake = min(eval_cfg.n_fake, self.balanced_count(eval_cfg.n_generated))
        self.floor = load_or_compute_noise_floor(space, real, ref, len(self.fid_real), n_fake,
                                                 eval_cfg.kid_subset_size, eval_cfg.get("cache_dir"))
        self.held_out, self._ceiling = held_out, {}
        self.held_out_split = held_out.split if held_out is not None else None
        warn_cut_counts(eval_cfg, real.split, len(real), len(self.fid_real), n_fake,
                        self.balanced_count(eval_cfg.n_generated))

    def balanced_count(self, n: int) -> int:
        """How many images a class-balanced generation of (about) n makes."""
        return max(2, n // self.n_classes) * self.n_classes

    def real_mode_digits(self, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel digits of `per_class` held-out real images per class (the ceiling; computed once per size)."""
        if per_class not in self._ceiling:
            if self.held_out is None:
                raise ValueError("mode metrics need held-out real images (the dataset's test split)")
            idx = balanced_subset(self.held_out.labels, self.n_classes, per_class).to(self.held_out.labels.device)
            feats, _ = self.space.extract(self.held_out.images[idx], self.cfg.batch_size)
            self._ceiling[per_class] = (self.space.channel_digits(feats.to(self.device)).cpu(),
                                        self.held_out.labels[idx].cpu())
        return self._ceiling[per_class]
    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.space.classify is not None:
            with torch.no_grad():
                return self.space.classify(features.to(self.device)).float().cpu()
        return features @ self.probe["weight"].T + self.probe["bias"]

    @torch.no_grad()
    def generate_features(self, G, n: int, stop=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class-balanced samples from fixed noise (same z every evaluation of this run), embedded once.
        `stop()` is asked between batches; when it returns true, EvaluationStopped is raised (preemption)."""
        per_class = max(2, n // self.n_classes)
        labels = torch.arange(self.n_classes, device=self.device).repeat_interleave(per_class)
        g = torch.Generator(device=self.device).manual_seed((self.seed + EVAL_NOISE_OFFSET) % 2**64)
        z = torch.randn(len(labels), self.z_dim, generator=g, device=self.device)
        was_training = G.training
        G.eval()
        feats, logits = [], []
        for zb, yb in zip(z.split(self.cfg.batch_size), labels.split(self.cfg.batch_size)):
            if stop is not None and stop():
                G.train(was_training)
                raise EvaluationStopped
            f, l = self.space.extract(to_uint8(G(zb, yb)), self.cfg.batch_size)
            feats.append(f)
            logits.append(l)
        G.train(was_training)
        return torch.cat(feats), torch.cat(logits), labels.cpu()

    def evaluate(self, G, iteration: int, phase: str, stop=None, extra: dict | None = None) -> dict:
        """One evaluation appended to metrics.jsonl (and per_class.csv for the final one, per_class_best.csv for
        the best checkpoint's); every phase but "curve" uses the final protocol's sizes. `stop`: see
        generate_features (nothing is written when it stops the evaluation); `extra`: fields added to the line."""
        t0 = time.perf_counter()
        n = self.cfg.curve_generated if phase == "curve" else self.cfg.n_generated
        with exact_float32():  # G's forward in IEEE fp32 too (torch lets cuDNN convolutions use TF32 by default)
            feats, logits, labels = self.generate_features(G, n, stop)
        fid_fake = feats[evenly_spaced(len(feats), min(self.cfg.n_fake, len(feats)))]  # class-balanced subset
        record = {"iteration": iteration, "phase": phase}
        record.update(overall_metrics(fid_fake, self.fid_real, logits, isc_splits=self.cfg.isc_splits,
                                      kid_subset_size=self.cfg.kid_subset_size, prc_k=self.cfg.prc_neighborhood,
                                      coverage_k=self.cfg.coverage_k))
        class_logits = self.class_logits(feats)
        rows = per_class_metrics(feats, class_logits, labels, self.real_features, self.real_labels, self.n_classes,
                                 coverage_k=self.cfg.coverage_k, pairs_max=self.cfg.diversity_pairs_max,
                                 collapse_threshold=self.cfg.collapse_threshold)
        record.update(summarize_per_class(rows))
        record["class_accuracy"] = (class_logits.argmax(1) == labels).float().mean().item()
        if self.space.channel_digits is not None:  # stacked digits: exact mode counts beside the real ceiling
            real_digits, real_labels = self.real_mode_digits(len(labels) // self.n_classes)
            modes, mode_rows = mode_metrics(self.space.channel_digits(feats.to(self.device)).cpu(), labels,
                                            real_digits, real_labels, self.n_classes,
                                            self.cfg.mode_collapse_fraction)
            record.update(modes)
            for row, mode_row in zip(rows, mode_rows):
                row.update({k: v for k, v in mode_row.items() if k != "class"})
        record.update(self.floor)
        record.update({"feature_space": self.space.name, "n_fake": len(fid_fake), "n_real": len(self.fid_real),
                       "n_generated": len(feats), "real_split": self.real_split, "isc_splits": self.cfg.isc_splits,
                       # what the protocol asked for (n_real -1 = all): the report warns where fewer were used
                       "n_real_requested": int(self.cfg.n_real), "n_fake_requested": int(self.cfg.n_fake),
                       "n_generated_requested": int(n), "held_out_split": self.held_out_split,
                       "classifier_test_accuracy": self.space.classifier_test_accuracy,
                       "device": str(self.device), "software": SOFTWARE,
                       "eval_s": round(time.perf_counter() - t0, 3)})
        record.update(extra or {})
        self.run.log(record)
        per_class_file = {"final": self.run.per_class_file, "best": self.run.per_class_best_file}.get(phase)
        if per_class_file is not None:
            atomic_write_text(per_class_file, pd.DataFrame(rows).to_csv(index=False))
        if self.tracker is not None:
            self.tracker.log(record, per_class=rows if phase == "final" else None)
        return record


def warn_cut_counts(cfg, split: str, n_available: int, n_real: int, n_fake: int, n_generated: int) -> None:
    """Once per run, where the data or n_generated cannot give a requested count: the evaluation goes on with
    fewer (the metrics lines record both counts and the report prints the same warning under its protocol)."""
    if 0 <= cfg.n_real and n_real < cfg.n_real:
        log.warning("eval.n_real=%d but the real %s split has %d images: FID/KID/precision/recall use %d",
                    cfg.n_real, split, n_available, n_real)
    if n_generated < cfg.n_generated:
        log.warning("eval.n_generated=%d is not a whole number per class: %d images are generated",
                    cfg.n_generated, n_generated)
    if n_fake < cfg.n_fake:
        log.warning("eval.n_fake=%d but eval.n_generated=%d gives %d class-balanced images: FID/KID/"
                    "precision/recall use %d", cfg.n_fake, cfg.n_generated, n_generated, n_fake)
