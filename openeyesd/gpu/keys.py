"""The names under which the residency manager (``openeyesd.gpu.residency``) holds each model.

Kept apart from the modules that load the models, which import torch: the worker asks which
models a stage will need, and which are loaded, without importing anything heavy.
"""

from __future__ import annotations


def inpaint_key(model: str) -> str:
    return f"inpaint:{model}"


def refiner_key(model: str) -> str:
    return f"refiner:{model}"


def restorer_key(model: str) -> str:
    return f"restore:{model}"
