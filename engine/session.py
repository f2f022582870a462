"""The step-by-step session: one region of a video, the stack of tracks already made, and
`next_track`, which samples the next one with Negative Audio Guidance.

Per the paper (Sec. 5.1): the audio condition x̃ for track k is the loudness-normalized
(-20 LUFS) mix of tracks 1..k-1; track 1 has nothing to negate and uses plain CFG.

Method "reference" (MultiFoley's "make it sound like this") uses the same ControlNet with the
opposite sign: the audio condition is a reference recording, looped or trimmed to the region
and normalized like x̃, and beta pulls the new track toward it.

Regions longer than the network's 8 s window are generated window by window (same seed,
offset per window) and joined with an equal-power crossfade; each window gets the matching
slice of x̃, so NAG sees exactly the sounds under that stretch of picture.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from stepfoley.engine import mixing
from stepfoley.engine.devices import autocast_context, resolve_precision
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.mmaudio import SequenceLengths
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.sampler import DEFAULT_STEPS, euler_sample, guided_velocity, initial_noise

METHODS = ("nag", "independent", "negative_prompt", "reference")
AUDIO_CONDITIONED = ("nag", "reference")  # the methods that read audio through the ControlNet
CONDITION_LUFS = -20.0  # the paper's composite loudness, also used for x̃
WINDOW_OVERLAP_S = 1.0
MIN_REGION_S = 1.0  # one Synchformer segment is 0.64 s; below a second there is no picture to follow


@dataclass(frozen=True)
class TrackSettings:
    caption: str
    method: str = "nag"
    alpha: float = 4.5
    beta: float = 1.5
    seed: int = 0
    steps: int = DEFAULT_STEPS
    negative_caption: str | None = None

    def __post_init__(self):
        if not isinstance(self.caption, str) or not self.caption.strip():
            raise InvalidInputError("The caption is empty: describe the sound to make, e.g. 'footsteps on gravel'.")
        if self.method not in METHODS:
            raise InvalidInputError(f"Unknown method '{self.method}': use one of {', '.join(METHODS)}.")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"{name} must be a number of at least 0, got {value!r}.")


@dataclass
class Track:
    samples: np.ndarray  # (S,) float32 mono at sample_rate
    sample_rate: int
    metadata: dict = field(default_factory=dict)
    caption: str | None = None


ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def plan_windows(duration: float, window: float, overlap: float = WINDOW_OVERLAP_S) -> list[tuple[float, float]]:
    """(start, end) offsets covering [0, duration] with windows of at most `window` seconds;
    consecutive windows overlap by at least `overlap` so they can be crossfaded."""
    if duration <= window + 1e-9:
        return [(0.0, duration)]
    hop = window - overlap
    count = math.ceil((duration - overlap) / hop)
    starts = [min(i * hop, duration - window) for i in range(count)]
    return [(s, s + window) for s in starts]


def crossfade_join(pieces: list[tuple[int, np.ndarray]], length: int) -> np.ndarray:
    """Join (offset, samples) pieces into `length` samples with equal-power fades over overlaps."""
    out = np.zeros(length, np.float32)
    weight = np.zeros(length, np.float32)
    for i, (offset, piece) in enumerate(pieces):
        n = min(len(piece), length - offset)
        w = np.ones(n, np.float32)
        if i > 0:
            overlap = max(0, min(n, pieces[i - 1][0] + len(pieces[i - 1][1]) - offset))
            if overlap:
                w[:overlap] = np.sin(0.5 * np.pi * np.linspace(0, 1, overlap, dtype=np.float32)) ** 2
        if i + 1 < len(pieces):
            overlap = max(0, min(n, offset + n - pieces[i + 1][0]))
            if overlap:
                w[n - overlap:] *= np.cos(0.5 * np.pi * np.linspace(0, 1, overlap, dtype=np.float32)) ** 2
        out[offset:offset + n] += w * piece[:n]
        weight[offset:offset + n] += w
    return out / np.maximum(weight, 1e-6)


class StepSession:
    """Builds a soundtrack for one region, track by track."""

    def __init__(self, model: FoleyModel, region: Region, feature_cache=None):
        if region.duration < MIN_REGION_S:
            raise InvalidInputError(
                f"The region is {region.duration:.2f} s long; select at least {MIN_REGION_S:.0f} s of picture."
            )
        self.model = model
        self.region = region
        self.feature_cache = feature_cache
        self.tracks: list[Track] = []
        self.length = int(round(region.duration * model.sample_rate))
        self.windows = plan_windows(region.duration, model.max_duration)

    # -- the stack of existing tracks --

    def add_track(self, samples: np.ndarray, sample_rate: int, caption: str | None = None) -> None:
        """Add an existing track (a generated stem, or the DAW's bounce of several) to the stack."""
        mono = self._mono_at_model_rate(
            samples, sample_rate, "The existing track is empty (zero length): bounce the Foley tracks again.")
        self.tracks.append(Track(mixing.fit_length(mono, self.length)[0], self.model.sample_rate,
                                 caption=caption))

    def _mono_at_model_rate(self, samples: np.ndarray, sample_rate: int, if_empty: str) -> np.ndarray:
        # samples: any channel layout -> (1, S') mono at the model's rate
        samples = mixing.as_channels_first(np.asarray(samples, np.float32))
        if samples.shape[-1] == 0:
            raise InvalidInputError(if_empty)
        return mixing.match_channels(mixing.resample(samples, sample_rate, self.model.sample_rate), 1)

    def conditioning_mix(self) -> np.ndarray | None:
        """x̃: the loudness-normalized sum of the tracks so far, or None before the first one."""
        if not self.tracks:
            return None
        sr = self.model.sample_rate
        mix = mixing.mix_tracks([(t.samples[None], sr) for t in self.tracks], sr, self.length,
                                channels=1, target_lufs=CONDITION_LUFS)
        return mix[0]

    # -- generation --

    def reference_condition(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """A reference recording as an audio condition (S,): mono at the model's rate, looped or
        trimmed to the region, at the loudness x̃ has."""
        mono = self._mono_at_model_rate(
            samples, sample_rate, "The reference sound is empty (zero length); choose another recording.")
        if not np.any(mono):
            raise InvalidInputError("The reference sound is silent; choose a recording of the sound you want.")
        looped = np.tile(mono, (1, math.ceil(self.length / mono.shape[-1])))[:, : self.length]
        return mixing.loudness_normalize(looped, self.model.sample_rate, CONDITION_LUFS)[0]

    def next_track(self, settings: TrackSettings, on_step: ProgressFn | None = None,
                   is_cancelled: CancelFn | None = None,
                   reference: tuple[np.ndarray, int] | None = None) -> Track:
        """The next track. `reference` (samples, sample_rate) is the recording that method
        "reference" pulls toward; the other methods take none."""
        model, sr = self.model, self.model.sample_rate
        method = settings.method
        if (method == "reference") != (reference is not None):
            raise InvalidInputError(
                "A reference sound goes with method 'reference', and method 'reference' needs one: "
                "give both or neither."
            )
        condition = self.reference_condition(*reference) if reference is not None else self.conditioning_mix()
        if condition is None or (method in AUDIO_CONDITIONED and settings.beta == 0):
            effective = "cfg"  # track 1 (nothing to negate) and beta = 0 are plain CFG
        elif method in AUDIO_CONDITIONED:
            if model.controlnet is None:
                raise InvalidInputError(
                    f"The model '{model.model_id}' has no NAG ControlNet, so it cannot hear earlier tracks "
                    "or a reference sound; use method 'independent' or 'negative_prompt', or load a "
                    "ControlNet."
                )
            effective = method
        elif method == "independent":
            effective = "cfg"
        else:
            effective = "negative_prompt"
        negative = settings.negative_caption or ", ".join(t.caption for t in self.tracks if t.caption)
        if effective == "negative_prompt" and not negative:
            effective = "cfg"  # no earlier captions to push away from

        # The captions are the same for every window: encode them once.
        with torch.inference_mode():
            text_f = model.text_encoder.encode([settings.caption]).to(model.device)
            negative_text = (model.text_encoder.encode([negative]).to(model.device)
                             if effective == "negative_prompt" else None)
        total = settings.steps * len(self.windows)
        timings = {"video_features": 0.0, "sampling": 0.0, "decoding": 0.0}
        pieces = []
        for w, (w_start, w_end) in enumerate(self.windows):
            def window_progress(step, _steps, w=w):
                if on_step is not None:
                    on_step(w * settings.steps + step, total)

            a, b = int(round(w_start * sr)), int(round(w_end * sr))
            cond_audio = condition[a:b] if effective in AUDIO_CONDITIONED else None
            wave = self._generate_window(
                self.region.start + w_start, self.region.start + w_end, settings, text_f,
                negative_text, cond_audio, effective, seed=settings.seed + w, on_step=window_progress,
                is_cancelled=is_cancelled, timings=timings)
            pieces.append((a, wave[: b - a]))
        samples = crossfade_join(pieces, self.length)

        metadata = {
            **asdict(settings),
            "method_used": effective,
            "negative_caption": negative if effective == "negative_prompt" else None,
            "model": model.model_id,
            "precision": resolve_precision(model.device, model.precision),
            "region": {"video": str(self.region.video), "start": self.region.start, "end": self.region.end},
            "sample_rate": sr,
            "duration": self.length / sr,
            "windows": len(self.windows),
            "track_index": len(self.tracks) + 1,
            "timings": timings,
        }
        track = Track(samples, sr, metadata, caption=settings.caption)
        self.tracks.append(track)
        return track

    def _video_features(self, start: float, end: float) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.model.video_encoder
        compute = lambda: encoder.encode_region(self.region.video, start, end)  # noqa: E731
        if self.feature_cache is None:
            return compute()
        key = Region(self.region.video, start, end).key() + (encoder.encoder_id,)
        return self.feature_cache.get_or_compute(key, compute)

    @torch.inference_mode()
    def _generate_window(self, start, end, settings, text_f, negative_text, cond_audio, method, seed,
                         on_step, is_cancelled, timings) -> np.ndarray:
        """One window: cond_audio (S,) is x̃ for NAG or the reference for method "reference",
        None for CFG; negative_text for a negative prompt, else None."""
        model, net, device = self.model, self.model.net, self.model.device
        duration = end - start
        latent_len = model.codec.latent_length(duration)
        t0 = time.perf_counter()
        clip_f, sync_f = (f.to(device) for f in self._video_features(start, end))
        timings["video_features"] += time.perf_counter() - t0

        cond = net.preprocess_conditions(clip_f, sync_f, text_f, latent_seq_len=latent_len)
        lengths = SequenceLengths(latent_len, clip_f.shape[1], sync_f.shape[1])
        uncond = net.get_empty_conditions(1, negative_text_features=negative_text, seq_lengths=lengths)

        audio_rows = None
        if cond_audio is not None:
            empty_text = net.empty_string_feat.unsqueeze(0)
            video_only = net.preprocess_conditions(clip_f, sync_f, empty_text, latent_seq_len=latent_len)
            wave = torch.from_numpy(np.ascontiguousarray(cond_audio))[None].to(device)
            audio_latent = net.normalize(_fit_latent(model.codec.encode(wave), latent_len))
            audio_rows = (video_only, audio_latent)

        audio_guidance = {"reference" if method == "reference" else "nag": audio_rows}
        velocity = guided_velocity(
            net, cond, uncond, alpha=settings.alpha, beta=settings.beta,
            controlnet=model.controlnet, **audio_guidance)
        x0 = initial_noise([seed], latent_len, net.latent_dim, device=device)
        t0 = time.perf_counter()
        with autocast_context(device, model.precision):
            x1 = euler_sample(velocity, x0, settings.steps, on_step=on_step, is_cancelled=is_cancelled)
        t1 = time.perf_counter()
        wave = model.codec.decode(net.unnormalize(x1.float()))[0].float().cpu().numpy()
        timings["sampling"] += t1 - t0
        timings["decoding"] += time.perf_counter() - t1
        return wave


def _fit_latent(latent: torch.Tensor, length: int) -> torch.Tensor:
    # latent: (B, N', C) -> (B, length, C); codecs may round a region's frame count differently
    if latent.shape[1] >= length:
        return latent[:, :length]
    pad = latent[:, -1:].expand(-1, length - latent.shape[1], -1)
    return torch.cat([latent, pad], dim=1)
