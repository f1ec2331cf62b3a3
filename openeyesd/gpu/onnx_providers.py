"""Which onnxruntime execution provider a GPU backend really runs on, and its loaded sessions.

A requested provider can be missing in two ways, and both are common:

1. the installed wheel does not offer it: ``onnxruntime`` (CPU only) installed instead of, or
   next to, ``onnxruntime-gpu``; ``get_available_providers()`` shows it;
2. the wheel offers it but its libraries do not load (CUDA runtime or cuDNN of another major
   version, no TensorRT): ``InferenceSession`` then *silently* runs on the CPU, and only
   ``session.get_providers()`` after creation tells.

``choose_providers`` checks both, once, when a backend is built, and falls back to the CPU
with a loud warning that says why and how to fix it, instead of failing the photo. The choice
is kept and shown by ``openeyesctl doctor``/``status``, so a slow CPU run is never a mystery.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime as ort
import structlog
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from openeyesd.config import OnnxProvider
from openeyesd.errors import BackendUnavailable, OutOfMemory

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ROCM = "ROCMExecutionProvider"
MIGRAPHX = "MIGraphXExecutionProvider"

#: What is handed to InferenceSession, best first. TensorRT compiles what it supports and
#: leaves the rest of the graph to CUDA, then CPU, which is why the chain has all three.
PROVIDER_CHAINS: dict[OnnxProvider, tuple[str, ...]] = {
    OnnxProvider.CUDA: (CUDA, CPU),
    OnnxProvider.TENSORRT: (TENSORRT, CUDA, CPU),
    # onnxruntime 1.23 replaced the ROCm provider by MIGraphX; either one is an AMD GPU.
    OnnxProvider.ROCM: (MIGRAPHX, ROCM, CPU),
    OnnxProvider.CPU: (CPU,),
}
#: The providers that count as "what was asked for"; anything else is a fallback.
_SATISFIES: dict[OnnxProvider, frozenset[str]] = {
    OnnxProvider.CUDA: frozenset({CUDA}),
    OnnxProvider.TENSORRT: frozenset({TENSORRT}),
    OnnxProvider.ROCM: frozenset({MIGRAPHX, ROCM}),
    OnnxProvider.CPU: frozenset({CPU}),
}
FIX_HINTS: dict[OnnxProvider, str] = {
    OnnxProvider.CUDA: (
        "install onnxruntime-gpu built for this machine's CUDA major version (uninstall the "
        "CPU-only 'onnxruntime' wheel, which hides it), and make the CUDA runtime and cuDNN "
        "libraries it was built against loadable (system packages or the nvidia-*-cu12 "
        "wheels); check with: python -c 'import onnxruntime as o; print(o.get_device(), "
        "o.get_available_providers())'; or set gpu.landmarks_provider = \"cpu\""
    ),
    OnnxProvider.TENSORRT: (
        "install onnxruntime-gpu and the TensorRT libraries it was built against (libnvinfer "
        "on the library path, e.g. the 'tensorrt' wheel), or set gpu.landmarks_provider = "
        "\"cuda\""
    ),
    OnnxProvider.ROCM: (
        "install the onnxruntime build for AMD GPUs (onnxruntime-migraphx, or onnxruntime-rocm "
        "before 1.23) matching the installed ROCm version, or set gpu.landmarks_provider = "
        "\"cpu\""
    ),
    OnnxProvider.CPU: "",
}

#: Errors onnxruntime raises from C++ (they derive from Exception, not RuntimeError).
ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    cls for cls in (
        getattr(_ort_state, name, None)
        for name in ("Fail", "RuntimeException", "EPFail", "InvalidArgument", "InvalidGraph",
                     "InvalidProtobuf", "NoSuchFile", "NotImplemented", "EngineError")
    ) if isinstance(cls, type)
) + (RuntimeError,)

log = structlog.get_logger()


@dataclass(frozen=True)
class ProviderChoice:
    requested: OnnxProvider
    #: Handed to ``InferenceSession(providers=...)``.
    providers: tuple[str, ...]
    #: The provider that runs the model, e.g. "CUDAExecutionProvider".
    actual: str
    #: True when ``actual`` is not what was requested.
    fallback: bool
    #: Why this choice; for a fallback, what was missing.
    reason: str
    #: What the installed onnxruntime offers.
    available: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"requested": self.requested.value, "provider": self.actual,
                "providers": list(self.providers), "fallback": self.fallback,
                "reason": self.reason, "available": list(self.available),
                "fix": FIX_HINTS[self.requested] if self.fallback else "",
                "onnxruntime": ort.__version__}


class SessionCache:
    """Loaded InferenceSessions by (model file, provider that actually runs it).

    Keyed by the provider a session really uses, so a CUDA request that silently fell back is
    stored as the CPU session it is, and the next CPU request finds it instead of loading the
    model twice. Thread-safe: workers may share one cache.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[Path, str], ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, choice: ProviderChoice) -> ort.InferenceSession:
        key = (Path(path).resolve(), choice.actual)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = ort.InferenceSession(str(key[0]), providers=list(choice.providers))
                self._sessions[(key[0], active_provider(session))] = session
            return session

    def __len__(self) -> int:
        return len(self._sessions)


def active_provider(session: ort.InferenceSession) -> str:
    providers = session.get_providers()
    return providers[0] if providers else CPU


def choose_providers(
    requested: OnnxProvider, probe_model: Path | None = None, cache: SessionCache | None = None
) -> ProviderChoice:
    """The providers to run with. With ``probe_model``, a session is created (and kept in
    ``cache``) to prove the provider really loads; without it only the wheel is checked."""
    choice = _by_availability(OnnxProvider(requested), tuple(ort.get_available_providers()))
    if probe_model is not None:
        choice = _by_session(choice, probe_model, cache if cache is not None else SessionCache())
    if choice.fallback:
        log.warning("onnx.provider_fallback", requested=choice.requested.value,
                    using=choice.actual, reason=choice.reason, fix=FIX_HINTS[choice.requested],
                    available=list(choice.available))
    return choice


def _by_availability(requested: OnnxProvider, available: tuple[str, ...]) -> ProviderChoice:
    chain = tuple(p for p in PROVIDER_CHAINS[requested] if p in available or p == CPU)
    actual = chain[0]
    if actual in _SATISFIES[requested]:
        return ProviderChoice(requested, chain, actual, False,
                              f"{actual} is available", available)
    wanted = " or ".join(sorted(_SATISFIES[requested]))
    reason = (f"{wanted} is not offered by the installed onnxruntime "
              f"{ort.__version__} (it offers {', '.join(available) or 'nothing'})")
    return ProviderChoice(requested, chain, actual, True, reason, available)


def _by_session(choice: ProviderChoice, probe: Path, cache: SessionCache) -> ProviderChoice:
    try:
        session = cache.get(probe, choice)
    except ORT_ERRORS as exc:
        if choice.actual == CPU:
            raise BackendUnavailable(f"onnxruntime cannot load {probe}: {exc}") from exc
        # TensorRT and some CUDA set-ups raise instead of falling back: try the CPU once.
        cpu = replace(choice, providers=(CPU,), actual=CPU, fallback=True,
                      reason=f"creating a {choice.actual} session failed: {exc}")
        return _by_session(cpu, probe, cache)
    active = active_provider(session)
    if active == choice.actual:
        return choice
    reason = (f"onnxruntime offers {choice.actual} but the session for {probe.name} runs on "
              f"{active}: the provider's libraries (CUDA runtime, cuDNN, TensorRT) did not load")
    return replace(choice, providers=tuple(session.get_providers()), actual=active,
                   fallback=active not in _SATISFIES[choice.requested], reason=reason)


def run_session(
    session: ort.InferenceSession, feeds: dict[str, object], what: str
) -> list[object]:
    """``session.run`` with onnxruntime's errors turned into infrastructure errors: the
    machine is at fault, not the photo, so the worker pauses instead of failing the job."""
    try:
        return list(session.run(None, feeds))
    except ORT_ERRORS as exc:
        text = str(exc)
        if any(s in text.lower() for s in ("out of memory", "failed to allocate", "alloc_failed",
                                           "cudnn_status_alloc", "cublas_status_alloc")):
            raise OutOfMemory(f"{what}: GPU out of memory ({text})") from exc
        raise BackendUnavailable(f"{what}: onnxruntime failed: {text}") from exc
