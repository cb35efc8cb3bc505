"""`python -m cgan_bench.bench [OVERRIDES] [--json] [--baseline] [--eval] [--jobs N,M,...]`: how fast is a training
step and an evaluation, and how close to the hardware's peak is it?

Times `Trainer.step()` (one G update + n_dis D updates) per head on synthetic uint8 data resident on the
device: warm-up excluded, device synchronised, median over repeats. FLOPs per iteration are counted with
torch.utils.flop_counter, and the ATen ops an eager iteration dispatches (its kernel launches on a GPU, views
aside) with OpCounter. `--baseline` also times a straightforward eager implementation of the same networks
(host-side batches, per-step .item(), requires_grad toggling, non-foreach Adam, default memory format) in the
same process.
Config overrides use Hydra syntax, e.g. `model=sngan train.n_dis=5 train.precision=bf16`. Rows report the
resolved precision (`train.precision=auto` -> fp32 or bf16 for this device) and the configured one.
`--jobs 1,2,4,8` also packs N concurrent training processes of the first head onto the same device (as a joblib
sweep with more jobs than GPUs does) and reports each job's it/s, the aggregate, the speed-up over one job and, on
CUDA, the memory per job (JSON key "packing"); on a CPU each job gets max(1, cores // N) torch threads.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .app import CONF_DIR, resolve_device
from .config import ConfigError, check_group_overrides, check_key_overrides, group_options, validate
from .data import ImageData
from .train.cuda_graph import WARMUP, check_supported as check_graph_supported
from .train.loop import LOSSES, Trainer, dequantize
from .train.precision import fp32_math, fp32_math_mode
from .train.run_dir import RunDir
from .train.samples import to_uint8

# Dense peak TFLOP/s by (device-name fragment, dtype), from the vendors' data sheets (SXM parts).
PEAK_TFLOPS = {("H100", "bf16"): 989.0, ("H100", "fp32"): 67.0, ("H200", "bf16"): 989.0, ("H200", "fp32"): 67.0,
               ("A100", "bf16"): 312.0, ("A100", "fp32"): 19.5,
               ("H100", "tf32"): 494.5, ("H200", "tf32"): 494.5, ("A100", "tf32"): 156.0}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, warmup: int, repeats: int) -> float:
    """Median seconds per call of fn over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators an eager step dispatches to the device (forward, backward and optimizer alike):
    on a GPU each is at least one kernel launch, so the count is the eager step's launch count up to the few ops
    that launch several or none (views), the same on any device and at any batch size."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_step_work(trainer: Trainer) -> tuple[int, int]:
    """FLOPs and dispatched ATen ops of one training step, counted on the eager modules (a compiled graph runs
    fused kernels the counters cannot see; the arithmetic is the same)."""
    fast = trainer.G_fast, trainer.D_fast, trainer.D_sync, trainer.graphed_step
    # an eager step, not a capture
    trainer.G_fast, trainer.D_fast, trainer.D_sync, trainer.graphed_step = trainer.G, trainer.D, trainer.D, None
    try:
        flops = count_flops(trainer.step)
        with OpCounter() as ops:
            trainer.step()
        return flops, ops.count
    finally:
        trainer.G_fast, trainer.D_fast, trainer.D_sync, trainer.graphed_step = fast


def profile_step(step, device: torch.device, iterations: int = 3, top: int = 25) -> dict:
    """Where one step's time goes, from torch.profiler over `iterations` steps of the path being timed (graphed,
    compiled or eager): per iteration, the wall time, the device kernels run and their summed time (on a CUDA
    device: GPU busy time, against the wall time a launch-bound step shows), the host's kernel-launch calls, and
    the `top` operators or kernels by self device time (self CPU time on a CPU). What issue 10 item 2 asks the
    cheaper kernels to be chosen from."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(iterations):
            step()
        synchronize(device)
        wall = (time.perf_counter() - t0) / iterations
    events = prof.events()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    launch_calls = sum(1 for e in events if e.device_type == DeviceType.CPU
                       and e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                                      "cudaGraphLaunch"))

    def self_time(e) -> float:  # microseconds
        return float(e.self_device_time_total if cuda else e.self_cpu_time_total)

    table = sorted(prof.key_averages(), key=self_time, reverse=True)
    total = sum(self_time(e) for e in table) or 1.0
    return {"iterations": iterations, "wall_ms_per_it": 1e3 * wall,
            "time_ranked_by": "self device (CUDA kernel) time" if cuda else "self CPU time",
            "device_kernels_per_it": len(kernels) / iterations if cuda else None,
            "device_busy_ms_per_it": sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / iterations if cuda else None,
            "launch_calls_per_it": launch_calls / iterations if cuda else None,
            "top": [{"name": e.key, "calls_per_it": e.count / iterations,
                     "self_ms_per_it": self_time(e) / 1e3 / iterations, "share": self_time(e) / total}
                    for e in table[:top] if self_time(e) > 0]}


def compile_counts() -> dict:
    """torch._dynamo's running counts of compiled graphs, graph breaks and the CUDA graphs inductor declined
    (mode=reduce-overhead skips a graph that mutates its inputs, and says so only in a log line)."""
    from torch._dynamo.utils import counters
    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


def prepare_profiler_for_cuda_graphs() -> None:
    """CUPTI must be set up before a CUDA graph is captured, or the profiler may miss the graph's kernels
    (pytorch PR 100441); a private helper, so its absence is no error."""
    try:
        from torch.profiler._utils import _init_for_cuda_graphs
        _init_for_cuda_graphs()
    except Exception:  # noqa: BLE001
        pass


def synthetic_data(n_classes: int, resolution: int, device, n: int = 4096) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    return ImageData(images, labels, n_classes, "synthetic", "train").to(device)


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for (frag, p), v in PEAK_TFLOPS.items() if frag in name and p == precision), None)


class BaselineStep:
    """A straightforward eager GAN step as commonly written: batches gathered on the host and copied over,
    D frozen with requires_grad_(False) for the G step, losses read with .item() every step, plain Adam,
    PyTorch's default (contiguous) memory format."""

    def __init__(self, trainer: Trainer):
        self.t, self.device = trainer.cfg.train, trainer.device
        self.trainer = trainer  # its precision: the baseline does the same arithmetic (IEEE fp32, no TF32; bf16)
        # the same networks and weights, in PyTorch's default memory format
        self.G = copy.deepcopy(trainer.G).to(memory_format=torch.contiguous_format)
        self.D = copy.deepcopy(trainer.D).to(memory_format=torch.contiguous_format)
        self.z_dim, self.n_classes = trainer.cfg.model.z_dim, trainer.data.n_classes
        self.images, self.labels = trainer.data.images.cpu(), trainer.data.labels.cpu()
        t = self.t
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), foreach=False)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), foreach=False)
        self.loss_d, self.loss_g = LOSSES[t.loss]
        self.history = []

    def __call__(self) -> None:
        """Under the trainer's fp32 math and autocast, so that a speed-up is overhead, not TF32 or bf16 maths."""
        with fp32_math(fp32_math_mode(self.trainer.precision)), self.trainer.autocast():
            self.update()

    def update(self) -> None:
        t, head = self.t, self.D.head
        self.D.requires_grad_(False)
        z = torch.randn(t.batch_g, self.z_dim).to(self.device)
        y = torch.randint(0, self.n_classes, (t.batch_g,)).to(self.device)
        out = self.D(self.G(z, y), y)
        g_loss = self.loss_g(out.adv) + head.g_aux_loss(out, y)
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        for _ in range(t.n_dis):
            idx = torch.randint(0, len(self.labels), (t.batch_d,))
            x_real, y_real = dequantize(self.images[idx]).to(self.device), self.labels[idx].to(self.device)
            z = torch.randn(t.batch_d, self.z_dim).to(self.device)
            y = torch.randint(0, self.n_classes, (t.batch_d,)).to(self.device)
            x_fake = self.G(z, y).detach()
            real, fake = self.D(x_real, y_real), self.D(x_fake, y)
            d_loss = self.loss_d(real.adv, fake.adv) + head.d_aux_loss(real, y_real, fake, y)
            self.opt_d.zero_grad()
            d_loss.backward()
            self.opt_d.step()
        self.history.append((d_loss.item(), g_loss.item()))


def make_config(overrides: list[str]):
    """The composed, validated config; a bad override is a ConfigError (one line), not Hydra's traceback."""
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose("config", overrides=["wandb.mode=disabled", *overrides])
    except (HydraException, OmegaConfBaseException) as err:  # what check_*_overrides cannot see, e.g. syntax
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the overrides {' '.join(overrides)} do not compose: {first} (fix or drop the override; "
                          "python -m cgan_bench --help lists the config groups and keys)") from None
    validate(cfg)
    return cfg


def check_heads(heads: list[str]) -> None:
    """Every --heads entry must be a head bench can compose (conf/head/*.yaml of a registered head)."""
    known = group_options((CONF_DIR,), "head")
    for head in heads:
        if head not in known:
            raise ConfigError(f"--heads {','.join(heads)}: {head!r} is no known head; the heads are "
                              f"{', '.join(known)} (e.g. --heads projection,concat,acgan)")


def count(minimum: int, what: str):
    """An argparse type: an integer >= minimum (a count that must not be empty), named in the refusal."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: an integer >= {minimum}, {what}")
        return value
    return parse


def positive_seconds(text: str) -> float:
    """An argparse type for a timed window: 0 or less would time a single step, inf never ends."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: a number of seconds > 0 (e.g. 10)")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals as the rest of the CLI's: one `error:` line, exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; python -m cgan_bench.bench --help lists the options\n")


def bench_head(cfg, device, args, run_dir) -> dict:
    """Time one head's training step (cfg already selects the head)."""
    data = synthetic_data(args.n_classes, cfg.dataset.resolution, device)
    trainer = Trainer(cfg, data, RunDir(run_dir), device)
    t, head = cfg.train, cfg.head.name
    if args.profile and trainer.graphed_step is not None:
        prepare_profiler_for_cuda_graphs()
    compiled_before = compile_counts()
    synchronize(device)
    t0 = time.perf_counter()
    trainer.step()  # the first step pays for compilation (train.compile) and cuDNN autotuning
    synchronize(device)
    first_s = time.perf_counter() - t0
    flops, ops = count_step_work(trainer)
    # train.cuda_graph: its eager warm-up iterations and the capture come before the timed replays
    warmup = args.warmup + (WARMUP + 1 if trainer.graphed_step is not None else 0)
    sec = time_call(trainer.step, device, warmup, args.repeats)
    profile = None
    if args.profile:  # after the timing, and never at its cost: a profiler failure is recorded, not raised
        try:
            profile = profile_step(trainer.step, device)
        except Exception as err:  # noqa: BLE001 (e.g. CUPTI unavailable on a machine)
            profile = {"error": f"{type(err).__name__}: {err}"}
    row = {"head": head, "precision": trainer.precision, "precision_config": t.precision, "compile": bool(t.compile),
           "compile_mode": str(t.compile_mode), "cuda_graph": trainer.graphed_step is not None,
           "channels_last": bool(t.channels_last), "joint_d_forward": trainer.joint_d_forward,
           "aten_ops_per_it": ops, "ms_per_it": 1e3 * sec, "it_per_s": 1.0 / sec, "gflop_per_it": flops / 1e9,
           "tflop_per_s": flops / sec / 1e12, "first_it_s": first_s}
    peak = peak_tflops(device, trainer.precision)
    row["peak_fraction"] = None if peak is None else row["tflop_per_s"] / peak
    if t.compile:  # what was compiled: a graph break or a skipped CUDA graph would time something else
        after = compile_counts()
        row["compile_counts"] = {k: after[k] - compiled_before[k] for k in after}
    if profile is not None:
        row["profile"] = profile
    if args.baseline:
        base = BaselineStep(trainer)
        base_sec = time_call(base, device, args.warmup, args.repeats)
        row.update({"baseline_ms_per_it": 1e3 * base_sec, "speedup_vs_baseline": base_sec / sec})
    return row


def bench_eval(cfg, device, args, run_dir) -> dict:
    """Generation and feature-extraction throughput, and the measured wall time of one final evaluation
    under the configured eval protocol (reference features cached beforehand, as in a real run)."""
    from .metrics.classifier import DomainClassifier
    from .metrics.evaluator import Evaluator
    from .metrics.feature_space import FeatureSpace, exact_float32
    n_real = cfg.eval.n_real if cfg.eval.n_real > 0 else 10000
    real = synthetic_data(args.n_classes, cfg.dataset.resolution, device, n=n_real)
    trainer = Trainer(cfg, real, RunDir(run_dir), device)
    G, batch = trainer.G.eval(), cfg.eval.batch_size
    z = torch.randn(batch, cfg.model.z_dim, device=device)
    y = torch.arange(batch, device=device) % args.n_classes

    @torch.no_grad()
    def generate():  # in the evaluation's IEEE fp32, as Evaluator generates
        with exact_float32():
            return to_uint8(G(z, y))

    gen_s = time_call(generate, device, 1, args.repeats)
    if cfg.eval.feature_space == "inception":
        space = inception_space(cfg, device)
    else:
        classifier = DomainClassifier(args.n_classes).to(device).eval()
        space = FeatureSpace("classifier", "classifier", classifier, classify=classifier.fc)
    images = generate()
    feat_s = time_call(lambda: space.extract(images, batch), device, 1, args.repeats)
    eval_cfg = cfg.eval.copy()
    eval_cfg.cache_dir = str(run_dir)
    evaluator = Evaluator(eval_cfg, space, real, RunDir(run_dir), device, cfg.model.z_dim, cfg.seed)  # caches refs
    synchronize(device)
    t0 = time.perf_counter()
    evaluator.evaluate(G, 0, "curve")  # as in a run: curve evaluations before the final keep the real roots
    synchronize(device)
    curve_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    record = evaluator.evaluate(G, 0, "final")
    synchronize(device)
    final_s = time.perf_counter() - t0
    row = {"feature_space": space.name, "eval_protocol_n_generated": cfg.eval.n_generated,
           "eval_protocol_n_real": n_real, "eval_batch": batch, "generated_img_per_s": batch / gen_s,
           "features_img_per_s": batch / feat_s, "curve_eval_s": curve_s, "final_eval_s": final_s,
           # the final evaluation's generation + features (device) and its metric math (CPU)
           "final_eval_generate_s": record["eval_generate_s"], "final_eval_metrics_s": final_s - record["eval_generate_s"],
           "intra_fid_mode": record.get("intra_fid_mode")}
    if evaluator.per_class_k is not None:  # the per-class pass alone (class statistics cached by now), per class
        t0 = time.perf_counter()
        with exact_float32():
            evaluator.per_class_pass(G)
        synchronize(device)
        per_class_s = (time.perf_counter() - t0) / len(evaluator.classes)
        row.update({"intra_fid_generated_per_class": evaluator.per_class_k,
                    "intra_fid_classes": len(evaluator.classes), "per_class_pass_s_per_class": per_class_s,
                    "per_class_pass_s_all_classes_one_device": per_class_s * args.n_classes})
    return row


def bench_metric_math(cfg, n_classes: int, dim: int = 2048, real_total: int = 50000) -> dict:
    """Seconds of each part of a final evaluation's metric math (the CPU side of eval_s) at the configured
    protocol's sizes, on random 2048-d features: a CIFAR-sized training split (real_total images, as many per
    class) for intra-FID, the protocol's n_real vs n_fake for FID/KID/precision-recall/density-coverage, IS on
    n_generated logits. Per-class: the first evaluation of a run (real covariance roots computed) and a later one
    (roots cached, compute.real_class_statistics)."""
    from .metrics import compute
    e = cfg.eval
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(dim, dim, generator=g) / dim ** 0.5
    per_class = max(2, int(e.n_generated) // n_classes)
    gen_labels = torch.arange(n_classes).repeat_interleave(per_class)
    real_labels = torch.arange(n_classes).repeat_interleave(real_total // n_classes)
    gen = torch.randn(len(gen_labels), dim, generator=g) @ mix
    real = torch.randn(len(real_labels), dim, generator=g) @ mix.T
    logits = torch.randn(len(gen_labels), 1008, generator=g)
    n_real = len(real) if e.n_real < 0 else min(int(e.n_real), len(real))
    fid_real, fid_fake = real[compute.evenly_spaced(len(real), n_real)], gen[compute.evenly_spaced(len(gen), e.n_fake)]
    row = {"threads": torch.get_num_threads(), "n_real": len(fid_real), "n_fake": len(fid_fake),
           "n_generated": len(gen), "real_per_class": real_total // n_classes, "classes": n_classes}
    memo = {}
    parts = {"inception_score": lambda: compute.inception_score(logits, int(e.isc_splits)),
             "fid": lambda: compute.fid(fid_fake, fid_real),
             "kid": lambda: compute.kid(fid_fake, fid_real, int(e.kid_subset_size)),
             "precision_recall": lambda: compute.precision_recall(fid_fake, fid_real, int(e.prc_neighborhood)),
             "density_coverage": lambda: compute.density_coverage(fid_real, fid_fake, int(e.coverage_k))}
    for which in ("first", "cached"):
        parts[f"per_class_{which}"] = lambda: compute.per_class_metrics(
            gen, logits[:, :n_classes], gen_labels, real, real_labels, n_classes, coverage_k=int(e.coverage_k),
            pairs_max=int(e.diversity_pairs_max), collapse_threshold=float(e.collapse_threshold), real_memo=memo)
    for name, fn in parts.items():
        t0 = time.perf_counter()
        fn()
        row[f"{name}_s"] = time.perf_counter() - t0
    row["final_eval_metric_math_s"] = sum(row[f"{name}_s"] for name in parts if name != "per_class_first")
    return row


def bench_frechet(dim: int = 2048, repeats: int = 1) -> list[dict]:
    """Seconds per Fréchet distance (FID, one intra-FID class) between two dim-d Gaussians on this machine's CPU:
    torch-fidelity's eigvals path, metrics/frechet.py's two symmetric eigendecompositions, and frechet.py with the
    real side's covariance root reused (what an Evaluator does for every class after the first evaluation).
    Features with a power-law spectrum (variance of component i ~ 1/i^2, as pooled CNN features decay), for a
    full-rank pair (2.5 dim vs 2.5 dim samples) and an ImageNet class (1300 real vs 5000 generated at dim 2048:
    the real covariance is rank-deficient)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    from .metrics.frechet import frechet_distance, sqrt_psd
    from .metrics.frechet import statistics as gaussian
    from .train.precision import cpu_has_native_bf16
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    other, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    scale = torch.arange(1, dim + 1, dtype=torch.float64).reciprocal()

    def features(n: int, rotation: torch.Tensor) -> torch.Tensor:
        return (torch.randn(n, dim, generator=g, dtype=torch.float64) * scale) @ rotation.T

    def seconds(fn) -> tuple[float, float]:
        times, value = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), value

    n_full, n_class = 5 * dim // 2, 1300 if dim > 1300 else dim // 2 + 1
    generated = gaussian(features(n_full, 0.7 * basis + 0.3 * other))
    rows = []
    for case, n_real in (("full rank", n_full), ("an ImageNet class", n_class)):
        real = gaussian(features(n_real, basis))
        root = sqrt_psd(real["sigma"])
        tf_s, tf_value = seconds(lambda: fid_statistics_to_metric(real, generated, verbose=False)[KEY_METRIC_FID])
        two_s, value = seconds(lambda: frechet_distance(real, generated))
        root_s, _ = seconds(lambda: frechet_distance(real, generated, root))
        rows.append({"case": case, "dim": dim, "n_real": n_real, "n_generated": n_full, "repeats": repeats,
                     "torch_fidelity_s": tf_s, "frechet_s": two_s, "frechet_cached_root_s": root_s,
                     "relative_difference": abs(value - tf_value) / abs(tf_value),
                     "cpu_threads": torch.get_num_threads(), "cpu_native_bf16": cpu_has_native_bf16()})
    return rows


def cpu_description() -> dict:
    """The host CPU, written beside every timing (CPU timings differ by model and by native bf16)."""
    import platform
    from pathlib import Path

    from .train.precision import cpu_has_native_bf16, onednn_isa_cap
    model = platform.processor() or platform.machine()
    try:
        model = next(line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    isa_cap = onednn_isa_cap()
    return {"model": model, "cores": cpu_cores(), "torch_threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(), **({"onednn_max_cpu_isa": isa_cap} if isa_cap else {})}


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def packing_worker(rank: int, n_jobs: int, overrides: list[str], device_str: str, n_classes: int, warmup: int,
                   window_s: float, threads: int | None, run_dir: str, barrier, done, queue) -> None:
    """One job of a packed sweep (a spawned process): build the Trainer, warm up, wait for every other job at
    the barrier, then count steps in a window of `window_s` seconds. After its window it keeps stepping until
    every job has finished its own, so each job's window is measured under the full load of N jobs."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True
        device = torch.device(device_str)
        cfg = make_config(overrides)
        if device.type == "cuda":
            if device.index is not None:
                torch.cuda.set_device(device)
            torch.cuda.reset_peak_memory_stats(device)
        data = synthetic_data(n_classes, cfg.dataset.resolution, device)
        trainer = Trainer(cfg, data, RunDir(run_dir), device)
        # the first step pays for compilation / cuDNN autotuning; train.cuda_graph's eager warm-up iterations and
        # its capture also come before the barrier, whatever --warmup says (as in bench_head)
        graph_steps = WARMUP + 1 if trainer.graphed_step is not None else 0
        for _ in range(1 + max(warmup, graph_steps)):
            trainer.step()
        synchronize(device)
        barrier.wait()
        steps, t0 = 0, time.perf_counter()
        while steps == 0 or time.perf_counter() - t0 < window_s:  # no per-step sync, as in real training
            trainer.step()
            steps += 1
        synchronize(device)
        seconds = time.perf_counter() - t0
        row = {"rank": rank, "steps": steps, "seconds": seconds, "it_per_s": steps / seconds,
               "threads": torch.get_num_threads()}
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            row.update({"peak_mem_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                        "peak_mem_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
                        "device_used_mib": (total - free) / 2**20})  # every process on the GPU, at window end
        with done.get_lock():
            done.value += 1
        while done.value < n_jobs:  # keep the load on until the last job's window ends
            trainer.step()
            synchronize(device)
        queue.put(("ok", row))
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the other jobs
        import traceback
        barrier.abort()
        queue.put(("error", f"job {rank}: {traceback.format_exc()}"))


def run_packed(n_jobs: int, overrides: list[str], device: torch.device, args, run_dir: str) -> list[dict]:
    """Start n_jobs spawned workers on `device`; return their rows (ordered by rank)."""
    import multiprocessing as mp
    import queue as queue_mod
    ctx = mp.get_context("spawn")
    barrier, done, results = ctx.Barrier(n_jobs), ctx.Value("i", 0), ctx.Queue()
    threads = max(1, cpu_cores() // n_jobs) if device.type == "cpu" else None
    procs = [ctx.Process(target=packing_worker, daemon=True,
                         args=(rank, n_jobs, overrides, str(device), args.n_classes, args.warmup, args.pack_seconds,
                               threads, os.path.join(run_dir, f"pack{n_jobs}_{rank}"), barrier, done, results))
             for rank in range(n_jobs)]
    for p in procs:
        p.start()
    rows = []
    try:
        while len(rows) < n_jobs:
            try:
                status, payload = results.get(timeout=2.0)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a packing job died (exit code {dead[0].exitcode}) without reporting; "
                                       f"out of memory?") from None
                continue
            if status == "error":
                raise RuntimeError(f"packing with {n_jobs} jobs failed in {payload}")
            rows.append(payload)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    return sorted(rows, key=lambda r: r["rank"])


def bench_packing(jobs: list[int], overrides: list[str], device: torch.device, args, run_dir: str) -> dict:
    """Aggregate throughput of N concurrent training jobs sharing one device, for each N in `jobs` (1 always
    included, the reference of the speed-up)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # this process's cached blocks would count against the workers
    out = {"head": next(h for h in args.heads.split(",") if h), "window_s": args.pack_seconds,
           "method": (f"N spawned processes, each one Trainer on {device}; warm-up ({args.warmup} steps after the "
                      f"first), a barrier, then steps counted over a common {args.pack_seconds:g} s window (no "
                      "per-step sync; the device synchronised at its end); each job keeps stepping until every "
                      "job's window has ended; aggregate = sum of the jobs' it/s"),
           "rows": []}
    if device.type == "cpu":
        out["method"] += f"; CPU: torch threads per job = max(1, {cpu_cores()} cores // N)"
    overrides = [*overrides, f"head={out['head']}"]
    for n in sorted({1, *jobs}):
        per_job = run_packed(n, overrides, device, args, run_dir)
        row = {"jobs": n, "threads_per_job": per_job[0]["threads"],
               "per_job_it_per_s": [r["it_per_s"] for r in per_job],
               "aggregate_it_per_s": sum(r["it_per_s"] for r in per_job), "per_job": per_job}
        if device.type == "cuda":
            row["peak_mem_per_job_mib"] = max(r["peak_mem_reserved_mib"] for r in per_job)
            row["device_used_mib"] = per_job[0]["device_used_mib"]
        out["rows"].append(row)
    single = out["rows"][0]["aggregate_it_per_s"]
    for row in out["rows"]:
        row["speedup_vs_1_job"] = row["aggregate_it_per_s"] / single
    return out


def inception_space(cfg, device):
    """The real Inception extractor; without its weights file, the same architecture with random weights
    (throughput does not depend on the weight values), reported as such."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    from .metrics.feature_space import FeatureSpace, WeightsMissingError, _InceptionPoolAndLogits, \
        inception_weights_path
    try:
        weights = inception_weights_path(cfg.eval.inception_weights)
        return FeatureSpace("inception", "inception", _InceptionPoolAndLogits(weights).to(device))
    except WeightsMissingError:
        with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
                mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
            model = _InceptionPoolAndLogits(None)
        well_scaled_random_weights(model)
        return FeatureSpace("inception (random weights, timing only)", "inception-random", model.to(device))


def well_scaled_random_weights(model: torch.nn.Module) -> None:
    """He-initialised convolutions (PyTorch's default init shrinks activations about 1.7x per layer, and after
    Inception's ~95 convolutions its features were ~1e-8 with dimensions of zero variance): features of order
    one, so that the metric math (matrix square roots, neighbourhoods) is timed on inputs like real ones."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


def format_table(rows: list[dict], keys: list[str]) -> str:
    import pandas as pd
    return pd.DataFrame(rows)[[k for k in keys if any(k in r for r in rows)]].to_markdown(index=False,
                                                                                        floatfmt=".3g")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m cgan_bench.bench", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=sngan train.n_dis=5")
    parser.add_argument("--heads", default="projection,concat,acgan", help="comma-separated heads to time")
    parser.add_argument("--n-classes", type=count(1, "the classes of the synthetic data"), default=10)
    parser.add_argument("--warmup", type=count(0, "the untimed iterations before each timing"), default=3)
    parser.add_argument("--repeats", type=count(1, "the timed iterations whose median is reported"), default=5)
    parser.add_argument("--baseline", action="store_true", help="also time a plain eager implementation")
    parser.add_argument("--eval", action="store_true", help="also time generation and feature extraction")
    parser.add_argument("--frechet", action="store_true",
                        help="also time one 2048-d Fréchet distance (FID, intra-FID per class) on the CPU, "
                             "torch-fidelity's way and metrics/frechet.py's")
    parser.add_argument("--metric-math", action="store_true",
                        help="also time each part of a final evaluation's metric math on the CPU (IS, FID, KID, "
                             "precision/recall, density/coverage, per-class) at the eval protocol's sizes")
    parser.add_argument("--profile", action="store_true",
                        help="also profile 3 timed steps of each head (torch.profiler): kernels and GPU busy time per "
                             "iteration, launch calls, the top operators by self device time (JSON key \"profile\")")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--jobs", default=None,
                        help="comma-separated job counts, e.g. 1,2,4,8: also run N concurrent training processes of "
                             "the first head on the same device and report per-job and aggregate it/s (packing)")
    parser.add_argument("--pack-seconds", type=positive_seconds, default=10.0,
                        help="timed window of each packing measurement")
    args = parser.parse_intermixed_args(argv)
    heads = [h for h in args.heads.split(",") if h]  # --heads "": no training rows (an --eval timing)
    try:  # every config composed and checked here, so a bad one is refused before any timing, not between heads
        check_group_overrides(args.overrides, CONF_DIR)
        check_key_overrides(args.overrides, CONF_DIR)
        check_heads(heads)
        cfg = make_config(args.overrides)
        device = resolve_device(str(cfg.device))
        head_cfgs = [make_config([*args.overrides, f"head={head}"]) for head in heads]
        for c in (cfg, *head_cfgs):
            refusal = check_graph_supported(c, device, 1, False)
            if refusal:
                raise ConfigError(refusal)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        jobs = [int(n) for n in args.jobs.split(",") if n.strip()] if args.jobs else []
        if any(n < 1 for n in jobs) or (args.jobs and not jobs):
            raise ValueError
    except ValueError:
        print(f"error: --jobs takes positive job counts separated by commas, not {args.jobs!r}", file=sys.stderr)
        return 2
    if jobs and not heads:
        print(f"error: --jobs {args.jobs} packs jobs of the first of --heads, and --heads is empty; name a head "
              "(e.g. --heads projection)", file=sys.stderr)
        return 2
    import tempfile
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
              "cpu": cpu_description(), "torch": torch.__version__, "config": {"model": OmegaConf.to_container(cfg.model, resolve=True), "resolution": cfg.dataset.resolution,
                                                     "n_dis": cfg.train.n_dis, "batch_d": cfg.train.batch_d,
                                                     "batch_g": cfg.train.batch_g, "overrides": args.overrides},
              "method": f"median of {args.repeats} timed iterations after {args.warmup} warm-up, device synchronised",
              "train": []}
    with tempfile.TemporaryDirectory() as tmp:
        for c in head_cfgs:
            result["train"].append(bench_head(c, device, args, tmp))
        if args.eval:
            result["eval"] = bench_eval(cfg, device, args, tmp)
        if args.frechet:
            result["frechet"] = bench_frechet(repeats=args.repeats)
        if args.metric_math:
            result["metric_math"] = bench_metric_math(cfg, args.n_classes)
        if jobs:
            result["packing"] = bench_packing(jobs, args.overrides, device, args, tmp)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"device: {result['device']}, torch {result['torch']}, {result['method']}")
        print(f"config: {result['config']}\n")
        print(format_table(result["train"], ["head", "precision", "compile", "cuda_graph", "channels_last",
                                             "joint_d_forward", "aten_ops_per_it", "ms_per_it",
                                             "it_per_s", "gflop_per_it", "tflop_per_s", "peak_fraction", "first_it_s",
                                             "baseline_ms_per_it", "speedup_vs_baseline"]))
        for row in result["train"]:
            if "profile" in row and "error" in row["profile"]:
                print(f"\nprofile, head {row['head']}: failed ({row['profile']['error']})")
            elif "profile" in row:
                prof = row["profile"]
                print(f"\nprofile, head {row['head']}: {prof['wall_ms_per_it']:.1f} ms/it wall"
                      + (f", {prof['device_kernels_per_it']:.0f} kernels and {prof['device_busy_ms_per_it']:.1f} ms "
                         f"GPU busy per it, {prof['launch_calls_per_it']:.0f} launch calls per it"
                         if prof["device_kernels_per_it"] is not None else "")
                      + f"; top by {prof['time_ranked_by']}:")
                print(format_table(prof["top"], ["name", "calls_per_it", "self_ms_per_it", "share"]))
        if "eval" in result:
            print()
            print(format_table([result["eval"]], list(result["eval"])))
        if "frechet" in result:
            print()
            print(format_table(result["frechet"], list(result["frechet"][0])))
        if "metric_math" in result:
            print()
            print(format_table([result["metric_math"]], list(result["metric_math"])))
        if "packing" in result:
            pack = result["packing"]
            print(f"\npacking, head {pack['head']}: {pack['method']}")
            rows = [{**r, "per_job_it_per_s": ", ".join(f"{v:.3g}" for v in r["per_job_it_per_s"])}
                    for r in pack["rows"]]
            print(format_table(rows, ["jobs", "threads_per_job", "per_job_it_per_s", "aggregate_it_per_s",
                                      "speedup_vs_1_job", "peak_mem_per_job_mib", "device_used_mib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
