"""GFPGAN v1 "clean" (the architecture of GFPGANv1.3/v1.4): a U-Net that encodes the degraded
face into a StyleGAN2 latent per layer plus spatial scale/shift maps, and a StyleGAN2 decoder
whose features are modulated by those maps (SFT on half of the channels).

Written for openeyes from the published structure (TencentARC/GFPGAN,
``gfpgan/archs/gfpganv1_clean_arch.py`` and ``stylegan2_clean_arch.py``, Apache-2.0). Attribute
names follow the published ones, because they are the state_dict keys of ``GFPGANv1.4.pth``
(``params_ema``) and the file must load with ``strict=True``. Inference only: the U-Net's
intermediate RGB heads (``toRGB``) exist for their keys but are not run.

One deliberate difference from the reference: modulated convolutions scale the *input* by the
style and the *output* by the demodulation factor (StyleGAN2's "non-fused" form) instead of
building one weight per sample; it is the same linear map, and a batch of faces then runs as
one ordinary convolution rather than a grouped one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class GFPGANSpec:
    """Hyper-parameters; the defaults are those of GFPGANv1.3/v1.4 (``GFPGANer(arch="clean",
    channel_multiplier=2)``). Tests build small networks with other values."""

    out_size: int = 512
    num_style_feat: int = 512
    channel_multiplier: int = 2
    num_mlp: int = 8
    narrow: float = 1.0

    @property
    def log_size(self) -> int:
        return int(math.log2(self.out_size))

    @property
    def num_latent(self) -> int:
        return self.log_size * 2 - 2

    def channels(self, narrow: float) -> dict[int, int]:
        """Feature channels per resolution (StyleGAN2's table, scaled by ``narrow``)."""
        base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * self.channel_multiplier,
                128: 128 * self.channel_multiplier, 256: 64 * self.channel_multiplier,
                512: 32 * self.channel_multiplier, 1024: 16 * self.channel_multiplier}
        return {res: int(ch * narrow) for res, ch in base.items()}

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> GFPGANSpec:
        """Read the hyper-parameters back from a checkpoint's tensor shapes, so the loader
        builds exactly the network the file was saved from (strict loading checks the rest)."""
        downs = {int(m.group(1)) for k in sd if (m := re.match(r"conv_body_down\.(\d+)\.", k))}
        log_size = len(downs) + 2
        style = sd["stylegan_decoder.style_mlp.1.weight"].shape[0]
        num_mlp = sum(1 for k in sd if re.fullmatch(r"stylegan_decoder\.style_mlp\.\d+\.weight", k))
        c4 = sd["stylegan_decoder.constant_input.weight"].shape[1]
        narrow = c4 / 512
        multiplier = 1
        if log_size >= 6:  # channels from 64 px up depend on the multiplier
            c64 = sd["stylegan_decoder.to_rgbs.3.modulated_conv.weight"].shape[2]
            multiplier = max(1, round(c64 / (256 * narrow)))
        return cls(2**log_size, style, multiplier, num_mlp, narrow)


class _ModulatedConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, style_dim: int, *,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.modulation = nn.Linear(style_dim, cin)
        self.weight = nn.Parameter(torch.randn(1, cout, cin, kernel, kernel) / math.sqrt(
            cin * kernel * kernel))
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        scale = self.modulation(style)  # (b, cin)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        weight = self.weight[0]
        out = F.conv2d(x * scale[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            # rsqrt(sum over cin and taps of (w * s)^2): the per-sample weight's norm, computed
            # without materialising that weight.
            energy = scale.square() @ weight.square().sum((2, 3)).t()  # (b, cout)
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        return out


class _StyleConv(nn.Module):
    def __init__(self, cin: int, cout: int, style_dim: int, *, upsample: bool = False) -> None:
        super().__init__()
        self.modulated_conv = _ModulatedConv(cin, cout, 3, style_dim, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        out = self.modulated_conv(x, style) * _SQRT2
        out = out + self.weight * noise + self.bias
        return F.leaky_relu(out, 0.2)


class _ToRGB(nn.Module):
    def __init__(self, cin: int, style_dim: int) -> None:
        super().__init__()
        self.modulated_conv = _ModulatedConv(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return out


class _PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)


class _Constant(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, batch: int) -> Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class _Noises(nn.Module):
    """Holds the fixed noise maps as buffers ``noise0..``: they are part of the checkpoint."""


class StyleGAN2SFTDecoder(nn.Module):
    """StyleGAN2 generator whose first conv of each resolution is followed by SFT."""

    def __init__(self, spec: GFPGANSpec) -> None:
        super().__init__()
        ch = spec.channels(spec.narrow)
        style = spec.num_style_feat
        mlp: list[nn.Module] = [_PixelNorm()]
        for _ in range(spec.num_mlp):  # Linear at odd indices: keys style_mlp.1, .3, ...
            mlp += [nn.Linear(style, style), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*mlp)  # unused (input is already latent); keys only
        self.constant_input = _Constant(ch[4])
        self.style_conv1 = _StyleConv(ch[4], ch[4], style)
        self.to_rgb1 = _ToRGB(ch[4], style)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = _Noises()
        self.num_noises = (spec.log_size - 2) * 2 + 1
        for index in range(self.num_noises):
            res = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.randn(1, 1, res, res))
        cin = ch[4]
        for log_res in range(3, spec.log_size + 1):
            cout = ch[2**log_res]
            self.style_convs.append(_StyleConv(cin, cout, style, upsample=True))
            self.style_convs.append(_StyleConv(cout, cout, style))
            self.to_rgbs.append(_ToRGB(cout, style))
            cin = cout

    def forward(self, latent: Tensor, conditions: list[tuple[Tensor, Tensor]]) -> Tensor:
        # The stored noise maps, not fresh ones: restoration is then deterministic, so running
        # a job again gives the same photo (GFPGANer draws new noise on every call).
        noise = [getattr(self.noises, f"noise{i}") for i in range(self.num_noises)]
        out = self.constant_input(latent.shape[0])
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1], None)
        for level, (scale, shift) in enumerate(conditions):
            i = 2 * level + 1
            out = self.style_convs[i - 1](out, latent[:, i], noise[i])
            same, modulated = out.chunk(2, dim=1)  # SFT on the second half of the channels
            out = torch.cat([same, modulated * scale + shift], dim=1)
            out = self.style_convs[i](out, latent[:, i + 1], noise[i + 1])
            skip = self.to_rgbs[level](out, latent[:, i + 2], skip)
        return skip


class _Resample(nn.Module):
    """U-Net residual block that halves or doubles the resolution (bilinear)."""

    def __init__(self, cin: int, cout: int, factor: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        resize = lambda t: F.interpolate(  # noqa: E731
            t, scale_factor=self.factor, mode="bilinear", align_corners=False)
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.leaky_relu(self.conv2(resize(out)), 0.2)
        return out + self.skip(resize(x))


def _sft_head(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(channels, channels, 3, 1, 1))


class GFPGANClean(nn.Module):
    """Input and output: RGB in [-1, 1], ``spec.out_size`` square."""

    def __init__(self, spec: GFPGANSpec | None = None) -> None:
        super().__init__()
        spec = spec or GFPGANSpec()
        self.spec = spec
        ch = spec.channels(spec.narrow * 0.5)  # the U-Net is half as wide as the decoder
        size = spec.out_size
        self.conv_body_first = nn.Conv2d(3, ch[size], 1)
        self.conv_body_down = nn.ModuleList(
            _Resample(ch[2**i], ch[2 ** (i - 1)], 0.5) for i in range(spec.log_size, 2, -1))
        self.final_conv = nn.Conv2d(ch[4], ch[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(
            _Resample(ch[2 ** (i - 1)], ch[2**i], 2.0) for i in range(3, spec.log_size + 1))
        self.toRGB = nn.ModuleList(nn.Conv2d(ch[2**i], 3, 1) for i in range(3, spec.log_size + 1))
        self.final_linear = nn.Linear(ch[4] * 16, spec.num_latent * spec.num_style_feat)
        self.stylegan_decoder = StyleGAN2SFTDecoder(spec)
        levels = range(3, spec.log_size + 1)
        self.condition_scale = nn.ModuleList(_sft_head(ch[2**i]) for i in levels)
        self.condition_shift = nn.ModuleList(_sft_head(ch[2**i]) for i in levels)

    def forward(self, x: Tensor) -> Tensor:
        feat = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips: list[Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        latent = self.final_linear(feat.flatten(1)).view(x.shape[0], -1, self.spec.num_style_feat)
        conditions: list[tuple[Tensor, Tensor]] = []
        for up, skip, scale, shift in zip(self.conv_body_up, reversed(skips),
                                          self.condition_scale, self.condition_shift,
                                          strict=True):
            feat = up(feat + skip)
            conditions.append((scale(feat), shift(feat)))
        return self.stylegan_decoder(latent, conditions)
