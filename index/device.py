"""Where torch work runs: one rule for training, the transformers scorers and the embedder.

`pick_device("auto")` is CUDA when torch sees a GPU, else the CPU; "cpu" and "cuda" insist, and asking for CUDA
where torch sees none is a configuration error rather than a silent fall-back to a much slower run. Under Ray a
replica sees a GPU only when its deployment reserves one (`ray_actor_options.num_gpus`): Ray hides the GPUs from
every replica that reserves none, so "auto" runs those on the CPU.

It lives in `index/`, the bottom layer, because the embedder uses it as well as the routers. torch is imported
inside the functions, so importing this module stays free.
"""

from __future__ import annotations

from typing import Any

from index.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(requested: str = "auto") -> str:
    """"cuda" or "cpu" for a requested "auto", "cpu" or "cuda"; ConfigError for anything else or a missing GPU."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU (a CPU build of torch, no driver, "
                          "or a Ray replica that reserves no GPU: set ray_actor_options.num_gpus)")
    return "cuda" if available else "cpu"


def native_bf16(device: str) -> bool:
    """Whether `device` computes bf16 in hardware: on CUDA, compute capability 8 (Ampere) or later.

    Older GPUs only emulate bf16, which is slower than fp32 there. The CPU answer is left to the callers, which
    already decide it their own way (an explicit flag, or the AVX512-BF16 probe in `index.embedder`).
    """
    if not device.startswith("cuda"):
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: str, bf16: bool) -> Any:
    """bf16 autocast for the forward passes on `device`, or a context that changes nothing.

    On CUDA only where the GPU has native bf16 (else fp32: fp16 would need loss scaling in training); on the CPU
    exactly as asked, so CPU runs behave as they did before GPUs were supported.
    """
    import torch

    if device.startswith("cuda") and bf16 and not native_bf16(device):
        bf16 = False
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
