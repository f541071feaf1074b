"""Which precision a rank trains in (``train.amp``): bf16 autocast where the device computes bf16 natively, float32
elsewhere.

On a CPU without bf16 instructions autocast emulates bf16 and runs slower than float32, so ``auto`` asks torch what
this machine's CPU has: AVX512-BF16 or AMX on x86, the BF16 extension on Arm (oneDNN's check). On a GPU, ``auto``
means compute capability 8.0 or later (bf16 tensor cores). Every rank decides for its own machine and the group
follows the weakest, so that all ranks of one run compute alike.
"""

from __future__ import annotations

import platform

import torch

from pipeline.distributed import gather_objects

BF16 = "bf16 autocast"
FP32 = "float32"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (as torch reports the CPU's instructions or the GPU's capability)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_wanted(amp: bool | str, device: torch.device) -> bool:
    """``train.amp`` on ``device``: ``true`` / ``false`` as set, ``auto`` where bf16 is native."""
    return native_bf16(device) if amp == "auto" else bool(amp)


def group_autocast(amp: bool | str, device: torch.device) -> bool:
    """Whether this rank trains under bf16 autocast: only if every rank of the process group wants it."""
    return all(gather_objects(autocast_wanted(amp, device)))


def precision_name(autocast: bool) -> str:
    """The precision a run trained in, as its output line and MLflow param say it."""
    return BF16 if autocast else FP32
