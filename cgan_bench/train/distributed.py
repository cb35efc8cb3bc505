"""Multi-GPU data-parallel training: one process per GPU, the same training loop (train/loop.py) on every rank.

Launch one process per GPU with torchrun (or srun, which sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID):

    torchrun --standalone --nproc_per_node 4 -m cgan_bench dataset=cifar10 hydra.run.dir=runs/c10_ddp

Two nodes under Slurm, 4 GPUs each (one torchrun per node; torchrun starts the 4 processes):

    #SBATCH --nodes=2 --ntasks-per-node=1 --gpus-per-node=4 --cpus-per-task=32
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    srun torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint "$head:29500" \
        --rdzv_id "$SLURM_JOB_ID" -m cgan_bench dataset=cifar10 hydra.run.dir=runs/c10_ddp

or without torchrun, one Slurm task per GPU (`--ntasks-per-node=4`), MASTER_ADDR/MASTER_PORT exported:

    export MASTER_ADDR=$head MASTER_PORT=29500
    srun python -m cgan_bench dataset=cifar10 hydra.run.dir=runs/c10_ddp

A sweep of multi-GPU runs (-m) through Hydra's submitit launcher, configured in conf/hydra/launcher/slurm_gpus.yaml:
each sweep job is one Slurm job with one task per GPU (tasks_per_node = gpus_per_node), and its tasks are the
ranks of one run. Two nodes x 4 GPUs, so each job of the sweep is one 8-rank run:

    python -m cgan_bench -m +sweep=paper_imagenet dataset.path=/data/imagenet hydra/launcher=slurm_gpus \
        hydra.launcher.nodes=2 hydra.launcher.gpus_per_node=4 hydra.launcher.partition=gpu

Each task finds itself in a submitit job (submitit_job: submitit exports SUBMITIT_EXECUTOR there) and takes its
rank, world size, local rank and the master (the job's first node; the port drawn from the job id) from Slurm's
variables through submitit's TorchDistributedEnvironment (setup). All tasks resolve the same job directory: the
launcher pickles the sweep's config with its resolved timestamp, and Hydra copies that into each job's config.
Rank 0 alone writes there (the launcher gives ranks > 0 hydra.output_subdir=null and no job log). Slurm sends
submitit's SIGUSR2 to every task before the time limit (train/loop.py checkpoints and stops; submitit requeues
the job, which resumes). A multirun started by torchrun/srun is refused (each process would run the whole sweep).

Under torchrun/srun, set hydra.run.dir explicitly: the default name holds a timestamp, which ranks started a second apart would
resolve differently (only rank 0 writes there, but every rank must agree on nothing else).

The contract:
- train.batch_d / train.batch_g are the GLOBAL batches; each of the N ranks takes batch/N (refused if not
  divisible). Every rank draws the same global batch (z, labels, real indices, dequantisation noise: all ranks
  share the run's seed) and keeps its own slice, rank r the r-th. So N processes train the same model as one
  process on the same global batch, up to rounding and batch norm (below); tests/test_distributed.py checks it.
  A dataset streamed from disk (data/image_store.py) is the exception: there each rank reads only its own share
  of real images with its own sampler (Trainer.real_batch), so the disk serves each global batch once.
- G and D are wrapped in DistributedDataParallel: gradients are averaged across ranks, and module buffers
  (spectral norm's u/v, batch norm's running statistics) are broadcast from rank 0 at every forward.
  Spectral norm's power iteration depends only on the weights, so D's u/v are identical on every rank anyway.
- Batch norm in G: train.sync_bn=false (the default, as in most GAN code) normalises each rank's slice with its
  own statistics; true converts G's batch norms to torch.nn.SyncBatchNorm (statistics of the global batch;
  CUDA only in PyTorch, so device=cpu refuses it).
- Rank 0 alone reads and writes the run directory (checkpoints, metrics, samples, status.json) and W&B; the
  other ranks train, evaluate and write nothing there. Checkpoints hold the unwrapped modules' state, so a
  checkpoint resumes on any number of processes with the same global batch.
- Evaluation (curve, final, best) is sharded: every rank generates and embeds its contiguous slice of the fixed
  class-balanced (z, labels) set (the same noise one process draws; G's buffers are rank 0's), the features and
  logits are gathered to rank 0, which alone computes the metrics and writes; the record is then broadcast, so
  every rank returns the same one. In the per-class intra-FID mode (eval.intra_fid_per_class) rank r generates
  and scores classes r, r+N, ... and builds their cached real statistics (metrics/class_stats.py). What rank 0
  builds once (the feature space: Inception weights, the domain classifier; the reference features) it builds
  first while the others wait at a barrier, then they read it from the cache. A preemption signal between
  generation batches is agreed on by all ranks (any_rank), so they stop the evaluation together.
- Not yet: fine-tuning (finetune.parent), multirun sweeps under torchrun/srun (hydra/launcher=slurm_gpus runs
  them), heads whose loss compares samples within a batch
  (reacgan's data-to-data loss sees only the rank's slice).
"""
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn  # collectives with autograd (all_gather that back-propagates)
from torch import nn

# How long a rank waits at a collective: rank 0 alone builds the feature space and reference features meanwhile
# (a fresh cache: minutes to hours at ImageNet scale).
TIMEOUT = timedelta(hours=2)


def submitit_job() -> bool:
    """True in a task of a job that submitit started (hydra/launcher=slurm_gpus or submitit_slurm/submitit_local):
    submitit exports SUBMITIT_EXECUTOR in its jobs and finds its JobEnvironment by it (JobEnvironment.activated).
    False for a plain process, under torchrun (TORCHELASTIC_RUN_ID, also where torchrun runs inside a job) and
    for a hand-written srun."""
    env = os.environ
    return bool(env.get("SUBMITIT_EXECUTOR")) and "TORCHELASTIC_RUN_ID" not in env


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else, in a submitit job, from
    Slurm's variables as submitit reads them (TorchDistributedEnvironment), else Slurm's
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID where MASTER_ADDR is exported (srun, a task per GPU), else (0, 1, 0)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if submitit_job():
        from submitit.helpers import TorchDistributedEnvironment
        d = TorchDistributedEnvironment()
        return d.rank, d.world_size, d.local_rank
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:  # srun without torchrun
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def refuses_multirun() -> bool:
    """A multirun (-m) job must not run as several processes that torchrun/srun started: each process would run
    the whole sweep. A task of a submitit job may: there each sweep job is one Slurm job whose tasks are the
    ranks of one run (hydra/launcher=slurm_gpus)."""
    return env_world()[1] > 1 and not submitit_job()


def hydra_rank_overrides() -> list[str]:
    """Hydra overrides for this process: ranks > 0 of a multi-process run write no Hydra files (.hydra/, the job
    log); rank 0 alone writes the run directory."""
    return ["hydra.output_subdir=null", "hydra/job_logging=disabled"] if env_world()[0] != 0 else []


def setup(device: str) -> bool:
    """Join the process group when launched as several processes (NCCL on GPUs, gloo for device=cpu);
    True where a group was started (call teardown at the end). A single process does nothing.
    In a submitit job, submitit's TorchDistributedEnvironment exports MASTER_ADDR (the job's first node),
    MASTER_PORT (drawn from the job id unless set), RANK, WORLD_SIZE and LOCAL_RANK for env://; every task sees
    the node's GPUs and takes the one of its local rank, as under torchrun."""
    rank, world, local_rank = env_world()
    if world <= 1 or dist.is_initialized():
        return False
    if submitit_job() and "RANK" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    gpu = device != "cpu" and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local_rank)
    os.environ.setdefault("MASTER_PORT", "29500")  # srun: MASTER_ADDR exported by the job script
    dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world, timeout=TIMEOUT,
                            init_method="env://")
    return True


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or a single process): the one that reads/writes the run directory, logs and evaluates."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """A GPU run uses the GPU of this node matching the process's local rank."""
    if world_size() > 1 and device.type == "cuda":
        return torch.device(f"cuda:{env_world()[2]}")
    return device


def check_config(cfg) -> None:
    """One line (ConfigError) for what a multi-process run cannot do; nothing for a single process."""
    from ..config import ConfigError
    n = world_size()
    if n == 1:
        return
    t = cfg.train
    for key in ("batch_d", "batch_g"):
        if t[key] % n:
            raise ConfigError(f"train.{key}={t[key]} is not allowed: it is the global batch, split over the {n} "
                              f"processes; use a multiple of {n}")
    if t.get("sync_bn", False) and str(cfg.device) == "cpu":
        raise ConfigError("train.sync_bn=true is not allowed with device=cpu: torch.nn.SyncBatchNorm runs on "
                          "GPUs only; set train.sync_bn=false")
    if cfg.get("finetune", {}).get("parent") is not None:
        raise ConfigError("finetune.parent is not allowed in a multi-process run yet; fine-tune on one process")


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a global batch (rank r takes the r-th of world_size equal slices)."""
    n = world_size()
    if n == 1:
        return x
    per = x.shape[0] // n
    return x.narrow(0, rank() * per, per)


def wrap(G: nn.Module, D: nn.Module, device: torch.device, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
    """DistributedDataParallel views of G and D sharing their parameters (the modules themselves for a single
    process). sync_bn converts G's batch norms to SyncBatchNorm in place (same state-dict keys)."""
    if world_size() == 1:
        return G, D
    if sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(G)  # G's children are replaced; G itself stays the same object
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(G, device_ids=ids), nn.parallel.DistributedDataParallel(D, device_ids=ids)


def mean_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (logged losses: the global batch's, the same number on every rank)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank where it is True on one (a preemption signal: all ranks stop at the same iteration)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def broadcast_state(state):
    """Rank 0's object (tensors moved to the CPU) on every rank."""
    box = [_to_cpu(state) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def my_share(n: int) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of n items (rank r the r-th of world_size near-equal parts)."""
    r, w = rank(), world_size()
    return n * r // w, n * (r + 1) // w


def gather_rows(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's rows concatenated in rank order (a CPU tensor on every rank; `x` itself for one process).
    Ranks may hold different numbers of rows (none too): the collective runs on equal-sized padded tensors on
    `device` (NCCL needs CUDA tensors)."""
    if world_size() == 1:
        return x
    sizes = gather_objects((x.shape[0], tuple(x.shape[1:])))
    counts = [n for n, _ in sizes]
    tail = next((t for n, t in sizes if n), tuple(x.shape[1:]))  # a rank without rows may not know the width
    padded = torch.zeros((max(counts), *tail), dtype=x.dtype, device=device)
    if x.shape[0]:
        padded[:x.shape[0]] = x.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n].cpu() for p, n in zip(parts, counts)])


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-rank tensor (every rank's slice, in rank order: what `shard` split), with the
    gradient flowing back to each rank's own slice (torch.distributed.nn's all_gather): for a loss over pairs of
    samples that must see the whole batch. `x` itself for one process."""
    if world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x))


def gather_objects(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (small picklable things: per-class rows); [obj] alone."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, _to_cpu(obj))
    return out


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (batch norm's running statistics) on every rank: after a training step each rank's
    batch norm has updated them with its own slice, and an evaluation must use one generator."""
    if world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)
