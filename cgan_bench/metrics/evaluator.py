"""One evaluation = one class-balanced generation + one feature pass; every metric comes from those features.

Sharded over the ranks of a multi-process run (train/distributed.py): each rank generates and embeds its share,
rank 0 gathers the features and alone computes and writes; one process is the world-size-1 case of the same code.
With eval.intra_fid_per_class = K, intra-FID and the per-class rows come from a second, per-class pass at the
final/best evaluations (metrics/class_stats.py: K generated per class vs the cached statistics of all real
images of the class, the paper's protocol); curve evaluations then leave the per-class metrics out."""
import logging
import time

import numpy as np
import pandas as pd
import torch
import torch_fidelity

from .. import __version__
from ..data import ImageData
from ..io import atomic_write_text
from ..train import distributed
from ..train.run_dir import RunDir
from ..train.samples import to_uint8
from .cache import fingerprint
from .class_stats import ClassStats, class_noise, class_stats_dir, per_class_mode_row, selected_classes
from .compute import evenly_spaced, overall_metrics, per_class_metrics, summarize_per_class
from .feature_space import FeatureSpace, exact_float32
from .modes import balanced_subset, mode_metrics
from .reference import load_or_compute_noise_floor, load_or_compute_reference, real_subset_order

SOFTWARE = f"cgan-bench {__version__}, torch {torch.__version__}, torch-fidelity {torch_fidelity.__version__}"
EVAL_NOISE_OFFSET = 7919  # evaluation noise seed = run seed + this, independent of the training RNG
log = logging.getLogger(__name__)


class EvaluationStopped(Exception):
    """An evaluation was abandoned between batches (a preemption signal arrived); nothing was written."""


class Evaluator:
    def __init__(self, eval_cfg, space: FeatureSpace, real: ImageData, run: RunDir | None, device, z_dim: int,
                 seed: int, tracker=None, held_out: ImageData | None = None):
        """`held_out`: real images never trained on; where the space counts modes (stacked digits), they give
        the real ceiling of the mode metrics, drawn in the same number per class as the generated ones.
        Built on every rank of a multi-process run (`run` and `tracker` are rank 0's; None elsewhere): rank 0
        builds the reference features first, the others wait for its probe; in the per-class mode each rank
        then builds its classes' real statistics (rank r: classes r, r+N, ...) and all meet at a barrier."""
        self.cfg, self.space, self.run, self.device, self.z_dim, self.seed = eval_cfg, space, run, device, z_dim, seed
        self.tracker, self.main = tracker, distributed.is_main()
        self.every = int(eval_cfg.every)
        self.n_classes, self.real_split = real.n_classes, real.split
        k = eval_cfg.get("intra_fid_per_class")
        self.per_class_k = None if k is None else int(k)  # None: intra-FID from the pooled generation
        self.classes = selected_classes(self.n_classes, int(eval_cfg.get("intra_fid_classes", -1)))
        n_real = len(real) if eval_cfg.n_real < 0 else min(eval_cfg.n_real, len(real))
        n_fake = min(eval_cfg.n_fake, self.balanced_count(eval_cfg.n_generated))
        cache_dir = eval_cfg.get("cache_dir")
        self.real_features = self.real_labels = self.fid_real = self.probe = self.floor = self.class_stats = None
        self.held_out, self._ceiling = held_out, {}
        self._real_memo = {}  # class -> (real statistics, covariance root): fixed for the run (compute.py)
        self.held_out_split = held_out.split if held_out is not None else None
        if self.per_class_k is not None:
            counts = real.class_counts().cpu()
            few = [c for c in self.classes if counts[c] < 2]
            if few:  # on every rank alike (each has the labels), before any rank builds anything
                raise ValueError(f"intra-FID needs at least 2 real images per class; class {few[0]} of {real.name} "
                                 f"{real.split} has {int(counts[few[0]])}")
        fp = None
        if self.main:
            fp = fingerprint(real)
            # the per-class mode keeps only the first n_real + n_fake of the seeded order (FID/KID/PR and their
            # floor); the pooled path every real image (its intra-FID reads each class's features)
            first = None if self.per_class_k is None else min(len(real), n_real + n_fake)
            ref = load_or_compute_reference(space, real, eval_cfg.batch_size, cache_dir, first=first, fp=fp,
                                            device=device)
            if first is None:
                self.real_features, self.real_labels = ref["features"], ref["labels"]
                # a fixed, seeded subset of the real split for FID/KID/PR (the paper: 10k real)
                self.fid_real = self.real_features[real_subset_order(len(real))[:n_real]]
            else:
                self.fid_real = ref["features"][:n_real]  # the same images, in the same order
            self.probe = ref.get("probe")
            self.floor = load_or_compute_noise_floor(space, real, ref, len(self.fid_real), n_fake,
                                                     eval_cfg.kid_subset_size, cache_dir, first, fp)
            warn_cut_counts(eval_cfg, real.split, len(real), len(self.fid_real), n_fake,
                            self.balanced_count(eval_cfg.n_generated))
        if distributed.world_size() > 1:  # the other ranks classify their share's features with rank 0's probe
            self.probe = distributed.broadcast_state(self.probe)
        if self.per_class_k is not None:
            folder = class_stats_dir(space, real, cache_dir, int(eval_cfg.diversity_pairs_max), fp) \
                if self.main else None
            if distributed.world_size() > 1:
                folder = distributed.broadcast_state(folder)  # the fingerprint reads the whole split: rank 0's
            self.class_stats = ClassStats(folder, space, real, int(eval_cfg.batch_size),
                                          int(eval_cfg.diversity_pairs_max), device)
            self.class_stats.build_missing(self.my_classes())
            distributed.barrier()

    def my_classes(self) -> list[int]:
        """The per-class mode's classes this rank builds and scores: r, r+N, ... of the selected classes."""
        return self.classes[distributed.rank()::distributed.world_size()]

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

    def stopping(self, stop) -> bool:
        """`stop()` asked between batches, agreed on by every rank (one stops, all stop at the same batch)."""
        if stop is None:  # the same on every rank: they evaluate the same phases
            return False
        return distributed.any_rank(bool(stop()), self.device)

    @torch.no_grad()
    def generate_features(self, G, n: int, stop=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class-balanced samples from fixed noise (same z every evaluation of this run), embedded once.
        Every rank draws the whole z and embeds its contiguous share; the features and logits of all ranks are
        gathered in order (so they equal one process's up to rounding). `stop()` is asked between batches;
        when it returns true on any rank, EvaluationStopped is raised on all (preemption)."""
        per_class = max(2, n // self.n_classes)
        labels = torch.arange(self.n_classes, device=self.device).repeat_interleave(per_class)
        g = torch.Generator(device=self.device).manual_seed((self.seed + EVAL_NOISE_OFFSET) % 2**64)
        z = torch.randn(len(labels), self.z_dim, generator=g, device=self.device)
        lo, hi = distributed.my_share(len(labels))
        bs = self.cfg.batch_size
        largest = -(-len(labels) // distributed.world_size())  # shares differ by at most one image
        steps = -(-largest // bs)  # every rank takes as many steps (stop checks) as the largest share needs
        was_training = G.training
        G.eval()
        feats, logits = [], []
        try:
            for i in range(steps):
                if self.stopping(stop):
                    raise EvaluationStopped
                start, end = lo + i * bs, min(hi, lo + (i + 1) * bs)
                if start < end:
                    f, lg = self.space.extract(to_uint8(G(z[start:end], labels[start:end])), bs)
                    feats.append(f)
                    logits.append(lg)
        finally:
            G.train(was_training)
        empty = torch.zeros(0, 0)
        feats = distributed.gather_rows(torch.cat(feats) if feats else empty, self.device)
        logits = distributed.gather_rows(torch.cat(logits) if logits else empty, self.device)
        return feats, logits, labels.cpu()

    @torch.no_grad()
    def per_class_pass(self, G, stop=None) -> list[dict]:
        """The per-class mode's rows (every rank: the rows of all selected classes, by class): for each of this
        rank's classes, K images from the class's own noise, embedded in batches, scored against the class's
        cached real statistics, then dropped (memory: one class). `stop`: as in generate_features."""
        k, bs, world = self.per_class_k, self.cfg.batch_size, distributed.world_size()
        mine = self.my_classes()
        rows = []
        was_training = G.training
        G.eval()
        try:
            for i in range(-(-len(self.classes) // world)):  # the same number of steps on every rank
                c = mine[i] if i < len(mine) else None
                z = class_noise(self.seed, c, k, self.z_dim, self.device) if c is not None else None
                feats = []
                for start in range(0, k, bs):
                    if self.stopping(stop):
                        raise EvaluationStopped
                    if c is not None:
                        zb = z[start:start + bs]
                        y = torch.full((len(zb),), c, dtype=torch.long, device=self.device)
                        feats.append(self.space.extract(to_uint8(G(zb, y)), bs)[0])
                if c is not None:
                    f = torch.cat(feats)
                    rows.append(per_class_mode_row(c, f, self.class_logits(f), self.class_stats.get(c),
                                                   pairs_max=self.cfg.diversity_pairs_max,
                                                   coverage_k=self.cfg.coverage_k,
                                                   collapse_threshold=self.cfg.collapse_threshold))
        finally:
            G.train(was_training)
        return sorted((r for part in distributed.gather_objects(rows) for r in part), key=lambda r: r["class"])

    def intra_fid_protocol(self, phase: str, rows: list[dict], per_class_generated: int) -> dict:
        """How intra-FID was measured (written with every evaluation, so the report can say it)."""
        if self.per_class_k is None:
            return {"intra_fid_mode": "pooled", "intra_fid_generated_per_class": per_class_generated,
                    "intra_fid_classes": self.n_classes,
                    "intra_fid_protocol": f"pooled: {per_class_generated} generated per class (of eval.n_generated) "
                                          f"vs all real {self.real_split} images of the class, {self.n_classes} "
                                          f"classes"}
        if phase == "curve":
            return {"intra_fid_mode": "per_class", "intra_fid_protocol": "per-class mode: not measured at curve "
                                                                         "evaluations"}
        n_real = [r["n_real"] for r in rows]
        subset = "" if len(self.classes) == self.n_classes else \
            f" (an evenly spaced subset: eval.intra_fid_classes={len(self.classes)})"
        return {"intra_fid_mode": "per_class", "intra_fid_generated_per_class": self.per_class_k,
                "intra_fid_classes": len(self.classes), "intra_fid_real_per_class_min": int(min(n_real)),
                "intra_fid_real_per_class_mean": float(np.mean(n_real)),
                "intra_fid_protocol": f"per class: {self.per_class_k} generated vs all real {self.real_split} images "
                                      f"of the class ({min(n_real)}-{max(n_real)}), {len(self.classes)} of "
                                      f"{self.n_classes} classes{subset}"}

    def evaluate(self, G, iteration: int, phase: str, stop=None, extra: dict | None = None) -> dict:
        """One evaluation appended to metrics.jsonl (and per_class.csv for the final one, per_class_best.csv for
        the best checkpoint's); every phase but "curve" uses the final protocol's sizes. `stop`: see
        generate_features (nothing is written when it stops the evaluation); `extra`: fields added to the line.
        Called on every rank at the same point; all of them return rank 0's record."""
        t0 = time.perf_counter()
        n = self.cfg.curve_generated if phase == "curve" else self.cfg.n_generated
        distributed.broadcast_buffers(G)  # one generator: rank 0's batch-norm statistics on every rank
        with exact_float32():  # G's forward in IEEE fp32 too (torch lets cuDNN convolutions use TF32 by default)
            feats, logits, labels = self.generate_features(G, n, stop)
            rows = self.per_class_pass(G, stop) if self.per_class_k is not None and phase != "curve" else None
        generated_s = time.perf_counter() - t0  # generation and features (the device's share of eval_s)
        extra = {"eval_generate_s": round(generated_s, 3), **(extra or {})}
        record = self.metrics(feats, logits, labels, rows, iteration, phase, n, extra, t0) if self.main else None
        if distributed.world_size() > 1:
            record = distributed.broadcast_state(record)
        return record

    def metrics(self, feats, logits, labels, rows, iteration: int, phase: str, n: int, extra, t0: float) -> dict:
        """Rank 0: every metric from the gathered features (and the per-class mode's rows), written out."""
        fid_fake = feats[evenly_spaced(len(feats), min(self.cfg.n_fake, len(feats)))]  # class-balanced subset
        record = {"iteration": iteration, "phase": phase}
        record.update(overall_metrics(fid_fake, self.fid_real, logits, isc_splits=self.cfg.isc_splits,
                                      kid_subset_size=self.cfg.kid_subset_size, prc_k=self.cfg.prc_neighborhood,
                                      coverage_k=self.cfg.coverage_k))
        class_logits = self.class_logits(feats)
        if self.per_class_k is None:
            rows = per_class_metrics(feats, class_logits, labels, self.real_features, self.real_labels,
                                     self.n_classes, coverage_k=self.cfg.coverage_k,
                                     pairs_max=self.cfg.diversity_pairs_max,
                                     collapse_threshold=self.cfg.collapse_threshold, real_memo=self._real_memo)
        if rows:  # none at a curve evaluation of the per-class mode
            record.update(summarize_per_class(rows))
        record["class_accuracy"] = (class_logits.argmax(1) == labels).float().mean().item()
        rows = rows or []
        if self.space.channel_digits is not None:  # stacked digits: exact mode counts beside the real ceiling
            real_digits, real_labels = self.real_mode_digits(len(labels) // self.n_classes)
            modes, mode_rows = mode_metrics(self.space.channel_digits(feats.to(self.device)).cpu(), labels,
                                            real_digits, real_labels, self.n_classes,
                                            self.cfg.mode_collapse_fraction)
            record.update(modes)
            by_class = {row["class"]: row for row in rows}
            for mode_row in mode_rows:
                if mode_row["class"] in by_class:
                    by_class[mode_row["class"]].update({k: v for k, v in mode_row.items() if k != "class"})
        record.update(self.floor)
        record.update({"feature_space": self.space.name, "n_fake": len(fid_fake), "n_real": len(self.fid_real),
                       "n_generated": len(feats), "real_split": self.real_split, "isc_splits": self.cfg.isc_splits,
                       # what the protocol asked for (n_real -1 = all): the report warns where fewer were used
                       "n_real_requested": int(self.cfg.n_real), "n_fake_requested": int(self.cfg.n_fake),
                       "n_generated_requested": int(n), "held_out_split": self.held_out_split,
                       "classifier_test_accuracy": self.space.classifier_test_accuracy,
                       **self.intra_fid_protocol(phase, rows, len(labels) // self.n_classes),
                       "eval_ranks": distributed.world_size(),
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
