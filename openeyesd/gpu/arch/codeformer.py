"""CodeFormer: a VQGAN encoder reads the degraded face, a transformer predicts for every cell of
the latent grid an index into a learned codebook of high-quality face parts, the VQGAN
generator decodes the looked-up codes, and controllable feature fusion blends encoder features
back in with fidelity weight ``w`` (0: the codebook's face; 1: closest to the input).

Written for openeyes from the published structure (sczhou/CodeFormer,
``basicsr/archs/codeformer_arch.py``); attribute names follow the published ones because they are
the state_dict keys of ``codeformer.pth`` (``params_ema``), loaded with ``strict=True``.
Inference only, as the reference inference script runs it (``adain=True``: the looked-up codes
take the per-channel mean and deviation of the encoder's features).
The weights are under the S-Lab licence (non-commercial); this code is not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openeyesd.gpu.arch.vqgan import Encoder, Generator, ResBlock

#: Attention heads of the published transformer; a checkpoint does not record it.
PUBLISHED_HEADS = 8


@dataclass(frozen=True)
class CodeFormerSpec:
    """Hyper-parameters; defaults are the published network's (``CodeFormer(dim_embd=512,
    codebook_size=1024, n_head=8, n_layers=9, connect_list=['32', '64', '128', '256'])`` over
    ``VQAutoEncoder(512, 64, [1, 2, 2, 4, 4, 8], 'nearest', 2, [16], 1024)``)."""

    size: int = 512
    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    codebook_size: int = 1024
    emb_dim: int = 256
    dim_embd: int = 512
    n_head: int = PUBLISHED_HEADS
    n_layers: int = 9
    connect: tuple[int, ...] = (32, 64, 128, 256)

    @property
    def latent_size(self) -> int:
        return self.size // 2 ** (len(self.ch_mult) - 1)

    def channels(self, res: int) -> int:
        level = int(math.log2(self.size // res))
        return self.nf * self.ch_mult[level]

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> CodeFormerSpec:
        """Read the hyper-parameters back from the checkpoint's keys and shapes (all but the
        head count, which is the published 8)."""
        nf = sd["encoder.blocks.0.weight"].shape[0]
        levels = _encoder_levels(sd)
        ch_mult = tuple(widths[0] // nf for widths, _ in levels)
        latent = math.isqrt(sd["position_emb"].shape[0])
        size = latent * 2 ** (len(levels) - 1)
        attn = tuple(size >> level for level, (_, has_attn) in enumerate(levels) if has_attn)
        codebook_size, emb_dim = sd["quantize.embedding.weight"].shape
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"ft_layers\.(\d+)\.", k))}
        connect = sorted(int(m.group(1)) for k in sd
                         if (m := re.fullmatch(r"fuse_convs_dict\.(\d+)\.scale\.0\.weight", k)))
        return cls(size=size, nf=nf, ch_mult=ch_mult, res_blocks=len(levels[0][0]),
                   attn_resolutions=attn, codebook_size=codebook_size, emb_dim=emb_dim,
                   dim_embd=sd["position_emb"].shape[1], n_layers=len(layers),
                   connect=tuple(connect))


def _encoder_levels(sd: Mapping[str, Tensor]) -> list[tuple[list[int], bool]]:
    """Per resolution level of the encoder: the residual blocks' widths and whether attention
    follows them. Levels are separated by the downsampling blocks (the only ones with a
    ``conv`` child); the last level is followed by the non-local block (res, attn, res) and the
    output norm + conv, which are not part of it."""
    pattern = re.compile(r"encoder\.blocks\.(\d+)\.")
    indices = sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
    levels: list[tuple[list[int], bool]] = [([], False)]
    for i in indices[1:-5]:
        prefix = f"encoder.blocks.{i}."
        if prefix + "conv.weight" in sd:
            levels.append(([], False))
        elif prefix + "conv1.weight" in sd:
            levels[-1][0].append(sd[prefix + "conv1.weight"].shape[0])
        elif prefix + "q.weight" in sd:
            levels[-1] = (levels[-1][0], True)
    return levels


class _Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)


class _TransformerLayer(nn.Module):
    """Pre-norm self-attention + GELU MLP; the position embedding is added to queries and keys
    only."""

    def __init__(self, dim: int, heads: int, dim_mlp: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        normed = self.norm1(x)
        qk = normed + pos
        x = x + self.self_attn(qk, qk, normed, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class _Fuse(nn.Module):
    """Controllable feature transformation: a scale and shift computed from encoder + decoder
    features, applied to the decoder features with weight ``w``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = _conv_pair(channels)
        self.shift = _conv_pair(channels)

    def forward(self, enc: Tensor, dec: Tensor, w: float) -> Tensor:
        feat = self.encode_enc(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(feat) + self.shift(feat))


def _conv_pair(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(channels, channels, 3, padding=1))


def _adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Give ``content`` the per-channel mean and (unbiased) deviation of ``style``."""
    def stats(t: Tensor) -> tuple[Tensor, Tensor]:
        flat = t.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return (content - c_mean) / c_std * s_std + s_mean


class CodeFormer(nn.Module):
    """Input and output: RGB in [-1, 1], ``spec.size`` square."""

    def __init__(self, spec: CodeFormerSpec | None = None) -> None:
        super().__init__()
        spec = spec or CodeFormerSpec()
        self.spec = spec
        layout = (spec.nf, spec.ch_mult, spec.res_blocks, spec.size, spec.attn_resolutions,
                  spec.emb_dim)
        self.encoder = Encoder(*layout)
        self.quantize = _Codebook(spec.codebook_size, spec.emb_dim)
        self.generator = Generator(*layout)
        self.position_emb = nn.Parameter(torch.zeros(spec.latent_size**2, spec.dim_embd))
        self.feat_emb = nn.Linear(spec.emb_dim, spec.dim_embd)
        self.ft_layers = nn.Sequential(*(
            _TransformerLayer(spec.dim_embd, spec.n_head, spec.dim_embd * 2)
            for _ in range(spec.n_layers)))
        self.idx_pred_layer = nn.Sequential(
            nn.LayerNorm(spec.dim_embd), nn.Linear(spec.dim_embd, spec.codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict(
            {str(res): _Fuse(spec.channels(res)) for res in spec.connect})

    def forward(self, x: Tensor, w: float) -> Tensor:
        taps = {self.encoder.taps[res]: res for res in self.spec.connect}
        skips: dict[int, Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in taps:
                skips[taps[i]] = x
        b, _, h, width = x.shape
        tokens = self.feat_emb(x.flatten(2).transpose(1, 2))
        for layer in self.ft_layers:
            tokens = layer(tokens, self.position_emb)
        codes = self.idx_pred_layer(tokens).argmax(-1)  # the most likely code of every cell
        quant = self.quantize.embedding(codes).transpose(1, 2).reshape(b, -1, h, width)
        out = _adain(quant, x)
        fuse_at = {self.generator.taps[res]: res for res in self.spec.connect}
        for i, block in enumerate(self.generator.blocks):
            out = block(out)
            if i in fuse_at and w > 0:  # w = 0 skips fusion: the pure codebook face
                res = fuse_at[i]
                out = self.fuse_convs_dict[str(res)](skips[res], out, w)
        return out
