"""Tiny SDXL / SD 1.5 checkpoints for tests, written to a folder like real downloaded weights.

Same shapes of configuration as the real models (SDXL's two text encoders and "text_time"
added conditioning, a 9-channel inpainting UNet, an img2img refiner with aesthetic-score
conditioning), but 32-wide layers, so the real loading code (``from_pretrained``) and the real
pipelines run on CPU in well under a second. The tokenizer's vocabulary and merges are written
here: nothing is downloaded.

Also a synthetic face: a textured 160×160 image with two eyes whose 16-point contours follow
:mod:`openeyesd.eyes.types`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from openeyesd.eyes.types import Eye, Face, HeadPose

HIDDEN = 32
#: SDXL's time ids: original size, crop top-left, target size (2 each) or, for the refiner,
#: original size, crop top-left, aesthetic score; each embedded in ADD_TIME_DIM.
ADD_TIME_DIM = 8
_MERGES = [("o", "p"), ("e", "n</w>"), ("op", "en</w>"), ("e", "y"), ("ey", "e"), ("eye", "s</w>")]


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over ASCII letters, digits and punctuation plus a few merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "\n".join(f"{a} {b}" for a, b in _MERGES)
    (folder / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _text_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=vocab_size,
        hidden_size=HIDDEN, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=HIDDEN, hidden_act="gelu", max_position_embeddings=77,
    )


def _unet(in_channels: int, cross_dim: int, time_ids: int | None) -> UNet2DConditionModel:
    """Two blocks; ``time_ids`` set gives SDXL's "text_time" added conditioning, whose input is
    the pooled text embedding (HIDDEN) plus every time id embedded in ADD_TIME_DIM."""
    extra = {}
    if time_ids is not None:
        extra = dict(addition_embed_type="text_time", addition_time_embed_dim=ADD_TIME_DIM,
                     projection_class_embeddings_input_dim=time_ids * ADD_TIME_DIM + HIDDEN)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
        in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=cross_dim, **extra,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], sample_size=64,
    )


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  steps_offset=1, timestep_spacing="leading")


def save_tiny_sdxl_inpaint(models_dir: Path, name: str, *, variant: str | None = None) -> Path:
    torch.manual_seed(0)
    tokenizer = write_tokenizer(models_dir / f"{name}-tok")
    text_config = _text_config(len(tokenizer))
    pipe = StableDiffusionXLInpaintPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(text_config),
        text_encoder_2=CLIPTextModelWithProjection(text_config), tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=_unet(9, 2 * HIDDEN, time_ids=6), scheduler=_scheduler(),
        requires_aesthetics_score=False, add_watermarker=False,
    )
    pipe.save_pretrained(models_dir / name, variant=variant)
    return models_dir / name


def save_tiny_sdxl_refiner(models_dir: Path, name: str) -> Path:
    """Like the SDXL refiner: no first text encoder, aesthetic score among the time ids."""
    torch.manual_seed(1)
    tokenizer = write_tokenizer(models_dir / f"{name}-tok")
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(), text_encoder=None,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(len(tokenizer))),
        tokenizer=None, tokenizer_2=tokenizer, unet=_unet(4, HIDDEN, time_ids=5),
        scheduler=_scheduler(), requires_aesthetics_score=True, add_watermarker=False,
    )
    pipe.save_pretrained(models_dir / name)
    return models_dir / name


def save_tiny_sd15_inpaint(models_dir: Path, name: str) -> Path:
    torch.manual_seed(2)
    tokenizer = write_tokenizer(models_dir / f"{name}-tok")
    pipe = StableDiffusionInpaintPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(len(tokenizer))),
        tokenizer=tokenizer, unet=_unet(9, HIDDEN, time_ids=None), scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(models_dir / name)
    return models_dir / name


# --- a synthetic face -----------------------------------------------------------------------


def eye_contour(cx: float, cy: float, width: float, opening: float, outer_left: bool) -> np.ndarray:
    """16 points: outer corner, upper lid to the inner corner (0..8), lower lid back (9..15)."""
    t = np.linspace(0.0, np.pi, 9)
    sign = -1.0 if outer_left else 1.0
    xs = cx + sign * (width / 2) * np.cos(t)
    upper = np.column_stack([xs, cy - opening * width * np.sin(t)])
    lower = np.column_stack([xs[::-1][1:-1], cy + 0.12 * width * np.sin(t[1:-1])])
    return np.vstack([upper, lower]).astype(np.float32)


def synthetic_face(opening: float = 0.03, seed: int = 0) -> tuple[np.ndarray, Face]:
    """A 160×160 skin-like image (gradient + texture) with two eyes of ``opening`` (lid gap in
    eye widths: ~0.03 closed, ~0.3 open) drawn in, and its Face."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:160, 0:160].astype(np.float32)
    base = np.stack([200 - 0.2 * yy, 160 - 0.1 * xx, 140 + 0.05 * yy], axis=-1)
    texture = cv2.GaussianBlur(rng.normal(0, 12, (160, 160, 3)).astype(np.float32), (0, 0), 1.2)
    image = np.clip(base + texture, 0, 255).astype(np.uint8)
    eyes = {}
    # The subject's right eye appears on the left of the picture; outer corners face outwards.
    for side, cx, outer_left in (("right", 60.0, True), ("left", 100.0, False)):
        contour = eye_contour(cx, 72.0, 24.0, opening, outer_left)
        brow_x = np.linspace(cx - 14, cx + 14, 5)[:: 1 if outer_left else -1]
        brow = np.column_stack([brow_x, np.full(5, 56.0) - np.sin(np.linspace(0, np.pi, 5)) * 3])
        if opening > 0.1:
            cv2.fillPoly(image, [np.round(contour).astype(np.int32)], (235, 235, 230))
            cv2.circle(image, (round(cx), round(72 - opening * 12)), 5, (60, 40, 30), -1)
            cv2.polylines(image, [np.round(contour[:9]).astype(np.int32)], False, (40, 30, 30), 1)
        else:  # a shut lid: skin with a soft lash line, no sclera
            cv2.polylines(image, [np.round(contour[:9]).astype(np.int32)], False, (130, 95, 85), 1)
        cv2.polylines(image, [np.round(brow).astype(np.int32)], False, (70, 50, 40), 3)
        eyes[side] = Eye(side=side, contour=contour, brow=brow.astype(np.float32))
    landmarks = np.vstack([e.contour for e in eyes.values()])
    face = Face(box=(30.0, 30.0, 130.0, 150.0), score=0.99, eyes=eyes,
                pose=HeadPose(0.0, 0.0, 0.0), landmarks=landmarks, backend="synthetic")
    return image, face
