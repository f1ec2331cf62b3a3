"""Open closed eyes by inpainting them with SDXL (or SD 1.5), for faces with no donor frame.

One face, one call, ``EyeInpainter.inpaint``:

1. **crop** — a square around both eyes and brows, ``CROP_INTEROCULAR`` interocular distances
   wide (enough face for the model to see whose eyes these are), shifted to stay inside the
   photo, resized to ``generation.crop_size``.
2. **mask** — the CPU path's paste region (:func:`openeyesd.eyes.blend.eye_region`): the eye
   outlines dilated by 0.35 eye widths (room for an open eye's lid and crease above a closed
   one), cut below the brows, feathered. The model is asked to repaint that region, grown a
   little so its edge is generated content and the feather blends generated into original.
3. **generate** — N variations in ONE batch (``num_images_per_prompt``), each with its own CPU
   ``torch.Generator`` seeded ``seed + k`` (recorded, so any variation can be reproduced on any
   machine); optionally finished by an SDXL refiner sharing the base's VAE and second text
   encoder. Out of memory: the batch is halved and retried; at batch 1, ``OutOfMemory``.
4. **blend** — each variation is resized back, colour-matched on the skin ring and blended
   into the original crop with the CPU path's Poisson blend (:func:`.blend.blend`), so pixels
   outside the mask are the original bit for bit.
5. **score** — ``score_fn(candidate_crop_rgb)`` (injected by the caller, who has landmarks) or
   :class:`ImageStatsScorer`; the best variation is returned with every score and seed.

A **reference** frame of the same person (a weak donor: other pose or light) conditions the
generation through its init image: the reference's open eyes are aligned and blended in with
the CPU transfer (:func:`.transfer.transfer_face`), then noised to ``strength`` and denoised
with the inpainting mask. At strength < 1 the sampler starts from that image, so the person's
own iris colour, eye shape and gaze survive into the output while the model repairs what the
plain transfer could not (seams, lighting, small misalignment). The mask then also covers
where the reference's eye outline lands.

Speed, against the seed's 26.9 s/face: models stay resident (:mod:`.residency`) instead of
being reloaded per photo; prompt embeddings are computed once (the prompt is fixed by the
config); the N variations run as one batch; fp16/bf16 weights, SDPA attention (flash kernels),
``channels_last``, optional ``torch.compile`` of the UNet.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import Image

from openeyesd.config import Config, GenerationConfig, GpuConfig
from openeyesd.errors import BackendUnavailable, ConfigError, OutOfMemory
from openeyesd.eyes.blend import BlendMethod, blend, eye_region, match_colour
from openeyesd.eyes.quality import measure_seam
from openeyesd.eyes.transfer import apply as apply_results
from openeyesd.eyes.transfer import transfer_face
from openeyesd.eyes.types import Face, Side
from openeyesd.gpu.keys import inpaint_key, refiner_key
from openeyesd.gpu.residency import ResidencyManager, budget_bytes
from openeyesd.gpu.torch_utils import (
    OOM_ERRORS,
    free_memory,
    resolve_device,
    timed,
    torch_dtype,
)

log = logging.getLogger(__name__)

Kind = Literal["xl", "sd"]
#: model_index.json ``_class_name`` → which inpainting pipeline runs it. Plain text-to-image
#: checkpoints (4-channel UNet) inpaint too, by blending latents each step; worse but usable.
PIPELINE_KINDS: dict[str, Kind] = {
    "StableDiffusionXLInpaintPipeline": "xl",
    "StableDiffusionXLPipeline": "xl",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionPipeline": "sd",
}
#: Config name → (diffusers scheduler class, overrides of the checkpoint's scheduler config).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm++_2m": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2,
                         "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
#: Share of the noise schedule the base denoises before the refiner takes over (the split
#: Stability AI published for base + refiner, "ensemble of expert denoisers").
REFINER_SPLIT = 0.8
#: Crop side in interocular distances: both eyes, brows and the bridge of the nose, so the
#: model sees enough of the face to keep it the same person.
CROP_INTEROCULAR = 2.0
#: Margin around the eye and brow points, in eye widths, when that is wider than the above.
CROP_MARGIN = 0.6
#: The model's mask is the paste region grown by this many eye widths, so the feathered edge
#: of the paste blends generated pixels, never the model's own unmasked border, into the photo.
MODEL_MASK_GROW = 0.08
#: Open-eye ellipse used for scoring, in eye widths: half-axes along and across the eye.
EYE_ELLIPSE = (0.5, 0.22)


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariationScore:
    #: Higher is better; the chosen variation is the one with the highest score.
    score: float
    #: Seam visibility (:func:`.quality.measure_seam`), lower is better, when measured.
    seam: float | None = None
    #: Identity proxy in [-1, 1] (structural similarity of the skin around the eyes), if measured.
    identity: float | None = None
    #: Eye-area contrast gained over the original (L* units / 100), if measured.
    openness: float | None = None
    #: Whether the eyes read open, when the scorer can tell (landmarks).
    eyes_open: bool | None = None


ScoreFn = Callable[[np.ndarray], VariationScore]


@dataclass(frozen=True)
class Variation:
    index: int
    seed: int
    score: VariationScore


@dataclass(frozen=True)
class InpaintResult:
    #: (x0, y0, x1, y1) of the square crop in full-image pixels, x1/y1 exclusive.
    box: tuple[int, int, int, int]
    #: The chosen variation blended into the crop, uint8 RGB at box size; equal to the original
    #: wherever ``mask`` is 0.
    pixels: np.ndarray
    #: Feathered blend alpha over the crop, uint8: 0 untouched, 255 fully generated.
    mask: np.ndarray
    variations: tuple[Variation, ...]
    chosen: int
    #: Seconds per phase: load, prepare, encode, denoise, refine, decode, blend, total.
    timings: dict[str, float]
    #: The batch the variations finally ran in (smaller than requested after an OOM).
    batch_size: int
    model: str
    refiner: str | None
    reference_used: bool
    #: Every variation blended into the crop, in index order (for previews and debugging).
    candidates: tuple[np.ndarray, ...] = field(repr=False, default=())
    notes: tuple[str, ...] = ()

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(v.seed for v in self.variations)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A copy of ``image`` with the chosen pixels pasted under the mask, nothing else."""
        return apply_results(image, [self])  # type: ignore[list-item]


# --- crop and mask --------------------------------------------------------------------------


@dataclass(frozen=True)
class EyeCrop:
    box: tuple[int, int, int, int]
    #: The original pixels of the box (uint8 RGB).
    original: np.ndarray
    #: What generation starts from: the original, or the original with the reference's
    #: aligned open eyes blended in.
    init: np.ndarray
    alpha: np.ndarray
    ring: np.ndarray
    #: Where open eyes will be (an ellipse per eye), bool: scoring looks here.
    eye_area: np.ndarray
    eye_width: float


def crop_box(
    face: Face, sides: Sequence[Side], shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """A square around the eyes and brows of ``sides``, sized by the face, inside the image."""
    eyes = [face.eyes[s] for s in sides]
    points = np.vstack([np.vstack([e.contour, e.brow]) for e in eyes]).astype(np.float64)
    eye_width = float(np.mean([e.width for e in eyes]))
    lo, hi = points.min(axis=0), points.max(axis=0)
    scale = face.interocular if len(face.eyes) == 2 else 1.6 * eye_width
    side = max(float((hi - lo).max()) + 2 * CROP_MARGIN * eye_width, CROP_INTEROCULAR * scale)
    h, w = shape[:2]
    side_px = int(min(round(side), h, w))
    cx, cy = (lo + hi) / 2
    # Shift rather than shrink at the border: the model needs the full context.
    x0 = int(np.clip(round(cx - side_px / 2), 0, w - side_px))
    y0 = int(np.clip(round(cy - side_px / 2), 0, h - side_px))
    return x0, y0, x0 + side_px, y0 + side_px


def _eye_ellipses(shape: tuple[int, int], face: Face, sides: Sequence[Side],
                  offset: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for side in sides:
        eye = face.eyes[side]
        centre = (eye.outer_corner + eye.inner_corner) / 2 - offset
        axis = eye.inner_corner - eye.outer_corner
        angle = float(np.degrees(np.arctan2(axis[1], axis[0])))
        axes = tuple(max(1, round(f * eye.width)) for f in EYE_ELLIPSE)
        cv2.ellipse(out, (round(centre[0]), round(centre[1])), axes, angle, 0, 360, 1, -1)
    return out.astype(bool)


def _with_transfer_masks(
    alpha: np.ndarray, moved: Sequence[Any], box: tuple[int, int, int, int]
) -> np.ndarray:
    """The paste region grown to cover every pixel the reference transfer changed (its region
    is cut at the donor's brow too, so it is not always inside ours): what the init image
    changed is what must be regenerated."""
    out = alpha.copy()
    for result in moved:
        rx0, ry0, rx1, ry1 = result.box
        cx0, cy0 = max(rx0, box[0]), max(ry0, box[1])
        cx1, cy1 = min(rx1, box[2]), min(ry1, box[3])
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        view = out[cy0 - box[1]:cy1 - box[1], cx0 - box[0]:cx1 - box[0]]
        np.maximum(view, result.mask[cy0 - ry0:cy1 - ry0, cx0 - rx0:cx1 - rx0], out=view)
    # cv2.seamlessClone needs the mask off the crop border, as in eye_region.
    out[:2], out[-2:], out[:, :2], out[:, -2:] = 0, 0, 0, 0
    return out


def build_eye_crop(
    image: np.ndarray,
    face: Face,
    sides: Sequence[Side],
    *,
    reference: tuple[np.ndarray, Face] | None = None,
    blend_method: BlendMethod = "poisson",
) -> tuple[EyeCrop, list[str]]:
    """The crop, its paste region and the init image; notes say why a reference was unused."""
    box = crop_box(face, sides, image.shape)
    x0, y0, x1, y1 = box
    off = np.array([x0, y0], np.float64)
    contours = [np.asarray(face.eyes[s].contour, np.float64) - off for s in sides]
    brows = [np.asarray(face.eyes[s].brow, np.float64) - off for s in sides]
    init_full, notes, moved = image, [], []
    if reference is not None:
        try:
            moved = transfer_face(image, face, reference[0], reference[1], sides,
                                  method=blend_method)
        except ValueError as exc:
            notes.append(f"reference not used: {exc}")
        else:
            init_full = apply_results(image, moved)
            contours += [r.contour.astype(np.float64) - off for r in moved]
    eye_width = float(np.mean([face.eyes[s].width for s in sides]))
    shape = (y1 - y0, x1 - x0)
    region = eye_region(shape, contours, brows, eye_width)
    alpha = _with_transfer_masks(region.alpha, moved, box)
    crop = EyeCrop(
        box=box,
        original=image[y0:y1, x0:x1].copy(),
        init=init_full[y0:y1, x0:x1].copy(),
        alpha=alpha,
        ring=region.ring & (alpha == 0),
        eye_area=_eye_ellipses(shape, face, sides, off),
        eye_width=eye_width,
    )
    return crop, notes


def model_mask(crop: EyeCrop) -> np.ndarray:
    """The region the model repaints: the paste region grown by ``MODEL_MASK_GROW``, uint8."""
    support = (crop.alpha > 0).astype(np.uint8)
    dist = cv2.distanceTransform(1 - support, cv2.DIST_L2, 3)
    return np.where(dist <= MODEL_MASK_GROW * crop.eye_width, 255, 0).astype(np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize: area averaging down (no aliasing), Lanczos up (no blur)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LANCZOS4
    return cv2.resize(image, (size, size), interpolation=interp)


# --- scoring ----------------------------------------------------------------------------------


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structural similarity (Wang et al. 2004), Gaussian window σ = 1.5, per pixel."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), 1.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    return num / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def _l_star(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[..., 0]


class ImageStatsScorer:
    """Default ``score_fn`` from image statistics alone, for callers without landmarks.

    ``score = identity + openness - SEAM_WEIGHT * seam``:

    * identity — mean SSIM of the grey image against the original over the repainted skin
      around the eyes (the mask minus the eye ellipses): a variation that changed the person's
      lids, creases or skin texture scores lower there.
    * openness — gain in L* spread (p90 - p10) inside the eye ellipses over the original, / 100:
      an open eye shows a dark iris and a light sclera where a closed lid is flat skin.
    * seam — :func:`.quality.measure_seam` of the paste (lower is better; 1.0 = visible).

    A heuristic ranking, not a verdict: it cannot say the eyes read open (``eyes_open`` stays
    None). The caller with landmarks injects a ``score_fn`` using :mod:`.assess` instead.
    """

    SEAM_WEIGHT = 0.5

    def __init__(self, crop: EyeCrop) -> None:
        self._original = crop.original
        self._alpha = crop.alpha
        self._grey = cv2.cvtColor(crop.original, cv2.COLOR_RGB2GRAY)
        self._eye = crop.eye_area
        skin = (crop.alpha > 0) & ~crop.eye_area
        # A tiny region can lie wholly inside the ellipses; then the whole region counts.
        self._skin = skin if skin.any() else np.ones_like(skin)
        self._base_spread = self._spread(crop.original)

    def _spread(self, rgb: np.ndarray) -> float:
        if not self._eye.any():
            return 0.0
        p10, p90 = np.percentile(_l_star(rgb)[self._eye], (10, 90))
        return float(p90 - p10)

    def __call__(self, candidate: np.ndarray) -> VariationScore:
        grey = cv2.cvtColor(candidate, cv2.COLOR_RGB2GRAY)
        identity = float(_ssim_map(self._grey, grey)[self._skin].mean())
        openness = (self._spread(candidate) - self._base_spread) / 100.0
        seam = measure_seam(self._original, candidate, self._alpha).score
        score = identity + openness - self.SEAM_WEIGHT * seam
        return VariationScore(score=score, seam=seam, identity=identity, openness=openness)


# --- loading --------------------------------------------------------------------------------


def _fetch_hint(name: str) -> str:
    return f"run `openeyesctl models fetch {name}`"


def pipeline_kind(path: Path, name: str) -> Kind:
    """Which pipeline a checkpoint folder holds, from its model_index.json."""
    index = path / "model_index.json"
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except FileNotFoundError:
        raise BackendUnavailable(
            f"model {name!r} is not installed: {index} is missing; {_fetch_hint(name)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"model {name!r}: cannot read {index} ({exc}); {_fetch_hint(name)} again"
        ) from None
    if class_name not in PIPELINE_KINDS:
        raise BackendUnavailable(
            f"model {name!r} is a {class_name or 'unknown'} checkpoint; generation needs one of "
            f"{', '.join(sorted(PIPELINE_KINDS))}"
        )
    return PIPELINE_KINDS[class_name]


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]


def load_variant(path: Path, dtype: torch.dtype) -> str | None:
    """``"fp16"`` when the checkpoint ships fp16 files and we do not run in fp32 (half the disk
    read); also in fp32 when only fp16 files exist."""
    files = _weight_files(path)
    has_fp16 = any(".fp16." in p.name for p in files)
    has_full = any(".fp16." not in p.name for p in files)
    if has_fp16 and (dtype != torch.float32 or not has_full):
        return "fp16"
    return None


def estimate_bytes(path: Path, variant: str | None, dtype: torch.dtype) -> int:
    """Weights' size once loaded, from the files on disk (corrected after loading)."""
    files = [p for p in _weight_files(path) if (".fp16." in p.name) == (variant == "fp16")]
    on_disk = sum(p.stat().st_size for p in files)
    file_bytes = 2 if variant == "fp16" else 4
    return on_disk * torch.tensor([], dtype=dtype).element_size() // file_bytes


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (deprecating the old name); use the name
    the installed version expects."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def make_scheduler(name: str, scheduler_config: Any) -> Any:
    """The scheduler called ``name`` in config, from the checkpoint's own scheduler config
    (its beta schedule and timestep spacing are what the model was trained with)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ConfigError(
            f"generation.scheduler {name!r} is unknown; expected one of {', '.join(SCHEDULERS)}"
        )
    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(scheduler_config, **overrides)


@dataclass(frozen=True)
class LoadOptions:
    device: torch.device
    dtype: torch.dtype
    scheduler: str
    compile: bool


def _optimise(pipe: Any, options: LoadOptions) -> Any:
    """SDPA attention, channels_last, the configured scheduler, optionally a compiled UNet."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    # SDPA (flash / memory-efficient kernels) is torch 2's default; set it explicitly so no
    # checkpoint or earlier call leaves an xformers processor in place.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.scheduler = make_scheduler(options.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if options.compile:
        # No CUDA graphs: the OOM fallback changes the batch, and graphs are per shape.
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
    return pipe


def load_inpaint_pipeline(path: Path, name: str, kind: Kind, options: LoadOptions) -> Any:
    """The inpainting pipeline from a local folder (never the network), on CPU."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    cls = StableDiffusionXLInpaintPipeline if kind == "xl" else StableDiffusionInpaintPipeline
    extra: dict[str, Any] = {}
    if kind == "sd":
        # The NSFW checker would black out portraits at random and costs memory; not loaded.
        extra = {"safety_checker": None, "feature_extractor": None,
                 "requires_safety_checker": False}
    variant = load_variant(path, options.dtype)
    try:
        pipe = cls.from_pretrained(path, variant=variant, local_files_only=True,
                                   **_dtype_kwarg(options.dtype), **extra)
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"model {name!r} in {path} cannot be loaded ({exc}); {_fetch_hint(name)} again"
        ) from exc
    return _optimise(pipe, options)


def load_refiner_unet(path: Path, name: str, options: LoadOptions) -> Any:
    """Only the refiner's UNet (and its scheduler config): its VAE and text encoder are the
    base's, shared, so they are neither loaded twice nor counted twice in the VRAM budget."""
    from diffusers import UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", variant=load_variant(path / "unet", options.dtype),
            local_files_only=True, **_dtype_kwarg(options.dtype),
        )
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"refiner {name!r} in {path} cannot be loaded ({exc}); {_fetch_hint(name)} again"
        ) from exc
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    unet.to(memory_format=torch.channels_last)
    if options.compile:
        unet = torch.compile(unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
    return unet


# --- the inpainter --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    name: str
    path: Path
    #: The name under which the residency manager holds it.
    key: str


@dataclass(frozen=True)
class _Job:
    image: Image.Image
    mask: Image.Image


@dataclass(frozen=True)
class _Pipes:
    base: Any
    refiner: Any | None


PHASES = ("load", "prepare", "encode", "denoise", "refine", "decode", "blend")


class EyeInpainter:
    """Generates open eyes for one face at a time. Built by :func:`build_eye_inpainter`.

    Calls are serialised by a lock: a diffusers pipeline's scheduler is mutable state, and one
    GPU runs one batch at a time anyway.
    """

    def __init__(
        self,
        generation: GenerationConfig,
        residency: ResidencyManager,
        *,
        base: ModelRef,
        kind: Kind,
        refiner: ModelRef | None = None,
        device: torch.device,
        blend_method: BlendMethod = "poisson",
    ) -> None:
        if refiner is not None and kind != "xl":
            raise ConfigError("generation.refiner needs an SDXL inpainting model")
        self.generation = generation
        self.residency = residency
        self.base = base
        self.kind = kind
        self.refiner = refiner
        self.device = device
        self.blend_method = blend_method
        self._lock = threading.Lock()
        # Prompt embeddings per role ("base", "refiner"): the prompt is fixed by the config, so
        # the text encoders run once per process, not once per face.
        self._embeds: dict[str, dict[str, torch.Tensor]] = {}

    def preload(self) -> None:
        """Load the models now (daemon start) rather than on the first face."""
        with self._pipelines({}):
            pass

    def inpaint(
        self,
        image: np.ndarray,
        face: Face,
        *,
        sides: Sequence[Side] | None = None,
        reference: tuple[np.ndarray, Face] | None = None,
        seed: int | None = None,
        score_fn: ScoreFn | None = None,
    ) -> InpaintResult:
        """Generate ``generation.variations`` open-eye versions of ``face`` (uint8 RGB
        ``image``), blend each in, keep the best by ``score_fn``. ``image`` is not modified;
        ``result.apply(image)`` pastes the chosen one. ``sides`` default: every eye of the face
        (both eyes are regenerated together so their gaze agrees)."""
        start = time.perf_counter()
        timings = dict.fromkeys(PHASES, 0.0)
        sides = tuple(sides or [s for s in ("left", "right") if s in face.eyes])
        size = self.generation.crop_size
        with timed(timings, "prepare", torch.device("cpu")):
            crop, notes = build_eye_crop(image, face, sides, reference=reference,
                                         blend_method=self.blend_method)
            job = _Job(image=Image.fromarray(resize(crop.init, size)),
                       mask=Image.fromarray(resize(model_mask(crop), size)))
        seeds = self._seeds(seed)
        with self._lock:
            generated, batch = self._generate_all(job, seeds, timings)
        with timed(timings, "blend", torch.device("cpu")):
            scorer = score_fn or ImageStatsScorer(crop)
            candidates, scores = self._blend_and_score(crop, generated, scorer)
        chosen = int(np.argmax([s.score for s in scores]))
        timings["total"] = time.perf_counter() - start
        return InpaintResult(
            box=crop.box, pixels=candidates[chosen], mask=crop.alpha,
            variations=tuple(
                Variation(k, s, sc) for k, (s, sc) in enumerate(zip(seeds, scores, strict=True))
            ),
            chosen=chosen, timings=timings, batch_size=batch, model=self.base.name,
            refiner=self.refiner.name if self.refiner else None,
            reference_used=reference is not None and not notes,
            candidates=tuple(candidates), notes=tuple(notes),
        )

    def _seeds(self, seed: int | None) -> list[int]:
        n = self.generation.variations
        if seed is None:
            seed = self.generation.seed or secrets.randbelow(2**31 - n)
        return [seed + k for k in range(n)]

    # --- generation ----------------------------------------------------------------------

    @contextmanager
    def _pipelines(self, timings: dict[str, float]) -> Iterator[_Pipes]:
        with ExitStack() as stack:
            with timed(timings, "load", self.device):
                base = stack.enter_context(self.residency.use(self.base.key))
                refiner = None
                if self.refiner is not None:
                    unet = stack.enter_context(self.residency.use(self.refiner.key))
                    refiner = self._assemble_refiner(base, unet)
            yield _Pipes(base, refiner)

    def _assemble_refiner(self, base: Any, unet: Any) -> Any:
        """An img2img pipeline around the refiner's UNet and the base's VAE and second text
        encoder (the SDXL refiner was trained with exactly those two)."""
        from diffusers import StableDiffusionXLImg2ImgPipeline

        assert self.refiner is not None
        index = json.loads((self.refiner.path / "model_index.json").read_text(encoding="utf-8"))
        scheduler_config = json.loads(
            (self.refiner.path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")
        )
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
            tokenizer_2=base.tokenizer_2, unet=unet,
            scheduler=make_scheduler(self.generation.scheduler, scheduler_config),
            requires_aesthetics_score=bool(index.get("requires_aesthetics_score", True)),
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _generate_all(
        self, job: _Job, seeds: list[int], timings: dict[str, float]
    ) -> tuple[list[np.ndarray], int]:
        """All variations, in batches as large as memory allows: halved after each OOM."""
        batch, done = len(seeds), 0
        images: list[np.ndarray] = []
        init: tuple[torch.Tensor, torch.Tensor] | None = None
        with self._pipelines(timings) as pipes:
            while done < len(seeds):
                chunk = seeds[done:done + batch]
                try:
                    if init is None:
                        init = self._encode_init(pipes.base, job, timings)
                    images.extend(self._generate_chunk(pipes, job, init, chunk, timings))
                except OOM_ERRORS as exc:
                    if batch == 1:
                        free_memory(self.device)
                        raise OutOfMemory(
                            f"GPU out of memory generating even one variation at "
                            f"{self.generation.crop_size} px on {self.device}: lower "
                            "generation.crop_size, use gpu.precision fp16/bf16, or free the GPU"
                        ) from exc
                    log.warning("out of memory at batch %d; retrying at %d", batch, batch // 2)
                    batch //= 2
                else:
                    done += len(chunk)
                    continue
                # Outside the except block: its traceback no longer pins the failed activations.
                free_memory(self.device)
        return images, batch

    @torch.inference_mode()
    def _encode_init(
        self, pipe: Any, job: _Job, timings: dict[str, float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of the init image and of the masked image, encoded once per face.

        Done here rather than inside the pipeline: the pipeline samples the VAE posterior with
        the first variation's generator, so a variation's noise would depend on its place in
        the batch (and change when an OOM halves it). The posterior mean is deterministic, and
        each generator then only draws its own variation's noise. It also times the encode.
        """
        size = self.generation.crop_size
        with timed(timings, "encode", self.device), self._vae_precision(pipe.vae) as vae_dtype:
            image = pipe.image_processor.preprocess(job.image, height=size, width=size)
            mask = pipe.mask_processor.preprocess(job.mask, height=size, width=size)
            both = torch.cat([image, image * (mask < 0.5)]).to(self.device, vae_dtype)
            latents = pipe.vae.encode(both).latent_dist.mode() * pipe.vae.config.scaling_factor
        latents = latents.to(pipe.unet.dtype)
        return latents[:1], latents[1:]

    def _generate_chunk(
        self, pipes: _Pipes, job: _Job, init: tuple[torch.Tensor, torch.Tensor],
        seeds: list[int], timings: dict[str, float],
    ) -> list[np.ndarray]:
        # CPU generators: the same seed gives the same noise on any GPU, or none.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        g = self.generation
        kwargs: dict[str, Any] = dict(
            image=init[0], masked_image_latents=init[1], mask_image=job.mask,
            height=g.crop_size, width=g.crop_size, strength=g.strength,
            num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
            num_images_per_prompt=len(seeds), generator=generators, output_type="latent",
            **self._embeddings(pipes.base, "base", timings),
        )
        if pipes.refiner is not None:
            kwargs["denoising_end"] = REFINER_SPLIT
        with timed(timings, "denoise", self.device):
            latents = pipes.base(**kwargs).images
        if pipes.refiner is not None:
            latents = self._refine(pipes.refiner, latents, generators, timings)
        with timed(timings, "decode", self.device):
            return list(self._decode(pipes.base.vae, latents))

    def _refine(
        self, refiner: Any, latents: Any, generators: list[torch.Generator],
        timings: dict[str, float],
    ) -> Any:
        g = self.generation
        embeds = self._embeddings(refiner, "refiner", timings)
        with timed(timings, "refine", self.device):
            return refiner(
                image=latents, denoising_start=REFINER_SPLIT, num_inference_steps=g.steps,
                guidance_scale=g.guidance_scale, num_images_per_prompt=latents.shape[0],
                generator=generators, output_type="latent", **embeds,
            ).images

    def _embeddings(self, pipe: Any, role: str, timings: dict[str, float]) -> dict[str, Any]:
        cached = self._embeds.get(role)
        if cached is None:
            with timed(timings, "encode", self.device), torch.inference_mode():
                cached = self._encode_prompt(pipe)
            self._embeds[role] = cached
        return cached

    def _encode_prompt(self, pipe: Any) -> dict[str, Any]:
        g = self.generation
        cfg = g.guidance_scale > 1.0
        if self.kind == "xl":
            pe, npe, ppe, nppe = pipe.encode_prompt(
                prompt=g.prompt, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=cfg, negative_prompt=g.negative_prompt,
            )
            out = {"prompt_embeds": pe, "pooled_prompt_embeds": ppe}
            negatives = {"negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": nppe}
        else:
            pe, npe = pipe.encode_prompt(g.prompt, self.device, 1, cfg,
                                         negative_prompt=g.negative_prompt)
            out, negatives = {"prompt_embeds": pe}, {"negative_prompt_embeds": npe}
        return {**out, **negatives} if cfg else out

    @contextmanager
    def _vae_precision(self, vae: Any) -> Iterator[torch.dtype]:
        """The SDXL VAE overflows in fp16 (its config says ``force_upcast``): it runs in fp32
        then, as the pipeline itself does; bf16 and fp32 run as they are."""
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        if upcast:
            vae.to(torch.float32)
        try:
            yield vae.dtype
        finally:
            if upcast:
                vae.to(torch.float16)

    @torch.inference_mode()
    def _decode(self, vae: Any, latents: torch.Tensor) -> np.ndarray:
        """Latents → uint8 RGB (N, H, W, 3)."""
        with self._vae_precision(vae) as vae_dtype:
            latents = latents.to(vae_dtype)
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            scale = vae.config.scaling_factor
            if mean is not None and std is not None:
                mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
                std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents)
                latents = latents * std_t / scale + mean_t
            else:
                latents = latents / scale
            pixels = vae.decode(latents, return_dict=False)[0]
        pixels = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu().numpy()

    def _blend_and_score(
        self, crop: EyeCrop, generated: list[np.ndarray], score_fn: ScoreFn
    ) -> tuple[list[np.ndarray], list[VariationScore]]:
        """Each variation back at crop size, colour-matched on the skin ring and blended into
        the original crop exactly as the CPU transfer does; then scored."""
        side = crop.box[2] - crop.box[0]
        candidates, scores = [], []
        for pixels in generated:
            donor = match_colour(resize(pixels, side), crop.original, crop.ring)
            candidate = blend(crop.original, donor, crop.alpha, self.blend_method)
            candidates.append(candidate)
            scores.append(score_fn(candidate))
        return candidates, scores


# --- factory --------------------------------------------------------------------------------


def _refiner_ref(models_dir: Path, name: str) -> ModelRef:
    path = models_dir / name
    if not (path / "unet" / "config.json").is_file():
        raise BackendUnavailable(
            f"refiner {name!r} is not installed: {path / 'unet'} is missing; {_fetch_hint(name)}"
        )
    if pipeline_kind_name(path) != "StableDiffusionXLImg2ImgPipeline":
        raise BackendUnavailable(f"refiner {name!r} in {path} is not an SDXL img2img checkpoint")
    return ModelRef(name, path, refiner_key(name))


def pipeline_kind_name(path: Path) -> str:
    try:
        return str(json.loads((path / "model_index.json").read_text("utf-8")).get("_class_name"))
    except (OSError, ValueError):
        return ""


def build_eye_inpainter(
    generation: GenerationConfig,
    gpu: GpuConfig,
    models_dir: Path,
    *,
    residency: ResidencyManager | None = None,
    blend_method: BlendMethod = "poisson",
) -> EyeInpainter:
    """Check the model folders and the device now (a missing model is ``BackendUnavailable``
    with the fetch command); register the loaders; load nothing until first use."""
    try:
        device = resolve_device(gpu.generation_device or gpu.device)
    except RuntimeError as exc:
        raise BackendUnavailable(f"{exc}; check gpu.device / gpu.generation_device") from exc
    dtype = torch_dtype(gpu.precision, device)
    if generation.scheduler not in SCHEDULERS:
        raise ConfigError(
            f"generation.scheduler {generation.scheduler!r} is unknown; expected one of "
            f"{', '.join(SCHEDULERS)}"
        )
    base = ModelRef(generation.model, models_dir / generation.model,
                    inpaint_key(generation.model))
    kind = pipeline_kind(base.path, base.name)
    refiner = _refiner_ref(models_dir, generation.refiner) if generation.refiner else None
    if refiner is not None and kind != "xl":
        raise ConfigError("generation.refiner needs an SDXL inpainting model")
    if residency is None:
        residency = ResidencyManager(budget_bytes(gpu, device), device)
    options = LoadOptions(device, dtype, generation.scheduler, generation.compile)
    variant = load_variant(base.path, dtype)
    residency.register(
        base.key, lambda: load_inpaint_pipeline(base.path, base.name, kind, options),
        estimate_bytes=estimate_bytes(base.path, variant, dtype),
    )
    if refiner is not None:
        unet_dir = refiner.path / "unet"
        residency.register(
            refiner.key, lambda: load_refiner_unet(refiner.path, refiner.name, options),
            estimate_bytes=estimate_bytes(unet_dir, load_variant(unet_dir, dtype), dtype),
        )
    return EyeInpainter(generation, residency, base=base, kind=kind, refiner=refiner,
                        device=device, blend_method=blend_method)


def from_config(config: Config, *, residency: ResidencyManager | None = None) -> EyeInpainter:
    return build_eye_inpainter(config.generation, config.gpu, config.models.dir,
                               residency=residency, blend_method=config.eyes.blend.value)
