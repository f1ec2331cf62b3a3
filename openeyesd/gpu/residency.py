"""Which models sit in GPU memory: load on first use, keep while they fit, evict the least
recently used when a newcomer needs room.

The seed pipeline loaded SDXL, then the refiner, unloaded both and loaded the face restorer,
for every photo: on a 24 GB card they do not fit together, and the reload cost seconds per face.
Here each model is registered once with a loader; ``use(name)`` returns it resident on the
device. On a card where base + refiner + restorer fit in the budget (an 80 GB H100 holds all
three with room to spare), nothing is ever reloaded. On a small card the same timeline happens
by itself: asking for the restorer evicts the least recently used generator, and evicted models
go to CPU memory first (``offload_to_cpu``), from where bringing them back is a copy over PCIe
rather than a read and parse from disk.

Rules:

* A model in use (inside ``use``) is never evicted. A request that cannot make room waits for
  other threads to release theirs, up to ``wait_timeout_s``, then raises ``OutOfMemory``.
* A model larger than the whole budget raises ``OutOfMemory`` (an infrastructure error: the
  worker pauses and the photo keeps its attempts) with the sizes, so the operator can raise
  ``gpu.vram_budget_gb`` or choose smaller models.
* Sizes are the bytes of the model's parameters and buffers (activations are not counted; keep
  the budget below the card's memory for them: the default is 90 % of it).
* One lock guards the bookkeeping and is held while a model loads, so two threads never load
  the same model twice or race for the same free memory.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import torch

from openeyesd.config import GpuConfig
from openeyesd.errors import ConfigError, OutOfMemory
from openeyesd.gpu.torch_utils import OOM_ERRORS, free_memory, tensor_bytes

Loader = Callable[[], Any]
SizeFn = Callable[[Any], int]
MoveFn = Callable[[Any, torch.device], Any]

_GIB = 1024**3
#: Share of the card used when ``gpu.vram_budget_gb`` is 0: the rest is for activations.
DEFAULT_BUDGET_FRACTION = 0.9


class Location(StrEnum):
    UNLOADED = "unloaded"
    DEVICE = "device"
    CPU = "cpu"


@dataclass
class _Entry:
    name: str
    loader: Loader
    estimate_bytes: int | None
    model: Any = None
    location: Location = Location.UNLOADED
    nbytes: int = 0
    in_use: int = 0
    last_used: int = 0
    loads: int = 0
    hits: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class ModelStats:
    name: str
    location: str
    bytes: int
    in_use: int
    loads: int
    hits: int
    evictions: int


@dataclass(frozen=True)
class ResidencyStats:
    device: str
    budget_bytes: int
    used_bytes: int
    cpu_bytes: int
    models: tuple[ModelStats, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for ``openeyesctl status``."""
        return asdict(self)


def default_size(model: Any) -> int:
    """``model.nbytes`` when the object declares it, else its tensors' bytes."""
    declared = getattr(model, "nbytes", None)
    return int(declared) if isinstance(declared, int) else tensor_bytes(model)


def default_move(model: Any, device: torch.device) -> Any:
    """``model.to(device)`` (modules and diffusers pipelines return themselves)."""
    moved = model.to(device)
    return model if moved is None else moved


def budget_bytes(gpu: GpuConfig, device: torch.device) -> int:
    """``gpu.vram_budget_gb`` in bytes; 0 means 90 % of the card's memory."""
    if gpu.vram_budget_gb > 0:
        return int(gpu.vram_budget_gb * _GIB)
    if device.type != "cuda":
        raise ConfigError(
            f"gpu.vram_budget_gb = 0 means 90 % of the card, but {device} is not a CUDA device; "
            "set gpu.vram_budget_gb"
        )
    total = torch.cuda.get_device_properties(device).total_memory
    return int(total * DEFAULT_BUDGET_FRACTION)


class ResidencyManager:
    def __init__(
        self,
        budget_bytes: int,
        device: str | torch.device,
        *,
        offload_to_cpu: bool = True,
        cpu_budget_bytes: int | None = None,
        size_fn: SizeFn = default_size,
        move_fn: MoveFn = default_move,
        wait_timeout_s: float = 300.0,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self.device = torch.device(device)
        # Offloading to CPU only means something when the device is not the CPU itself.
        self._offload = offload_to_cpu and self.device.type != "cpu"
        self._cpu_budget = cpu_budget_bytes
        self._size = size_fn
        self._move = move_fn
        self._wait_timeout_s = wait_timeout_s
        self._entries: dict[str, _Entry] = {}
        self._cond = threading.Condition(threading.RLock())
        self._clock = itertools.count(1)

    # --- registration ----------------------------------------------------------------------

    def register(self, name: str, loader: Loader, *, estimate_bytes: int | None = None) -> None:
        """Declare a model; nothing loads until first use. ``estimate_bytes`` lets room be made
        *before* loading (else it is made after, once the real size is known). Registering a
        name again keeps the loaded model (the first registration wins)."""
        with self._cond:
            self._entries.setdefault(name, _Entry(name, loader, estimate_bytes))

    def registered(self, name: str) -> bool:
        with self._cond:
            return name in self._entries

    # --- use -----------------------------------------------------------------------------

    @contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """The model, resident on the device, protected from eviction inside the block."""
        model = self.acquire(name)
        try:
            yield model
        finally:
            self.release(name)

    def acquire(self, name: str) -> Any:
        with self._cond:
            entry = self._entry(name)
            if entry.location is Location.DEVICE:
                entry.hits += 1
            else:
                self._load_with_room(entry)
            entry.in_use += 1
            entry.last_used = next(self._clock)
            return entry.model

    def release(self, name: str) -> None:
        with self._cond:
            entry = self._entry(name)
            if entry.in_use <= 0:
                raise RuntimeError(f"release({name!r}) without a matching acquire")
            entry.in_use -= 1
            self._cond.notify_all()

    def unload(self, name: str) -> None:
        """Drop a model from the device and from CPU memory (the next use loads it again)."""
        with self._cond:
            entry = self._entry(name)
            if entry.in_use:
                raise RuntimeError(f"cannot unload {name!r}: in use")
            self._drop(entry)
            free_memory(self.device)

    def clear(self) -> None:
        """Unload every idle model (daemon shutdown, or tests)."""
        with self._cond:
            for entry in self._entries.values():
                if not entry.in_use:
                    self._drop(entry)
            free_memory(self.device)

    def stats(self) -> ResidencyStats:
        with self._cond:
            models = tuple(
                ModelStats(e.name, e.location.value, e.nbytes, e.in_use, e.loads, e.hits,
                           e.evictions)
                for e in self._entries.values()
            )
            return ResidencyStats(
                device=str(self.device),
                budget_bytes=self.budget_bytes,
                used_bytes=self._used(Location.DEVICE),
                cpu_bytes=self._used(Location.CPU),
                models=models,
            )

    # --- internals (called with the lock held) --------------------------------------------

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"model {name!r} is not registered (registered: {known})") from None

    def _used(self, location: Location) -> int:
        return sum(e.nbytes for e in self._entries.values() if e.location is location)

    def _check_fits_alone(self, entry: _Entry, need: int) -> None:
        if need > self.budget_bytes:
            raise OutOfMemory(
                f"model {entry.name!r} needs {need / _GIB:.2f} GiB but the GPU budget is "
                f"{self.budget_bytes / _GIB:.2f} GiB; raise gpu.vram_budget_gb or use a smaller "
                "model"
            )

    def _make_room(self, need: int, *, exclude: _Entry) -> bool:
        """Evict idle models, least recently used first, until ``need`` more bytes fit.
        False when it cannot (the rest are in use)."""
        while self._used(Location.DEVICE) + need > self.budget_bytes:
            idle = [
                e for e in self._entries.values()
                if e.location is Location.DEVICE and not e.in_use and e is not exclude
            ]
            if not idle:
                return False
            self._evict(min(idle, key=lambda e: e.last_used), keep=exclude)
        return True

    def _load_with_room(self, entry: _Entry) -> None:
        """Make room (waiting for other threads' models to be released) and bring ``entry`` to
        the device. Another thread may load it while this one waits."""
        while entry.location is not Location.DEVICE:
            need = entry.nbytes if entry.model is not None else (entry.estimate_bytes or 0)
            self._check_fits_alone(entry, need)
            if self._make_room(need, exclude=entry):
                self._bring_in(entry)
            elif not self._cond.wait(self._wait_timeout_s):
                raise OutOfMemory(self._busy_message(entry, need))

    def _bring_in(self, entry: _Entry) -> None:
        try:
            model = entry.loader() if entry.model is None else entry.model
            moved = self._move(model, self.device)
        except OOM_ERRORS as exc:
            self._drop(entry)
            free_memory(self.device)
            raise OutOfMemory(f"GPU out of memory loading model {entry.name!r}: {exc}") from exc
        if entry.model is None:
            entry.loads += 1
        entry.model = moved
        entry.nbytes = self._size(entry.model)
        entry.location = Location.DEVICE
        if entry.nbytes > self.budget_bytes:
            size = entry.nbytes
            self._drop(entry)
            free_memory(self.device)
            self._check_fits_alone(entry, size)
        # The estimate may have been low (or absent): make room for the real size now. When
        # everything else is in use this cannot succeed; the model stays (its caller needs it)
        # and the next acquire evicts back under the budget once the others are released.
        self._make_room(0, exclude=entry)

    def _evict(self, entry: _Entry, *, keep: _Entry) -> None:
        entry.evictions += 1
        if self._offload:
            entry.model = self._move(entry.model, torch.device("cpu"))
            entry.location = Location.CPU
            self._trim_cpu(keep=keep)
        else:
            self._drop(entry)
        free_memory(self.device)

    def _trim_cpu(self, *, keep: _Entry) -> None:
        """Drop offloaded models, least recently used first, beyond the CPU budget; never
        ``keep``, the model on its way back to the device."""
        if self._cpu_budget is None:
            return
        leaving = keep.nbytes if keep.location is Location.CPU else 0
        while self._used(Location.CPU) - leaving > self._cpu_budget:
            on_cpu = [
                e for e in self._entries.values() if e.location is Location.CPU and e is not keep
            ]
            if not on_cpu:
                return
            self._drop(min(on_cpu, key=lambda e: e.last_used))

    def _drop(self, entry: _Entry) -> None:
        entry.model = None
        entry.location = Location.UNLOADED
        entry.nbytes = 0

    def _busy_message(self, entry: _Entry, need: int) -> str:
        busy = [e.name for e in self._entries.values() if e.in_use]
        return (
            f"no room for model {entry.name!r} ({need / _GIB:.2f} GiB) within the GPU budget of "
            f"{self.budget_bytes / _GIB:.2f} GiB after {self._wait_timeout_s:.0f} s: in use by "
            f"other jobs: {', '.join(busy)}; lower worker.concurrency or raise gpu.vram_budget_gb"
        )
