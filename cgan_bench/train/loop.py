"""The training loop: one readable function, the paper's recipe, no knowledge of which head it trains.

Per G iteration (as in the official code): one G step on `batch_g` fakes, then `n_dis` D steps,
each on `batch_d` real + `batch_d` fresh fake images. Losses are read back from the device only
at log intervals.
"""
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..data import ImageData
from ..heads import build_head, head_params
from ..overrides import PATH_OVERRIDES, same_path
from ..models import Discriminator, Generator, trunk_layout
from . import distributed
from .checkpoint import is_better, load_best, load_checkpoint, rng_state, save_best, save_checkpoint, set_rng_state
from .cuda_graph import GraphedStep, check_supported, learning_rates_as, plain_numbers
from .losses import LOSSES
from .precision import fp32_math, fp32_math_mode, resolve_precision
from .run_dir import RunDir
from .samples import class_grid, save_png


class Diverged(RuntimeError):
    """Training produced non-finite or exploding values."""


class ResumeConfigMismatch(ValueError):
    """A run directory's checkpoint was made with a different config (a user error: exit code 2)."""


class ResumePastBudget(ResumeConfigMismatch):
    """The checkpoint is further than train.iterations (a user error: exit code 2). The run directory is left
    exactly as it is, status.json included: what it holds (e.g. a completed longer run) is still true."""


# Keys that may change between a run and its resumption: budgets, logging cadence, where things go.
# train.precision is not one of them: the configured value (e.g. `auto`) must match to resume.
RESUME_FREE_KEYS = {"resume", "device", "wandb", "sweep_name", "report", "report_dir", "train.iterations",
                    "train.log_every", "train.sample_every", "train.checkpoint_every", "eval.batch_size",
                    "eval.cache_dir", "eval.inception_weights", "dataset.root", "dataset.download",
                    "dataset.skip_bad_files",  # skipping only ever drops files that a run without it refuses
                    "train.gpu_recipe",  # a label for the device check (app.refuse_cpu_fallback), not the numbers
                    "train.cuda_graph",  # the same random numbers and updates as eager steps, up to rounding
                                         # (train/cuda_graph.py; Adam reads its lr from a float32 tensor there)
                    "eval.best_metric",  # which generator best.pt keeps, not how training runs (see restore_best)
                    "figures"}  # which classes the end-of-run figures show


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def resume_relevant(cfg) -> dict:
    """The flattened config minus keys that may change on resume (stored in every checkpoint)."""
    from omegaconf import OmegaConf
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    if flat.get("finetune.parent") is None:  # an ordinary run: the fine-tune's settings are read by nobody
        flat = {k: v for k, v in flat.items() if not k.startswith("finetune.")}
    return {k: v for k, v in flat.items()
            if k not in RESUME_FREE_KEYS and k.split(".")[0] not in RESUME_FREE_KEYS}


# Keys added to the configs after a checkpoint was written, with the value that reproduces the old behaviour:
# a checkpoint without the key resumes when the current value is that one.
ADDED_KEYS = {"train.compile_mode": "default", "dataset.channels_apart": False, "eval.mode_collapse_fraction": 0.5,
              "head.bias": False,  # head=projection's bias (model.projection_bias, the ImageNet nets)
              "train.sync_bn": False, "train.joint_d_forward": False,
              "finetune.curve_points": None}  # a fine-tune from before: eval.every as configured


def config_differences(saved: dict, current: dict) -> list[str]:
    saved = {**{k: v for k, v in ADDED_KEYS.items() if k in current}, **saved}
    saved, current = one_path_spelling(saved), one_path_spelling(current)
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}" for k in keys
            if saved.get(k, "<unset>") != current.get(k, "<unset>")]


def one_path_spelling(flat: dict) -> dict:
    """finetune.parent=runs/x and =/abs/runs/x (from the same working directory) are one parent."""
    return {k: same_path(v) if k in PATH_OVERRIDES and isinstance(v, str) else v for k, v in flat.items()}


def refuse_other_config(state: dict, cfg, what: str, fix: str) -> None:
    """ResumeConfigMismatch naming the differing keys where the checkpoint `state` was trained with other
    settings than `cfg` (keys free to change on resume left out): `what` holds it, `fix` says what to do."""
    changed = config_differences(state.get("config", {}), resume_relevant(cfg))
    if changed:
        raise ResumeConfigMismatch(f"{what} trained with another config ({'; '.join(changed)}); {fix}")


def check_resumable(state: dict, cfg, run_path) -> None:
    """Refuse (one line) to continue the checkpoint `state` of `run_path` under `cfg`: other settings (the data's
    folder among them: a folder that moved is given by its old path, or a link there), or past the budget."""
    changed = config_differences(state.get("config", {}), resume_relevant(cfg))
    if changed:
        moved = all(c.startswith("dataset.path:") for c in changed)
        raise ResumeConfigMismatch(
            f"{run_path} holds a checkpoint trained with another config ({'; '.join(changed)}); "
            + ("if the same images only moved, give the dataset.path it was trained with (a link from there to the "
               "new place works); else " if moved else "")
            + "rerun with resume=false to start this directory over, or choose another hydra.run.dir")
    if state["iteration"] > cfg.train.iterations:
        raise ResumePastBudget(
            f"{run_path} holds a checkpoint at iteration {state['iteration']}, past "
            f"train.iterations={cfg.train.iterations}; raise train.iterations to at least "
            f"{state['iteration']} to continue it, or rerun with resume=false to start this directory over")


def build_models(cfg, n_classes: int, device) -> tuple[Generator, Discriminator]:
    """G and D of cfg.model at dataset.resolution; g_mult/d_mult/d_down (ImageNet models) widen the trunks."""
    resolution, m = cfg.dataset.resolution, cfg.model
    layout = trunk_layout(resolution, m.d_ch, m.get("d_mult"), m.get("d_down"))
    head = build_head(cfg.head.name, n_classes=n_classes, feature_dim=layout[-1][0], n_blocks=len(layout),
                      **head_params(cfg.head))
    G = Generator(n_classes, resolution, m.g_ch, m.z_dim, mult=m.get("g_mult")).to(device)
    D = Discriminator(head, resolution, m.d_ch, mult=m.get("d_mult"), n_down=m.get("d_down")).to(device)
    return G, D


def linear_decay(total: int, start: int):
    """LR multiplier: 1 until `start`, then linearly to 0 at `total` (Chainer's LinearShift)."""
    def factor(it: int) -> float:
        if it < start:
            return 1.0
        return max(0.0, 1.0 - (it - start) / max(1, total - start))
    return factor


def dequantize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 -> [-1, 1) plus uniform noise U(0, 1/128), as in the paper's data pipeline."""
    x = x_uint8.float() / 128.0 - 1.0
    return x + torch.rand_like(x) / 128.0


@dataclass
class Trainer:
    cfg: object
    data: ImageData  # or data.image_store.StreamedImageData (streams from disk): one .sample(batch) for both
    run: RunDir
    device: torch.device
    evaluator: object = None  # metrics.Evaluator: .evaluate(G, iteration, phase) appends to the run directory
    tracker: object = None  # report.tracking: .log(record), .image(name, img, it), .finish()
    # (x_fake, y_fake) -> a scalar added to G's loss, logged as g_extra_loss (a fine-tune's classifier loss:
    # train/finetune.py); None = the plain adversarial loss
    g_extra_loss: object = None
    status_extra: dict = field(default_factory=dict)  # more fields for status.json (a fine-tune's parent)

    def __post_init__(self):
        torch.manual_seed(self.cfg.seed)
        t = self.cfg.train
        self.precision = resolve_precision(t.precision, self.device)  # fp32 | bf16 | tf32 (auto resolved here)
        if not isinstance(self.data, ImageData) and distributed.world_size() > 1:  # streamed: a sampler per rank
            self.data = self.data.for_rank(distributed.rank())
        self.G, self.D = build_models(self.cfg, self.data.n_classes, self.device)
        self.memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.G.to(memory_format=self.memory_format)
        self.D.to(memory_format=self.memory_format)
        # a multi-process run (train/distributed.py): DDP views of G and D; G_ddp/D_ddp are G/D for one process
        self.main = distributed.is_main()  # rank 0 alone writes the run directory, logs and evaluates
        self.G_ddp, self.D_ddp = distributed.wrap(self.G, self.D, self.device, bool(t.get("sync_bn", False)))
        # compiled views of the same modules (state dicts, checkpoints and sampling use the originals);
        # static shapes: a run has two batch sizes (batch_g, batch_d), each gets its own specialised graph.
        # Sequential sweep jobs share a process: without a reset, each job's new modules count as
        # recompilations until dynamo's limit silently falls back to eager.
        if t.compile:
            torch._dynamo.reset()
        # compile_mode "reduce-overhead" adds CUDA graphs on a GPU (the step is launch-bound there: BENCHMARKS.md);
        # on a CPU it compiles like "default".
        mode = t.get("compile_mode", "default")
        self.G_fast = torch.compile(self.G_ddp, dynamic=False, mode=mode) if t.compile else self.G_ddp
        self.D_fast = torch.compile(self.D, dynamic=False, mode=mode) if t.compile else self.D
        # D's steps average D's gradients across ranks; the G step computes none for D (plain D there)
        self.D_sync = self.D_fast if self.D_ddp is self.D else \
            (torch.compile(self.D_ddp, dynamic=False, mode=mode) if t.compile else self.D_ddp)
        fast = {"fused": True} if self.device.type == "cuda" else {}  # fused kernels on GPU; PyTorch default on CPU
        adam = dict(lr=t.lr, betas=(t.beta1, t.beta2), **fast)
        self.g_params = list(self.G.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **adam)
        decay = linear_decay(t.iterations, t.lr_decay_start)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, decay)
        # train.cuda_graph (train/cuda_graph.py): the whole update replayed as one CUDA graph; None = eager steps
        refusal = check_supported(self.cfg, self.device, distributed.world_size(), not isinstance(self.data, ImageData))
        if refusal:
            from ..config import ConfigError
            raise ConfigError(refusal)
        self.graphed = bool(t.get("cuda_graph", False))
        self.graphed_step = GraphedStep(self._update, self.device) if self.graphed else None
        for opt in (self.opt_g, self.opt_d):  # after the schedulers: they keep float base learning rates
            learning_rates_as(opt, self.graphed, self.device)
        self.loss_d, self.loss_g = LOSSES[t.loss]
        self.joint_d_forward = bool(t.get("joint_d_forward", False))  # one D call on [real; fake] per D step
        self.iteration, self.wall_s, self.train_it_per_s = 0, 0.0, None
        # the best curve score so far (eval.best_metric; None = keep no best.pt), part of the resumable state;
        # `since`: the first iteration whose curve evaluations were candidates (a resume without this state)
        metric = self.cfg.eval.get("best_metric")
        self.best = None if metric is None else {"metric": str(metric), "score": None, "iteration": None, "since": 0}

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # plain_numbers: a graphed run's lr tensors as floats, so either path resumes the other's checkpoint
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": plain_numbers(self.opt_g.state_dict()),
                "opt_d": plain_numbers(self.opt_d.state_dict()), "sched_g": plain_numbers(self.sched_g.state_dict()),
                "sched_d": plain_numbers(self.sched_d.state_dict()), "iteration": self.iteration, "wall_s": self.wall_s,
                "rng": rng_state(self.device), "config": resume_relevant(self.cfg), "generator": self.generator_info(),
                "best": self.best}

    def generator_info(self) -> dict:
        """What cgan_bench.load_generator needs to rebuild G without the dataset (plain types: weights_only)."""
        return {"n_classes": int(self.data.n_classes), "class_names": [str(c) for c in self.data.class_names],
                "resolution": int(self.cfg.dataset.resolution), "g_ch": int(self.cfg.model.g_ch),
                "z_dim": int(self.cfg.model.z_dim), **self._g_mult()}

    def _g_mult(self) -> dict:
        """{"g_mult": [...]} for the widening ImageNet generators (model.g_mult), {} for the constant-width ones."""
        mult = self.cfg.model.get("g_mult")
        return {} if mult is None else {"g_mult": [int(m) for m in mult]}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        for opt in (self.opt_g, self.opt_d):
            learning_rates_as(opt, self.graphed, self.device)
        if self.graphed_step is not None:  # the optimizers' state tensors were replaced: capture again
            self.graphed_step.reset()
        self.iteration, self.wall_s = state["iteration"], state["wall_s"]
        set_rng_state(state["rng"], self.device)

    def resume(self) -> bool:
        """Continue from the run directory's checkpoint; refuse if the run was trained with another config."""
        state = load_checkpoint(self.run.checkpoints, map_location=self.device)  # CheckpointUnreadable: refuse
        if state is None:  # starting at 0: lines an attempt killed before its first checkpoint logged are stale
            self.run.drop_metrics_after(0)
            return False
        check_resumable(state, self.cfg, self.run.path)
        self.load_state_dict(state)
        self.restore_best(state.get("best"))
        self.run.drop_metrics_after(self.iteration)
        return True

    def share_state(self) -> None:
        """Multi-process: every rank continues from rank 0's state (the checkpoint it resumed, else its start).
        Called on every rank, after rank 0's resume()."""
        if distributed.world_size() == 1:
            return
        state = distributed.broadcast_state(self.state_dict())
        if not self.main:
            self.load_state_dict(state)

    def checkpoint(self) -> None:
        if not self.main:
            return
        save_checkpoint(self.run.checkpoints, self.state_dict())

    # ---- the best checkpoint (eval.best_metric) ----------------------------------------------
    def curve_due(self, it: int, final: bool) -> bool:
        """A curve evaluation every eval.every iterations; at the last iteration only where a best checkpoint is
        kept (the final generator is a candidate too; otherwise the final evaluation covers that iteration)."""
        every = self.evaluator.every if self.evaluator is not None else 0
        return bool(every) and (self.best is not None if final else it % every == 0)

    def track_best(self, record: dict) -> bool:
        """True where this curve evaluation beats the best so far (self.best then holds it)."""
        if self.best is None or not is_better(self.best["metric"], record.get(self.best["metric"]), self.best["score"]):
            return False
        self.best.update(score=float(record[self.best["metric"]]), iteration=self.iteration)
        return True

    def save_best(self) -> None:
        """checkpoints/best.pt from the current G, written after the last.pt that records it as the best."""
        if not self.main:
            return
        save_best(self.run.checkpoints, {"G": self.G.state_dict(), "iteration": self.iteration,
                                         "metric": self.best["metric"], "score": self.best["score"],
                                         "since": self.best["since"], "generator": self.generator_info(),
                                         "config": resume_relevant(self.cfg)})

    def restore_best(self, saved: dict | None) -> None:
        """The best so far of the checkpoint resumed from, so a resumed run never replaces a better best.pt.
        Where a kill fell between last.pt and best.pt, best.pt is rewritten from the checkpoint's own G."""
        if self.best is None:
            return
        if saved is None or saved.get("metric") != self.best["metric"]:
            self.best["since"] = self.iteration
            if self.iteration:
                warnings.warn(f"{self.run.checkpoints / 'last.pt'} kept no best by {self.best['metric']}: "
                              f"best.pt is chosen among curve evaluations from iteration {self.iteration} on")
            return
        self.best = dict(saved)
        if saved["iteration"] is None:
            return
        on_disk = load_best(self.run.checkpoints)
        if on_disk is None or on_disk.get("iteration") != saved["iteration"]:
            if saved["iteration"] == self.iteration:
                self.save_best()
            else:
                warnings.warn(f"{self.run.checkpoints / 'best.pt'} is not the best the checkpoint records "
                              f"(iteration {saved['iteration']}); it is replaced at the next better curve score")

    # ---- one iteration -----------------------------------------------------------------------
    def fake_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of a global batch of n (all of it for one process; train/distributed.py)."""
        z = torch.randn(n, self.cfg.model.z_dim, device=self.device)
        y = torch.randint(0, self.data.n_classes, (n,), device=self.device)
        return distributed.shard(z), distributed.shard(y)

    def real_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real uint8 images and labels for a global batch of n: in memory, the whole global batch (every rank
        draws the same indices; `dequantized` keeps this rank's slice, so N ranks train what one process trains:
        tests/test_distributed.py); streamed from disk, only this rank's n/N images (its own sampler:
        StreamedImageData.for_rank), so the disk serves the global batch once instead of N times."""
        if isinstance(self.data, ImageData):
            return self.data.sample(n)
        return self.data.sample(n // distributed.world_size())

    def dequantized(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """real_batch's images in [-1, 1) with the paper's dequantisation noise: this rank's slice."""
        if isinstance(self.data, ImageData):
            return distributed.shard(dequantize(x)), distributed.shard(y)
        return dequantize(x), y

    def autocast(self):
        """bf16 autocast for the networks when the resolved precision is bf16 (losses and logits stay fp32).
        A CUDA graph must not capture autocast's cache of cast weights (PyTorch's CUDA-graph notes)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16",
                              cache_enabled=not self.graphed)

    def step(self) -> dict[str, torch.Tensor]:
        """One G update then n_dis D updates, then the LR schedule; returns device tensors (no host sync here).
        With train.cuda_graph the update is a graph replay (train/cuda_graph.py). fp32 math is IEEE (TF32 only
        for precision tf32) inside the step; the global settings are restored after it."""
        with fp32_math(fp32_math_mode(self.precision)):
            losses = self.graphed_step() if self.graphed_step is not None else self._update()
        self.sched_g.step()  # outside the graph: fills the lr tensors a graph reads
        self.sched_d.step()
        return losses

    def _update(self) -> dict[str, torch.Tensor]:
        """The device work of one iteration (what a CUDA graph captures): no host syncs, no Python-side state."""
        t, head, G, D, D_sync = self.cfg.train, self.D.head, self.G_fast, self.D_fast, self.D_sync
        z, y_fake = self.fake_batch(t.batch_g)
        with self.autocast():
            x_fake = G(z, y_fake)
            out_fake = D(x_fake, y_fake)
        g_loss = self.loss_g(out_fake.adv) + head.g_aux_loss(out_fake, y_fake)
        extra = {}
        if self.g_extra_loss is not None:
            extra["g_extra_loss"] = self.g_extra_loss(x_fake, y_fake)
            g_loss = g_loss + extra["g_extra_loss"]
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward(inputs=self.g_params)  # no gradient work for D's weights (no requires_grad toggling)
        self.opt_g.step()

        for _ in range(t.n_dis):
            x_real, y_real = self.real_batch(t.batch_d)
            z, y_fake = self.fake_batch(t.batch_d)
            x_real, y_real = self.dequantized(x_real, y_real)  # after z: the random-number order of every run so far
            x_real = x_real.contiguous(memory_format=self.memory_format)
            with self.autocast():
                with torch.no_grad():
                    x_fake = G(z, y_fake)
                if self.joint_d_forward:  # one call, one power iteration per SN layer (see train=paper)
                    out_real, out_fake = D_sync(torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake])).split(
                        len(y_real))
                else:  # the paper's code: real, then fake, each call one power iteration
                    out_real, out_fake = D_sync(x_real, y_real), D_sync(x_fake, y_fake)
            d_loss = self.loss_d(out_real.adv, out_fake.adv) + head.d_aux_loss(out_real, y_real, out_fake, y_fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "d_real": out_real.adv.detach().float().mean(), "d_fake": out_fake.adv.detach().float().mean(),
                **{k: v.detach() for k, v in extra.items()}}

    # ---- the loop ----------------------------------------------------------------------------
    def save_samples(self, name: str) -> None:
        if not self.main:
            return
        grid = class_grid(self.G, self.data.n_classes, self.cfg.model.z_dim, self.device,
                          seed=(self.cfg.seed + 1234) % 2**64,
                          channels_apart=bool(self.cfg.dataset.get("channels_apart", False)))
        save_png(grid, self.run.samples / f"{name}.png")
        if self.tracker is not None:
            self.tracker.image("samples", grid, self.iteration)

    def status(self, state: str, start_it: int | None = None, t0: float | None = None, reason: str = "") -> None:
        """Write status.json; it/s is measured since (start_it, t0), else the last finished fit's rate."""
        if not self.main:
            return
        rate = self.train_it_per_s
        if start_it is not None and self.iteration > start_it:
            rate = (self.iteration - start_it) / max(time.perf_counter() - t0, 1e-9)
        # a CPU's thread count changes the reduction order, so bf16 (and fp32) numbers reproduce only with it
        threads = {"cpu_threads": torch.get_num_threads()} if self.device.type == "cpu" else {}
        self.run.write_status(state, self.iteration, self.cfg.train.iterations, self.wall_s,
                              None if rate is None else round(rate, 3), reason, train_precision=self.precision,
                              **threads, **self.status_extra)

    def fit(self) -> None:
        """Train until `train.iterations`; SIGTERM/SIGUSR1/SIGUSR2 (Slurm, submitit) checkpoint and stop cleanly."""
        t = self.cfg.train
        start_it = self.iteration
        t0, last = time.perf_counter(), time.perf_counter()
        self.status("running", start_it, t0)
        quiet = {} if self.main else {"disable": True}  # rank 0's bar; TQDM_DISABLE=1 still silences it
        bar = tqdm(total=t.iterations, initial=self.iteration, desc=f"{self.cfg.head.name}", unit="it",
                   dynamic_ncols=True, mininterval=1.0, **quiet)
        several = distributed.world_size() > 1
        with PreemptionSignals() as preemption, bar:  # the bar is closed on any exit (its line ends before errors)
            while self.iteration < t.iterations:
                losses = self.step()
                self.iteration += 1
                bar.update(1)
                now = time.perf_counter()
                self.wall_s += now - last
                last = now
                it, final = self.iteration, self.iteration == t.iterations
                due_eval = self.curve_due(it, final)
                stopping = preemption.signal is not None
                if several:  # all ranks stop at the same iteration: a signal is agreed on at log points
                    stopping = (it % t.log_every == 0 or final) and distributed.any_rank(stopping, self.device)
                # with eval.best_metric, every curve evaluation is a checkpoint too (it may be the new best)
                due_checkpoint = it % t.checkpoint_every == 0 or final or stopping \
                    or (due_eval and self.best is not None)
                if it % t.log_every == 0 or due_checkpoint:  # never checkpoint a diverged state
                    stacked = distributed.mean_across_ranks(torch.stack(list(losses.values())))  # global batch's
                    values = dict(zip(losses, stacked.tolist()))  # one host sync
                    if not all(math.isfinite(v) for v in values.values()) or abs(values["d_real"]) > t.max_abs_logit:
                        raise Diverged(f"non-finite or exploding values at iteration {it}: "
                                       + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
                if (it % t.log_every == 0 or final) and self.main:
                    record = {"iteration": it, "phase": "train", **values,
                              "lr": float(self.sched_g.get_last_lr()[0])}  # a 0-d tensor under train.cuda_graph
                    self.run.log(record)
                    if self.tracker is not None:
                        self.tracker.log(record)
                    bar.set_postfix(d=f"{values['d_loss']:.3f}", g=f"{values['g_loss']:.3f}")
                    self.status("running", start_it, t0)
                if it % t.sample_every == 0 or final:
                    self.save_samples(f"iter_{it:07d}")
                new_best = due_eval and self.track_best(self.evaluator.evaluate(self.G, it, "curve"))
                if due_checkpoint:
                    self.checkpoint()
                if new_best:  # after the last.pt that records it (restore_best mends a kill in between)
                    self.save_best()
                if stopping:  # at the last iteration too: the evaluation is still to come
                    bar.close()
                    received = preemption.signal or signal.SIGTERM  # a rank told by another one
                    self.status("preempted", start_it, t0, f"signal {received.name} at iteration {it}")
                    raise Preempted(received, preemption.previous_handler)
        bar.close()
        self.train_it_per_s = (self.iteration - start_it) / max(time.perf_counter() - t0, 1e-9)


class Preempted(Exception):
    """The job received SIGTERM/SIGUSR1/SIGUSR2/SIGINT, wrote a checkpoint and stopped; `previous_handler` (e.g.
    submitit's requeue) is what the process had installed before training started."""

    def __init__(self, signal_received: signal.Signals, previous_handler):
        super().__init__(f"preempted by {signal_received.name}")
        self.signal, self.previous_handler = signal_received, previous_handler


class PreemptionSignals:
    """Record SIGTERM/SIGUSR1/SIGUSR2/SIGINT during training instead of dying mid-step; restore the old handlers
    after. Slurm sends SIGTERM on preemption and `--signal` (SIGUSR2 in submitit's sbatch scripts: it avoids
    SIGUSR1, which NCCL may catch) before the time limit; the handler found installed (submitit's requeue) runs
    after the checkpoint (app.py). Ctrl-C (SIGINT) stops the same way, so the iterations since the last
    checkpoint are kept; a second Ctrl-C before the checkpoint is written interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)

    def __init__(self, stop_at_once: bool = False):
        """`stop_at_once`: raise Preempted from the handler, wherever the job is (the data and evaluation
        preparation before training, whose steps are cached or resumable: a store build, a classifier)."""
        self.signal, self.previous_handler, self._saved = None, None, {}
        self.stop_at_once = stop_at_once

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        self.signal = signal.Signals(signum)
        previous = self._saved.get(self.signal)
        # Python's own Ctrl-C handler would raise KeyboardInterrupt after the checkpoint: not a handler to run
        self.previous_handler = None if previous is signal.default_int_handler else previous
        if self.stop_at_once:
            self.restore()
            raise Preempted(self.signal, self.previous_handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        self.restore()
        return False

    def restore(self) -> None:
        """The handlers found on entry back in place (once)."""
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}
