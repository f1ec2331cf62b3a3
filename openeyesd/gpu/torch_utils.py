"""Small torch helpers shared by the GPU backends: dtypes, devices, memory, timing.

Only ``openeyesd.gpu`` modules import this (and so torch); the CPU profile never does.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from openeyesd.config import Precision

#: Every exception torch raises when an allocation fails. ``torch.cuda.OutOfMemoryError`` is an
#: alias of ``torch.OutOfMemoryError`` in torch >= 2.5; both are listed so older builds work.
OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {
        err
        for err in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(torch.cuda, "OutOfMemoryError", None),
        )
        if err is not None
    }
)

_DTYPES = {
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
    Precision.FP32: torch.float32,
}


def torch_dtype(precision: Precision | str, device: torch.device) -> torch.dtype:
    """The dtype to run at. Half precision on CPU is slow or unsupported for several kernels
    (and only used for development there), so CPU always runs in float32."""
    if device.type == "cpu":
        return torch.float32
    return _DTYPES[Precision(precision)]


def resolve_device(name: str) -> torch.device:
    """``"cuda:0"``, ``"cpu"``...; a CUDA device that is absent raises ``RuntimeError``."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but torch sees no CUDA device")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock phase timings measure the work, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device | None = None) -> None:
    """Return cached blocks to the driver after an OOM or an eviction.

    ``gc.collect`` first: tensors kept alive by reference cycles (an exception's traceback frames
    hold the failed batch's activations) are only freed by the collector. A full collection
    costs tens of milliseconds, so it is skipped where there is no device memory to return.
    """
    if device is not None and device.type != "cuda":
        return
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tensor_bytes(obj: Any) -> int:
    """Bytes held by the parameters and buffers of a module, or of every module component of a
    diffusers pipeline (shared components counted once)."""
    modules: list[torch.nn.Module] = []
    if isinstance(obj, torch.nn.Module):
        modules.append(obj)
    elif hasattr(obj, "components"):
        modules.extend(c for c in obj.components.values() if isinstance(c, torch.nn.Module))
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


@contextmanager
def timed(timings: dict[str, float], phase: str, device: torch.device) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[phase]``, synchronising the device at
    both ends (CUDA calls return before the kernels finish)."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start
