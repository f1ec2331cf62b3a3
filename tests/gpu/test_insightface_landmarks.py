"""The GPU landmark backend (InsightFace buffalo_l via onnxruntime), run on the CPU with tiny
ONNX stand-ins for the real models (tests/gpu/tiny_onnx.py); the real weights are used only by
the last test, where they are installed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

pytest.importorskip("onnx", reason="the tiny test models are built with the onnx package")
ort = pytest.importorskip("onnxruntime", reason="the GPU landmark backend needs onnxruntime")

from openeyesd.config import OnnxProvider  # noqa: E402
from openeyesd.errors import BackendUnavailable, OutOfMemory  # noqa: E402
from openeyesd.eyes.types import Face  # noqa: E402
from openeyesd.gpu import onnx_providers  # noqa: E402
from openeyesd.gpu.insightface_landmarks import (  # noqa: E402
    POSE_MODEL_106,
    InsightFaceLandmarks,
    eyes_from_106,
    head_pose_106,
)
from openeyesd.gpu.onnx_providers import (  # noqa: E402
    SessionCache,
    choose_providers,
    run_session,
)
from tests.gpu.tiny_onnx import (  # noqa: E402
    EYE_WALKS,
    PUPILS,
    TinyDetector,
    canonical_106,
    write_buffalo_l,
)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DET_SIZE = 128
RED, ORANGE, GREY = (255, 0, 0), (255, 0, 128), (90, 90, 90)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_buffalo_l(root)
    return root


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> InsightFaceLandmarks:
    return InsightFaceLandmarks(models_dir, OnnxProvider.CPU, det_size=DET_SIZE)


def scene(scale: float) -> tuple[np.ndarray, float]:
    """A grey 512x256 picture times ``scale`` and the factor that letterboxes it into the
    128x128 detector input (content 128x64 at the top-left). In detector pixels: a red square
    on stride-8 cell (3, 1), an orange one on its right neighbour (4, 1) that scores lower and
    overlaps it (NMS must drop it), and a red one far away on cell (11, 3)."""
    h, w = round(256 * scale), round(512 * scale)
    image = np.full((h, w, 3), GREY, np.uint8)
    to_image = 4 * scale  # one detector pixel in image pixels
    for (col, row), colour in (((3, 1), RED), ((4, 1), ORANGE), ((11, 3), RED)):
        x0, y0 = round(col * 8 * to_image), round(row * 8 * to_image)
        size = round(8 * to_image)
        image[y0:y0 + size, x0:x0 + size] = colour
    return image, 1 / to_image


# --- SCRFD decoding, NMS, letterbox ------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.125, 1.0, 5.0], ids=["x2", "x0.25", "x0.05"])
def test_detector_gives_known_boxes_and_keypoints_in_image_pixels(
    backend: InsightFaceLandmarks, scale: float
) -> None:
    image, factor = scene(scale)
    detections = backend.find_faces(image)
    assert len(detections) == 2  # the orange square's box overlaps the first red one's: dropped
    spec = TinyDetector()
    # Anchors sit on the cells' top-left corners: cell (3, 1) -> (24, 8), (11, 3) -> (88, 24).
    for det, anchor in zip(detections, ((24, 8), (88, 24)), strict=True):
        box, keypoints = spec.expected(anchor)
        np.testing.assert_allclose(det.box, box / factor, atol=1e-6 / factor)
        np.testing.assert_allclose(det.keypoints, keypoints / factor, atol=1e-6 / factor)
        assert det.score > 0.99  # the pure red cell's first anchor, not the orange one's
    assert detections[0].box[2] < image.shape[1] and detections[1].box[3] <= image.shape[0]


def test_no_faces_on_a_plain_image(backend: InsightFaceLandmarks) -> None:
    assert backend.detect(np.full((300, 200, 3), 128, np.uint8)) == []


def test_orange_alone_is_found_with_its_lower_score(backend: InsightFaceLandmarks) -> None:
    image, factor = scene(1.0)
    image[32:64, 96:128] = GREY  # without the first red square nothing suppresses the orange
    detections = backend.find_faces(image)
    assert len(detections) == 2
    orange = min(detections, key=lambda d: d.box[0])
    box, _ = TinyDetector().expected((32, 8))
    np.testing.assert_allclose(orange.box, box / factor, atol=1e-6)
    assert 0.9 < orange.score < max(d.score for d in detections)


def test_detector_rejects_outputs_that_are_not_scrfd(tmp_path: Path) -> None:
    write_buffalo_l(tmp_path)
    folder = tmp_path / "buffalo_l"
    # The landmark model in the detector's place: its one output has the wrong shape.
    (folder / "det_10g.onnx").write_bytes((folder / "2d106det.onnx").read_bytes())
    with pytest.raises(BackendUnavailable, match="not SCRFD"):
        InsightFaceLandmarks(tmp_path, OnnxProvider.CPU, det_size=DET_SIZE).detect(
            np.zeros((64, 64, 3), np.uint8))


def test_det_size_must_suit_the_strides(models_dir: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        InsightFaceLandmarks(models_dir, OnnxProvider.CPU, det_size=100)


# --- landmarks at full resolution and the 106 -> Eye mapping ---------------------------------


@pytest.fixture(scope="module")
def big_faces(backend: InsightFaceLandmarks) -> tuple[list[Face], float]:
    image, factor = scene(5.0)  # 2560x1280, detected at 1/20
    return backend.detect(image), factor


def test_landmarks_come_from_a_full_resolution_crop(big_faces: tuple[list[Face], float]) -> None:
    faces, factor = big_faces
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces)
    face = faces[0]
    box, _ = TinyDetector().expected((24, 8))
    np.testing.assert_allclose(face.box, box / factor, atol=1e-6 / factor)
    side = 1.5 * max(box[2] - box[0], box[3] - box[1]) / factor
    centre = (box[:2] + box[2:]) / 2 / factor
    # The model's [-1, 1] spans the 1.5x square crop around the box centre.
    np.testing.assert_allclose(face.landmarks, centre + canonical_106() * side / 2, atol=0.05)
    assert face.extras["landmark_roi_px"] == pytest.approx(side)
    assert face.backend == "insightface-buffalo_l" and face.landmarks.shape == (106, 2)


def test_eyes_in_our_order_with_subject_left_on_image_right(
    big_faces: tuple[list[Face], float],
) -> None:
    face = big_faces[0][0]
    left, right = face.eyes["left"], face.eyes["right"]
    assert left.side == "left" and right.side == "right"
    assert left.centre[0] > right.centre[0] + 0.2 * face.width
    nose_x = face.landmarks[86, 0]
    for eye, walk in ((right, EYE_WALKS[0]), (left, EYE_WALKS[1])):
        c = eye.contour
        assert c.shape == (16, 2) and eye.brow.shape == (5, 2) and eye.iris.shape == (5, 2)
        # Outer corner first and farther from the nose than the inner corner at index 8.
        assert abs(c[0, 0] - nose_x) > abs(c[8, 0] - nose_x)
        assert {c[i, 0] for i in (0, 8)} == {c[:, 0].min(), c[:, 0].max()}
        centre_y = (c[0, 1] + c[8, 1]) / 2
        assert np.all(c[1:8, 1] < centre_y) and np.all(c[9:16, 1] > centre_y)  # y is down
        # The upper lid runs outer -> inner, the lower one back.
        step = np.sign(c[8, 0] - c[0, 0])
        assert np.all(np.diff(c[0:9, 0]) * step > 0)
        assert np.all(np.diff(np.vstack([c[8:], c[:1]])[:, 0]) * step < 0)
        # Even indices are the model's own eyelid points, odd ones lie between them.
        own = face.landmarks[list(walk)]
        assert all(np.min(np.linalg.norm(own - p, axis=1)) < 1e-3 for p in c[0::2])
    for eye, pupil in ((right, PUPILS[0]), (left, PUPILS[1])):
        np.testing.assert_allclose(eye.iris[0], face.landmarks[list(pupil)].mean(0), atol=1e-3)
        radii = np.linalg.norm(eye.iris[1:] - eye.iris[0], axis=1)
        np.testing.assert_allclose(radii, 0.2 * eye.width, rtol=1e-4)
        assert np.all(eye.brow[:, 1] < eye.contour[:, 1].min())  # brows above the eyes
        # Brow outer -> inner, like the eye: its first point is the one away from the nose.
        assert abs(eye.brow[0, 0] - nose_x) > abs(eye.brow[-1, 0] - nose_x)


def test_frontal_face_has_a_level_pose(big_faces: tuple[list[Face], float]) -> None:
    pose = big_faces[0][0].pose
    assert abs(pose.yaw) < 1 and abs(pose.roll) < 1
    assert abs(pose.pitch) < 5  # the stand-in face is drawn by hand, not from the 3D model


# --- head pose conventions (types.HeadPose) ----------------------------------------------------


def _points(**moves: tuple[float, float]) -> np.ndarray:
    points = canonical_106() * 300 + 500
    for name, shift in moves.items():
        points[int(name.removeprefix("p"))] += shift
    return points


def test_pose_signs_follow_types() -> None:
    base = head_pose_106(_points())
    # Turned to the subject's left: the nose moves towards the image right.
    turned = head_pose_106(_points(p86=(25.0, 0.0), p80=(18.0, 0.0)))
    assert turned.yaw > base.yaw + 10
    # Looking up: the nose rises against the eyes.
    up = head_pose_106(_points(p86=(0.0, -20.0), p80=(0.0, -15.0)))
    assert up.pitch > base.pitch + 5


def test_roll_follows_an_image_rotation() -> None:
    points = _points()
    angle = np.radians(15)  # turns image right towards image down: the image-right eye drops
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (points - 500) @ rot.T + 500
    assert head_pose_106(rolled).roll == pytest.approx(head_pose_106(points).roll + 15, abs=0.5)


def test_pose_recovered_from_a_projected_head() -> None:
    # Turn a head made of the backend's 3D points: yaw first (its left side moves away from the
    # camera), then pitch (chin away, looking down), and project it orthographically.
    yaw, pitch = np.radians(20), np.radians(10)
    ry = np.array([[np.cos(yaw), 0, -np.sin(yaw)], [0, 1, 0], [np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)],
                   [0, np.sin(pitch), np.cos(pitch)]])
    points = np.zeros((106, 2))
    for index, xyz in POSE_MODEL_106.items():
        points[index] = 4.0 * (ry @ rx @ np.array(xyz))[:2] + 700
    pose = head_pose_106(points)
    assert pose.yaw == pytest.approx(20, abs=0.1) and pose.roll == pytest.approx(0, abs=0.1)
    # types.py's pitch is measured on the head's own down axis, which the yaw has tilted.
    expected_pitch = -np.degrees(np.arcsin(np.cos(yaw) * np.sin(pitch)))
    assert pose.pitch == pytest.approx(expected_pitch, abs=0.1)


def test_mapping_works_on_raw_points_too() -> None:
    eyes = eyes_from_106(canonical_106() * 100)
    assert eyes["left"].inner_corner[0] < eyes["left"].outer_corner[0]
    assert eyes["right"].inner_corner[0] > eyes["right"].outer_corner[0]


# --- provider choice -------------------------------------------------------------------------


class FakeSession:
    """Records the providers asked for; reports ``runs_on`` (default: what was asked)."""

    created: list[list[str]]
    runs_on: list[str] | None = None
    fail_with: Exception | None = None

    def __init__(self, path: str, providers: list[str]) -> None:
        if FakeSession.fail_with is not None and providers[0] != CPU:
            raise FakeSession.fail_with
        FakeSession.created.append(list(providers))
        self.path = path
        self._providers = list(FakeSession.runs_on or providers)

    def get_providers(self) -> list[str]:
        return self._providers


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    FakeSession.created, FakeSession.runs_on, FakeSession.fail_with = [], None, None
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    return FakeSession


def _available(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(names))


@pytest.mark.skipif(CUDA in ort.get_available_providers(),
                    reason="this onnxruntime offers CUDA; the fallback is tested with fakes below")
def test_cuda_missing_from_the_wheel_falls_back_loudly(models_dir: Path) -> None:
    # The real, CPU-only onnxruntime of this environment: nothing is faked.
    with capture_logs() as logs:
        backend = InsightFaceLandmarks(models_dir, OnnxProvider.CUDA, det_size=DET_SIZE)
    report = backend.provider_report()
    assert report["provider"] == CPU and report["fallback"] is True
    assert report["sessions"] == {"det_10g.onnx": CPU, "2d106det.onnx": CPU}
    assert "onnxruntime-gpu" in str(report["fix"])
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["onnx.provider_fallback"]
    assert "CUDAExecutionProvider is not offered" in warnings[0]["reason"]
    assert "onnxruntime-gpu" in warnings[0]["fix"]
    assert len(backend.detect(scene(1.0)[0])) == 2  # and it still works, on the CPU


def test_cuda_available_is_chosen(monkeypatch: pytest.MonkeyPatch, fake_ort: type[FakeSession],
                                  tmp_path: Path) -> None:
    _available(monkeypatch, CUDA, CPU)
    with capture_logs() as logs:
        choice = choose_providers(OnnxProvider.CUDA, tmp_path / "m.onnx")
    assert (choice.actual, choice.fallback, choice.providers) == (CUDA, False, (CUDA, CPU))
    assert fake_ort.created == [[CUDA, CPU]] and logs == []


def test_cuda_listed_but_not_loading_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                fake_ort: type[FakeSession],
                                                tmp_path: Path) -> None:
    _available(monkeypatch, CUDA, CPU)
    fake_ort.runs_on = [CPU]  # what onnxruntime does when libcudnn is missing: silent CPU
    cache = SessionCache()
    with capture_logs() as logs:
        choice = choose_providers(OnnxProvider.CUDA, tmp_path / "m.onnx", cache)
    assert (choice.actual, choice.fallback) == (CPU, True)
    assert "did not load" in choice.reason
    assert [e["event"] for e in logs] == ["onnx.provider_fallback"]
    # The silently-CPU session is kept as the CPU session it is: not loaded a second time.
    cache.get(tmp_path / "m.onnx", choice)
    assert len(fake_ort.created) == 1 and len(cache) == 1


def test_tensorrt_gets_the_whole_chain(monkeypatch: pytest.MonkeyPatch,
                                       fake_ort: type[FakeSession], tmp_path: Path) -> None:
    _available(monkeypatch, TRT, CUDA, CPU)
    choice = choose_providers(OnnxProvider.TENSORRT, tmp_path / "m.onnx")
    assert choice.providers == (TRT, CUDA, CPU) and choice.actual == TRT and not choice.fallback
    assert fake_ort.created == [[TRT, CUDA, CPU]]


def test_tensorrt_missing_uses_cuda_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _available(monkeypatch, CUDA, CPU)
    with capture_logs() as logs:
        choice = choose_providers(OnnxProvider.TENSORRT)
    assert (choice.providers, choice.actual, choice.fallback) == ((CUDA, CPU), CUDA, True)
    assert logs[0]["event"] == "onnx.provider_fallback" and logs[0]["using"] == CUDA


def test_session_that_raises_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch,
                                               fake_ort: type[FakeSession],
                                               tmp_path: Path) -> None:
    _available(monkeypatch, TRT, CUDA, CPU)
    fake_ort.fail_with = onnx_providers._ort_state.EPFail("TensorRT EP could not be created")
    with capture_logs():
        choice = choose_providers(OnnxProvider.TENSORRT, tmp_path / "m.onnx")
    assert (choice.actual, choice.providers, choice.fallback) == (CPU, (CPU,), True)
    assert "could not be created" in choice.reason


def test_cpu_requested_is_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    _available(monkeypatch, CUDA, CPU)
    with capture_logs() as logs:
        choice = choose_providers(OnnxProvider.CPU)
    assert (choice.providers, choice.fallback, logs) == ((CPU,), False, [])


# --- sessions, files, errors -----------------------------------------------------------------


def test_sessions_are_cached_per_model_and_provider(models_dir: Path) -> None:
    cache = SessionCache()
    first = InsightFaceLandmarks(models_dir, OnnxProvider.CPU, session_cache=cache)
    second = InsightFaceLandmarks(models_dir, OnnxProvider.CPU, session_cache=cache)
    assert len(cache) == 2  # two model files, one provider
    det = models_dir / "buffalo_l" / "det_10g.onnx"
    choice = choose_providers(OnnxProvider.CPU)
    assert cache.get(det, choice) is cache.get(det, choice)
    assert cache.get(det, choice) is not cache.get(det.with_name("2d106det.onnx"), choice)
    assert first._sessions == second._sessions  # the same objects, loaded once


def test_missing_model_files_name_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        InsightFaceLandmarks(tmp_path, OnnxProvider.CUDA)
    assert "openeyesctl models fetch buffalo_l" in caught.value.message
    assert "det_10g.onnx" in caught.value.message and caught.value.kind == "backend_unavailable"


def test_gpu_out_of_memory_is_an_infrastructure_error() -> None:
    class Oom:
        def run(self, *_: object) -> None:
            raise onnx_providers._ort_state.RuntimeException(
                "CUDA failure 2: out of memory ; GPU=0")

    with pytest.raises(OutOfMemory):
        run_session(Oom(), {}, "SCRFD face detection")


def test_rejects_non_rgb_uint8(backend: InsightFaceLandmarks) -> None:
    with pytest.raises(ValueError):
        backend.detect(np.zeros((10, 10), np.float32))


# --- the real weights, where installed ---------------------------------------------------------

REAL_MODELS = Path(os.environ.get("OPENEYES_MODELS_DIR",
                                  Path(__file__).resolve().parents[2] / "models"))
_REAL_MISSING = not (REAL_MODELS / "buffalo_l" / "det_10g.onnx").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(_REAL_MISSING, reason=f"buffalo_l weights not installed in {REAL_MODELS} "
                    "(openeyesctl models fetch buffalo_l; or set OPENEYES_MODELS_DIR)")
def test_real_buffalo_l_on_the_astronaut() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    provider = OnnxProvider.CUDA if CUDA in ort.get_available_providers() else OnnxProvider.CPU
    backend = InsightFaceLandmarks(REAL_MODELS, provider)
    faces = backend.detect(np.ascontiguousarray(skimage_data.astronaut()))
    assert len(faces) == 1
    face = faces[0]
    # Same expectations as the CPU backend's test: face ~x 175..265, y 75..170.
    assert 80 < face.width < 160 and face.score > 0.8
    left, right = face.eyes["left"], face.eyes["right"]
    assert left.centre[0] > right.centre[0] + 30 and 35 < face.interocular < 60
    for eye in (left, right):
        assert 85 < eye.centre[1] < 120
        assert np.all(eye.brow[:, 1].mean() < eye.centre[1])
        x0, y0 = eye.contour.min(0)
        x1, y1 = eye.contour.max(0)
        assert x0 <= eye.iris[0][0] <= x1 and y0 - 3 <= eye.iris[0][1] <= y1 + 3
        assert eye.contour[1:8, 1].mean() < eye.contour[9:16, 1].mean()  # upper above lower
    assert abs(face.pose.yaw) < 35 and abs(face.pose.roll) < 25
