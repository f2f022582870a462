"""MMAudio's flow-prediction network (an MM-DiT), checkpoint-compatible with the official weights.

Every module name below is chosen so that `state_dict()` has exactly the keys, shapes and order
of the official `mmaudio_*.pth` files (see golden/manifests/flow_*.json). The arithmetic follows
the reference operation by operation, so float32 results match it to ~1e-6.

Typical use (the sampler runs cond / uncond / NAG rows in one batched forward):

    net = MMAudio(MMAudioConfig.preset("small_16k")); net.load_weights(state_dict)
    cond = net.preprocess_conditions(clip_f, sync_f, text_f)          # once per generation
    empty = net.get_empty_conditions(1)
    v = net.predict_flow(x, t, cond.cat(empty), control=None)         # x: (2B, N, C)

Regions shorter than 8 s: pass the feature sequences of the region and, when they are not the
config's 8 s lengths, `latent_seq_len=` (see `SequenceLengths.for_duration`). Rotary tables and
the sync upsampling index are derived from the actual lengths and cached per length.

What a ControlNet (engine/controlnet.py) can build on:
    net.embed_latent(latent)                (B, N, C) -> (B, N, H), the audio input projection
    net.timestep_embedding(t)               (B,) -> (B, 1, H)
    net.global_conditioning(t, cond)        (B, 1, H) = timestep embedding + global cond MLP
    net.token_conditioning(global_c, cond)  (B, N, H) = global_c + upsampled sync ("extended_c")
    net.latent_rope(N, device)              (1, N, head_dim/2, 2, 2) float32 rotary table
    SingleStreamBlock(hidden_dim, num_heads, mlp_ratio, kernel_size=3)
        forward(x (B, N, H), c (B, N, H), rope) -> (B, N, H); the class of `net.fused_blocks`
    net.num_blocks                          joint + fused blocks; `control[i]` is added after block i

Under torch.autocast(bfloat16) the rotary tables, the rotation and the timestep sinusoids stay
in float32 as in the reference; `predict_flow` returns the latent's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from stepfoley.engine.checkpoints import load_strict
from stepfoley.engine.errors import InvalidInputError

SYNC_FRAMES_PER_SEGMENT = 8  # each Synchformer segment yields 8 feature frames
ROPE_THETA = 10000
LAYER_NORM_EPS = 1e-5
KEYS_RECOMPUTED_ON_LOAD = ("t_embed.freqs", "latent_rot", "clip_rot")


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class MMAudioConfig:
    """Constructor arguments of the reference `MMAudio` (the golden `config` metadata)."""

    latent_dim: int
    clip_dim: int
    sync_dim: int
    text_dim: int
    hidden_dim: int
    depth: int
    fused_depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    latent_seq_len: int = 250
    clip_seq_len: int = 64
    sync_seq_len: int = 192
    text_seq_len: int = 77
    v2: bool = False
    # Only used in messages; two configs with the same sizes are the same network.
    name: str = field(default="", compare=False)

    def __post_init__(self):
        problems = []
        if self.hidden_dim % self.num_heads:
            problems.append(f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        elif (self.hidden_dim // self.num_heads) % 2:
            problems.append(f"head size {self.hidden_dim // self.num_heads} must be even for rotary embeddings")
        if not 0 <= self.fused_depth <= self.depth:
            problems.append(f"fused_depth {self.fused_depth} must lie between 0 and depth {self.depth}")
        if self.sync_seq_len % SYNC_FRAMES_PER_SEGMENT:
            problems.append(f"sync_seq_len {self.sync_seq_len} is not a multiple of {SYNC_FRAMES_PER_SEGMENT}")
        if problems:
            raise InvalidInputError(f"Invalid MMAudio configuration {self.describe()}: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str) -> "MMAudioConfig":
        """One of the five official networks: small_16k, small_44k, medium_44k, large_44k, large_44k_v2."""
        if name not in _PRESETS:
            raise InvalidInputError(
                f"Unknown MMAudio model '{name}'. Choose one of: {', '.join(_PRESETS)}.")
        return replace(_PRESETS[name], name=name)

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def num_joint_blocks(self) -> int:
        return self.depth - self.fused_depth

    @property
    def seq_lengths(self) -> "SequenceLengths":
        """The 8 s sequence lengths the network was trained on."""
        return SequenceLengths(self.latent_seq_len, self.clip_seq_len, self.sync_seq_len)

    def describe(self) -> str:
        sizes = (f"hidden {self.hidden_dim}, {self.num_heads} heads, depth {self.depth} "
                 f"({self.fused_depth} fused), latent {self.latent_dim} ch x {self.latent_seq_len}"
                 f"{', v2' if self.v2 else ''}")
        return f"'{self.name}' ({sizes})" if self.name else f"({sizes})"


def _official(latent_dim: int, num_heads: int, depth: int, fused_depth: int, latent_seq_len: int,
              v2: bool = False) -> MMAudioConfig:
    # All official networks use 64-wide heads and the CLIP-L / Synchformer feature sizes.
    return MMAudioConfig(latent_dim=latent_dim, clip_dim=1024, sync_dim=768, text_dim=1024,
                         hidden_dim=64 * num_heads, depth=depth, fused_depth=fused_depth,
                         num_heads=num_heads, latent_seq_len=latent_seq_len, v2=v2)


_PRESETS: dict[str, MMAudioConfig] = {
    "small_16k": _official(20, 7, 12, 8, 250),
    "small_44k": _official(40, 7, 12, 8, 345),
    "medium_44k": _official(40, 14, 12, 8, 345),
    "large_44k": _official(40, 14, 21, 14, 345),
    "large_44k_v2": _official(40, 14, 21, 14, 345, v2=True),
}


@dataclass(frozen=True)
class SequenceLengths:
    """Token counts of one region: audio latents, CLIP frames (8 fps), Synchformer frames."""

    latent: int
    clip: int
    sync: int

    @classmethod
    def for_duration(cls, duration_s: float, sample_rate: int, hop_length: int,
                     latent_downsample: int = 2) -> "SequenceLengths":
        """MMAudio's SequenceConfig: 16 kHz uses hop 256, 44.1 kHz hop 512. Synchformer windows are
        16 frames at 25 fps with stride 8, each giving 8 features."""
        latent = int(math.ceil(duration_s * sample_rate / hop_length / latent_downsample))
        clip = int(duration_s * 8)
        num_segments = (duration_s * 25 - 16) // 8 + 1
        sync = int(num_segments * 16 / 2)
        return cls(latent, clip, sync)


# --------------------------------------------------------------------------------------------
# Conditions


@dataclass(frozen=True)
class PreprocessedConditions:
    """Step-invariant projections of the features (computed once per generation).

    clip_f (B, Lc, H), sync_f (B, N, H) already upsampled to the latent length, text_f (B, Lt, H),
    clip_f_c (B, H), text_f_c (B, H). Fields may be broadcast views (batch 1 expanded).
    """

    clip_f: torch.Tensor
    sync_f: torch.Tensor
    text_f: torch.Tensor
    clip_f_c: torch.Tensor
    text_f_c: torch.Tensor

    @property
    def batch_size(self) -> int:
        return max(t.shape[0] for t in self._tensors())

    @property
    def latent_seq_len(self) -> int:
        return self.sync_f.shape[1]

    def _tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def expand(self, bs: int) -> "PreprocessedConditions":
        """Broadcast batch-1 fields to `bs` rows (views, no copy)."""
        def grow(name: str, t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] == bs:
                return t
            if t.shape[0] == 1:
                return t.expand(bs, *t.shape[1:])
            raise InvalidInputError(
                f"Conditions field '{name}' has batch {t.shape[0]}, which cannot be used for a batch "
                f"of {bs}: it must be 1 or {bs}.")
        return PreprocessedConditions(**{f.name: grow(f.name, getattr(self, f.name)) for f in fields(self)})

    def cat(self, *others: "PreprocessedConditions") -> "PreprocessedConditions":
        """Stack condition sets along the batch so cond/uncond/NAG rows share one forward."""
        groups = [self, *others]
        groups = [g.expand(g.batch_size) for g in groups]
        lengths = {g.latent_seq_len for g in groups}
        if len(lengths) != 1:
            raise InvalidInputError(
                f"Cannot batch conditions made for different region lengths ({sorted(lengths)} latents).")
        return PreprocessedConditions(
            **{f.name: torch.cat([getattr(g, f.name) for g in groups]) for f in fields(self)})


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


# --------------------------------------------------------------------------------------------
# The network


class MMAudio(nn.Module):
    def __init__(self, config: MMAudioConfig):
        super().__init__()
        self.config = cfg = config
        H = cfg.hidden_dim
        act = nn.SiLU if cfg.v2 else nn.SELU

        # Parameters owned by this module come first in state_dict(); keep the reference order.
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_FRAMES_PER_SEGMENT, cfg.sync_dim))
        # NaN until a checkpoint (or a trainer) provides the statistics, so forgetting them shows.
        self.latent_mean = nn.Parameter(torch.full((1, 1, cfg.latent_dim), float("nan")), requires_grad=False)
        self.latent_std = nn.Parameter(torch.full((1, 1, cfg.latent_dim), float("nan")), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(cfg.text_seq_len, cfg.text_dim), requires_grad=False)
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, H, kernel_size=7, padding=3), act(), SwiGLU(H, 4 * H, kernel_size=7))
        extra_act = [nn.SiLU()] if cfg.v2 else []  # v2 adds an activation after the Linear
        self.clip_input_proj = nn.Sequential(
            nn.Linear(cfg.clip_dim, H), *extra_act, SwiGLU(H, 4 * H, kernel_size=3))
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, H, kernel_size=7, padding=3), act(), SwiGLU(H, 4 * H, kernel_size=3))
        self.text_input_proj = nn.Sequential(nn.Linear(cfg.text_dim, H), *extra_act, SwiGLU(H, 4 * H))

        self.clip_cond_proj = nn.Linear(H, H)
        self.text_cond_proj = nn.Linear(H, H)
        self.global_cond_mlp = SwiGLU(H, 4 * H)
        self.final_layer = FinalLayer(H, cfg.latent_dim)
        if cfg.v2:
            self.t_embed = TimestepEmbedder(H, num_channels=H, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(H, num_channels=256, max_period=10000)
        self.joint_blocks = nn.ModuleList([
            JointBlock(H, cfg.num_heads, cfg.mlp_ratio, pre_only=(i == cfg.num_joint_blocks - 1))
            for i in range(cfg.num_joint_blocks)])
        self.fused_blocks = nn.ModuleList([
            SingleStreamBlock(H, cfg.num_heads, cfg.mlp_ratio, kernel_size=3) for _ in range(cfg.fused_depth)])

        self._tables: dict[tuple, torch.Tensor] = {}
        self.initialize_weights()

    # -- training-time initialization (checkpoints overwrite all of it) --

    def initialize_weights(self) -> None:
        """DiT-style: Xavier Linears, zero biases, N(0, 0.02) timestep MLP, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        blocks = [b for jb in self.joint_blocks for b in (jb.latent_block, jb.clip_block, jb.text_block)]
        for block in [*blocks, *self.fused_blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.conv.weight)
        nn.init.zeros_(self.final_layer.conv.bias)

    # -- properties --

    @property
    def num_blocks(self) -> int:
        return self.config.depth

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    # -- checkpoints --

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Strict load of an official-layout state dict (the caller's dict is not modified)."""
        weights = {k: v for k, v in state_dict.items() if k not in KEYS_RECOMPUTED_ON_LOAD}

        def advice() -> str:
            other = infer_preset(weights)
            return ("Check that the weights file belongs to the chosen model (for example "
                    "mmaudio_large_44k_v2.pth needs the large_44k_v2 model)."
                    + (f" These weights look like the '{other}' model." if other is not None else ""))
        load_strict(self, weights, f"These weights do not fit the MMAudio network {self.config.describe()}",
                    advice, labels=("missing key(s)", "unexpected key(s)", "shape mismatch(es)"))

    # -- latent statistics --

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Codec latent -> the sampler's space. Pure (the reference works in place)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    # -- cached position tables --

    def _cached(self, key: tuple, device: torch.device, make) -> torch.Tensor:
        key = (*key, torch.device(device))
        if key not in self._tables:
            # Plain tensors even when first asked for under inference_mode, so that the same
            # network can later be trained (inference tensors cannot be saved for backward).
            with torch.inference_mode(False):
                self._tables[key] = make().to(device)
        return self._tables[key]

    def latent_rope(self, length: int, device=None) -> torch.Tensor:
        """(1, length, head_dim/2, 2, 2) float32 rotary table of the audio stream."""
        return self._cached(("latent_rope", length), device or self.device,
                            lambda: rope_rotations(length, self.config.head_dim))

    def clip_rope(self, clip_len: int, latent_len: int, device=None) -> torch.Tensor:
        """CLIP frames' rotary table, positions stretched onto the latent time axis."""
        return self._cached(("clip_rope", clip_len, latent_len), device or self.device,
                            lambda: rope_rotations(clip_len, self.config.head_dim, latent_len / clip_len))

    def sync_upsample_index(self, sync_len: int, latent_len: int, device=None) -> torch.Tensor:
        return self._cached(("sync_index", sync_len, latent_len), device or self.device,
                            lambda: sync_upsample_index(sync_len, latent_len))

    # -- conditions --

    def preprocess_conditions(self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                              *, latent_seq_len: Optional[int] = None) -> PreprocessedConditions:
        """Everything that does not depend on the latent or t.

        clip_f (B, Lc, clip_dim), sync_f (B, Ls, sync_dim), text_f (B, Lt, text_dim); the batches may
        differ only by being 1. `latent_seq_len` is needed when Lc/Ls are not the config's 8 s lengths.
        """
        cfg = self.config
        self._check_features(clip_f, cfg.clip_dim, "CLIP (video) features", "clip_dim")
        self._check_features(sync_f, cfg.sync_dim, "Synchformer (sync) features", "sync_dim")
        self._check_features(text_f, cfg.text_dim, "text features", "text_dim")
        if sync_f.shape[1] % SYNC_FRAMES_PER_SEGMENT:
            raise InvalidInputError(
                f"Synchformer features have {sync_f.shape[1]} frames, not a multiple of "
                f"{SYNC_FRAMES_PER_SEGMENT} (one Synchformer segment gives {SYNC_FRAMES_PER_SEGMENT}).")
        latent_len = latent_seq_len or self._default_latent_len(clip_f.shape[1], sync_f.shape[1])

        # sync_f: (B, Ls, Ds) -> (B, segments, 8, Ds): each frame gets its in-segment position
        bs_sync = sync_f.shape[0]
        sync_f = sync_f.view(bs_sync, -1, SYNC_FRAMES_PER_SEGMENT, sync_f.shape[-1]) + self.sync_pos_emb
        sync_f = sync_f.flatten(1, 2)

        clip_f = self.clip_input_proj(clip_f)  # (B, Lc, H)
        sync_f = self.sync_input_proj(sync_f)  # (B, Ls, H)
        text_f = self.text_input_proj(text_f)  # (B, Lt, H)
        index = self.sync_upsample_index(sync_f.shape[1], latent_len, sync_f.device)
        sync_f = sync_f.index_select(1, index)  # (B, N, H)

        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))  # (B, H)
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))  # (B, H)
        return PreprocessedConditions(clip_f=clip_f, sync_f=sync_f, text_f=text_f,
                                      clip_f_c=clip_f_c, text_f_c=text_f_c)

    def _check_features(self, x: torch.Tensor, dim: int, what: str, field_name: str) -> None:
        if x.ndim != 3 or x.shape[-1] != dim:
            raise InvalidInputError(
                f"The {what} have shape {list(x.shape)}, but the model {self.config.describe()} expects "
                f"(batch, frames, {dim}) ({field_name}). Were they made by the encoder of another model?")

    def _default_latent_len(self, clip_len: int, sync_len: int) -> int:
        cfg = self.config
        if (clip_len, sync_len) == (cfg.clip_seq_len, cfg.sync_seq_len):
            return cfg.latent_seq_len
        raise InvalidInputError(
            f"The video features cover {clip_len} CLIP and {sync_len} sync frames, not the model's "
            f"{cfg.clip_seq_len} and {cfg.sync_seq_len} (8 s); pass latent_seq_len for this region "
            f"(SequenceLengths.for_duration computes it).")

    def get_empty_conditions(self, bs: int, negative_text_features: Optional[torch.Tensor] = None, *,
                             seq_lengths: Optional[SequenceLengths] = None) -> PreprocessedConditions:
        """The unconditional branch: learned empty video features and the empty caption (or a
        negative prompt). Empty video is computed at batch 1 and broadcast; negative text keeps its
        own batch, as in the reference."""
        lengths = seq_lengths or self.config.seq_lengths
        if negative_text_features is not None:
            text = negative_text_features
        else:
            text = self.empty_string_feat.unsqueeze(0)
        clip = self.empty_clip_feat.unsqueeze(0).expand(1, lengths.clip, -1)
        sync = self.empty_sync_feat.unsqueeze(0).expand(1, lengths.sync, -1)
        cond = self.preprocess_conditions(clip, sync, text, latent_seq_len=lengths.latent)
        return cond.expand(bs)

    def empty_conditions(self, bs: int, latent_len: int, clip_len: int, sync_len: int,
                         negative_text_features: Optional[torch.Tensor] = None) -> PreprocessedConditions:
        """`get_empty_conditions` for a region of any length: `latent_len` latents under `clip_len`
        CLIP and `sync_len` Synchformer frames."""
        return self.get_empty_conditions(bs, negative_text_features,
                                         seq_lengths=SequenceLengths(latent_len, clip_len, sync_len))

    def empty_text_features(self) -> torch.Tensor:
        """(1, Lt, Dt): the text features of the empty caption (the "no text" condition)."""
        return self.empty_string_feat.unsqueeze(0)

    # -- per step --

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) -> (B, 1, H)
        return self.t_embed(t).unsqueeze(1)

    def global_conditioning(self, t: torch.Tensor, conditions: PreprocessedConditions) -> torch.Tensor:
        """(B, 1, H): timestep embedding + MLP of the pooled CLIP and text projections."""
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)  # (B, H)
        return self.timestep_embedding(t) + global_c.unsqueeze(1)

    def token_conditioning(self, global_c: torch.Tensor, conditions: PreprocessedConditions) -> torch.Tensor:
        """(B, N, H) per-token conditioning of the audio stream ("extended_c")."""
        return global_c + conditions.sync_f

    def embed_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The audio stream's input projection, (B, N, C) -> (B, N, H). It depends on the latent
        alone, so the guidance branches of one step, which all start from the same x, share it."""
        return self.audio_input_proj(latent)

    def predict_flow(self, latent: torch.Tensor, t: torch.Tensor, conditions: PreprocessedConditions,
                     control: Optional[Sequence[torch.Tensor]] = None, *,
                     latent_embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Velocity for normalized latents. latent (B, N, C); t (B,) or 0-dim; conditions of batch B
        or 1; control[i] (B, N, H) is added to the audio stream after block i. `latent_embedding`
        (B, N, H) is `embed_latent(latent)` when the caller already has it."""
        # latent: (B, N, C)
        B, N, _ = latent.shape
        conditions = conditions.expand(B)
        self._check_step_inputs(latent, conditions, control)
        if latent_embedding is not None and tuple(latent_embedding.shape) != (B, N, self.hidden_dim):
            raise InvalidInputError(
                f"The latent embedding has shape {list(latent_embedding.shape)}; expected "
                f"{[B, N, self.hidden_dim]} for a latent of shape {list(latent.shape)}.")
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t
        clip_f, text_f = conditions.clip_f, conditions.text_f
        latent_rope = self.latent_rope(N, latent.device)
        clip_rope = self.clip_rope(clip_f.shape[1], N, latent.device)

        x = self.embed_latent(latent) if latent_embedding is None else latent_embedding  # (B, N, H)
        global_c = self.global_conditioning(t, conditions)  # (B, 1, H)
        extended_c = self.token_conditioning(global_c, conditions)  # (B, N, H)
        control = list(control or [])

        for i, block in enumerate(self.joint_blocks):
            x, clip_f, text_f = block(x, clip_f, text_f, global_c, extended_c, latent_rope, clip_rope)
            if i < len(control):
                x = x + control[i]
        for j, block in enumerate(self.fused_blocks):
            x = block(x, extended_c, latent_rope)
            if len(self.joint_blocks) + j < len(control):
                x = x + control[len(self.joint_blocks) + j]

        # Conditioned on global_c, not extended_c: an upstream slip (MMAudio #55) the weights learned.
        flow = self.final_layer(x, global_c)  # (B, N, C)
        return flow.to(latent.dtype)

    def _check_step_inputs(self, latent, conditions, control) -> None:
        B, N, C = latent.shape
        if C != self.config.latent_dim:
            raise InvalidInputError(
                f"The latent has {C} channels but the model {self.config.describe()} works on "
                f"{self.config.latent_dim}; the codec does not belong to this model.")
        if conditions.latent_seq_len != N:
            raise InvalidInputError(
                f"The latent has {N} frames but the conditions were prepared for "
                f"{conditions.latent_seq_len}; prepare them with latent_seq_len={N}.")
        if control is not None:
            if len(control) > self.num_blocks:
                raise InvalidInputError(
                    f"{len(control)} control residuals given, but the network has only {self.num_blocks} blocks.")
            for i, residual in enumerate(control):
                if tuple(residual.shape) != (B, N, self.hidden_dim):
                    raise InvalidInputError(
                        f"Control residual {i} has shape {list(residual.shape)}; expected {[B, N, self.hidden_dim]}.")

    def forward(self, latent: torch.Tensor, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        # latent: (B, N, C); clip_f: (B, Lc, Dc); sync_f: (B, Ls, Ds); text_f: (B, Lt, Dt); t: (B,)
        conditions = self.preprocess_conditions(clip_f, sync_f, text_f, latent_seq_len=latent.shape[1])
        return self.predict_flow(latent, t, conditions)


def infer_preset(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The official model whose layout these weights have (by key set and shapes), or None."""
    weights = {k: tuple(v.shape) for k, v in state_dict.items() if k not in KEYS_RECOMPUTED_ON_LOAD}
    for name, cfg in _PRESETS.items():
        # Cheap screen before building the candidate (on the meta device: no memory).
        if weights.get("audio_input_proj.0.weight") != (cfg.hidden_dim, cfg.latent_dim, 7):
            continue
        with torch.device("meta"):
            net = MMAudio(MMAudioConfig.preset(name))
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == weights:
            return name
    return None
