"""MMAudio's 1-D mel VAE: EDM2-style magnitude-preserving convolutions over mel frames.

State-dict keys and shapes follow the official checkpoints (ext_weights/v1-16.pth,
v1-44.pth): raw convolution weights *before* weight normalization plus the data_mean /
data_std buffers. After loading, call `remove_weight_norm()` once; `load_vae` does both.

The latent has half the mel frame rate: 16 kHz -> 31.25 latents/s, 44.1 kHz -> ~43.07/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from stepfoley.engine.checkpoints import load_strict
from stepfoley.engine.errors import CheckpointError, InvalidInputError


@dataclass(frozen=True)
class VAEConfig:
    data_dim: int  # mel bins
    embed_dim: int  # latent channels
    hidden_dim: int
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    down_levels: tuple[int, ...] = (0,)  # encoder levels followed by a x2 downsampling
    kernel_size: int = 3
    clip_act: float = 256.0

    @staticmethod
    def preset(mode: str) -> "VAEConfig":
        if mode not in VAE_PRESETS:
            raise InvalidInputError(f"Unknown VAE mode {mode!r}: use one of {sorted(VAE_PRESETS)}.")
        return VAE_PRESETS[mode]


VAE_PRESETS = {
    "16k": VAEConfig(data_dim=80, embed_dim=20, hidden_dim=384),
    "44k": VAEConfig(data_dim=128, embed_dim=40, hidden_dim=512),
}


def pixel_norm(x: torch.Tensor, dim: int, eps: float = 1e-4) -> torch.Tensor:
    """Scale to unit RMS along `dim` (EDM2 `normalize`)."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    # 0.596 is the RMS of silu(N(0,1)): keeps unit-variance activations at unit variance.
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Magnitude-preserving blend (1-t)·a + t·b."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free conv whose stored weight is the *raw* (un-normalized) filter bank.

    `remove_weight_norm()` replaces it once by the unit-norm version the network was
    trained with; running before that would silently use the wrong weights."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size))
        self.weight_norm_removed = False

    def remove_weight_norm(self) -> None:
        w = self.weight.detach().to(torch.float32)
        fan_in = w[0].numel()
        w = pixel_norm(w, dim=[1, 2]) / math.sqrt(fan_in)
        # A new tensor, not an in-place copy: after load_state_dict(assign=True) the old
        # one may still belong to the caller's state dict.
        self.weight.data = w.to(self.weight.dtype)
        self.weight_norm_removed = True

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        # x: (B, C_in, T)
        if not self.weight_norm_removed:
            raise CheckpointError(
                "The VAE weights were loaded but not normalized: call remove_weight_norm() after "
                "loading (engine.codec.vae.load_vae does this)."
            )
        w = self.weight * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


class ResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        self.nin_shortcut = MPConv1d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, T)
        x = pixel_norm(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, 0.3)


class AttnBlock(nn.Module):
    """Single-head self-attention over time with cosine-normalized q, k, v."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MPConv1d(channels, channels * 3, 1)
        self.proj_out = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T)
        B, C, T = x.shape
        # The checkpoint interleaves q/k/v innermost: channel = (head, c, qkv).
        qkv = self.qkv(x).reshape(B, self.num_heads, -1, 3, T)
        q, k, v = pixel_norm(qkv, dim=2).unbind(3)  # each (B, heads, c, T)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(B, C, T)
        return mp_sum(x, self.proj_out(h), 0.3)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = MPConv1d(channels, channels, 1)
        self.conv2 = MPConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, C, T // 2)
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = MPConv1d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, C, 2T)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class Middle(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.block_1 = ResBlock(channels, channels, kernel_size)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResBlock(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T) -> (B, C, T)
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks, then an optional resampler
    (named `downsample` / `upsample` as in the checkpoint)."""

    def __init__(self, blocks: list[ResBlock], resampler: nn.Module | None, resampler_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resampler_name = resampler_name
        if resampler is not None:
            setattr(self, resampler_name, resampler)

    def resampler(self) -> nn.Module | None:
        return getattr(self, self.resampler_name, None)


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        self.clip_act = c.clip_act
        self.conv_in = MPConv1d(c.data_dim, c.hidden_dim, c.kernel_size)
        levels = []
        width = c.hidden_dim
        for i, mult in enumerate(c.ch_mult):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(width, c.hidden_dim * mult, c.kernel_size))
                width = c.hidden_dim * mult
            down = Downsample(width) if i in c.down_levels else None
            levels.append(Level(blocks, down, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = Middle(width, c.kernel_size)
        self.conv_out = MPConv1d(width, 2 * c.embed_dim, c.kernel_size)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, data_dim, T) normalized mel -> moments (B, 2 * embed_dim, T / 2)
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h).clamp(-self.clip_act, self.clip_act)
            if level.resampler() is not None:
                h = level.resampler()(h)
        h = self.mid(h).clamp(-self.clip_act, self.clip_act)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        self.clip_act = c.clip_act
        width = c.hidden_dim * c.ch_mult[-1]
        self.conv_in = MPConv1d(c.embed_dim, width, c.kernel_size)
        self.mid = Middle(width, 3)
        # Built deepest first, stored shallowest first (checkpoint order: up.0 is the
        # full-resolution level); the decoder upsamples after level i+1 for each encoder
        # downsampling after level i.
        levels: list[Level] = []
        for i in reversed(range(len(c.ch_mult))):
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(width, c.hidden_dim * c.ch_mult[i], 3))
                width = c.hidden_dim * c.ch_mult[i]
            up = Upsample(width) if (i - 1) in c.down_levels else None
            levels.insert(0, Level(blocks, up, "upsample"))
        self.up = nn.ModuleList(levels)
        self.conv_out = MPConv1d(width, c.data_dim, c.kernel_size)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, embed_dim, N) -> normalized mel (B, data_dim, 2N)
        h = self.mid(self.conv_in(z)).clamp(-self.clip_act, self.clip_act)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h).clamp(-self.clip_act, self.clip_act)
            if level.resampler() is not None:
                h = level.resampler()(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


@dataclass(frozen=True)
class LatentGaussian:
    """The encoder's posterior; all (B, embed_dim, N), channels-first."""

    mean: torch.Tensor
    logvar: torch.Tensor  # clamped to [-30, 20] like the reference

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @staticmethod
    def from_moments(moments: torch.Tensor) -> "LatentGaussian":
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return LatentGaussian(mean, torch.clamp(logvar, -30.0, 20.0))


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        # Per-mel-bin statistics of the training data; real values come from the checkpoint.
        self.register_buffer("data_mean", torch.zeros(1, config.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, config.data_dim, 1))
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def remove_weight_norm(self) -> "VAE":
        for m in self.modules():
            if isinstance(m, MPConv1d):
                m.remove_weight_norm()
        return self

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.data_mean) / self.data_std

    def unnormalize(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.data_std + self.data_mean

    def encode(self, mel: torch.Tensor) -> LatentGaussian:
        # mel: (B, data_dim, T) log-mel, T even
        if mel.ndim != 3 or mel.shape[1] != self.config.data_dim:
            raise InvalidInputError(
                f"The VAE expects a ({self.config.data_dim}-bin) mel of shape (B, {self.config.data_dim}, T); "
                f"got {tuple(mel.shape)}."
            )
        return LatentGaussian.from_moments(self.encoder(self.normalize(mel)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # z: (B, embed_dim, N) channels-first -> log-mel (B, data_dim, 2N)
        if z.ndim != 3 or z.shape[1] != self.config.embed_dim:
            raise InvalidInputError(
                f"The VAE decoder expects latents of shape (B, {self.config.embed_dim}, N); got {tuple(z.shape)}."
            )
        return self.unnormalize(self.decoder(z))


def load_vae(state_dict: dict[str, torch.Tensor], config: VAEConfig, source: str = "the VAE checkpoint") -> VAE:
    """Build a VAE, load an official-layout state dict strictly, normalize the weights.

    Built on the meta device and filled with `assign=True`, so a full-size model is never
    allocated twice."""
    with torch.device("meta"):
        vae = VAE(config)
    load_strict(vae, state_dict, f"{source} does not fit the {config.data_dim}-mel VAE (hidden width "
                f"{config.hidden_dim})", "Check that the file is the official v1-16.pth (16 kHz) or v1-44.pth "
                "(44.1 kHz).", assign=True, source=source)
    vae = vae.float().eval()
    return vae.remove_weight_norm()
