"""EyeInpainter on tiny SDXL / SD 1.5 checkpoints: real loading, real pipelines, CPU, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import StableDiffusionXLInpaintPipeline  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

from openeyesd.config import GenerationConfig, GpuConfig  # noqa: E402
from openeyesd.errors import BackendUnavailable, ConfigError, InfraError, OutOfMemory  # noqa: E402
from openeyesd.gpu import generator as gen  # noqa: E402
from openeyesd.gpu.generator import (  # noqa: E402
    EyeInpainter,
    ImageStatsScorer,
    VariationScore,
    build_eye_crop,
    build_eye_inpainter,
)
from openeyesd.gpu.residency import ResidencyManager  # noqa: E402
from tests.gpu.tiny_sdxl import (  # noqa: E402
    save_tiny_sd15_inpaint,
    save_tiny_sdxl_inpaint,
    save_tiny_sdxl_refiner,
    synthetic_face,
)

GPU = GpuConfig(device="cpu", precision="fp32", vram_budget_gb=1)
TINY = GenerationConfig(model="tiny-sdxl", crop_size=64, steps=2, strength=1.0, variations=2,
                        guidance_scale=5.0, scheduler="euler_a")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_sdxl_inpaint(root, "tiny-sdxl")
    save_tiny_sdxl_refiner(root, "tiny-refiner")
    save_tiny_sd15_inpaint(root, "tiny-sd15")
    return root


@pytest.fixture(scope="module")
def inpainter(models_dir: Path) -> EyeInpainter:
    return build_eye_inpainter(TINY, GPU, models_dir)


@pytest.fixture(scope="module")
def closed() -> tuple[np.ndarray, Any]:
    return synthetic_face(opening=0.03)


def _outside_unchanged(image: np.ndarray, out: np.ndarray, result: gen.InpaintResult) -> None:
    x0, y0, x1, y1 = result.box
    keep = np.ones(image.shape[:2], bool)
    keep[y0:y1, x0:x1] = result.mask == 0
    assert np.array_equal(out[keep], image[keep])
    assert not np.array_equal(out[~keep], image[~keep]), "nothing was painted inside the mask"


def test_sdxl_inpaint_loads_from_disk_and_pastes_only_inside_the_mask(
    inpainter: EyeInpainter, closed: tuple[np.ndarray, Any]
) -> None:
    image, face = closed
    before = image.copy()
    result = inpainter.inpaint(image, face, seed=11)
    x0, y0, x1, y1 = result.box
    assert x1 - x0 == y1 - y0 > 0, "the crop is square"
    assert result.pixels.shape == (y1 - y0, x1 - x0, 3) and result.pixels.dtype == np.uint8
    assert result.mask.shape == (y1 - y0, x1 - x0)
    assert np.array_equal(image, before), "the input image is not modified"
    _outside_unchanged(image, result.apply(image), result)
    assert result.seeds == (11, 12)
    assert len(result.candidates) == 2 and result.batch_size == 2
    assert set(result.timings) >= {"load", "encode", "denoise", "decode", "blend", "total"}
    assert all(result.timings[p] > 0 for p in ("encode", "denoise", "decode", "blend"))
    # The eyes and brows lie inside the crop, the brows outside the paste region.
    for eye in face.eyes.values():
        assert x0 <= eye.brow[:, 0].min() and eye.brow[:, 0].max() < x1
        assert y0 <= eye.brow[:, 1].min() and eye.contour[:, 1].max() < y1


def test_pipeline_is_configured_for_speed(inpainter: EyeInpainter) -> None:
    with inpainter.residency.use(inpainter.base.key) as pipe:
        assert type(pipe).__name__ == "StableDiffusionXLInpaintPipeline"
        assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
        processors = [*pipe.unet.attn_processors.values(), *pipe.vae.attn_processors.values()]
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
        weight = pipe.unet.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)


def test_same_seed_gives_the_same_pixels_and_seeds_matter(
    inpainter: EyeInpainter, closed: tuple[np.ndarray, Any]
) -> None:
    image, face = closed
    first = inpainter.inpaint(image, face, seed=5)
    again = inpainter.inpaint(image, face, seed=5)
    other = inpainter.inpaint(image, face, seed=6)
    for a, b in zip(first.candidates, again.candidates, strict=True):
        assert np.array_equal(a, b)
    # seed 6's first variation is seed 5's second: same generator seed, same noise (the pixels
    # differ only by float rounding between batch positions).
    assert np.abs(other.candidates[0].astype(int) - first.candidates[1].astype(int)).max() <= 2
    assert not np.array_equal(first.candidates[0], first.candidates[1])


def test_the_chosen_variation_is_the_best_by_the_injected_score(
    inpainter: EyeInpainter, closed: tuple[np.ndarray, Any]
) -> None:
    image, face = closed
    seen: list[np.ndarray] = []

    def brightest(candidate: np.ndarray) -> VariationScore:
        seen.append(candidate)
        return VariationScore(score=float(candidate.mean()))

    result = inpainter.inpaint(image, face, seed=21, score_fn=brightest)
    means = [float(c.mean()) for c in seen]
    assert means[0] != means[1]
    assert result.chosen == int(np.argmax(means))
    assert [v.score.score for v in result.variations] == means
    assert np.array_equal(result.pixels, result.candidates[result.chosen])


def test_out_of_memory_halves_the_batch_and_keeps_the_seeds(
    inpainter: EyeInpainter, closed: tuple[np.ndarray, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, face = closed
    reference = inpainter.inpaint(image, face, seed=31)
    original_call = StableDiffusionXLInpaintPipeline.__call__
    batches: list[int] = []

    def oom_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(kwargs["num_images_per_prompt"])
        if len(batches) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionXLInpaintPipeline, "__call__", oom_once)
    result = inpainter.inpaint(image, face, seed=31)
    assert batches == [2, 1, 1]
    assert result.batch_size == 1 and result.seeds == (31, 32)
    # Per-image generators: each variation's noise does not depend on the batch it ran in.
    for a, b in zip(result.candidates, reference.candidates, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_out_of_memory_at_batch_one_is_an_infrastructure_error(
    inpainter: EyeInpainter, closed: tuple[np.ndarray, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, face = closed
    batches: list[int] = []

    def always_oom(self: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(kwargs["num_images_per_prompt"])
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(StableDiffusionXLInpaintPipeline, "__call__", always_oom)
    with pytest.raises(OutOfMemory) as info:
        inpainter.inpaint(image, face, seed=1)
    assert isinstance(info.value, InfraError)
    assert batches == [2, 1]
    assert "crop_size" in str(info.value)
    # The models were released: the manager can evict them again.
    assert all(m.in_use == 0 for m in inpainter.residency.stats().models)


def test_missing_model_folder_says_how_to_fetch_it(tmp_path: Path) -> None:
    config = TINY.model_copy(update={"model": "sdxl-inpaint-0.1"})
    with pytest.raises(BackendUnavailable, match=r"openeyesctl models fetch sdxl-inpaint-0\.1"):
        build_eye_inpainter(config, GPU, tmp_path)


def test_missing_refiner_and_bad_scheduler_are_refused(models_dir: Path) -> None:
    with pytest.raises(BackendUnavailable, match="openeyesctl models fetch no-refiner"):
        build_eye_inpainter(TINY.model_copy(update={"refiner": "no-refiner"}), GPU, models_dir)
    with pytest.raises(ConfigError, match="scheduler"):
        build_eye_inpainter(TINY.model_copy(update={"scheduler": "plms"}), GPU, models_dir)
    with pytest.raises(ConfigError, match="SDXL"):
        build_eye_inpainter(TINY.model_copy(update={"model": "tiny-sd15",
                                                    "refiner": "tiny-refiner"}), GPU, models_dir)


def test_every_configured_scheduler_builds_from_the_checkpoint_config(models_dir: Path) -> None:
    config = diffusers.EulerDiscreteScheduler.load_config(models_dir / "tiny-sdxl" / "scheduler")
    for name, (class_name, _) in gen.SCHEDULERS.items():
        scheduler = gen.make_scheduler(name, config)
        assert type(scheduler).__name__ == class_name
        assert scheduler.config.beta_schedule == "scaled_linear", "kept the checkpoint's betas"
    assert gen.make_scheduler("dpm++_2m", config).config.algorithm_type == "dpmsolver++"


def test_refiner_finishes_the_base_latents(
    models_dir: Path, closed: tuple[np.ndarray, Any]
) -> None:
    image, face = closed
    residency = ResidencyManager(1 << 30, "cpu")
    inpainter = build_eye_inpainter(TINY.model_copy(update={"refiner": "tiny-refiner"}), GPU,
                                    models_dir, residency=residency)
    result = inpainter.inpaint(image, face, seed=2)
    assert result.refiner == "tiny-refiner" and result.timings["refine"] > 0
    _outside_unchanged(image, result.apply(image), result)
    stats = {m.name: m for m in residency.stats().models}
    assert stats["refiner:tiny-refiner"].loads == 1 and stats["inpaint:tiny-sdxl"].loads == 1
    # Only the refiner's UNet is held for it: VAE and text encoder are the base's.
    with residency.use("refiner:tiny-refiner") as unet:
        assert isinstance(unet, diffusers.UNet2DConditionModel)


def test_sd15_inpaint_checkpoint(models_dir: Path, closed: tuple[np.ndarray, Any]) -> None:
    image, face = closed
    inpainter = build_eye_inpainter(TINY.model_copy(update={"model": "tiny-sd15"}), GPU,
                                    models_dir)
    assert inpainter.kind == "sd"
    result = inpainter.inpaint(image, face, seed=4)
    assert result.seeds == (4, 5)
    _outside_unchanged(image, result.apply(image), result)


def test_reference_eyes_condition_the_init_image(
    inpainter: EyeInpainter, closed: tuple[np.ndarray, Any]
) -> None:
    image, face = closed
    ref_image, ref_face = synthetic_face(opening=0.3, seed=1)
    plain, _ = build_eye_crop(image, face, ("left", "right"))
    crop, notes = build_eye_crop(image, face, ("left", "right"), reference=(ref_image, ref_face))
    assert notes == [] and np.array_equal(crop.original, plain.original)
    assert np.array_equal(plain.init, plain.original)
    # The reference's open eyes (dark irises) are in the init image, inside the paste region.
    changed = np.abs(crop.init.astype(int) - crop.original.astype(int)).sum(axis=2) > 0
    assert changed.any() and (crop.alpha[changed] > 0).all()
    assert crop.init[crop.eye_area].min() < plain.init[plain.eye_area].min()
    result = inpainter.inpaint(image, face, seed=3, reference=(ref_image, ref_face))
    assert result.reference_used and not result.notes


def test_default_scorer_rewards_open_eyes_and_penalises_seams(
    closed: tuple[np.ndarray, Any],
) -> None:
    image, face = closed
    crop, _ = build_eye_crop(image, face, ("left", "right"))
    scorer = ImageStatsScorer(crop)
    same = scorer(crop.original)
    assert same.identity == pytest.approx(1.0) and same.openness == 0 and same.seam == 0
    # Open eyes painted in: sclera over the eye area, a dark iris in the middle of each.
    opened = crop.original.copy()
    opened[crop.eye_area] = (235, 235, 230)
    x0, y0 = crop.box[:2]
    for eye in face.eyes.values():
        centre = np.round(eye.centre - (x0, y0)).astype(int)
        cv2.circle(opened, (int(centre[0]), int(centre[1])), round(0.2 * eye.width),
                   (40, 30, 25), -1)
    assert scorer(opened).openness > 0.1
    # A flat colour slab over the whole region: seams and lost skin structure.
    slab = crop.original.copy()
    slab[crop.alpha > 0] = (20, 200, 20)
    bad = scorer(slab)
    assert bad.seam > 1.0 and bad.identity < same.identity and bad.score < same.score


def test_compile_wraps_the_unet(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[Any] = []

    def fake_compile(module: Any, **kwargs: Any) -> Any:
        compiled.append((type(module).__name__, kwargs))
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    inpainter = build_eye_inpainter(TINY.model_copy(update={"compile": True}), GPU, models_dir)
    inpainter.preload()
    assert compiled == [("UNet2DConditionModel",
                         {"mode": "max-autotune-no-cudagraphs", "fullgraph": True})]


def test_fp16_variant_is_chosen_when_present(tmp_path: Path) -> None:
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"x" * 10)
    assert gen.load_variant(tmp_path, torch.float16) == "fp16"
    assert gen.load_variant(tmp_path, torch.float32) == "fp16", "only fp16 files exist"
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 20)
    assert gen.load_variant(tmp_path, torch.float32) is None
    assert gen.load_variant(tmp_path, torch.bfloat16) == "fp16"
    assert gen.estimate_bytes(tmp_path, None, torch.float16) == 10
    assert gen.estimate_bytes(tmp_path, "fp16", torch.float32) == 20
