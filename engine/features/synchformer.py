"""Synchformer's visual encoder as MMAudio uses it: a MotionFormer ViT with divided space-time
attention over 16-frame windows, then a learned-CLS transformer layer that pools each of the 8
time steps to one vector. Checkpoint-compatible with ext_weights/synchformer_state_dict.pth
(its `vfeat_extractor.*` keys; the audio branch and the sync transformer are not used).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from stepfoley.engine.checkpoints import load_state_dict_file, load_strict
from stepfoley.engine.errors import CheckpointError, InvalidInputError

CHECKPOINT_PREFIX = "vfeat_extractor"


@dataclass(frozen=True)
class SynchformerConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: int = 4
    image_size: int = 224
    patch_size: int = 16
    tubelet: int = 2  # frames per 3-D patch
    frames_per_segment: int = 16
    norm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def time_steps(self) -> int:
        return self.frames_per_segment // self.tubelet


class PatchEmbed2D(nn.Module):
    """Unused by forward; kept because the checkpoint holds it (MotionFormer sizes itself by it)."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


class PatchEmbed3D(nn.Module):
    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        kernel = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (BS, 3, T, H, W) -> (BS, t*h*w, D), tokens ordered time-major
        return self.proj(x).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """Attention within groups of tokens (one frame, or one spatial site across frames).

    The CLS query attends to every token; every other query attends to CLS plus its group."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.scale = (cfg.embed_dim // cfg.num_heads) ** -0.5
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor, frames: int, over_time: bool) -> torch.Tensor:
        # x: (BS, 1 + f*n, D) with CLS first; f frames of n spatial tokens
        bs, length, dim = x.shape
        h, n = self.num_heads, (length - 1) // frames
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(bs, length, h, dim // h).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale  # scaled before the split, as the reference does

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v, scale=1.0)  # (BS, h, 1, d)

        def grouped(t: torch.Tensor) -> torch.Tensor:
            # (BS, h, f*n, d) -> (BS, h, groups, group_len, d)
            t = t.reshape(bs, h, frames, n, -1)
            return t.transpose(2, 3) if over_time else t

        q_, k_, v_ = (grouped(t[:, :, 1:]) for t in (q, k, v))
        groups = q_.shape[2]
        cls_k = k[:, :, :1, None].expand(-1, -1, groups, -1, -1)
        cls_v = v[:, :, :1, None].expand(-1, -1, groups, -1, -1)
        k_ = torch.cat((cls_k, k_), dim=3)
        v_ = torch.cat((cls_v, v_), dim=3)
        out = F.scaled_dot_product_attention(q_, k_, v_, scale=1.0)  # (BS, h, G, L, d)
        if over_time:
            out = out.transpose(2, 3)
        out = torch.cat((cls_out, out.reshape(bs, h, frames * n, -1)), dim=2)
        return self.proj(out.transpose(1, 2).reshape(bs, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, dim) -> (B, L, dim)
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (norm3, timeattn), then space attention (norm1, attn), then MLP (norm2).
    The odd norm names are the checkpoint's."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = DividedAttention(cfg)
        self.timeattn = DividedAttention(cfg)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, cfg.mlp_ratio * dim)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.frames = cfg.time_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (BS, 1 + t*h*w, D)
        x = x + self.timeattn(self.norm3(x), self.frames, over_time=True)
        x = x + self.attn(self.norm1(x), self.frames, over_time=False)
        return x + self.mlp(self.norm2(x))


class SpatialAggregator(nn.Module):
    """A norm-first GELU transformer encoder layer with a learned CLS token, run on the h*w
    tokens of each time step; returns the CLS output. Key names follow nn.TransformerEncoderLayer."""

    def __init__(self, cfg: SynchformerConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = nn.MultiheadAttention(dim, cfg.num_heads, batch_first=True)
        self.linear1 = nn.Linear(dim, cfg.mlp_ratio * dim)
        self.linear2 = nn.Linear(cfg.mlp_ratio * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (BS, D, t, h, w) -> (BS, t, D)
        bs, dim, t, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(bs * t, h * w, dim)
        x = torch.cat((self.cls_token.expand(bs * t, -1, -1), x), dim=1)
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, need_weights=False)[0]
        x = x + self.linear2(F.gelu(self.linear1(self.norm2(x))))
        return x[:, 0].reshape(bs, t, dim)


class SynchformerVisual(nn.Module):
    """MotionFormer feature extractor; state-dict keys are the checkpoint's minus `vfeat_extractor.`."""

    def __init__(self, cfg: SynchformerConfig = SynchformerConfig()):
        super().__init__()
        self.cfg = cfg
        dim, spatial = cfg.embed_dim, cfg.grid * cfg.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spatial + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.time_steps, dim))
        self.patch_embed = PatchEmbed2D(cfg)
        self.patch_embed_3d = PatchEmbed3D(cfg)
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.spatial_attn_agg = SpatialAggregator(cfg)

    def positional_embedding(self) -> torch.Tensor:
        # spatial table tiled over time plus temporal table repeated over space; CLS gets its own
        spatial = self.cfg.grid * self.cfg.grid
        tiled = self.pos_embed[:, 1:].repeat(1, self.cfg.time_steps, 1)
        tiled = tiled + self.temp_embed.repeat_interleave(spatial, dim=1)
        return torch.cat((self.pos_embed[:, :1], tiled), dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # video: (B, S, T, 3, H, W) normalized to [-1, 1] -> (B, S, t, D)
        b, s, t, c, h, w = video.shape
        x = video.permute(0, 1, 3, 2, 4, 5).reshape(b * s, c, t, h, w)
        x = self.patch_embed_3d(x)  # (BS, t'*h'*w', D)
        x = torch.cat((self.cls_token.expand(b * s, -1, -1), x), dim=1)
        x = x + self.positional_embedding()
        for block in self.blocks:
            x = block(x)
        x = self.norm(x[:, 1:])  # CLS dropped before the norm, as in the reference
        grid = self.cfg.grid
        x = x.transpose(1, 2).reshape(b * s, -1, t // self.cfg.tubelet, grid, grid)
        x = self.spatial_attn_agg(x)  # (BS, t', D)
        return x.reshape(b, s, *x.shape[1:])


def strip_checkpoint_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the visual extractor's keys, as Synchformer.load_state_dict does, minus prefix."""
    head = CHECKPOINT_PREFIX + "."
    return {k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)}


def load_synchformer_weights(model: SynchformerVisual, state_dict: Mapping[str, torch.Tensor],
                             source: str = "the Synchformer checkpoint", assign: bool = False) -> None:
    weights = strip_checkpoint_prefix(state_dict)
    if not weights:
        raise CheckpointError(
            f"{source} has no '{CHECKPOINT_PREFIX}.*' weights. Use MMAudio's "
            "ext_weights/synchformer_state_dict.pth.")
    load_strict(model, weights, f"{source} does not fit the Synchformer visual encoder",
                "Download ext_weights/synchformer_state_dict.pth again.", assign=assign, source=source)


def load_synchformer(path: str | Path, cfg: SynchformerConfig = SynchformerConfig()) -> SynchformerVisual:
    with torch.device("meta"):  # given the file's tensors: never held twice
        model = SynchformerVisual(cfg)
    load_synchformer_weights(model, load_state_dict_file(path), source=str(path), assign=True)
    return model.float().eval()


def sync_windows(frames: torch.Tensor, cfg: SynchformerConfig = SynchformerConfig(),
                 step: int = 8) -> torch.Tensor:
    """uint8 frames (T, 3, H, W) at 25 fps -> normalized windows (S, 16, 3, H, W), stride 8."""
    # frames: (T, 3, H, W) uint8
    length = cfg.frames_per_segment
    if frames.shape[0] < length:
        raise InvalidInputError(
            f"The region is too short for Synchformer: {frames.shape[0]} frames at 25 fps, it "
            f"needs at least {length} ({length / 25:.2f} s). Select a longer region.")
    x = frames.float().div_(255.0).sub_(0.5).div_(0.5)
    return x.unfold(0, length, step).permute(0, 4, 1, 2, 3)  # (S, T, 3, H, W)


@torch.inference_mode()
def encode_sync_frames(model: SynchformerVisual, frames: torch.Tensor, batch_segments: int | None = None,
                       on_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(T, 3, 224, 224) uint8 at 25 fps -> (1, S*8, D), all windows in one batched forward
    unless `batch_segments` caps how many go through at once; `on_progress(segments_done)`
    after each batch."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    windows = sync_windows(frames.to(device), model.cfg)
    step = batch_segments or windows.shape[0]
    parts = []
    for i in range(0, windows.shape[0], step):
        parts.append(model(windows[i:i + step].to(dtype)[None]))
        if on_progress is not None:
            on_progress(min(i + step, windows.shape[0]))
    features = torch.cat(parts, dim=1)  # (1, S, 8, D)
    return features.reshape(1, -1, features.shape[-1])
