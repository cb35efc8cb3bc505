"""train.cuda_graph: the whole training update (G step, n_dis D steps, both Adam updates) replayed as one CUDA
graph, so an iteration costs one launch instead of thousands.

Why: the paper's 32px step is launch-bound on an H100 (issue 10: ~6,200 kernel launches per iteration, the GPU
busy ~74 ms of ~190 ms, and 4x the batch costs the same wall time). torch.compile's "reduce-overhead" mode
graphs G's and D's forwards and backwards separately; this captures the iteration whole, optimizers included.

How (PyTorch's "whole-network capture", docs: CUDA semantics > CUDA Graphs):
- The first WARMUP iterations run eagerly on a side stream. They are real training iterations: cuDNN chooses
  its algorithms, Adam creates its state, autograd its buffers.
- The next iteration is captured with torch.cuda.graph (capture records, it does not run), then replayed; every
  later iteration is one replay. The outputs (losses, logits' means) are the graph's static tensors, read by the
  loop at log points as before.
- Inside the graph: z, labels, real-batch indices and dequantisation noise, drawn from the default CUDA
  generator (each replay advances its offset as the eager step would, so the checkpointed RNG state resumes the
  same stream); spectral norm's and batch norm's in-place buffer updates; Adam with capturable=True and its
  learning rate held in a device tensor.
- Outside: the LR schedule (Trainer.step fills the lr tensors after each replay: four small kernels), logging,
  checkpoints, evaluation and sampling (eager, between replays).
- Warm-up and capture run on one side stream of the run's own GPU, inside that device's context: torch.cuda.graph
  captures on a stream of the *current* device, so a job on cuda:1 while cuda:0 is current (device=auto in a sweep)
  would otherwise capture an empty graph and every replay would do nothing.
- A graph reads fixed addresses: anything that replaces the tensors it reads (an optimizer's load_state_dict)
  must call reset(), and the next iteration warms up and captures again.

Where it cannot run, config/app refuse it in one line before work starts (`check_supported`): a CPU (no CUDA
graphs), several processes (DDP's gradient hooks), a dataset streamed from disk (host-to-device copies from
worker processes), torch.compile's own CUDA graphs (compile_mode=reduce-overhead or max-autotune, whose
inductor graphs would nest inside the capture).
"""
import contextlib
import inspect
import weakref
from typing import Callable

import torch

WARMUP = 3  # eager iterations before the capture (PyTorch's examples use 3; DDP would need 11)


@contextlib.contextmanager
def host_syncs_warned():
    """CUDA's sync debug mode "warn" inside the block, the previous mode after: the last warm-up names any host
    sync (.item(), a D2H copy, nonzero...) by its op; inside the capture that follows, the same sync would fail
    with an opaque "operation not permitted when stream is capturing"."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class GraphedStep:
    """Calls `update()` (one training update, returning a dict of device tensors, no host syncs) eagerly for
    WARMUP iterations, then captures it once and replays the capture on every later call."""

    def __init__(self, update: Callable[[], dict], device: torch.device, warmup: int = WARMUP):
        self.device, self.warmup = torch.device(device), warmup
        if inspect.ismethod(update):  # held weakly: a Trainer and its GraphedStep must not form a reference cycle,
            method = weakref.WeakMethod(update)  # which would keep the models, Adam state and the graph's memory
            self.update = lambda: method()()     # pool alive until Python's cycle collector runs (a sweep's next job
        else:                                    # in the same worker process would start with that memory taken)
            self.update = update
        self.graph, self.outputs, self.eager_iterations, self._stream = None, None, 0, None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> dict:
        with torch.cuda.device(self.device):  # replays, warm-up and capture on this run's GPU (see above)
            if self.graph is not None:
                self.graph.replay()
                return self.outputs
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            if self.eager_iterations < self.warmup:
                return self._warm_up()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                outputs = self.update()
            self.graph, self.outputs = graph, outputs
            graph.replay()  # the capture ran nothing: this replay is the iteration
            return outputs

    def _warm_up(self) -> dict:
        """One eager iteration on the side stream the capture will use, ordered after and before the main
        stream's work (the LR schedule's fills of the lr tensors run there)."""
        side, main = self._stream, torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        last = self.eager_iterations == self.warmup - 1
        with torch.cuda.stream(side), (host_syncs_warned() if last else contextlib.nullcontext()):
            outputs = self.update()
        main.wait_stream(side)
        self.eager_iterations += 1
        return outputs

    def reset(self) -> None:
        """Forget the capture (its tensors were replaced); the next calls warm up and capture again."""
        self.graph, self.outputs, self.eager_iterations = None, None, 0


def check_supported(cfg, device: torch.device, world_size: int, streamed: bool) -> str | None:
    """Why train.cuda_graph=true cannot run here (one line naming the fix), or None where it can."""
    t = cfg.train
    if not t.get("cuda_graph", False):
        return None
    if device.type != "cuda":
        return (f"train.cuda_graph=true needs a CUDA device, but this job runs on {device}; set "
                f"train.cuda_graph=false (the eager step is the same training)")
    if world_size > 1:
        return (f"train.cuda_graph=true is not supported with {world_size} processes (DDP) yet; set "
                f"train.cuda_graph=false for multi-GPU runs")
    if streamed:
        return ("train.cuda_graph=true needs the dataset on the device, but it is streamed from disk; set "
                "dataset.storage=device if it fits in GPU memory, else train.cuda_graph=false")
    if t.compile and t.compile_mode in ("reduce-overhead", "max-autotune"):
        return (f"train.cuda_graph=true already graphs the whole iteration; torch.compile's CUDA graphs "
                f"(compile_mode={t.compile_mode}) cannot nest inside it: set train.compile_mode=default (or "
                f"train.cuda_graph=false)")
    return None


def learning_rates_as(optimizer: torch.optim.Optimizer, graphed: bool, device: torch.device) -> None:
    """Adam's lr as a device tensor and capturable=True for the graph (a captured float would be a constant),
    a float and capturable=False for the eager step; fused Adam on CUDA either way. Called after construction
    and after load_state_dict, which brings back whatever the checkpoint's writer had: a CPU-written state (a
    fine-tune of a CPU-trained parent) has fused=None and its step counts on the CPU, which a capturable or fused
    step refuses, so they are moved to the parameters' device."""
    device = torch.device(device)
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device) if graphed else lr
        group["capturable"] = graphed
        if device.type == "cuda":
            group["fused"], group["foreach"] = True, None
            for p in group["params"]:
                state = optimizer.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].to(p.device, torch.float32)


def plain_numbers(state):
    """A copy of an optimizer's or scheduler's state dict with 0-d tensors of its hyper-parameters (a graphed
    run's learning rates) as Python floats, so a checkpoint reads the same whichever path wrote it."""
    if isinstance(state, torch.Tensor) and state.dim() == 0 and state.is_floating_point():
        return state.item()
    if isinstance(state, dict):
        return {k: v if k == "state" else plain_numbers(v) for k, v in state.items()}  # "state": Adam's moments
    if isinstance(state, list):
        return [plain_numbers(v) for v in state]
    return state
