"""The NumPy copy of dlib's face descriptor network against dlib's own forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openeyesd.eyes.model_info import check_models, model, model_path

dlib = pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")
_NEEDED = (model("dlib_face_recognition_resnet_v1"), model("dlib_shape_predictor_5"))
_PROBLEMS = check_models(_NEEDED, verify_sha256=False)
pytestmark = pytest.mark.skipif(bool(_PROBLEMS), reason="; ".join(_PROBLEMS))

from openeyesd.eyes.dlib_resnet import (  # noqa: E402
    CHIP_SIZE,
    DlibResNet,
    NotTheDescriptorNetwork,
    read_dlib_resnet,
)

_NETWORK_FILE = model_path(model("dlib_face_recognition_resnet_v1")) if not _PROBLEMS else None


@pytest.fixture(scope="module")
def network() -> DlibResNet:
    return read_dlib_resnet(_NETWORK_FILE)


@pytest.fixture(scope="module")
def dlib_network():
    return dlib.face_recognition_model_v1(str(_NETWORK_FILE))


def _chip(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    predictor = dlib.shape_predictor(str(model_path(model("dlib_shape_predictor_5"))))
    shape = predictor(image, dlib.rectangle(*box))
    return np.ascontiguousarray(dlib.get_face_chip(image, shape, CHIP_SIZE, 0.25))


@pytest.mark.parametrize("picture", ["astronaut", "camera", "noise"])
def test_same_descriptor_as_dlib(picture: str, network: DlibResNet, dlib_network) -> None:
    # Faces, a grey photo and noise: every layer has to agree, not only on face-like input.
    if picture == "noise":
        chip = np.random.default_rng(3).integers(0, 256, (CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    else:
        image = getattr(skimage_data, picture)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        chip = _chip(np.ascontiguousarray(image), (175, 76, 274, 174))
    expected = np.asarray(dlib_network.compute_face_descriptor(chip), np.float32)
    ours = network.describe_chip(chip)
    assert ours.shape == (128,)
    assert np.abs(ours - expected).max() < 1e-5
    assert np.linalg.norm(expected) > 0.5  # a real descriptor, not a vector of zeros


def test_refuses_a_chip_of_another_size(network: DlibResNet) -> None:
    with pytest.raises(ValueError, match="150x150"):
        network.describe_chip(np.zeros((100, 100, 3), np.uint8))


def test_refuses_another_dlib_model() -> None:
    with pytest.raises(NotTheDescriptorNetwork):
        read_dlib_resnet(model_path(model("dlib_shape_predictor_5")))


@pytest.mark.parametrize("damage", ["truncated", "extra_bytes", "renamed_layer",
                                    "sizes_do_not_chain"])
def test_refuses_a_damaged_file(damage: str, tmp_path: Path) -> None:
    data = _NETWORK_FILE.read_bytes()
    data = {
        "truncated": lambda d: d[: len(d) // 2],
        "extra_bytes": lambda d: d + b"\x01\x00",
        "renamed_layer": lambda d: d.replace(b"relu_", b"relx_", 1),
        # The projection claims 512 inputs (two-byte integer 0x0200) where 256 arrive.
        "sizes_do_not_chain": lambda d: d.replace(b"fc_2\x01\x80\x02\x00\x01",
                                                  b"fc_2\x01\x80\x02\x00\x02", 1),
    }[damage](data)
    assert data != _NETWORK_FILE.read_bytes()
    broken = tmp_path / "broken.dat"
    broken.write_bytes(data)
    with pytest.raises(NotTheDescriptorNetwork):
        read_dlib_resnet(broken)


def test_a_damaged_network_pauses_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from openeyesd.config import parse_config
    from openeyesd.errors import BackendUnavailable
    from openeyesd.eyes import identity
    from openeyesd.eyes.analysis import build_toolkit
    from tests.conftest import config_dict

    broken = tmp_path / "broken.dat"
    broken.write_bytes(_NETWORK_FILE.read_bytes()[:1000])
    monkeypatch.setattr(identity, "read_dlib_resnet", lambda path: read_dlib_resnet(broken))
    config = parse_config(config_dict(tmp_path), base_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match="ends early"):
        build_toolkit(config)
