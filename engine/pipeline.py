"""FoleyModel: everything one generation needs, loaded once and kept resident.

A FoleyModel bundles the flow network (MMAudio), the optional NAG ControlNet, the audio
codec (waveform <-> latent), and the video and text encoders. The real MMAudio stack and
the embedded mini-world model are both FoleyModels; the session and the service see no
difference between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from stepfoley.engine.errors import InvalidInputError
from stepfoley.request import Capabilities, GenerationRequest, GuidanceDefaults, MethodInfo


KEY_DECIMALS = 6  # a picture region's fractions are kept to this many decimals


@dataclass(frozen=True)
class PictureFocus:
    """The part of the picture a track's sound comes from: a rectangle (x0, y0, x1, y1) as
    fractions of the picture as displayed (0, 0 = top left), and the file times it applies
    in, [start, end) (None: throughout). Checked by the request's parser."""

    rect: tuple[float, float, float, float]
    start: float | None = None
    end: float | None = None

    def __post_init__(self):
        # to the micro-fraction the cache key keeps: float noise (0.30000000000000004) must not
        # move the crop by a pixel under a key that calls it the same focus
        object.__setattr__(self, "rect", tuple(round(float(v), KEY_DECIMALS) for v in self.rect))

    @classmethod
    def from_request(cls, request: GenerationRequest) -> "PictureFocus | None":
        """The request's picture region in file time. Its times are the stem's (seconds from
        project_start), and the stem is the picture varispeeded to project_end - project_start,
        so a stem second is duration / project_duration seconds of picture: that is the
        playrate only when project_end is the one the playrate implies."""
        if request.picture_region is None:
            return None
        region, span = request.region, request.picture_region_time
        if span is None:
            return cls(request.picture_region)
        speed = region.duration / region.project_duration
        return cls(request.picture_region, region.file_in + span[0] * speed,
                   region.file_in + span[1] * speed)

    def applies(self, seconds):
        """Whether the rectangle applies at file time(s) `seconds` (a number or an array)."""
        if self.start is None:
            return np.full(np.shape(seconds), True)
        return (np.asarray(seconds) >= self.start) & (np.asarray(seconds) < self.end)

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) rows and columns of a height x width picture, at least one each."""
        x0, y0, x1, y1 = self.rect
        top, left = min(int(y0 * height), height - 1), min(int(x0 * width), width - 1)
        return top, max(top + 1, math.ceil(y1 * height)), left, max(left + 1, math.ceil(x1 * width))

    def key(self) -> str:
        """Part of the feature cache's key: features of another focus are other features."""
        return f"focus[{','.join(f'{v:.{KEY_DECIMALS}f}' for v in self.rect)}]@{self.start}-{self.end}"


@dataclass(frozen=True)
class Region:
    """A stretch of a video file, in file time (seconds), and the part of its picture the
    sound comes from (None: all of it)."""

    video: Path
    start: float
    end: float
    focus: PictureFocus | None = None

    def __post_init__(self):
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise InvalidInputError(f"The region {self.start}-{self.end} s is not a pair of numbers.")
        if self.start < 0:
            raise InvalidInputError(f"The region starts before the video does ({self.start:.3f} s).")
        if self.end <= self.start:
            raise InvalidInputError(
                f"The region {self.start:.3f}-{self.end:.3f} s is empty: select a time range first."
            )

    @property
    def duration(self) -> float:
        return self.end - self.start


class AudioCodec(Protocol):
    sample_rate: int
    latent_dim: int

    def latent_length(self, duration_s: float) -> int: ...

    def encode(self, wave: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, N, C), unnormalized
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, S)
        ...


class VideoEncoder(Protocol):
    """Maps a region of a video file to MMAudio's visual conditions."""

    encoder_id: str

    def conditioned_duration(self, duration_s: float) -> float:
        """How long the audio is that the features of a region this long condition (at least
        the region): the session samples that much and keeps the region's part."""
        ...

    def progress_units(self, duration_s: float) -> int:
        """How many units (frames, segments) `encode_region` reports for a region this long."""
        ...

    def encode_region(self, video: Path, start: float, end: float,
                      on_progress: Callable[[int], None] | None = None,
                      focus: PictureFocus | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns clip_f (1, Tc, Dc) and sync_f (1, Ts, Ds); `on_progress(units_done)` as it goes.
        `focus`: the features see only that part of the picture (passed only when given)."""
        ...


class TextEncoder(Protocol):
    max_caption_tokens: int  # what a caption's tokens are cut to (both encoders: 77 less start and end)

    def encode(self, captions: list[str]) -> torch.Tensor:  # (B, 77, Dt)
        ...

    def token_count(self, caption: str) -> int:  # its tokens before any cut
        ...


@dataclass
class FoleyModel:
    model_id: str
    net: torch.nn.Module  # engine.mmaudio.MMAudio
    codec: AudioCodec
    video_encoder: VideoEncoder
    text_encoder: TextEncoder
    controlnet: torch.nn.Module | None = None  # engine.controlnet.AudioControlNet
    # an AudioControlNet reading a loudness curve (condition_dim 1): the model generates a track
    # with a loudness curve following it, before the gain automation every model gets
    loudness_control: torch.nn.Module | None = None
    max_duration: float = 8.0  # the network was trained on 8 s windows
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "auto"  # engine.devices.autocast_context: bf16 on CUDA, fp32 elsewhere
    note: str = ""  # shown to users, e.g. "random weights: for tests only"
    defaults: GuidanceDefaults = field(default_factory=GuidanceDefaults)  # the model's own α, β, steps
    # sampled with context past each window's ends, cut off before decoding (engine.edge_context):
    # the embedded network sounds a burst at the ends of what it samples
    edge_context: bool = False

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def supports_nag(self) -> bool:
        return self.controlnet is not None

    def capabilities(self) -> Capabilities:
        """What a client may ask of this model: its defaults and the guidance methods it can run."""
        from stepfoley.engine.guidance import public_methods

        methods = []
        for m in public_methods():
            missing = m.needs_controlnet and self.controlnet is None
            methods.append(MethodInfo(
                m.name, m.summary, m.params, m.audio, available=not missing,
                unavailable_reason=(f"the model '{self.model_id}' has no NAG ControlNet, so it cannot hear audio"
                                    if missing else "")))
        return Capabilities(self.model_id, self.defaults, tuple(methods), self.sample_rate)

    def level_anchor(self):
        """The sampler's `level_anchor` for this model: guided steps moved `defaults.level_anchor`
        of the way to the conditional branch's level (the codec's `match_level`, in the codec's
        latent), or None when the default is 0 or the codec cannot read a level."""
        strength = self.defaults.level_anchor
        match_level = getattr(self.codec, "match_level", None)
        if strength == 0 or match_level is None:
            return None
        net = self.net

        def anchor(guided: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
            # guided, reference: (B, N, C) normalized latents
            return net.normalize(match_level(net.unnormalize(guided), net.unnormalize(reference), strength))

        return anchor

    def to(self, device: torch.device) -> "FoleyModel":
        """Move every part that holds tensors; encoders without `.to` stay where they are."""
        for part in (self.net, self.controlnet, self.loudness_control, self.codec, self.video_encoder,
                     self.text_encoder):
            if part is not None and hasattr(part, "to"):
                part.to(device)
        self.device = torch.device(device)
        return self
