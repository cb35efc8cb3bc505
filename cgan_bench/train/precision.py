"""Which floating-point math trains the networks (`train.precision`), chosen for the hardware.

bf16 autocast only pays where the device computes bf16 natively: on a 2-core Xeon without AVX512-BF16/AMX a
bf16 step was 1.8x slower than fp32 (394 vs 220 ms/it), on a CPU with AMX it is ~20% faster. So `auto` (the
default of every recipe) picks bf16 on CUDA GPUs with native bf16 (compute capability >= 8.0) and on CPUs with
AVX512-BF16 or AMX-BF16, else fp32. `fp32` is IEEE fp32: torch's defaults let cuDNN convolutions use TF32 on
Ampere and later, which the paper's fp32 did not have; `tf32` allows it explicitly (on CUDA >= 8.0; elsewhere
there is no TF32 and it resolves to fp32). The resolved choice is what status.json and the report record.
"""
import contextlib
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "tf32")


# oneDNN's instruction-set levels (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: capped there, oneDNN runs bf16
# convolutions and matmuls emulated in fp32 units, ~2x slower than fp32 (measured in BENCHMARKS.md).
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                      "AVX512_CORE_VNNI"})


def onednn_isa_cap() -> str | None:
    """ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA), upper-cased, where set: the instruction set oneDNN
    may use at most (the variable also emulates an older CPU)."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(name, "").strip().upper()
        if value:
            return value
    return None


def onednn_caps_out_bf16() -> bool:
    """True if oneDNN is capped below native bf16, so bf16 is not fast here even on a CPU with the instructions."""
    return onednn_isa_cap() in ONEDNN_ISAS_WITHOUT_BF16


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16) and oneDNN may use it."""
    if onednn_caps_out_bf16():
        return False
    try:  # torch's own CPU feature detection (cpuinfo), where this build has it
        caps = torch._C._cpu._get_cpu_capability()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    except Exception:
        pass
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:
        pass
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    except Exception:
        return False


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    try:
        return tuple(torch.cuda.get_device_capability(device))
    except Exception:
        return (0, 0)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores (Ampere and later); torch's is_bf16_supported alone also counts emulation."""
    try:
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch without the argument
        supported = torch.cuda.is_bf16_supported()
    except Exception:
        return False
    return bool(supported) and _cuda_capability(device) >= (8, 0)


def resolve_precision(requested: str, device: torch.device) -> str:
    """`train.precision` -> the math that will run: "fp32" (IEEE), "bf16" (autocast) or "tf32"."""
    device = torch.device(device)
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if requested == "tf32":
        return "tf32" if device.type == "cuda" and _cuda_capability(device) >= (8, 0) else "fp32"
    if requested in ("fp32", "bf16"):
        return requested
    raise ValueError(f"train.precision={requested!r} is not one of {', '.join(PRECISIONS)}")


@contextlib.contextmanager
def fp32_math(mode: str = "ieee"):
    """fp32 convolutions and matmuls in `mode` ("ieee" or "tf32") inside the block; the previous global
    settings are restored after. bf16 training runs its remaining fp32 parts (spectral norm, losses) as IEEE."""
    assert mode in ("ieee", "tf32"), mode
    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cuda.matmul.fp32_precision = mode
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def fp32_math_mode(precision: str) -> str:
    """The fp32 math of a resolved precision: TF32 only for "tf32", IEEE for "fp32" and "bf16"."""
    return "tf32" if precision == "tf32" else "ieee"
