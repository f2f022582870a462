"""MMAudio's network sizes: the configuration of one network, the five official presets, and
the token counts of a region of any length."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from stepfoley.engine.errors import InvalidInputError

SYNC_FRAMES_PER_SEGMENT = 8  # each Synchformer segment yields 8 feature frames


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
        # Frames are counted as engine.video reads them (region_frame_count): over the length
        # rounded to the microsecond, so 1.16 - 0.16 s is 8 CLIP frames, not 7.
        duration_s = round(duration_s, 6)
        latent = int(math.ceil(duration_s * sample_rate / hop_length / latent_downsample))
        clip = math.floor(round(duration_s * 8, 6))
        num_segments = max(0, (math.floor(round(duration_s * 25, 6)) - 16) // 8 + 1)
        sync = num_segments * 8
        return cls(latent, clip, sync)
