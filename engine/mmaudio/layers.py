"""The building blocks of MMAudio's MM-DiT: modulation, rotary position tables, attention,
SwiGLU, the q/k/v projection, the single-stream and joint blocks, the final layer and the
timestep embedder. Module names match the official checkpoints' keys."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ROPE_THETA = 10000
LAYER_NORM_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Small pure functions


def swiglu_hidden_width(expanded_dim: int, multiple_of: int = 256) -> int:
    """SwiGLU keeps the parameter count of a 2-layer MLP of `expanded_dim` (2/3 of it), rounded up."""
    width = int(2 * expanded_dim / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_frequencies(num_channels: int, max_period: float) -> torch.Tensor:
    """(num_channels/2,) float32 on CPU. v2's frequencies reach 1e4 rad per unit t, so one ulp
    matters: keep the reference's exact float32 recipe (1/10000^(2i/F), then * 10000/max_period)."""
    exponents = torch.arange(0, num_channels, 2, dtype=torch.float32, device="cpu") / num_channels
    freqs = 1.0 / (10000 ** exponents)
    return (10000 / max_period) * freqs


def rope_rotations(length: int, head_dim: int, freq_scaling: float = 1.0) -> torch.Tensor:
    """(1, length, head_dim/2, 2, 2) float32 on CPU: per position and channel pair (2i, 2i+1),
    the rotation [[cos, -sin], [sin, cos]]. A CLIP stream of Lc frames spanning N latents uses
    freq_scaling = N/Lc, i.e. its positions land on the latent time axis."""
    positions = torch.arange(length, dtype=torch.float32, device="cpu")
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim))
    freqs *= freq_scaling  # scaled before the outer product, like the reference, for bit-equality
    angles = positions[:, None] * freqs[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).view(1, length, head_dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    # x: (B, heads, N, head_dim); rot: (1, N, head_dim/2, 2, 2) float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        rotated = rot[..., 0] * pairs[..., 0] + rot[..., 1] * pairs[..., 1]
        return rotated.reshape(x.shape).to(x.dtype)


def sync_upsample_index(src_len: int, dst_len: int) -> torch.Tensor:
    """(dst_len,) int64: the source row F.interpolate(mode='nearest-exact') copies to each output.

    PyTorch computes floor((i + 0.5) * float32(src/dst)) in float32, which at 192 -> 345 picks
    rows 31 and 95 where exact arithmetic gives 32 and 96; the checkpoints were trained with it.
    """
    scale = torch.tensor(src_len, dtype=torch.float32) / dst_len
    positions = torch.arange(dst_len, dtype=torch.float32) + 0.5
    return torch.floor(positions * scale).to(torch.int64).clamp_(max=src_len - 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q, k, v: (B, heads, L, head_dim) -> (B, L, heads * head_dim)
    dtype = v.dtype  # under autocast the normed q/k may come back float32
    out = F.scaled_dot_product_attention(q.to(dtype).contiguous(), k.to(dtype).contiguous(), v.contiguous())
    return out.transpose(1, 2).flatten(2).contiguous()


# --------------------------------------------------------------------------------------------
# Layers


class ChannelLastConv1d(nn.Conv1d):
    """A 1-D convolution over time on (B, T, C) tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C_in) -> (B, T, C_out)
        return super().forward(x.permute(0, 2, 1)).permute(0, 2, 1)


def _time_mixing(in_dim: int, out_dim: int, kernel_size: int, bias: bool) -> nn.Module:
    # kernel 1 is a Linear in the reference (2-D weights in the checkpoint), not a Conv1d.
    if kernel_size == 1:
        return nn.Linear(in_dim, out_dim, bias=bias)
    return ChannelLastConv1d(in_dim, out_dim, kernel_size=kernel_size, padding=kernel_size // 2, bias=bias)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), bias-free; a convolution over time when kernel_size > 1."""

    def __init__(self, dim: int, expanded_dim: int, kernel_size: int = 1):
        super().__init__()
        width = swiglu_hidden_width(expanded_dim)
        self.w1 = _time_mixing(dim, width, kernel_size, bias=False)
        self.w2 = _time_mixing(width, dim, kernel_size, bias=False)
        self.w3 = _time_mixing(dim, width, kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, dim)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class QKVProjection(nn.Module):
    """Fused q/k/v Linear with per-head RMSNorm on q and k.

    The qkv output is laid out (heads, head_dim, 3) with q/k/v innermost (interleaved), and the
    RMSNorms use eps=None (finfo(dtype).eps), as in the checkpoints' training code.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=None)
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=None)

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor]):
        # x: (B, N, dim) -> q, k, v: (B, heads, N, head_dim)
        B, N, dim = x.shape
        qkv = self.qkv(x).view(B, N, self.num_heads, dim // self.num_heads, 3).transpose(1, 2)
        q, k, v = qkv.unbind(dim=-1)
        # Normed in float32 (a no-op in fp32): under bf16 autocast a bf16 input with the float32
        # weight would miss the fused kernel and come back float32 anyway.
        q, k = self.q_norm(q.float()), self.k_norm(k.float())
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return q, k, v


class SingleStreamBlock(nn.Module):
    """adaLN-modulated pre-norm transformer block for one token stream.

    Used alone as a "fused" block (audio only) and as one of the three streams of a JointBlock,
    where the attention is shared; hence the pre_attention / post_attention split.
    `c` is (B, 1, H) global or (B, N, H) per-token conditioning. A `pre_only` block only supplies
    q/k/v (the last joint block's CLIP and text streams).
    """

    def __init__(self, hidden_dim: int, num_heads: int, mlp_ratio: float = 4.0, kernel_size: int = 3,
                 pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.attn = QKVProjection(hidden_dim, num_heads)
        if not pre_only:
            self.linear1 = _time_mixing(hidden_dim, hidden_dim, kernel_size, bias=True)
            self.ffn = SwiGLU(hidden_dim, int(hidden_dim * mlp_ratio), kernel_size)
        num_modulations = 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, num_modulations * hidden_dim))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor, rope: Optional[torch.Tensor]):
        # x: (B, N, H); c: (B, 1 or N, H)
        modulation = self.adaLN_modulation(c).chunk(2 if self.pre_only else 6, dim=-1)
        shift_msa, scale_msa = modulation[:2]
        h = modulate(F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS), shift_msa, scale_msa)
        return self.attn(h, rope), modulation[2:]

    def post_attention(self, x: torch.Tensor, attn_out: torch.Tensor, modulation) -> torch.Tensor:
        # x, attn_out: (B, N, H)
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + self.linear1(attn_out) * gate_msa
        h = modulate(F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS), shift_mlp, scale_mlp)
        return x + self.ffn(h) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
        # x: (B, N, H); c: (B, 1 or N, H); rope: (1, N, head_dim/2, 2, 2) or None
        qkv, modulation = self.pre_attention(x, c, rope)
        return self.post_attention(x, attention(*qkv), modulation)


class JointBlock(nn.Module):
    """Audio, CLIP and text streams with their own weights and one attention over all tokens."""

    def __init__(self, hidden_dim: int, num_heads: int, mlp_ratio: float, pre_only: bool):
        super().__init__()
        self.latent_block = SingleStreamBlock(hidden_dim, num_heads, mlp_ratio, kernel_size=3)
        self.clip_block = SingleStreamBlock(hidden_dim, num_heads, mlp_ratio, kernel_size=3, pre_only=pre_only)
        self.text_block = SingleStreamBlock(hidden_dim, num_heads, mlp_ratio, kernel_size=1, pre_only=pre_only)

    def forward(self, latent, clip_f, text_f, global_c, extended_c, latent_rope, clip_rope):
        # latent: (B, N, H); clip_f: (B, Lc, H); text_f: (B, Lt, H)
        # global_c: (B, 1, H); extended_c: (B, N, H)
        latent_qkv, latent_mod = self.latent_block.pre_attention(latent, extended_c, latent_rope)
        clip_qkv, clip_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rope)
        text_qkv, text_mod = self.text_block.pre_attention(text_f, global_c, None)
        joint = [torch.cat(parts, dim=2) for parts in zip(latent_qkv, clip_qkv, text_qkv)]
        out = attention(*joint)
        n, lc = latent.shape[1], clip_f.shape[1]
        latent = self.latent_block.post_attention(latent, out[:, :n], latent_mod)
        clip_f = self.clip_block.post_attention(clip_f, out[:, n:n + lc], clip_mod)
        text_f = self.text_block.post_attention(text_f, out[:, n + lc:], text_mod)
        return latent, clip_f, text_f


class FinalLayer(nn.Module):
    def __init__(self, hidden_dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, 2 * hidden_dim))
        self.conv = ChannelLastConv1d(hidden_dim, out_dim, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x: (B, N, H); c: (B, 1, H) -> (B, N, out_dim)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS), shift, scale))


class TimestepEmbedder(nn.Module):
    """Sinusoids of t (cos first, then sin) followed by an MLP.

    The frequencies are recomputed on CPU in float32 and cached per device rather than held in a
    buffer, so meta-device construction, `.to(dtype)` and `to_empty()` cannot corrupt them.
    """

    def __init__(self, hidden_dim: int, num_channels: int, max_period: float):
        super().__init__()
        self.num_channels = num_channels
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(num_channels, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self._freqs: dict[torch.device, torch.Tensor] = {}

    def frequencies(self, device: torch.device) -> torch.Tensor:
        if device not in self._freqs:
            self._freqs[device] = timestep_frequencies(self.num_channels, self.max_period).to(device)
        return self._freqs[device]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) -> (B, hidden_dim)
        with torch.autocast(device_type=t.device.type, enabled=False):
            args = t[:, None].float() * self.frequencies(t.device)[None]
            sinusoids = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        # The reference casts to t's dtype, which is the weights' dtype whenever it runs at all.
        return self.mlp(sinusoids.to(self.mlp[0].weight.dtype))
