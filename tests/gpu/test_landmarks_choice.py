"""Which landmark backend the toolkit builds, per profile and config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from openeyesd import models
from openeyesd.config import Config
from openeyesd.errors import BackendUnavailable
from openeyesd.eyes.analysis import build_toolkit
from tests.gpu.tiny_onnx import write_buffalo_l


@pytest.fixture
def insightface_config(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    write_buffalo_l(tmp_path / "models")
    return make_config(pipeline={"profile": "gpu"}, models={"dir": str(tmp_path / "models")},
                       gpu={"landmarks": "insightface", "landmarks_provider": "cpu"})


def test_cpu_profile_uses_the_mediapipe_mesh(config: Config) -> None:
    assert build_toolkit(config).landmarks.name == "mediapipe-facemesh"


def test_insightface_is_refused_until_its_files_verify(insightface_config: Config) -> None:
    # The tiny stand-in files do not match the pinned hashes, and the pack is non-commercial.
    with pytest.raises(BackendUnavailable, match="buffalo_l is not ready"):
        build_toolkit(insightface_config)


def test_insightface_is_built_once_verified(
    insightface_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "verify", lambda _config, _spec: [])
    assert build_toolkit(insightface_config).landmarks.name == "insightface-buffalo_l"
