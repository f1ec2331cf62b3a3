"""MediaPipe's ``.tflite`` networks, run by LiteRT (``ai-edge-litert``, its XNNPACK CPU kernels).

LiteRT is the runtime the models were built for. One thread per network: the daemon runs
several workers, each with its own networks, rather than one network on several cores (the
same rule as for BLAS in daemon.py). Measured against OpenCV DNN's classic engine, which ran
them before (docs/landmarks.md): the same outputs to 1e-4, and 1.5-2.2x faster a call (the
full-range detector 9.3 -> 4.3 ms, the v2 landmark network 8.9 -> 6.0 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Threads each network may use (see the module docstring).
THREADS = 1
#: What an operator runs when LiteRT is missing (the range pyproject.toml declares).
INSTALL_COMMAND = "pip install 'ai-edge-litert>=2.3,<3'"


def _new_interpreter(model: bytes) -> Any:
    """A LiteRT interpreter for ``model``. Imported here, not with the module, so a missing
    install is reported where the worker loads its models (and pauses), not as a crash when
    the daemon imports its stages."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ImportError(f"LiteRT is not installed ({exc}); install the package with its "
                          f"dependencies: {INSTALL_COMMAND}") from exc
    return Interpreter(model_content=model, num_threads=THREADS)


class TFLiteNet:
    """One network, ready to run. Not thread-safe: each worker builds its own."""

    def __init__(self, model: bytes) -> None:
        self._interpreter = _new_interpreter(model)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        details = self._interpreter.get_output_details()
        self._outputs = {d["name"]: d["index"] for d in details}
        self.output_names = tuple(d["name"] for d in details)

    @classmethod
    def from_file(cls, path: Path) -> TFLiteNet:
        return cls(Path(path).read_bytes())

    def run(self, tensor: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """The named outputs (default: all, in the model's order) for one input given without
        its batch axis: (H, W, C) for an image, as the .tflite files take it."""
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(tensor[None], np.float32))
        self._interpreter.invoke()
        names = self.output_names if outputs is None else outputs
        return [self._interpreter.get_tensor(self._outputs[name]) for name in names]
