"""The VQGAN building blocks CodeFormer is made of: residual and attention blocks, the encoder
(image -> latent grid) and the generator (code grid -> image).

Written for openeyes from the published structure (sczhou/CodeFormer,
``basicsr/archs/vqgan_arch.py``, itself after Unleashing Transformers' VQGAN); attribute names
follow the published ones because they are the checkpoint's state_dict keys.

Both stacks are flat ``blocks`` lists, as published (the keys are ``encoder.blocks.N...``), and
CodeFormer reads features at fixed positions in them; the positions are computed here from the
layout (``encoder_taps`` / ``generator_taps``) rather than written down as numbers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        # A 1x1 projection exists only where the width changes (and so does its key).
        self.conv_out = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.silu(self.norm1(x)))
        out = self.conv2(F.silu(self.norm2(out)))
        return out + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (conv(normed).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        # SDPA's default scale is 1/sqrt(c), the published one; it avoids the hw x hw matrix
        # where a memory-efficient kernel exists.
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as trained


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """Image -> ``emb_dim`` x (size / 2^(levels-1))^2 latent grid.

    ``taps[res]`` is the index of the block whose output CodeFormer keeps at resolution ``res``:
    the last residual block of that resolution (before its attention block, if any).
    """

    def __init__(self, nf: int, ch_mult: tuple[int, ...], res_blocks: int, size: int,
                 attn_resolutions: tuple[int, ...], emb_dim: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1)]
        self.taps: dict[int, int] = {}
        cin, res = nf, size
        for level, mult in enumerate(ch_mult):
            for _ in range(res_blocks):
                blocks.append(ResBlock(cin, nf * mult))
                cin = nf * mult
                self.taps[res] = len(blocks) - 1
                if res in attn_resolutions:
                    blocks.append(AttnBlock(cin))
            if level != len(ch_mult) - 1:
                blocks.append(Downsample(cin))
                res //= 2
        blocks += [ResBlock(cin, cin), AttnBlock(cin), ResBlock(cin, cin),  # non-local block
                   group_norm(cin), nn.Conv2d(cin, emb_dim, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)


class Generator(nn.Module):
    """Latent grid -> RGB image in [-1, 1].

    ``taps[res]``: the block after which CodeFormer fuses encoder features at ``res``. As the
    published network was trained: at the latent resolution after the last residual block of
    that resolution, above it after the first one.
    """

    def __init__(self, nf: int, ch_mult: tuple[int, ...], res_blocks: int, size: int,
                 attn_resolutions: tuple[int, ...], emb_dim: int) -> None:
        super().__init__()
        cin = nf * ch_mult[-1]
        latent = res = size // 2 ** (len(ch_mult) - 1)
        blocks: list[nn.Module] = [nn.Conv2d(emb_dim, cin, 3, 1, 1),
                                   ResBlock(cin, cin), AttnBlock(cin), ResBlock(cin, cin)]
        self.taps: dict[int, int] = {}
        for level in reversed(range(len(ch_mult))):
            placed: list[int] = []
            for _ in range(res_blocks):
                blocks.append(ResBlock(cin, nf * ch_mult[level]))
                cin = nf * ch_mult[level]
                placed.append(len(blocks) - 1)
                if res in attn_resolutions:
                    blocks.append(AttnBlock(cin))
            self.taps[res] = placed[-1] if res == latent else placed[0]
            if level != 0:
                blocks.append(Upsample(cin))
                res *= 2
        blocks += [group_norm(cin), nn.Conv2d(cin, 3, 3, 1, 1)]
        self.blocks = nn.ModuleList(blocks)
