"""The GPU profile's generator and restorer, built once per daemon and shared by its workers.

Both take turns on the generation GPU through one residency manager (``residency.py``) when
the restorer runs on the same device; ``resident_models`` tells the worker which are loaded
now, so it can group queued jobs by the model their next stage needs (``openeyesd.grouping``).

Built on first use, not at import or start-up: a daemon whose models are still being fetched
starts, its workers pause with the reason (``BackendUnavailable``), and ``openeyesctl doctor``
says what to run. Every model file is verified against the registry (``openeyesd.models``)
before a backend is enabled. torch and diffusers are imported only when a backend is built.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from openeyesd import models
from openeyesd.config import Config
from openeyesd.errors import BackendUnavailable
from openeyesd.gpu.keys import inpaint_key, refiner_key, restorer_key

if TYPE_CHECKING:
    from openeyesd.gpu.generator import EyeInpainter
    from openeyesd.gpu.residency import ResidencyStats
    from openeyesd.gpu.restorer import FaceRestorer


def verify_registered(config: Config, names: list[str]) -> list[models.Problem]:
    """Each named model's problems against the registry: files, pinned hashes, licence."""
    problems: list[models.Problem] = []
    for name in names:
        problems += models.verify(config, models.find(name))
    return problems


class GpuBackends:
    def __init__(
        self, config: Config,
        verifier: Callable[[Config, list[str]], list[models.Problem]] = verify_registered,
    ) -> None:
        """``verifier`` checks model files before a backend is enabled; tests that build
        tiny unregistered models pass their own."""
        self.config = config
        self._verifier = verifier
        self._lock = threading.Lock()
        self._inpainter: EyeInpainter | None = None
        self._restorer: FaceRestorer | None = None
        self._restorer_built = False
        self._residency: Any = None

    def inpainter(self) -> EyeInpainter:
        with self._lock:
            if self._inpainter is None:
                names = [self.config.generation.model]
                if self.config.generation.refiner:
                    names.append(self.config.generation.refiner)
                self._require_verified(names)
                with _gpu_extra_needed():
                    from openeyesd.gpu.generator import build_eye_inpainter

                self._inpainter = build_eye_inpainter(
                    self.config.generation, self.config.gpu, self.config.models.dir,
                    residency=self._residency_manager(),
                    blend_method=str(self.config.eyes.blend),  # type: ignore[arg-type]
                )
            return self._inpainter

    def restorer(self) -> FaceRestorer | None:
        """None when ``restoration.model = "none"``."""
        with self._lock:
            if not self._restorer_built:
                if self.config.restoration.model != "none":
                    self._require_verified([self.config.restoration.model])
                with _gpu_extra_needed():
                    from openeyesd.gpu.restorer import build_restorer

                shared = self._residency_manager() if self._restorer_shares_device() else None
                self._restorer = build_restorer(self.config, residency=shared)
                self._restorer_built = True
            return self._restorer

    # -- what the worker asks to group jobs by model (nothing here loads or imports torch) --

    def generation_models(self) -> tuple[str, ...]:
        """The residency names the generate stage uses for a face."""
        names = [inpaint_key(self.config.generation.model)]
        if self.config.generation.refiner:
            names.append(refiner_key(self.config.generation.refiner))
        return tuple(names)

    def restoration_models(self) -> tuple[str, ...]:
        """The residency name the restore stage uses; none when there is no restorer, or when
        it runs on a GPU of its own (it then stays loaded and never takes turns)."""
        model = self.config.restoration.model
        if model == "none" or not self._restorer_shares_device():
            return ()
        return (restorer_key(model),)

    def resident_models(self) -> frozenset[str]:
        """Names of the models on the GPU now (empty before the first model was built)."""
        stats = self.residency_stats()
        if stats is None:
            return frozenset()
        return frozenset(m.name for m in stats.models if m.location == "device")

    def residency_stats(self) -> ResidencyStats | None:
        """Where each model is and how often it was loaded; None before any was built."""
        residency = self._residency
        return None if residency is None else residency.stats()

    def _restorer_shares_device(self) -> bool:
        """Compared as written in the config: "cuda" and "cuda:0" count as two devices, which
        only means the restorer keeps its own place outside the budget, as it did before."""
        gpu = self.config.gpu
        return (gpu.restoration_device or gpu.device) == (gpu.generation_device or gpu.device)

    def _residency_manager(self) -> Any:
        if self._residency is None:
            with _gpu_extra_needed():
                from openeyesd.gpu.residency import ResidencyManager, budget_bytes
                from openeyesd.gpu.torch_utils import resolve_device

            try:
                device = resolve_device(self.config.gpu.generation_device
                                        or self.config.gpu.device)
            except RuntimeError as exc:
                raise BackendUnavailable(f"GPU not usable: {exc}; check `nvidia-smi` and "
                                         "[gpu] device in config.toml") from exc
            self._residency = ResidencyManager(budget_bytes(self.config.gpu, device), device)
        return self._residency

    def _require_verified(self, names: list[str]) -> None:
        problems = self._verifier(self.config, names)
        if problems:
            detail = "; ".join(f"{p.model}: {p.message}" for p in problems[:5])
            raise BackendUnavailable(
                f"GPU models not ready ({detail}); run `openeyesctl models verify` and "
                "`openeyesctl models fetch NAME`"
            )


@contextmanager
def _gpu_extra_needed() -> Iterator[None]:
    """torch and diffusers are an optional extra: their absence is the machine's problem."""
    try:
        yield
    except ImportError as exc:
        raise BackendUnavailable(
            f"the GPU profile needs the gpu extra ({exc.name or exc} is not installed): "
            "pip install torch==<your CUDA build> && pip install -e '.[gpu]'"
        ) from exc
