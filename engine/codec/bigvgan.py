"""BigVGAN generator (mel -> waveform), v1 and v2.

One module serves both vocoders MMAudio uses:
- 16 kHz: the BigVGAN-v1 generator trained by Make-An-Audio 2 (ext_weights/best_netG.pt,
  entry "generator"), config `BigVGANConfig.preset("mmaudio_16k")`;
- 44.1 kHz: NVIDIA's BigVGAN-v2 `bigvgan_v2_44khz_128band_512x` (see bigvgan_v2.py), which
  is the same network plus two switches (`use_tanh_at_final`, `use_bias_at_final`).

State-dict keys follow the official checkpoints, with weight norm on every conv. Loading
(`load_generator`) accepts the legacy `weight_g`/`weight_v` names, the
`parametrizations.weight.original0/1` names, and checkpoints whose weight norm was already
folded into plain `weight`; weight norm is removed right after loading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.parametrize import is_parametrized, remove_parametrizations

from stepfoley.engine.checkpoints import load_strict
from stepfoley.engine.errors import CheckpointError, InvalidInputError


@dataclass(frozen=True)
class BigVGANConfig:
    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    resblock: str = "1"  # "1": AMP block with a second conv per dilation; "2": one conv
    activation: str = "snakebeta"  # or "snake"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True  # v2 44 kHz: False, output is clamped instead
    use_bias_at_final: bool = True  # v2 44 kHz: False, conv_post has no bias

    @property
    def hop_size(self) -> int:
        return math.prod(self.upsample_rates)

    @staticmethod
    def from_dict(h: dict) -> "BigVGANConfig":
        """From an official hyper-parameter dict (bigvgan_vocoder.yml, config.json); keys
        that only matter for training (discriminators, optimizer, data) are ignored, and so
        is `use_cuda_kernel` (the fused kernel computes the same function)."""
        names = {f.name for f in fields(BigVGANConfig)}
        missing = [n for n in ("num_mels", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel") if n not in h]
        if missing:
            raise CheckpointError(f"The BigVGAN config lacks {', '.join(missing)}; is it a BigVGAN config.json?")
        kw = {k: v for k, v in h.items() if k in names}
        for k in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
            if k in kw:
                kw[k] = tuple(kw[k])
        if "resblock_dilation_sizes" in kw:
            kw["resblock_dilation_sizes"] = tuple(tuple(d) for d in kw["resblock_dilation_sizes"])
        kw["resblock"] = str(kw.get("resblock", "1"))
        return BigVGANConfig(**kw)

    @staticmethod
    def preset(name: str) -> "BigVGANConfig":
        if name not in BIGVGAN_PRESETS:
            raise InvalidInputError(f"Unknown BigVGAN preset {name!r}: use one of {sorted(BIGVGAN_PRESETS)}.")
        return BIGVGAN_PRESETS[name]


BIGVGAN_PRESETS = {
    # MMAudio's bigvgan_vocoder.yml (Make-An-Audio 2's 16 kHz, 80-band vocoder).
    "mmaudio_16k": BigVGANConfig(
        num_mels=80,
        upsample_rates=(4, 4, 2, 2, 2, 2),
        upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
        upsample_initial_channel=1536,
    ),
    # nvidia/bigvgan_v2_44khz_128band_512x config.json.
    "v2_44k_512x": BigVGANConfig(
        num_mels=128,
        upsample_rates=(8, 4, 2, 2, 2, 2),
        upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
        upsample_initial_channel=1536,
        use_tanh_at_final=False,
        use_bias_at_final=False,
    ),
}


# ---------------------------------------------------------------------------------------
# Anti-aliased activation: x2 upsample, periodic nonlinearity, x2 low-pass downsample.


def kaiser_sinc_lowpass(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Windowed-sinc low-pass filter (1, 1, kernel_size), unit DC gain. Kaiser's formulas
    pick the window's beta from the attenuation the transition width allows."""
    half = kernel_size // 2
    attenuation_db = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation_db > 50.0:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db >= 21.0:
        beta = 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    if kernel_size % 2 == 0:
        time = torch.arange(-half, half) + 0.5
    else:
        time = torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_lowpass(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, C, ratio * T)
        C = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(C, -1, -1), stride=self.ratio, groups=C)
        return x[..., self.crop_left : -self.crop_right]


class LowPassFilter1d(nn.Module):
    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12):
        super().__init__()
        self.stride = stride
        self.pad_left = kernel_size // 2 - int(kernel_size % 2 == 0)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_lowpass(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, C, T / stride)
        C = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(C, -1, -1), stride=self.stride, groups=C)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, C, T // ratio)
        return self.lowpass(x)


class Snake(nn.Module):
    """x + sin²(αx)/α per channel; with `beta`, the magnitude 1/β is a separate parameter
    (SnakeBeta). Log-scale parameters are stored as log α, log β."""

    def __init__(self, channels: int, with_beta: bool, logscale: bool):
        super().__init__()
        self.logscale = logscale
        init = torch.zeros(channels) if logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())
        self.beta = nn.Parameter(init.clone()) if with_beta else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        magnitude = alpha if self.beta is None else self.beta.unsqueeze(0).unsqueeze(-1)
        if self.logscale:
            alpha = torch.exp(alpha)
            magnitude = torch.exp(magnitude)
        return x + (1.0 / (magnitude + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


class Activation1d(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(2, 12)
        self.downsample = DownSample1d(2, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        return self.downsample(self.act(self.upsample(x)))


def _snake_activation(c: BigVGANConfig, channels: int) -> Activation1d:
    if c.activation not in ("snake", "snakebeta"):
        raise CheckpointError(f"BigVGAN activation {c.activation!r} is not supported (expected snake or snakebeta).")
    return Activation1d(Snake(channels, with_beta=c.activation == "snakebeta", logscale=c.snake_logscale))


def _conv(cin: int, cout: int, kernel: int, dilation: int = 1, bias: bool = True) -> nn.Module:
    return weight_norm(nn.Conv1d(cin, cout, kernel, 1, dilation=dilation, padding=(kernel * dilation - dilation) // 2, bias=bias))


class AMPBlock(nn.Module):
    """Residual stack of anti-aliased periodic activations and dilated convs.
    resblock "1": x += conv2(act(conv1_d(act(x)))) per dilation d; "2": x += conv_d(act(x))."""

    def __init__(self, c: BigVGANConfig, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.two_convs = c.resblock == "1"
        if self.two_convs:
            self.convs1 = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)
            self.convs2 = nn.ModuleList(_conv(channels, channels, kernel, 1) for _ in dilations)
        else:
            self.convs = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)
        n_acts = len(dilations) * (2 if self.two_convs else 1)
        self.activations = nn.ModuleList(_snake_activation(c, channels) for _ in range(n_acts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        if self.two_convs:
            acts = zip(self.activations[::2], self.activations[1::2])
            for conv1, conv2, (act1, act2) in zip(self.convs1, self.convs2, acts):
                x = conv2(act2(conv1(act1(x)))) + x
        else:
            for conv, act in zip(self.convs, self.activations):
                x = conv(act(x)) + x
        return x


class BigVGAN(nn.Module):
    def __init__(self, config: BigVGANConfig):
        super().__init__()
        c = config
        if c.resblock not in ("1", "2"):
            raise CheckpointError(f"BigVGAN resblock type {c.resblock!r} is not supported (expected \"1\" or \"2\").")
        self.config = c
        self.conv_pre = _conv(c.num_mels, c.upsample_initial_channel, 7)
        # Each stage is wrapped in its own list: the checkpoint keys are ups.<i>.0.*
        self.ups = nn.ModuleList(
            nn.ModuleList(
                [
                    weight_norm(
                        nn.ConvTranspose1d(
                            c.upsample_initial_channel // 2**i,
                            c.upsample_initial_channel // 2 ** (i + 1),
                            k,
                            u,
                            padding=(k - u) // 2,
                        )
                    )
                ]
            )
            for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes))
        )
        self.resblocks = nn.ModuleList()
        for i in range(len(c.upsample_rates)):
            ch = c.upsample_initial_channel // 2 ** (i + 1)
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock(c, ch, k, tuple(d)))
        self.activation_post = _snake_activation(c, ch)
        self.conv_post = _conv(ch, 1, 7, bias=c.use_bias_at_final)

    @property
    def num_kernels(self) -> int:
        return len(self.config.resblock_kernel_sizes)

    def remove_weight_norm(self) -> "BigVGAN":
        """Fold every weight norm into a plain `weight` (w = g·v/‖v‖, norm over all dims but
        dim 0; for transposed convs dim 0 is the input channel). Idempotent."""
        for m in self.modules():
            if is_parametrized(m, "weight"):
                remove_parametrizations(m, "weight")
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: (B, num_mels, T) -> waveform (B, 1, T * hop_size)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.config.use_tanh_at_final else torch.clamp(x, -1.0, 1.0)


_LEGACY_SUFFIXES = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


def to_parametrization_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy torch.nn.utils.weight_norm keys (<m>.weight_g / <m>.weight_v) to the
    parametrization names; other keys pass through."""
    out = {}
    for key, value in state_dict.items():
        for legacy, modern in _LEGACY_SUFFIXES.items():
            if key.endswith(legacy):
                key = key[: -len(legacy)] + modern
                break
        out[key] = value
    return out


def load_generator(state_dict: dict[str, torch.Tensor], config: BigVGANConfig, source: str = "the vocoder checkpoint") -> BigVGAN:
    """Build a BigVGAN, load a generator state dict strictly (any of the three weight-norm
    layouts), remove weight norm, return it in eval mode."""
    sd = to_parametrization_keys(state_dict)
    has_weight_norm = any(k.endswith(".parametrizations.weight.original1") for k in sd)
    model = BigVGAN(config)
    if not has_weight_norm:
        model.remove_weight_norm()  # a checkpoint saved after folding: plain `weight` keys
    load_strict(model, sd, f"{source} does not fit this BigVGAN ({config.num_mels} mels, "
                f"{config.upsample_initial_channel} initial channels, upsampling "
                f"{'x'.join(map(str, config.upsample_rates))})", "Check that the file is the vocoder of the chosen model.", source=source)
    return model.remove_weight_norm().eval()
