"""GPU profile speed: seconds per face through ``EyeInpainter.inpaint`` with a full-size SDXL
inpainting model, and face-restoration throughput, on a lent GPU.

No weights are downloaded. The SDXL inpainting pipeline is built in code from the published
configurations (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``: 9-channel UNet, SDXL VAE,
CLIP ViT-L and OpenCLIP bigG text encoders), with random weights (``torch.manual_seed``): the
same shapes, so the same compute, as the real model. It is saved as an fp16 checkpoint into a
models folder and loaded back by the product's own loader (``build_eye_inpainter`` with a
``GenerationConfig``), so what is timed is the product's path: residency, SDPA, channels_last,
the configured scheduler, the optional ``torch.compile`` of the UNet, the fp32 VAE upcast, the
Poisson blend and the scoring. The photo is a 24 MP studio-like canvas with scikit-image's
astronaut at 0.6 of its height; the Face comes from the CPU landmark backend.

Each group of measurements runs in a child process of its own (one per crop size, one for the
compiled UNet, one for restoration) under a time limit taken from the run's budget, so a slow
``torch.compile``, an out-of-memory error or a broken CUDA context is reported as that group's
failure and the run goes on. Per configuration: one warm-up call (reported as ``first_call_s``;
for the compiled UNet the first call of each new batch shape includes compiling), then
``--repeats`` measured calls with ``torch.cuda.synchronize()`` at both ends; the peak VRAM is
``torch.cuda.max_memory_allocated`` over the measured calls (weights included), reset per
configuration.

    .venv/bin/python bench/gpu_bench.py [--crop-size 1024] [--extra-crops 768,512]
        [--dtype fp16|bf16] [--quick] [--no-compile] [--budget-s 480] [--json]
    .venv/bin/python bench/gpu_bench.py --tiny      # tiny models on CPU: a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # diffusers' load/save bars; progress is ours
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit_json

MODEL = "sdxl-bench"
#: The same model with the VAE marked ``force_upcast = false`` (as the fp16-fix SDXL VAE is):
#: shows what the product's fp32 VAE upcast costs.
MODEL_VAE16 = "sdxl-bench-vae16"
TARGET_S, TARGET_VARIATIONS, TARGET_STEPS = 2.0, 4, 20
#: Device names that count as "H100-class" for ``meets_target`` (same GH100 chip).
H100_CLASS = ("H100", "H200", "GH200")
CANVAS = (6000, 4000)  # 24 MP
TINY_CANVAS = (1200, 800)
PERSON_OF_HEIGHT = 0.6
RESTORE_BATCHES = (1, 4, 16)
TINY_STEPS = (4, 6)
_GIB = 1024**3
#: Wall-clock start of the run, shared with the children so their log lines use one clock.
_T0 = float(os.environ.get("GPU_BENCH_T0") or time.time())

# --- published SDXL configurations -----------------------------------------------------------
# Checked against the released config.json files (SDXL inpainting 0.1 unet; SDXL base vae,
# text_encoder, text_encoder_2, scheduler).

SDXL_INPAINT_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=9, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
SDXL_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
#: CLIP ViT-L/14 text tower (text_encoder) and OpenCLIP ViT-bigG/14 (text_encoder_2). Token
#: ids come from a small local tokenizer (only the padded length, 77, matters for speed); the
#: embedding tables keep the real vocabulary size so the weights weigh what the real ones do.
CLIP_L: dict[str, Any] = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77,
    layer_norm_eps=1e-5, vocab_size=49408, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
CLIP_G: dict[str, Any] = {**CLIP_L, **dict(
    hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
    projection_dim=1280, hidden_act="gelu",
)}
SDXL_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    interpolation_type="linear", use_karras_sigmas=False,
)


def log(message: str) -> None:
    print(f"[{time.time() - _T0:7.1f}s] {message}", flush=True)


# --- building the checkpoints (parent process) ------------------------------------------------


def build_full_sdxl(models_dir: Path, device: str) -> Path:
    """Random-weight, full-size SDXL inpainting, saved as an fp16 checkpoint (``variant="fp16"``,
    as the published one ships). Initialised on ``device`` (seconds on a GPU, minutes on CPU)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.gpu.tiny_sdxl import write_tokenizer

    torch.manual_seed(0)
    tokenizer = write_tokenizer(models_dir / "_tokenizer")
    builders: dict[str, Callable[[], Any]] = {
        "unet": lambda: UNet2DConditionModel(**SDXL_INPAINT_UNET),
        "vae": lambda: AutoencoderKL(**SDXL_VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
    }
    parts = {}
    for name, build in builders.items():  # one at a time: one fp32 model in memory at most
        with torch.device(device):
            module = build()
        parts[name] = module.to("cpu", torch.float16).eval()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        log(f"  {name}: {sum(p.numel() for p in parts[name].parameters()) / 1e6:,.0f} M parameters")
    pipe = StableDiffusionXLInpaintPipeline(
        tokenizer=tokenizer, tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        requires_aesthetics_score=False, add_watermarker=False, **parts,
    )
    pipe.save_pretrained(models_dir / MODEL, variant="fp16")
    return models_dir / MODEL


def build_tiny_sdxl(models_dir: Path) -> Path:
    from tests.gpu.tiny_sdxl import save_tiny_sdxl_inpaint

    return save_tiny_sdxl_inpaint(models_dir, MODEL)


def add_vae16_variant(models_dir: Path) -> None:
    """``MODEL_VAE16``: the same files (hard links), the VAE's ``force_upcast`` set to false."""
    src, dst = models_dir / MODEL, models_dir / MODEL_VAE16
    for path in src.rglob("*"):
        if path.is_dir():
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.relative_to(src).as_posix() == "vae/config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            target.write_text(json.dumps({**config, "force_upcast": False}), encoding="utf-8")
            continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def ensure_models(models_dir: Path, tiny: bool, device: str) -> float:
    """Build the checkpoints unless ``models_dir`` already holds them; seconds spent."""
    start = time.perf_counter()
    if not (models_dir / MODEL / "model_index.json").is_file():
        log(f"building {'tiny' if tiny else 'full-size'} SDXL inpainting (random weights) "
            f"in {models_dir}")
        models_dir.mkdir(parents=True, exist_ok=True)
        build_tiny_sdxl(models_dir) if tiny else build_full_sdxl(models_dir, device)
    if not (models_dir / MODEL_VAE16 / "model_index.json").is_file():
        add_vae16_variant(models_dir)
    size = sum(p.stat().st_size for p in (models_dir / MODEL).rglob("*") if p.is_file())
    log(f"checkpoint ready: {size / _GIB:.2f} GiB on disk, {time.perf_counter() - start:.1f} s")
    return time.perf_counter() - start


# --- the photo and its face (child processes) ------------------------------------------------


def moved_face(face: Any, scale: float, offset: tuple[float, float]) -> Any:
    """``face`` with every coordinate scaled by ``scale`` then shifted by ``offset``."""
    off = np.asarray(offset, np.float32)

    def move(points: np.ndarray | None) -> np.ndarray | None:
        return None if points is None else (np.asarray(points, np.float32) * scale + off)

    eyes = {side: dataclasses.replace(eye, contour=move(eye.contour), brow=move(eye.brow),
                                      iris=move(eye.iris))
            for side, eye in face.eyes.items()}
    x0, y0, x1, y1 = face.box
    box = (x0 * scale + off[0], y0 * scale + off[1], x1 * scale + off[0], y1 * scale + off[1])
    return dataclasses.replace(face, box=tuple(float(v) for v in box), eyes=eyes,
                               landmarks=move(face.landmarks))


@functools.cache
def person() -> tuple[np.ndarray, Any, str]:
    """scikit-image's astronaut and its Face from ``FaceMeshBackend``; if that backend or
    scikit-image is missing, the synthetic face of the tests (same crop and mask code)."""
    try:
        from skimage import data

        from openeyesd.eyes.landmarks import FaceMeshBackend

        image = np.ascontiguousarray(data.astronaut())
        faces = FaceMeshBackend().detect(image)
        if len(faces) == 1:
            return image, faces[0], "astronaut + FaceMeshBackend"
        reason = f"{len(faces)} faces found"
    except Exception as exc:  # noqa: BLE001 - any failure here only changes which test face is used
        reason = f"{type(exc).__name__}: {exc}"
    from tests.gpu.tiny_sdxl import synthetic_face

    image, face = synthetic_face(opening=0.03)
    return image, face, f"synthetic face (landmark backend unavailable: {reason[:120]})"


def studio_photo(size: tuple[int, int]) -> tuple[np.ndarray, Any, str]:
    """A smooth backdrop of ``size`` with the person at 0.6 of its height, and that Face."""
    image, face, source = person()
    width, height = size
    side = int(PERSON_OF_HEIGHT * height)
    scale = side / image.shape[0]
    tile = cv2.resize(image, (round(image.shape[1] * scale), side),
                      interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(90, 170, height, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(ramp * np.array([0.9, 1.0, 1.1], np.float32),
                             (height, width, 3)).astype(np.uint8)
    top, left = (height - side) // 2, (width - tile.shape[1]) // 2
    canvas[top:top + side, left:left + tile.shape[1]] = tile
    return canvas, moved_face(face, scale, (left, top)), source


# --- measuring (child processes) --------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / _GIB, 2)


def _timed(fn: Callable[[], Any], device: Any) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def measure_inpaint(inpainter: Any, image: np.ndarray, face: Any, repeats: int,
                    device: Any) -> dict[str, Any]:
    """One warm-up call, then ``repeats`` measured ones (same seed: same work each time)."""
    call = lambda: inpainter.inpaint(image, face, seed=1234)  # noqa: E731
    first_s, first = _timed(call, device)
    _reset_peak(device)
    times, results = [], []
    for _ in range(repeats):
        seconds, result = _timed(call, device)
        times.append(seconds)
        results.append(result)
    phases = {key: round(statistics.median(r.timings[key] for r in results), 4)
              for key in results[0].timings}
    return {
        "seconds_per_face": round(statistics.median(times), 4),
        "seconds_all": [round(t, 4) for t in times],
        "first_call_s": round(first_s, 3),
        "load_s": round(first.timings.get("load", 0.0), 3),
        "phases": phases,
        "peak_vram_gb": _peak_gb(device),
        "batch_size": results[-1].batch_size,
        "crop_px": first.box[2] - first.box[0],
    }


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


def _gpu_config(spec: dict[str, Any]) -> Any:
    from openeyesd.config import GpuConfig

    budget = 4.0 if spec["device"] == "cpu" else 0.0  # 0 = 90 % of the card
    return GpuConfig(device=spec["device"], precision=spec["precision"], vram_budget_gb=budget)


def run_generation(spec: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
    """Every configuration of one group (one crop size, compiled or not), one residency
    manager: the pipeline loads once per model; a failing configuration is recorded."""
    from openeyesd.config import GenerationConfig
    from openeyesd.gpu.generator import build_eye_inpainter
    from openeyesd.gpu.residency import ResidencyManager, budget_bytes
    from openeyesd.gpu.torch_utils import free_memory, resolve_device

    device = resolve_device(spec["device"])
    gpu = _gpu_config(spec)
    image, face, source = studio_photo(tuple(spec["canvas"]))
    out: dict[str, Any] = {"face_source": source, "runs": []}
    residency = ResidencyManager(budget_bytes(gpu, device), device)
    loaded = None
    for variations, steps, model in spec["configs"]:
        row = {"crop_size": spec["crop"], "variations": variations, "steps": steps,
               "compile": spec["compile"], "vae": "fp16" if model == MODEL_VAE16 else "upcast"}
        if loaded not in (None, model):
            residency.clear()  # one pipeline on the card at a time: peak VRAM stays comparable
        loaded = model
        log(f"  {spec['name']}: {variations} var x {steps} steps, vae {row['vae']}"
            + (" (first call compiles)" if spec["compile"] else ""))
        try:
            generation = GenerationConfig(model=model, crop_size=spec["crop"], steps=steps,
                                          variations=variations, compile=spec["compile"])
            inpainter = build_eye_inpainter(generation, gpu, Path(spec["models_dir"]),
                                            residency=residency)
            row.update(measure_inpaint(inpainter, image, face, spec["repeats"], device))
            log(f"    {row['seconds_per_face']:.3f} s/face (first call {row['first_call_s']:.2f}"
                f" s), peak {row['peak_vram_gb']} GB")
        except Exception as exc:  # noqa: BLE001 - reported in the table; the next one runs
            row["error"] = _error_text(exc)
            log(f"    FAILED: {row['error']}")
        if "error" in row:  # outside the except block: its traceback pins the activations
            free_memory(device)
        out["runs"].append(row)
        write(out)


# --- restoration --------------------------------------------------------------------------------


def restorer_networks(tiny: bool) -> dict[str, Any]:
    """Published GFPGAN v1.4 / CodeFormer hyper-parameters (the arch modules' defaults), or the
    tests' tiny ones."""
    from openeyesd.gpu.arch.codeformer import CodeFormer, CodeFormerSpec
    from openeyesd.gpu.arch.gfpgan import GFPGANClean, GFPGANSpec

    if not tiny:
        return {"gfpgan-1.4": lambda: GFPGANClean(GFPGANSpec()),
                "codeformer": lambda: CodeFormer(CodeFormerSpec())}
    gfpgan = GFPGANSpec(out_size=64, num_style_feat=32, channel_multiplier=1, num_mlp=2,
                        narrow=1 / 16)
    codeformer = CodeFormerSpec(size=64, nf=32, ch_mult=(1, 1, 2), res_blocks=2,
                                attn_resolutions=(16,), codebook_size=64, emb_dim=32,
                                dim_embd=32, n_layers=2, connect=(16, 32, 64))
    return {"gfpgan-1.4": lambda: GFPGANClean(gfpgan),
            "codeformer": lambda: CodeFormer(codeformer)}


def face_mosaic(count: int, tile_scale: float) -> tuple[np.ndarray, list[Any]]:
    """``count`` copies of the person in a grid of at most 4 columns: one photo, N faces."""
    image, face, _ = person()
    tile = cv2.resize(image, None, fx=tile_scale, fy=tile_scale, interpolation=cv2.INTER_CUBIC)
    h, w = tile.shape[:2]
    cols = min(count, 4)
    rows = -(-count // cols)
    mosaic = np.zeros((rows * h, cols * w, 3), np.uint8)
    faces = []
    for k in range(count):
        r, c = divmod(k, cols)
        mosaic[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
        faces.append(moved_face(face, tile_scale, (c * w, r * h)))
    return mosaic, faces


def measure_restorer(restorer: Any, spec: dict[str, Any], device: Any) -> dict[str, Any]:
    """Faces/s through ``FaceRestorer.restore`` (align + one network call + paste) and through
    the network alone, per batch size."""
    import torch

    out: dict[str, Any] = {}
    for batch in spec["batches"]:
        image, faces = face_mosaic(batch, spec["tile_scale"])
        _reset_peak(device)

        def restore(image: np.ndarray = image, faces: list[Any] = faces) -> Any:
            return restorer.restore(image, faces)

        _timed(restore, device)  # warm-up
        restore_s = statistics.median(_timed(restore, device)[0] for _ in range(spec["repeats"]))
        x = torch.rand(batch, 3, restorer.size, restorer.size, device=device) * 2 - 1
        x = x.to(restorer.dtype)
        kwargs = {"w": restorer.fidelity} if restorer.name == "codeformer" else {}

        def forward(x: Any = x, kwargs: dict[str, Any] = kwargs) -> Any:
            with torch.inference_mode():
                return restorer.network(x, **kwargs)

        _timed(forward, device)
        net_s = statistics.median(_timed(forward, device)[0] for _ in range(spec["repeats"]))
        out[str(batch)] = {"restore_faces_per_s": round(batch / restore_s, 2),
                           "network_faces_per_s": round(batch / net_s, 2),
                           "peak_vram_gb": _peak_gb(device)}
        log(f"    batch {batch}: {batch / restore_s:.1f} faces/s (network alone "
            f"{batch / net_s:.1f})")
    return out


def run_restoration(spec: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
    """Each network with random weights, saved in the published checkpoint format and loaded by
    the product's ``load_network``, run by ``FaceRestorer`` at ``choose_dtype``'s precision."""
    import torch

    from openeyesd.gpu.restorer import RESTORERS, FaceRestorer, choose_dtype, load_network
    from openeyesd.gpu.torch_utils import free_memory, resolve_device

    device = resolve_device(spec["device"])
    models_dir = Path(spec["models_dir"])
    out: dict[str, Any] = {"restoration": {}, "restoration_errors": {}}
    for name, build in restorer_networks(spec["tiny"]).items():
        log(f"  restoration: {name}")
        try:
            torch.manual_seed(0)
            path = models_dir / name / RESTORERS[name].filename
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"params_ema": build().state_dict()}, path)
            restorer = FaceRestorer(load_network(name, models_dir), name=name, device=device,
                                    dtype=choose_dtype(spec["precision"], device), fidelity=0.7)
            out.setdefault("restoration_dtype", {})[name] = str(restorer.dtype)
            out["restoration"][name] = measure_restorer(restorer, spec, device)
            del restorer
        except Exception as exc:  # noqa: BLE001 - reported; the other network still runs
            out["restoration_errors"][name] = _error_text(exc)
            log(f"    FAILED: {out['restoration_errors'][name]}")
        free_memory(device)
        write(out)


def child_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result_path = Path(spec["result"])

    def write(payload: dict[str, Any]) -> None:
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, default=str), encoding="utf-8")
        os.replace(tmp, result_path)

    try:
        run = run_restoration if spec["kind"] == "restore" else run_generation
        run(spec, write)
    except Exception as exc:  # noqa: BLE001 - the group's setup failed (import, device, photo)
        traceback.print_exc()
        existing = json.loads(result_path.read_text()) if result_path.is_file() else {}
        write({**existing, "error": _error_text(exc)})
        return 1
    return 0


# --- the plan and the parent ------------------------------------------------------------------


@dataclasses.dataclass
class Group:
    name: str
    kind: str  # "generate" | "restore"
    #: Seconds this group is expected to take on an H100 (used to leave time for later groups).
    estimate_s: float
    crop: int = 0
    compile: bool = False
    configs: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)
    #: None: whatever the budget leaves.
    cap_s: float | None = None


def plan(args: argparse.Namespace) -> list[Group]:
    """Most informative first: eager at every crop size, restoration, then the compiled UNet at
    the main crop size with the time that is left (compiling is the one unbounded step)."""
    steps = TINY_STEPS if args.tiny else (TARGET_STEPS, 30)
    grid = [(v, s) for v in (TARGET_VARIATIONS, 1) for s in steps[:1 if args.quick else 2]]
    crops = [args.crop_size, *[c for c in args.extra_crops if c != args.crop_size]]
    groups = []
    for crop in crops:
        configs = [(v, s, MODEL) for v, s in grid]
        if crop == args.crop_size and args.dtype == "fp16":
            configs.append((*grid[0], MODEL_VAE16))
        share = (crop / 1024) ** 2
        estimate, cap = (15, 45) if args.tiny else (25 + 60 * share * len(configs) / 5,
                                                     60 + 200 * share)
        groups.append(Group(f"eager@{crop}", "generate", estimate, crop, False, configs, cap))
    groups.append(Group("restoration", "restore", 15 if args.tiny else 45,
                        cap_s=45 if args.tiny else 150))
    if not args.no_compile:  # estimate 0: it gets what is left, earlier groups keep theirs
        compiled = [(v, s, MODEL) for v, s in grid]
        groups.append(Group(f"compile@{args.crop_size}", "generate", 0, args.crop_size, True,
                            compiled))
    return groups


def group_timeout(groups: list[Group], index: int, deadline: float, tiny: bool) -> float:
    left = deadline - time.perf_counter() - sum(g.estimate_s for g in groups[index + 1:])
    cap = groups[index].cap_s
    floor = 20.0 if tiny else 60.0
    return max(floor, left if cap is None else min(cap, left))


def run_child(group: Group, args: argparse.Namespace, workdir: Path,
              timeout: float) -> dict[str, Any]:
    """The group in a child process of its own; killed (its whole process group, compile
    workers included) after ``timeout`` seconds. Results written so far are kept."""
    result = workdir / f"{group.name.replace('@', '_')}.json"
    result.unlink(missing_ok=True)
    spec = {
        "kind": group.kind, "name": group.name, "crop": group.crop, "compile": group.compile,
        "configs": group.configs, "device": args.device, "precision": args.dtype,
        "tiny": args.tiny, "repeats": args.repeats, "models_dir": str(args.models_dir),
        "canvas": TINY_CANVAS if args.tiny else CANVAS, "result": str(result),
        "batches": RESTORE_BATCHES if not args.quick else (1, 16),
        "tile_scale": 1.0 if args.tiny else 2.0,
    }
    spec_path = workdir / f"{group.name.replace('@', '_')}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    # A private inductor cache: a compile killed at its time limit can leave a truncated
    # kernel library in the cache, which breaks every later compile that reads it.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GPU_BENCH_T0": repr(_T0), "TQDM_DISABLE": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor"),
           "TRITON_CACHE_DIR": str(workdir / "triton")}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child",
                             str(spec_path)], env=env, start_new_session=True)
    status = "ok"
    try:
        code = proc.wait(timeout=timeout)
        if code != 0:
            status = f"child exited with {code}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = f"timed out after {timeout:.0f} s"
    except BaseException:  # Ctrl-C: the child is in a session of its own and would run on
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    payload = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    payload["status"] = status if "error" not in payload else f"{status}: {payload['error']}"
    payload["seconds"] = round(time.perf_counter() - start, 1)
    return payload


def missing_runs(group: Group, done: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    """A row for every configuration the group did not reach, saying why."""
    seen = {(r["variations"], r["steps"], r["vae"]) for r in done}
    rows = []
    for variations, steps, model in group.configs:
        vae = "fp16" if model == MODEL_VAE16 else "upcast"
        if (variations, steps, vae) not in seen:
            rows.append({"crop_size": group.crop, "variations": variations, "steps": steps,
                         "compile": group.compile, "vae": vae, "error": reason})
    return rows


# --- report ---------------------------------------------------------------------------------------

PHASE_COLUMNS = ("prepare", "encode", "denoise", "decode", "blend")


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_runs(runs: list[dict[str, Any]]) -> None:
    head = (f"{'crop':>5} {'var':>3} {'steps':>5} {'compile':>7} {'vae':>6} {'s/face':>7} "
            f"{'first':>7} " + " ".join(f"{p:>7}" for p in PHASE_COLUMNS)
            + f" {'peakGB':>6} {'batch':>5}  note")
    print(head, flush=True)
    for r in runs:
        phases = r.get("phases", {})
        cells = " ".join(f"{_fmt(phases.get(p), 3):>7}" for p in PHASE_COLUMNS)
        print(f"{r['crop_size']:>5} {r['variations']:>3} {r['steps']:>5} "
              f"{'on' if r['compile'] else 'off':>7} {r['vae']:>6} "
              f"{_fmt(r.get('seconds_per_face'), 3):>7} {_fmt(r.get('first_call_s')):>7} "
              f"{cells} {_fmt(r.get('peak_vram_gb')):>6} {r.get('batch_size', '-')!s:>5}  "
              f"{r.get('error', '')}", flush=True)


def print_restoration(detail: dict[str, Any], errors: dict[str, str]) -> None:
    print(f"{'model':>12} {'batch':>5} {'restore faces/s':>16} {'network faces/s':>16} "
          f"{'peakGB':>6}", flush=True)
    for model, batches in detail.items():
        for batch, row in batches.items():
            print(f"{model:>12} {batch:>5} {row['restore_faces_per_s']:>16.1f} "
                  f"{row['network_faces_per_s']:>16.1f} {_fmt(row['peak_vram_gb']):>6}",
                  flush=True)
    for model, error in errors.items():
        print(f"{model:>12}  FAILED: {error}", flush=True)


def target_summary(runs: list[dict[str, Any]], crops: list[int], device_name: str,
                   main_crop: int, steps: int = TARGET_STEPS) -> dict[str, Any]:
    """Best time for one face, 4 variations, 20 steps, per crop size (compiled or not, the
    product's VAE upcast: the fp16 VAE row is a model change, shown but not counted)."""
    h100_class = any(tag in device_name for tag in H100_CLASS)
    best: dict[str, Any] = {}
    by_crop: dict[str, bool | None] = {}
    for crop in crops:
        rows = [r for r in runs if r["crop_size"] == crop and "seconds_per_face" in r
                and r["variations"] == TARGET_VARIATIONS and r["steps"] == steps
                and r["vae"] == "upcast"]
        fastest = min(rows, key=lambda r: r["seconds_per_face"], default=None)
        best[str(crop)] = None if fastest is None else {
            "seconds_per_face": fastest["seconds_per_face"], "compile": fastest["compile"]}
        ok = fastest is not None and fastest["seconds_per_face"] < TARGET_S
        by_crop[str(crop)] = ok if h100_class else None
    return {"meets_target": by_crop.get(str(main_crop)), "meets_target_by_crop": by_crop,
            "target": {"seconds_per_face": TARGET_S, "variations": TARGET_VARIATIONS,
                       "steps": steps, "device_class": "H100", "best_by_crop": best}}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    p.add_argument("--crop-size", type=int, default=None, help="default 1024 (64 with --tiny)")
    p.add_argument("--extra-crops", default=None,
                   help="comma-separated, eager only; default 768,512 (128 with --tiny)")
    p.add_argument("--repeats", type=int, default=1, help="measured calls after the warm-up")
    p.add_argument("--quick", action="store_true", help="20 steps only; crops: main + 512")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU: a smoke test")
    p.add_argument("--budget-s", type=float, default=None,
                   help="whole-run budget; default 480 (100 with --tiny)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="build the checkpoint here and keep it (reused when present)")
    p.add_argument("--dir", type=Path, default=None, help="parent of the temp folder")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.device = "cpu"
    args.crop_size = args.crop_size or (64 if args.tiny else 1024)
    extra = args.extra_crops
    if extra is None:
        extra = "128" if args.tiny else ("512" if args.quick else "768,512")
    args.extra_crops = [int(c) for c in extra.split(",") if c.strip()]
    args.budget_s = args.budget_s or (100.0 if args.tiny else 480.0)
    return args


def run_groups(groups: list[Group], args: argparse.Namespace, workdir: Path,
               deadline: float) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    out: dict[str, Any] = {"runs": runs, "restoration": {}, "restoration_detail": {},
                           "restoration_errors": {}, "groups": {}, "face_source": None}
    for i, group in enumerate(groups):
        if deadline - time.perf_counter() < 10:
            out["groups"][group.name] = {"status": "skipped: budget spent", "seconds": 0.0}
            runs.extend(missing_runs(group, [], "skipped: budget spent"))
            continue
        timeout = group_timeout(groups, i, deadline, args.tiny)
        log(f"group {group.name}: up to {timeout:.0f} s")
        payload = run_child(group, args, workdir, timeout)
        out["groups"][group.name] = {"status": payload["status"], "seconds": payload["seconds"]}
        log(f"group {group.name}: {payload['status']} in {payload['seconds']:.1f} s")
        out["face_source"] = out["face_source"] or payload.get("face_source")
        if group.kind == "generate":
            done = payload.get("runs", [])
            runs.extend(done)
            reason = "not reached: " + payload["status"]
            runs.extend(missing_runs(group, done, reason))
        else:
            detail = payload.get("restoration", {})
            out["restoration_detail"] = detail
            out["restoration_dtype"] = payload.get("restoration_dtype", {})
            out["restoration_errors"] = payload.get("restoration_errors", {})
            out["restoration"] = {m: {b: row["restore_faces_per_s"] for b, row in rows.items()}
                                  for m, rows in detail.items()}
            if payload["status"] != "ok":
                out["restoration_errors"]["group"] = payload["status"]
    return out


def report(args: argparse.Namespace, name: str, build_s: float, out: dict[str, Any]) -> None:
    crops = [args.crop_size, *[c for c in args.extra_crops if c != args.crop_size]]
    steps = TINY_STEPS[0] if args.tiny else TARGET_STEPS
    summary = target_summary(out["runs"], crops, name, args.crop_size, steps)
    print(f"\ndevice {name}, dtype {args.dtype}"
          + (" (CPU runs float32)" if args.device == "cpu" else "")
          + f", face: {out['face_source']}, checkpoint built/checked in {build_s:.1f} s",
          flush=True)
    print_runs(out["runs"])
    print()
    print_restoration(out["restoration_detail"], out["restoration_errors"])
    best = summary["target"]["best_by_crop"]
    print(f"\ntarget: 1 face, {TARGET_VARIATIONS} variations, {steps} steps < "
          f"{TARGET_S} s on an H100-class GPU; best s/face by crop: "
          + ", ".join(f"{c}: {_fmt(b and b['seconds_per_face'], 3)}" for c, b in best.items())
          + f"; meets_target: {summary['meets_target']}", flush=True)
    total = time.time() - _T0
    log(f"done: {total:.1f} s in all")
    if args.json:
        emit_json({
            "device": name, "dtype": args.dtype, "effective_dtype":
                "fp32" if args.device == "cpu" else args.dtype,
            "crop_size": args.crop_size, "crop_sizes": crops, "tiny": args.tiny,
            "quick": args.quick, "repeats": args.repeats, "build_s": round(build_s, 1),
            "total_s": round(total, 1), **out, **summary,
        })


def fail(args: argparse.Namespace, message: str, code: int) -> int:
    log(f"ERROR: {message}")
    if args.json:
        emit_json({"device": args.device, "dtype": args.dtype, "crop_size": args.crop_size,
                   "runs": [], "restoration": {}, "meets_target": None, "error": message})
    return code


@contextmanager
def work_folder(parent: Path | None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="gpu_bench_", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail(args, f"--device {args.device}: torch {torch.__version__} sees no CUDA "
                    "device (use --tiny for the CPU smoke test)", 2)
    deadline = time.perf_counter() + args.budget_s - (time.time() - _T0)
    name = device_name(args.device)
    log(f"gpu_bench on {name}: torch {torch.__version__}, dtype {args.dtype}, crop "
        f"{args.crop_size} (+{args.extra_crops}), budget {args.budget_s:.0f} s")
    with work_folder(args.dir) as workdir:
        args.models_dir = args.models_dir or workdir / "models"
        try:
            build_s = ensure_models(args.models_dir, args.tiny, args.device)
        except Exception as exc:  # noqa: BLE001 - nothing can be measured without the checkpoint
            traceback.print_exc()
            return fail(args, f"building the checkpoint failed: {_error_text(exc)}", 1)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        out = run_groups(plan(args), args, workdir, deadline)
        report(args, name, build_s, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
