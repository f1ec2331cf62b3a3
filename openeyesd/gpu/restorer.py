"""Face restoration after generation: GFPGAN v1.4 or CodeFormer over every face of a photo.

``build_restorer(config)`` loads the network named by ``restoration.model`` from
``<models.dir>/<name>/`` and returns a ``FaceRestorer``; ``restore(image, faces)`` then:

1. **aligns** each face to the FFHQ 5-point template the networks were trained on (the one
   facexlib's ``FaceRestoreHelper`` uses, scaled to the network's size) with a least-squares
   similarity transform from five points of the ``Face`` (see :func:`alignment_points`);
2. runs the network **once for all faces** (a batch of N crops). On out-of-memory the batch
   is halved and the rest retried; a single face that still does not fit raises
   ``OutOfMemory`` (an infrastructure error: the worker pauses, the photo keeps its tries);
3. **pastes back** each restored crop through the inverse transform, blended with a feathered
   mask: the convex hull of the face's landmarks (an ellipse in its box where the landmark
   layout is unknown), cut to where the crop has content, eroded by the feather radius and then
   blurred by it, so the blurred edge stays inside the hull. Pixels outside every mask are
   copied, never recomputed: they are the input bit for bit.

The networks are our own modules (``openeyesd.gpu.arch``) written from the published
architectures; the published checkpoints load into them with ``strict=True``. No download
happens here: missing files raise ``BackendUnavailable`` with the ``openeyesctl models fetch``
command, and CodeFormer is refused unless ``models.allow_non_commercial`` is set (its weights
are under the non-commercial S-Lab licence).

Placement: on the generator's device the network is held by the same residency manager
(``build_restorer(config, residency=...)``), so it takes turns with the inpainter within the
VRAM budget (and the worker can group jobs by which of them is loaded); on a device of its own
(``gpu.restoration_device``) it stays loaded.

Precision: both networks are run in bfloat16 where ``gpu.precision`` asks for fp16. Their
reference ports (spandrel) mark them as not supporting fp16 but supporting bf16, whose range
is float32's; where the GPU has no bf16 they run in float32. CPU always runs float32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from openeyesd.config import Config, Precision
from openeyesd.errors import BackendUnavailable, ConfigError, OutOfMemory
from openeyesd.eyes.types import Face
from openeyesd.gpu.arch.codeformer import CodeFormer, CodeFormerSpec
from openeyesd.gpu.arch.gfpgan import GFPGANClean, GFPGANSpec
from openeyesd.gpu.keys import restorer_key
from openeyesd.gpu.residency import ResidencyManager
from openeyesd.gpu.torch_utils import (
    OOM_ERRORS,
    free_memory,
    resolve_device,
    tensor_bytes,
    timed,
    torch_dtype,
)

log = logging.getLogger(__name__)

#: FFHQ's 5 points on a 512 x 512 aligned face (facexlib ``FaceRestoreHelper.face_template``):
#: image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936],
                              [256.63416, 314.01935], [201.26117, 371.41043],
                              [313.08905, 371.15118]], np.float64)
#: Nose tip, then the image-left and image-right mouth corners, per landmark layout (by point
#: count): MediaPipe face mesh 468/478 (1; 61, 291), dlib/iBUG 68 (30; 48, 54), InsightFace
#: 2d106det (86; 52, 61, see ``openeyesd.gpu.insightface_landmarks`` for where those come from).
NOSE_MOUTH: dict[int, tuple[int, int, int]] = {
    468: (1, 61, 291), 478: (1, 61, 291), 68: (30, 48, 54), 106: (86, 52, 61),
}
#: Points of the face outline for the paste mask: MediaPipe's iris points (468+) sit inside the
#: eyes and change nothing, so every layout simply uses all its points.
MIN_HULL_POINTS = 68
#: The aligned crop's border colour where the crop reaches outside the photo (facexlib's).
BORDER_RGB = (132, 133, 135)
#: Feather radius as a fraction of the face mask's size (sqrt of its area).
FEATHER_OF_FACE = 0.04


@dataclass(frozen=True)
class RestorerModel:
    """A restoration network's files and how to recognise its checkpoint."""

    name: str
    filename: str
    commercial_use: bool
    #: Keys every checkpoint of this architecture has (spandrel detects them by the same keys).
    signature: tuple[str, ...]
    build: Callable[[Mapping[str, Tensor]], nn.Module]


RESTORERS: dict[str, RestorerModel] = {
    "gfpgan-1.4": RestorerModel(
        "gfpgan-1.4", "GFPGANv1.4.pth", True,
        ("toRGB.0.weight", "stylegan_decoder.style_mlp.1.weight", "final_linear.weight",
         "conv_body_first.weight", "stylegan_decoder.constant_input.weight"),
        lambda sd: GFPGANClean(GFPGANSpec.from_state_dict(sd))),
    "codeformer": RestorerModel(
        "codeformer", "codeformer.pth", False,
        ("position_emb", "idx_pred_layer.1.weight", "quantize.embedding.weight",
         "ft_layers.0.self_attn.in_proj_weight", "encoder.blocks.0.weight"),
        lambda sd: CodeFormer(CodeFormerSpec.from_state_dict(sd))),
}


@dataclass(frozen=True)
class RestoredFace:
    #: (x0, y0, x1, y1), end exclusive: the only pixels of the photo that may have changed.
    box: tuple[int, int, int, int]
    #: Photo pixels per network pixel along a side; above 1 the face was larger than the
    #: network's input and the restored face carries less detail than the photo had.
    scale: float


@dataclass(frozen=True)
class RestoreResult:
    image: np.ndarray
    faces: tuple[RestoredFace, ...]
    #: Seconds per phase: align, forward, paste, total.
    timings: dict[str, float]
    #: Faces per network call, in call order; more than one entry only after an OOM.
    batch_sizes: tuple[int, ...]
    oom_retries: int
    model: str


# --- loading -----------------------------------------------------------------------------------


def weights_path(models_dir: Path, name: str) -> Path:
    """The checkpoint of restorer ``name``: ``<models_dir>/<name>/<file>``, the published
    ``.pth`` or the same stem converted to ``.safetensors``."""
    model = RESTORERS[name]
    folder = Path(models_dir) / name
    candidates = [folder / model.filename, (folder / model.filename).with_suffix(".safetensors")]
    for path in candidates:
        if path.is_file():
            return path
    raise BackendUnavailable(
        f"face restorer {name!r}: {candidates[0]} not found; run `openeyesctl models fetch "
        f"{name}` (or set restoration.model = \"none\")")


def read_state_dict(path: Path, model: RestorerModel) -> dict[str, Tensor]:
    """The network's tensors from a published checkpoint (``{"params_ema": ...}``, or
    ``"params"`` as GFPGANer accepts) or a flat safetensors file, with its signature checked.
    Never unpickles code: ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(path)
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the same thing: a bad file
        raise BackendUnavailable(
            f"face restorer {model.name!r}: cannot read {path} ({type(exc).__name__}: {exc}); "
            f"run `openeyesctl models fetch {model.name}` again") from exc
    state = raw.get("params_ema", raw.get("params", raw)) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackendUnavailable(f"{path}: not a state_dict checkpoint (no 'params_ema' tensors)")
    missing = [key for key in model.signature if key not in state]
    if missing:
        raise BackendUnavailable(
            f"{path} is not a {model.name} checkpoint: missing keys {', '.join(missing)}")
    return state


def load_network(name: str, models_dir: Path) -> nn.Module:
    """Build restorer ``name`` from its checkpoint, on the CPU in float32, in eval mode.

    The module is created on the ``meta`` device and the file's tensors are assigned to it, so
    no random initialisation is computed for weights that are replaced at once. Strict loading
    rejects any missing, unexpected or mis-shaped tensor.
    """
    model = RESTORERS[name]
    path = weights_path(models_dir, name)
    state = read_state_dict(path, model)
    try:
        with torch.device("meta"):
            network = model.build(state)
        network.load_state_dict(state, strict=True, assign=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise BackendUnavailable(
            f"{path} does not match the {name} architecture: {str(exc)[:600]}") from exc
    return network.float().eval().requires_grad_(False)


def choose_dtype(precision: Precision | str, device: torch.device) -> torch.dtype:
    dtype = torch_dtype(precision, device)
    if dtype == torch.float16:  # see the module docstring
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return dtype


def build_restorer(
    config: Config, *, residency: ResidencyManager | None = None
) -> FaceRestorer | None:
    """The restorer ``config.restoration`` asks for on ``gpu.restoration_device`` (else
    ``gpu.device``), or None for ``model = "none"``. ``residency``: the manager that holds
    the generator's models on the same device; the restorer then takes turns with them within
    the VRAM budget instead of staying on the card outside it."""
    name = config.restoration.model
    if name == "none":
        return None
    if name not in RESTORERS:
        raise ConfigError(f"restoration.model {name!r} unknown; use one of "
                          f"{', '.join([*RESTORERS, 'none'])}")
    if not RESTORERS[name].commercial_use and not config.models.allow_non_commercial:
        raise ConfigError(
            f"restoration.model = {name!r}: its weights are licensed for non-commercial use "
            "only; set models.allow_non_commercial = true if that is your use, or use "
            "\"gfpgan-1.4\"")
    try:
        device = resolve_device(config.gpu.restoration_device or config.gpu.device)
    except RuntimeError as exc:
        raise BackendUnavailable(f"face restorer {name!r}: {exc}") from exc
    # Read now even when the residency manager holds it: a bad file stops the backend at
    # build time, with the fetch command, rather than in the middle of a photo.
    network = load_network(name, config.models.dir)
    models_dir = config.models.dir
    return FaceRestorer(network, name=name, device=device,
                        dtype=choose_dtype(config.gpu.precision, device),
                        fidelity=config.restoration.fidelity, residency=residency,
                        reload=lambda: load_network(name, models_dir))


def _first_then(first: nn.Module, load: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A residency loader that hands over ``first`` (read at build time) on its first call, and
    ``load``s from disk on later ones (after the manager dropped the network)."""
    spare = [first]

    def loader() -> nn.Module:
        return spare.pop() if spare else load()

    return loader


# --- geometry ----------------------------------------------------------------------------------


def alignment_points(face: Face) -> tuple[np.ndarray, np.ndarray]:
    """The face's alignment points and the matching FFHQ template points (512 scale).

    Eye centres are the means of the eyelid contours (``Eye.centre``): every backend has them,
    and they stay put whether the eye is open or closed, unlike an iris. Nose tip and mouth
    corners come from ``face.landmarks`` for the layouts in ``NOSE_MOUTH``; for any other
    layout the two eyes alone fix the similarity transform (scale, roll, position).
    """
    eyes = [face.eyes["right"].centre, face.eyes["left"].centre]  # image-left eye first
    indices = NOSE_MOUTH.get(len(face.landmarks))
    if indices is None:
        return np.asarray(eyes, np.float64), FFHQ_TEMPLATE_512[:2]
    rest = np.asarray(face.landmarks, np.float64)[list(indices)]
    return np.vstack([np.asarray(eyes, np.float64), rest]), FFHQ_TEMPLATE_512


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + translation that maps ``src`` onto ``dst`` with the
    least squared error (closed form: points as complex numbers, dst ~ a * src + t)."""
    src_c, dst_c = src - src.mean(0), dst - dst.mean(0)
    zs = src_c[:, 0] + 1j * src_c[:, 1]
    zd = dst_c[:, 0] + 1j * dst_c[:, 1]
    a = np.vdot(zs, zd) / np.vdot(zs, zs)
    rot = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.hstack([rot, (dst.mean(0) - rot @ src.mean(0))[:, None]])


def face_outline(face: Face) -> np.ndarray:
    """Polygon (k, 2) of the region restoration may change: the landmarks' convex hull, or
    for a sparse layout the ellipse inscribed in the face box."""
    points = np.asarray(face.landmarks, np.float32)
    if len(points) >= MIN_HULL_POINTS:
        return cv2.convexHull(points).reshape(-1, 2)
    x0, y0, x1, y1 = face.box
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    ellipse = np.stack([(x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(angles),
                        (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(angles)], axis=1)
    return ellipse.astype(np.float32)


def paste_mask(outline: np.ndarray, inverse: np.ndarray, size: int,
               roi: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 alpha over ``roi`` (x0, y0, x1, y1): the outline, cut to where the warped crop
    has content, eroded by the feather radius and blurred by the same radius, so it is 0
    everywhere outside both."""
    x0, y0, x1, y1 = roi
    shift = np.array([[1, 0, -x0], [0, 1, -y0]], np.float64)
    local = np.vstack([shift, [0, 0, 1]]) @ np.vstack([inverse, [0, 0, 1]])
    hull = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(hull, [np.round((outline - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_8,
                 shift=4)
    covered = cv2.warpAffine(np.full((size, size), 255, np.uint8), local[:2], hull.shape[::-1],
                             flags=cv2.INTER_NEAREST, borderValue=0)
    mask = np.minimum(hull, covered)
    radius = max(1, round(FEATHER_OF_FACE * np.sqrt(cv2.countNonZero(mask))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # Erode with a zero border so the blur (kernel radius = erosion radius) cannot reach
    # past the hull, not even at the edge of the ROI.
    mask = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.GaussianBlur(mask, (2 * radius + 1, 2 * radius + 1), 0,
                            borderType=cv2.BORDER_CONSTANT)


def _roi(outline: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(outline.min(0)).astype(int) - 1
    x1, y1 = np.ceil(outline.max(0)).astype(int) + 2
    h, w = shape[:2]
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


# --- the restorer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Aligned:
    crops: np.ndarray  # (n, size, size, 3) uint8 RGB
    transforms: list[np.ndarray]  # photo -> crop, 2x3 each
    scales: list[float]


class FaceRestorer:
    """Restores every face of a photo with one network call (see the module docstring).

    Without ``residency`` the network stays on ``device`` for the restorer's life. With it,
    the residency manager holds the network under ``residency_key`` and each call acquires it
    (loading it, and evicting idle generator models by the VRAM budget, when it is not on the
    device); ``reload`` reads it again once the manager has dropped it.
    """

    def __init__(self, network: nn.Module, *, name: str, device: torch.device,
                 dtype: torch.dtype, fidelity: float,
                 residency: ResidencyManager | None = None,
                 reload: Callable[[], nn.Module] | None = None) -> None:
        if not isinstance(network, CodeFormer | GFPGANClean):
            raise TypeError(f"unsupported restoration network {type(network).__name__}")
        self.name = name
        self.device = device
        self.dtype = dtype
        #: CodeFormer's w; GFPGAN has no such control.
        self.fidelity = fidelity
        self.size = network.spec.size if isinstance(network, CodeFormer) else network.spec.out_size
        self._template = FFHQ_TEMPLATE_512 * (self.size / 512.0)
        self.residency = residency
        self.residency_key = restorer_key(name)
        prepared = self._prepared(network)
        #: The network on ``device``; None when the residency manager holds it.
        self.network: nn.Module | None = None
        if residency is None:
            self.network = prepared.to(device=device)
            return
        if reload is None:
            raise ValueError("a restorer held by a residency manager needs a reload function")
        # estimate_bytes lets the manager make room before the first load, not after it.
        residency.register(self.residency_key,
                           _first_then(prepared, lambda: self._prepared(reload())),
                           estimate_bytes=tensor_bytes(prepared))

    def _prepared(self, network: nn.Module) -> nn.Module:
        return network.to(dtype=self.dtype).eval().requires_grad_(False)

    @contextmanager
    def _network(self, timings: dict[str, float]) -> Iterator[nn.Module]:
        """The network on the device for one call (timed as "load" when it is acquired)."""
        if self.residency is None:
            assert self.network is not None
            yield self.network
            return
        with timed(timings, "load", self.device):
            network = self.residency.acquire(self.residency_key)
        try:
            yield network
        finally:
            self.residency.release(self.residency_key)

    def restore(self, image_rgb: np.ndarray, faces: Sequence[Face]) -> RestoreResult:
        """``image_rgb``: HxWx3 uint8. Returns a new image; the input is not modified."""
        if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image_rgb.dtype} "
                             f"{image_rgb.shape}")
        start = time.perf_counter()
        timings: dict[str, float] = {}
        if not faces:
            return RestoreResult(image_rgb.copy(), (), {"total": 0.0}, (), 0, self.name)
        with timed(timings, "align", self.device):
            aligned = self._align(image_rgb, faces)
        with self._network(timings) as network, timed(timings, "forward", self.device):
            restored, sizes, retries = self._run_batched(network, aligned.crops)
        with timed(timings, "paste", self.device):
            out = image_rgb.copy()
            results = tuple(
                RestoredFace(self._paste(out, restored[i], aligned.transforms[i], face),
                             aligned.scales[i])
                for i, face in enumerate(faces))
        timings["total"] = time.perf_counter() - start
        log.debug("restored %d faces with %s in %.3fs (batches %s)", len(faces), self.name,
                  timings["total"], sizes)
        return RestoreResult(out, results, timings, tuple(sizes), retries, self.name)

    def _align(self, image: np.ndarray, faces: Sequence[Face]) -> _Aligned:
        crops, transforms, scales = [], [], []
        for face in faces:
            points, template = alignment_points(face)
            matrix = similarity(points, template * (self.size / 512.0))
            crops.append(cv2.warpAffine(image, matrix, (self.size, self.size),
                                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                        borderValue=BORDER_RGB))
            transforms.append(matrix)
            scales.append(float(1.0 / np.sqrt(abs(np.linalg.det(matrix[:, :2])))))
        return _Aligned(np.stack(crops), transforms, scales)

    def _forward(self, network: nn.Module, crops: np.ndarray) -> np.ndarray:
        """uint8 RGB crops -> restored uint8 RGB crops, one network call."""
        batch = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2)
        batch = (batch.to(self.dtype) / 127.5 - 1.0).contiguous()
        with torch.inference_mode():
            if isinstance(network, CodeFormer):
                out = network(batch, w=self.fidelity)
            else:
                out = network(batch)
        out = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).cpu().numpy()

    def _run_batched(
        self, network: nn.Module, crops: np.ndarray
    ) -> tuple[np.ndarray, list[int], int]:
        """All crops, as few calls as memory allows: start with one batch of all faces,
        halve the batch after an out-of-memory error and go on from the failed chunk."""
        batch, done, sizes, retries = len(crops), 0, [], 0
        outputs: list[np.ndarray] = []
        while done < len(crops):
            chunk = crops[done:done + batch]
            failed = False
            try:
                outputs.append(self._forward(network, chunk))
            except OOM_ERRORS:
                failed = True
            if not failed:
                sizes.append(len(chunk))
                done += len(chunk)
                continue
            # Freed outside the except block: the exception's frames hold the activations.
            free_memory(self.device)
            if batch == 1:
                raise OutOfMemory(
                    f"face restorer {self.name!r} ran out of memory on {self.device} with a "
                    f"single {self.size}px face ({self.dtype}); free the GPU, or run "
                    "restoration on another one (gpu.restoration_device)")
            retries += 1
            batch = max(1, batch // 2)
            log.warning("face restorer %s: out of memory with %d faces, retrying with %d",
                        self.name, len(chunk), batch)
        return np.concatenate(outputs), sizes, retries

    def _paste(self, out: np.ndarray, crop: np.ndarray, matrix: np.ndarray,
               face: Face) -> tuple[int, int, int, int]:
        """Blend one restored crop into ``out`` in place; returns the changed box."""
        outline = face_outline(face)
        x0, y0, x1, y1 = roi = _roi(outline, out.shape)
        if x1 <= x0 or y1 <= y0:
            return (0, 0, 0, 0)
        inverse = cv2.invertAffineTransform(matrix)
        alpha = paste_mask(outline, inverse, self.size, roi)
        bx, by, bw, bh = cv2.boundingRect(alpha)
        if bw == 0:
            return (0, 0, 0, 0)
        local = inverse.copy()
        local[:, 2] -= (x0, y0)
        warped = cv2.warpAffine(crop, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        region = out[y0:y1, x0:x1]
        a = alpha.astype(np.float32)[..., None] / 255.0
        blended = np.round(region * (1.0 - a) + warped * a).astype(np.uint8)
        changed = alpha > 0  # copy only where the mask is non-zero: elsewhere bit-identical
        region[changed] = blended[changed]
        return (x0 + bx, y0 + by, x0 + bx + bw, y0 + by + bh)
