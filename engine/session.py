"""The step-by-step session: one region of a video, the stack of tracks already made, and
`next_track`, which samples the next one with Negative Audio Guidance.

Per the paper (Sec. 5.1): the audio condition x̃ for track k is the loudness-normalized
(-20 LUFS) mix of tracks 1..k-1; track 1 has nothing to negate and uses plain CFG.

Method "reference" (MultiFoley's "make it sound like this") uses the same ControlNet with the
opposite sign: the audio condition is a reference recording, looped or trimmed to the region
and normalized like x̃, and beta pulls the new track toward it.

Regions longer than the network's 8 s window are generated window by window (same seed,
offset per window) and joined with a 1 s equal-power crossfade in the middle of each overlap,
each later window matched in tone and level to the one before it through the crossfade
(ease_handovers); each window gets the matching slice of x̃, so NAG sees exactly the sounds
under that stretch of picture. A model whose network sounds a burst at the ends of what it
samples (FoleyModel.edge_context: the embedded one) samples each window with context past its
ends, cut off before decoding (engine.edge_context).

Every generated track leaves through engine.mixing.finish_stem (measured as decoded, brought to
STEM_LUFS, true-peak limited); its measurements are in the track's metadata. `generate_takes`
samples several takes of one method together (one forward per step for all of them), which is
how the evaluation makes its rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

from stepfoley.engine import mixing
from stepfoley.engine.devices import autocast_context, resolve_precision
from stepfoley.engine.edge_context import EdgeMargins, mirror_pad, pooled_over_core, with_margin_noise
from stepfoley.engine.errors import InvalidInputError, not_finite, stop_if_cancelled
from stepfoley.engine.guidance import GUIDANCE_METHODS, GuidanceMethod, GuidanceWeights, resolve_method
from stepfoley.engine.loudness_curve import LEARNED_AND_APPLIED_AS, curve_condition, follow_curve
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.sampler import (branch_conditions, euler_sample, guided_velocity, initial_noise, is_guided,
                                      known_latent, time_grid)
from stepfoley.engine.tone_match import apply_tone_gains, tone_match_gains, true_runs
from stepfoley.request import GUIDANCE_PARAMS, GenerationRequest, GuidanceDefaults, resolve_guidance

CONDITION_LUFS = -20.0  # the paper's composite loudness, also used for x̃
WINDOW_OVERLAP_S = 1.0
WINDOW_FADE_S = 1.0  # consecutive windows are crossfaded over this (at most their overlap)
# The later window is matched in tone and level to the earlier over their overlap through the
# crossfade, and eases back to its own over this after it (README, "Regions longer than 8 s").
HANDOVER_EASE_S = 2.0
# Further apart than this over the same stretch of picture, the two windows hold different
# sounds there (an event in one only), not one sound at two levels: their levels are left alone.
HANDOVER_LEVEL_DB = 12.0
# Extend and repair: a crossfade this long at each seam, inside the new part (the kept audio
# stays as it was); the latent frames within it of a seam are sampled, not held, so the new
# audio under the crossfade was made to continue the kept audio.
SEAM_S = 0.05
# The new part is brought to the take's level within these bounds: its own audio this far inside
# the seams as loud as the take this far outside them, pauses gated out (gated_power).
LEVEL_MATCH_S = 2.0
GATE_RELATIVE_DB = -10.0
# Down as far as a quiet take needs (room tone sits 40 dB under the model's level); up only so
# far, since raising the new audio raises its noise too.
LEVEL_MATCH_DB = (-60.0, 24.0)
# limit_new_part limits this much of the silence either side of the new part, past the reach of
# the true-peak filter (mixing.TRUE_PEAK_CONTEXT samples), so none of the new part's peaks is cut off
LIMITER_SPAN_MARGIN_S = 0.1
LEVEL_MATCH_FLOOR = 1e-5  # an RMS at or below this (-100 dBFS) is silence: nothing to match


@dataclass(frozen=True)
class KnownAudio:
    """The take being extended or repaired, as the model hears it: samples (S,) mono at the
    model's rate over the region, keep (S,) bool, True where the take is kept, and power (S,),
    the take's mean square over its channels there without their offsets (`kept_power`), what
    the new part's level is matched to (a downmix of wide stereo is quieter than each channel);
    None: the samples' own."""

    samples: np.ndarray
    keep: np.ndarray
    power: np.ndarray | None = None

    def new_part(self) -> np.ndarray:
        return ~self.keep


@dataclass(frozen=True)
class TrackSettings:
    """One track's caption and guidance. None means the model's default (FoleyModel.defaults);
    `resolved` fills them in. Built from a checked request (or by the lab's own code), so the
    session does not check them again."""

    caption: str
    method: str | None = None
    alpha: float | None = None
    beta: float | None = None
    w1: float | None = None
    w2: float | None = None
    w3: float | None = None
    seed: int = 0
    steps: int | None = None
    negative_caption: str = ""
    # (seconds of picture from the region's start, LUFS): the track follows it as gain
    # automation (engine.loudness_curve) instead of being loudness-normalized, and a model with a
    # loudness ControlNet generates it with the curve as a condition
    loudness_curve: tuple[tuple[float, float], ...] | None = None

    @classmethod
    def from_request(cls, request: GenerationRequest) -> "TrackSettings":
        curve, region = request.loudness_curve, request.region
        if curve is not None:  # the request's seconds are the stem's, the picture varispeeded to its length
            speed = region.duration / region.project_duration
            curve = tuple((t * speed, db) for t, db in curve)
        return cls(caption=request.caption, method=request.method, seed=request.seed, steps=request.steps,
                   negative_caption=request.negative_caption, loudness_curve=curve,
                   **{name: getattr(request, name) for name in GUIDANCE_PARAMS})

    def resolved(self, defaults: GuidanceDefaults) -> "TrackSettings":
        return replace(self, **resolve_guidance(defaults, self.method, steps=self.steps,
                                                **{name: getattr(self, name) for name in GUIDANCE_PARAMS}))

    @property
    def weights(self) -> GuidanceWeights:
        return GuidanceWeights(**{name: getattr(self, name) for name in GUIDANCE_PARAMS})


@dataclass
class Track:
    samples: np.ndarray  # (S,) float32 mono at sample_rate
    sample_rate: int
    metadata: dict = field(default_factory=dict)
    captions: tuple[str, ...] = ()  # what it holds: one caption, or those of a bounce of several
    layers: int = 1  # how many stems it sums (generate --existing sums the stems of one rate)


# on_progress(phase, done, total): phase "features", "sampling" or "decoding", counted within it,
# then "finishing", counted in takes joined and levelled
ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


def fit_captions(captions: Sequence[str], token_count: Callable[[str], int], most_tokens: int) -> tuple[str, int]:
    """Captions as one text a text encoder hears whole: each once, in order, joined with ", ",
    as many as fit `most_tokens` (joined all, the encoder cut them at its last token and the
    newest layers went unheard, said nowhere); and how many distinct captions were left out.
    A first caption longer than that is kept, cut by the encoder as it would be alone."""
    kept, distinct = [], list(dict.fromkeys(captions))
    for caption in distinct:
        if not kept or token_count(", ".join([*kept, caption])) <= most_tokens:
            kept.append(caption)
    return ", ".join(kept), len(distinct) - len(kept)


def conditioning_mix(tracks: Sequence[np.ndarray], sample_rate: int, length: int) -> np.ndarray:
    """x̃ of the paper: the sum of mono tracks (each (S,)) fitted to `length` samples and
    loudness-normalized to CONDITION_LUFS, (length,)."""
    return mixing.mix_tracks([(t[None], sample_rate) for t in tracks], sample_rate, length, channels=1,
                             target_lufs=CONDITION_LUFS)[0]


MIN_REFERENCE_S = 0.1  # looped to the region, anything shorter is a buzz at its own repeat rate
# Audio at another rate fades in and out over this much before it is resampled: the resampler
# pads with zeros, so a sound cut off at an end became a click in every band there, and a 12 kHz
# whistle, nothing of it in the model's band, was heard on those clicks (as a layer, it was
# negated, x̃ two clicks at 0.89 of full scale; as a reference, looped as a click train). Longer
# than the resampler's filter reaches (1.5 ms at the model's rate).
RESAMPLED_FADE_S = 0.005


def _faded_ends(samples: np.ndarray, length: int) -> np.ndarray:
    """(C, S) audio faded in over its first `length` samples and out over its last (a seam's
    fade: raised cosine)."""
    if length <= 0:
        return samples
    fade = _seam_fade(length)
    out = samples.copy()
    out[:, :length] *= fade
    out[:, -length:] *= fade[::-1]
    return out


def looped_to(samples: np.ndarray, length: int) -> np.ndarray:
    """Mono (S,) audio repeated, or cut, to `length` samples, (length,)."""
    return np.tile(samples, math.ceil(length / samples.shape[-1]))[:length]


def check_reference(samples: np.ndarray, sample_rate: int, seconds: float) -> None:
    """Refuse, in words, a reference recording (any channel layout) that cannot be heard as one
    over a region of `seconds`: shorter than MIN_REFERENCE_S, or, looped, under the loudness
    gate (-70 LUFS), which loudness normalization leaves as it is, so the track would be pulled
    toward near-silence (measured over one pass of the loop and a 400 ms block more, what the
    whole region's loop measures). Said before the model loads by `stepfoley generate`."""
    audio = mixing.as_channels_first(np.asarray(samples, np.float32))
    held = audio.shape[-1] / sample_rate
    if held == 0:
        raise InvalidInputError("The reference sound is empty (zero length); choose another recording.")
    if held < MIN_REFERENCE_S:
        raise InvalidInputError(f"The reference sound is {held * 1000:.3g} ms long; it is looped over the region, so "
                                f"give at least {MIN_REFERENCE_S * 1000:.0f} ms of the sound you want.")
    measured = min(seconds, held + 0.4)
    mono = audio.mean(axis=0)
    if not mixing.is_heard(looped_to(mono, max(1, round(measured * sample_rate)))[None], sample_rate):
        raise InvalidInputError("The reference sound is silent or too quiet to hear (under -70 LUFS over the region, "
                                "in the model's band, its channels mixed: opposite channels cancel); choose a "
                                "recording of the sound you want, or raise its level.")


def window_condition(slices: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """What the audio branch hears over one window of a region made in several: each row of
    `slices` (B, S_w), the audio condition over the window, loudness-normalized and limited
    over the window alone, as the ControlNet was trained on one window's length at
    CONDITION_LUFS; None when every row is silent there (below the -70 LUFS gate), so the
    window is made as a first track is. A row silent where the others are not (takes with
    different stacks, made together by the evaluation) hears its silence. Rows the same to the
    bit are fitted once: a job's variations all hear one x̃, and each window's part of it was
    measured, normalized and limited once per take."""
    fitted: dict[bytes, np.ndarray | None] = {}  # a row's bytes -> what it is heard as
    rows = []
    for row in slices:
        key = row.tobytes()
        if key not in fitted:
            fitted[key] = (conditioning_mix([row], sample_rate, len(row)) if mixing.is_heard(row[None], sample_rate)
                           else None)
        rows.append(fitted[key])
    if all(row is None for row in rows):
        return None
    return np.stack([row if row is not None else quiet for row, quiet in zip(rows, slices)])


def window_latents(model: FoleyModel, seconds: float) -> int:
    """The latents a window of `seconds` is sampled with: enough for the picture span its video
    encoder conditions (engine.mmaudio: Synchformer's grid, which may run past the window) and
    for the window's whole samples (a span a hair short of the window, under a millisecond,
    takes a latent more, not a hole)."""
    span = model.video_encoder.conditioned_duration(seconds)
    samples = round(seconds * model.sample_rate)
    return max(model.codec.latent_length(span), model.codec.latent_length(samples / model.sample_rate))


def plan_windows(duration: float, window: float, latents: Callable[[float], int],
                 overlap: float = WINDOW_OVERLAP_S) -> list[tuple[float, float]]:
    """(start, end) offsets covering [0, duration] with windows of at most `window` seconds;
    consecutive windows overlap by at least `overlap` so they can be crossfaded. A region fits
    one window when it needs no more `latents` (seconds -> count: window_latents) than `window`
    does: by seconds, 8 s and a 44.1 kHz sample was made as two full windows of the same
    128,000 samples at 16 kHz; by samples, 8 s and a 48 kHz sample at 44.1 kHz was two, 21 µs
    apart, crossfaded at 4 s, where MMAudio's 345 latents (353,280 samples) hold it."""
    if latents(duration) <= latents(window):
        return [(0.0, duration)]
    hop = window - overlap
    count = math.ceil((duration - overlap) / hop)
    starts = [min(i * hop, duration - window) for i in range(count)]
    return [(s, s + window) for s in starts]


def windows_for(model: FoleyModel, duration: float) -> list[tuple[float, float]]:
    """The windows a session of `model` samples a region of `duration` seconds in."""
    return plan_windows(duration, model.max_duration, partial(window_latents, model))


def windows_needed(spans: list[tuple[int, int]], new: np.ndarray | None) -> list[bool]:
    """Per window (its [a, b) samples), whether it is sampled: every one for a new track; for an
    extend or repair (`new` (S,) True where the take is made new), the windows over a new sample
    and the one before each (its handover is matched to that one as made, `ease_handovers`).
    The others hold kept audio only, which the splice throws away: repairing a click at the end
    of a 10 min take sampled all 86 windows."""
    if new is None:
        return [True] * len(spans)
    over_new = [bool(new[a:b].any()) for a, b in spans]
    return [over_new[w] or (w + 1 < len(spans) and over_new[w + 1]) for w in range(len(spans))]


def _handovers(pieces: list[tuple[int, np.ndarray]], length: int, fade: int) -> list[tuple[int, int, int]]:
    """Per pair of consecutive pieces: (first sample of the crossfade, its length, the overlap's)."""
    # pieces: (offset, samples (S_i,)) in order of offset; length, fade: samples
    handovers = []
    for (a, earlier), (b, _) in zip(pieces, pieces[1:]):
        overlap = max(0, min(a + len(earlier), length) - b)
        n = min(fade, overlap)
        handovers.append((b + (overlap - n) // 2, n, overlap))
    return handovers


def ease_handovers(pieces: list[tuple[int, np.ndarray]], length: int, fade: int,
                   sample_rate: int) -> list[tuple[int, np.ndarray]]:
    """The pieces of `crossfade_join` with each later one matched to the one before it, as that
    one was made, over their overlap: in tone (engine.tone_match) and in level (`gated_power`),
    where the two are within HANDOVER_LEVEL_DB of each other (further apart, the later one is
    left as it was made), fully up to the end of their crossfade, then
    easing back to its own tone and level over HANDOVER_EASE_S. Why: two generations of the same
    stretch of picture differ in balance and level, and a 1 s crossfade makes that a jump;
    eased, a window still sounds as it was made everywhere else, and no correction builds on
    another (a chain of them would drift over a long region's dozens of windows)."""
    # pieces: (offset, samples (S_i,)) in order of offset
    eased = list(pieces[:1])
    ease = max(1, int(round(HANDOVER_EASE_S * sample_rate)))
    for (a, earlier), (b, piece), (at, n, overlap) in zip(pieces, pieces[1:], _handovers(pieces, length, fade)):
        if overlap > 0:
            earlier_side = np.zeros(len(earlier), bool)
            earlier_side[b - a: b - a + overlap] = True
            side = np.zeros(len(piece), bool)
            side[:overlap] = True
            reference = gated_power(earlier[earlier_side].astype(np.float64) ** 2, sample_rate)
            own = gated_power(piece[side].astype(np.float64) ** 2, sample_rate)
            # silent on either side: nothing to match; too far apart: an event in one window only,
            # which neither its tone nor its level should be fitted to
            if (reference > LEVEL_MATCH_FLOOR ** 2 and own > LEVEL_MATCH_FLOOR ** 2
                    and abs(10 * math.log10(reference / own)) <= HANDOVER_LEVEL_DB):
                gains = tone_match_gains(earlier, earlier_side, piece, side, sample_rate)
                matched = piece if gains is None else apply_tone_gains(piece, gains, sample_rate)
                # the level after the match EQ, which may have taken out most of the window's power
                matched_power = max(gated_power(matched[side].astype(np.float64) ** 2, sample_rate), 1e-30)
                matched = matched * np.float32(math.sqrt(reference / matched_power))
                after = np.arange(len(piece)) - (at + n - b)  # samples after the crossfade ends
                weight = np.clip(1.0 - after / ease, 0.0, 1.0).astype(np.float32)
                piece = (weight * matched + (1 - weight) * piece).astype(np.float32)
        eased.append((b, piece))
    return eased


def crossfade_join(pieces: list[tuple[int, np.ndarray]], length: int, fade: int) -> np.ndarray:
    """Join (offset, samples (S_i,)) pieces, in order of offset, into `length` samples. Where
    two overlap, the earlier plays until an equal-power crossfade of `fade` samples (at most the
    overlap) centred in the overlap, then the later one: two independent generations are never
    heard blended for longer than the fade, and the power of uncorrelated pieces holds through
    it. A window pushed back to end with the region can overlap the one before it by seconds."""
    handovers = [(at, n) for at, n, _ in _handovers(pieces, length, fade)]
    out = np.zeros(length, np.float32)
    for i, (offset, piece) in enumerate(pieces):
        n = min(len(piece), length - offset)
        w = np.ones(n, np.float32)
        if i > 0:  # silent until the fade in, then rising over it
            at, f = handovers[i - 1]
            w[: at - offset] = 0.0
            w[at - offset: at - offset + f] = _equal_power(f)
        if i + 1 < len(pieces):  # falling over the fade out, then silent
            at, f = handovers[i]
            w[at - offset: at - offset + f] *= _equal_power(f)[::-1]
            w[at - offset + f:] = 0.0
        out[offset:offset + n] += w * piece[:n]
    return out


class StepSession:
    """Builds a soundtrack for one region, track by track."""

    def __init__(self, model: FoleyModel, region: Region, feature_cache=None):
        self.model = model
        self.region = region
        self.feature_cache = feature_cache
        self.tracks: list[Track] = []
        # captions of layers on the timeline whose audio the session has not got (a client sends
        # no bounce for a method that hears none, e.g. negative_prompt)
        self.unheard_captions: list[str] = []
        self.length = int(round(region.duration * model.sample_rate))
        self.windows = windows_for(model, region.duration)
        self._features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # window -> its picture's, once
        self._text_features: dict[str, torch.Tensor] = {}  # caption -> (1, Lt, Dt)
        # x̃ and the tracks it was mixed from (held: compared by identity): a job asks for it to
        # rank its takes as well as to guide them, and a 600 s mix takes seconds
        self._mix: tuple[tuple[Track, ...], np.ndarray | None] = ((), None)

    # -- the stack of existing tracks --

    def add_track(self, samples: np.ndarray, sample_rate: int, captions: tuple[str, ...] | list[str] = (),
                  layers: int = 1) -> None:
        """Add an existing track (a generated stem, or the DAW's bounce of several, with the
        captions of what it holds; `layers`: the stems summed in it, where known) to the stack."""
        mono = self._mono_at_model_rate(
            samples, sample_rate, "The existing track is empty (zero length): bounce the Foley tracks again.")
        # a stem shorter than the region, padded with silence, would end in a step that the gate
        # hears as a click: what resampling left of an offset is taken out too
        mono = mono - mono.mean(axis=-1, keepdims=True)
        self.tracks.append(Track(mixing.fit_length(mono, self.length)[0], self.model.sample_rate,
                                 captions=tuple(c for c in captions if c), layers=layers))

    def _next_index(self) -> int:
        return sum(t.layers for t in self.tracks) + 1

    def _mono_at_model_rate(self, samples: np.ndarray, sample_rate: int, if_empty: str) -> np.ndarray:
        # samples: any channel layout -> (1, S') mono at the model's rate
        samples = mixing.as_channels_first(np.asarray(samples, np.float32))
        if samples.shape[-1] == 0:
            raise InvalidInputError(if_empty)
        # a recording chain's offset is no sound, and taken out before resampling: the resampler
        # pads the ends with zeros, so an offset came back as a step at each end, a click that x̃
        # held at 0.89 of full scale (a 48 kHz bounce of a 0.1 offset over hiss)
        samples = (samples - samples.mean(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
        if sample_rate != self.model.sample_rate:  # and no sound cut off at an end a click (RESAMPLED_FADE_S)
            samples = _faded_ends(samples, min(round(RESAMPLED_FADE_S * sample_rate), samples.shape[-1] // 2))
        return mixing.match_channels(mixing.resample(samples, sample_rate, self.model.sample_rate), 1)

    def conditioning_mix(self) -> np.ndarray | None:
        """x̃: the loudness-normalized sum of the tracks so far, or None before the first one and
        while they are silent over the region (below loudness measurement's -70 LUFS gate): such
        a track is made as the first one is, never guided away from a silence the ControlNet
        was not trained to hear."""
        if not self.tracks:
            return None
        mixed_from, mix = self._mix
        if len(mixed_from) != len(self.tracks) or any(a is not b for a, b in zip(mixed_from, self.tracks)):
            # their sum heard as it is, before the mix is brought to CONDITION_LUFS (which raised
            # an offset's onset, and whatever hiss rode on it, into a sound)
            summed = sum(mixing.fit_length(t.samples[None], self.length) for t in self.tracks)
            heard = mixing.is_heard(summed, self.model.sample_rate)
            mix = conditioning_mix([t.samples for t in self.tracks], self.model.sample_rate, self.length) if heard \
                else None
            self._mix = (tuple(self.tracks), mix)
        return mix

    def add_captions(self, captions: tuple[str, ...] | list[str]) -> None:
        """Captions of layers already on the timeline, without their audio."""
        self.unheard_captions.extend(c for c in captions if c)

    def previous_captions(self) -> list[str]:
        return [c for t in self.tracks for c in t.captions] + self.unheard_captions

    # -- generation --

    def reference_condition(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """A reference recording as an audio condition (S,): mono at the model's rate, looped or
        trimmed to the region, normalized and limited as x̃ is."""
        seconds = self.length / self.model.sample_rate
        check_reference(samples, sample_rate, seconds)
        mono = self._mono_at_model_rate(samples, sample_rate, "")
        check_reference(mono, self.model.sample_rate, seconds)  # as the model hears it: a 20 kHz tone is not
        return conditioning_mix([looped_to(mono[0], self.length)], self.model.sample_rate, self.length)

    def next_track(self, settings: TrackSettings, on_progress: ProgressFn | None = None,
                   is_cancelled: CancelFn | None = None,
                   reference: tuple[np.ndarray, int] | None = None) -> Track:
        """The next track, added to the stack. `reference` (samples, sample_rate) is the recording
        that a method whose audio branch hears a reference (method "reference") pulls toward; the
        others take none."""
        track = self.next_variations(settings, 1, on_progress, is_cancelled, reference)[0]
        track.metadata["track_index"] = self._next_index()
        self.tracks.append(track)
        return track

    def next_variations(self, settings: TrackSettings, count: int, on_progress: ProgressFn | None = None,
                        is_cancelled: CancelFn | None = None,
                        reference: tuple[np.ndarray, int] | None = None,
                        known: KnownAudio | None = None) -> list[Track]:
        """`count` candidates for the next track, seeds settings.seed, settings.seed + 1, ...,
        sampled as one batch (generate_takes); each is what next_track would make with its seed,
        up to float rounding. None goes onto the stack: the caller keeps the one it likes.
        `known`: the take they extend or repair (generate_takes); the stack is negated as usual."""
        settings = settings.resolved(self.model.defaults)
        requested = GUIDANCE_METHODS.get(settings.method)
        if requested is None or not requested.public:
            raise InvalidInputError(f"Unknown method '{settings.method}'.")
        if (requested.audio == "reference") != (reference is not None):
            raise InvalidInputError(
                "A reference sound goes with method 'reference', and method 'reference' needs one: "
                "give both or neither.")
        if requested.audio == "reference":
            condition = self.reference_condition(*reference)
        else:
            condition = self.conditioning_mix() if requested.audio == "existing" else None
        left_out = None  # the previous captions are not the negative caption
        if requested.negative_from_previous and not settings.negative_caption:
            negative, left_out = self.previous_as_negative()
            settings = replace(settings, negative_caption=negative)
        takes = [replace(settings, seed=settings.seed + i) for i in range(count)]
        tracks = self.generate_takes(takes, [condition] * count, on_progress, is_cancelled, known)
        # layers were given to negate and are silent over the whole region: the track was made as
        # a first track is, and a DAW says so (the user may not know their bounce came out silent)
        silent = requested.audio == "existing" and bool(self.tracks) and condition is None
        for track in tracks:
            track.metadata["track_index"] = self._next_index()  # the place any of them would take
            track.metadata["earlier_layers_silent"] = silent
            if left_out is not None:
                track.metadata["previous_captions_left_out"] = left_out
        return tracks

    def previous_as_negative(self) -> tuple[str, int]:
        """The previous captions as one negative caption the text encoder hears whole, and how
        many were left out (fit_captions)."""
        encoder = self.model.text_encoder
        return fit_captions(self.previous_captions(), encoder.token_count, encoder.max_caption_tokens)

    def generate_takes(self, settings: Sequence[TrackSettings], conditions: Sequence[np.ndarray | None],
                       on_progress: ProgressFn | None = None, is_cancelled: CancelFn | None = None,
                       known: KnownAudio | None = None) -> list[Track]:
        """Takes sampled together, one forward per step for all of them; the stack is left as it
        is. Each take has its own caption, negative caption (used as given), seed and audio
        condition: (S,) at the model's rate, what the method's audio branch hears (x̃, or a
        reference), or None for a method without one; over a region made in several windows
        each window hears its own part normalized again (window_condition). They share the
        method, its strengths and the steps. A take comes out as it would alone, up to float
        rounding, but over a window of a longer region where its audio condition is silent and
        another take's is not: it then hears its silence, where alone it would be made as a
        first track.

        `known` (extend and repair): the take's kept latent frames are held in place while the
        rest is sampled (sampler.known_latent); the track is then the model's audio over the
        whole region brought to the take's level and limited, finished only where it is new
        (`finish_new_part`); `splice` puts it into the take."""
        model = self.model
        settings = [s.resolved(model.defaults) for s in settings]
        if not settings or len(conditions) != len(settings):
            raise InvalidInputError(f"{len(settings)} take(s) with {len(conditions)} audio condition(s): "
                                    "give one condition (or None) per take.")
        first = settings[0]
        if any((s.method, s.weights, s.steps) != (first.method, first.weights, first.steps) for s in settings):
            raise InvalidInputError("Takes made together must share the method, the guidance strengths and the steps.")
        if len({c is None for c in conditions}) > 1:
            raise InvalidInputError("Either every take made together hears an audio condition, or none does.")
        if len({s.loudness_curve is None for s in settings}) > 1:
            raise InvalidInputError("Either every take made together follows a loudness curve, or none does.")
        if "negative" in GUIDANCE_METHODS[first.method].branches and len({bool(s.negative_caption) for s in settings}) > 1:
            # without one a take is plain CFG, which below α 1 is another computation than the batch's
            raise InvalidInputError("Either every take made together has a negative caption, or none does.")
        learned_loudness = first.loudness_curve is not None and model.loudness_control is not None and known is None
        has_negative = any(s.negative_caption for s in settings)
        method = resolve_method(first.method, first.weights, has_audio=conditions[0] is not None,
                                has_negative=has_negative)
        if method.needs_controlnet and model.controlnet is None:
            raise InvalidInputError(
                f"The model '{model.model_id}' has no NAG ControlNet, so it cannot hear earlier tracks or a "
                "reference sound; use method 'independent' or 'negative_prompt', or load a ControlNet.")
        text_f = torch.cat([self._text(s.caption) for s in settings])             # (B, Lt, Dt)
        negative_text = None
        if any(s.negative_caption for s in settings):                              # (B, Lt, Dt)
            negative_text = torch.cat([self._text(s.negative_caption) if s.negative_caption
                                       else model.net.empty_text_features() for s in settings])
        timings = {"video_features": 0.0, "sampling": 0.0, "decoding": 0.0, "finishing": 0.0}
        report = on_progress or (lambda phase, done, total: None)

        # Picture features of every window first: on a CPU with MMAudio's encoders they take
        # minutes, and the DAW hears their progress as its own phase.
        spans = [(self._samples(w_start), self._samples(w_end)) for w_start, w_end in self.windows]
        needed = windows_needed(spans, None if known is None else known.new_part())
        t0 = time.perf_counter()
        features = self._window_features(report, is_cancelled, needed)
        timings["video_features"] = time.perf_counter() - t0

        steps = first.steps
        grid = time_grid(steps)
        total = steps * sum(needed)
        latents, silent_windows, method_without_audio = [], [], None
        for w, ((w_start, w_end), (a, b), features_w) in enumerate(zip(self.windows, spans, features)):
            if not needed[w]:
                latents.append(None)
                continue
            clip_f, sync_f = features_w
            done_before = steps * sum(needed[:w])
            window_method, heard = method, None
            if method.needs_controlnet:
                window_method, heard = self._window_audio(method, first, np.stack([c[a:b] for c in conditions]),
                                                          has_negative)
                if heard is None:
                    silent_windows.append(w + 1)
                    method_without_audio = window_method.name
            t0 = time.perf_counter()
            latents.append(self._sample_window(
                window_method, first.weights, w_end - w_start, clip_f, sync_f, text_f, negative_text, heard,
                seeds=[s.seed for s in settings], window=w, grid=grid,
                known=None if known is None else (known.samples[a:b], known.keep[a:b]),
                loudness=[s.loudness_curve for s in settings] if learned_loudness else None, window_start=w_start,
                on_step=lambda step, _steps, done_before=done_before: report("sampling", done_before + step, total),
                is_cancelled=is_cancelled))
            timings["sampling"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        pieces = []  # per window: (offset, (B, S_w)); a window not sampled is silent (never heard)
        for w, ((a, b), latent) in enumerate(zip(spans, latents)):
            if latent is None:
                pieces.append((a, np.zeros((len(settings), b - a), np.float32)))
                continue
            report("decoding", sum(needed[:w]), sum(needed))
            stop_if_cancelled(is_cancelled, f"while decoding window {w + 1} of {len(self.windows)}")
            wave = self._decode(latent)[:, : b - a]                                     # (B, S_w)
            if not np.isfinite(wave).all():  # a finite latent the decoder still overflows on
                raise not_finite(f"while decoding window {w + 1} of {len(self.windows)}", "the decoded audio")
            pieces.append((a, wave))
        report("decoding", sum(needed), sum(needed))
        timings["decoding"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fade = self._samples(WINDOW_FADE_S)
        finished = []
        for i, s in enumerate(settings):
            # said, and a cancel heard, take by take: joining and levelling 8 takes of 600 s went
            # 25-46 s without a word after the last window was decoded, a cancel waiting it out
            # (the stems are counted as they are written: engine.service)
            report("finishing", i, len(settings))
            stop_if_cancelled(is_cancelled, f"while take {i + 1} of {len(settings)} was joined and levelled")
            audio = crossfade_join(ease_handovers([(a, wave[i]) for a, wave in pieces], self.length, fade,
                                                  model.sample_rate), self.length, fade)
            if known is not None:
                finished.append(finish_new_part(audio, known, model.sample_rate))
            elif s.loudness_curve is None:
                finished.append(mixing.finish_stem(audio, model.sample_rate))
            else:
                finished.append(follow_curve(audio, model.sample_rate, s.loudness_curve))
        report("finishing", len(settings), len(settings))
        timings["finishing"] = time.perf_counter() - t0
        common = {
            "method_used": method.name,
            "model": model.model_id,
            "precision": resolve_precision(model.device, model.precision),
            "region": {"video": str(self.region.video), "start": self.region.start, "end": self.region.end},
            "picture_focus": None if self.region.focus is None else asdict(self.region.focus),
            "sample_rate": model.sample_rate,
            "duration": self.length / model.sample_rate,
            "windows": len(self.windows),
            "windows_sampled": sum(needed),  # fewer for an extend or repair: those that reach its new part
            # windows over which the audio condition was silent, made as a first track is, and
            # the computation that made them (method_used is the other windows')
            "windows_without_audio": silent_windows,
            "method_without_audio": method_without_audio,
            "track_index": None,  # a place on the stack: next_track sets it
            "takes_in_batch": len(settings),
            # how far guided steps were held to the conditional branch's level (0: not at all)
            "level_anchor": model.defaults.level_anchor if model.level_anchor() and is_guided(method) else 0.0,
        }
        if learned_loudness:
            for _, levels in finished:
                levels["loudness_curve_applied_as"] = LEARNED_AND_APPLIED_AS
        return [Track(samples[0], model.sample_rate,
                      {**asdict(s), **common, "negative_caption": s.negative_caption or None,
                       # the user must not think a negative caption steered a take it could not
                       "negative_caption_heard": (method.negative_caption_weight(first.weights) < 0
                                                  if s.negative_caption else None),
                       # the points went out with the request; a stem's reply stays within its datagram
                       "loudness_curve": None if s.loudness_curve is None
                       else f"{len(s.loudness_curve)} point{'' if len(s.loudness_curve) == 1 else 's'}",
                       **(levels if isinstance(levels, dict) else asdict(levels)), "timings": dict(timings)},
                      captions=(s.caption,))
                for s, (samples, levels) in zip(settings, finished)]

    def _window_audio(self, method: GuidanceMethod, first: TrackSettings, heard: np.ndarray,
                      has_negative: bool) -> tuple[GuidanceMethod, np.ndarray | None]:
        """The method and audio condition (B, S_w) of one window, given the condition's slices
        over it (B, S_w): as they are for a single window (they are the region's); else each
        normalized over the window, or no condition and a method without one where every slice
        is silent (the earlier layers, or a one-shot reference, play elsewhere)."""
        if len(self.windows) == 1:
            return method, heard
        heard = window_condition(heard, self.model.sample_rate)
        if heard is not None:
            return method, heard
        alone = resolve_method(first.method, first.weights, has_audio=False, has_negative=has_negative)
        if alone.needs_controlnet:  # a method that cannot do without one (reference)
            alone = resolve_method("independent", first.weights, has_audio=False, has_negative=has_negative)
        return alone, None

    def _text(self, caption: str) -> torch.Tensor:
        """(1, Lt, Dt) text features of a caption, encoded once per session."""
        if caption not in self._text_features:
            with torch.inference_mode():
                self._text_features[caption] = self.model.text_encoder.encode([caption]).to(self.model.device)
        return self._text_features[caption]

    def _samples(self, seconds: float) -> int:
        return int(round(seconds * self.model.sample_rate))

    def _window_features(self, report: ProgressFn, is_cancelled: CancelFn | None = None,
                         needed: Sequence[bool] | None = None) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """(clip_f, sync_f) of every window `needed` (all: None), None for the others; each window's
        once per session, through the feature cache. Progress counts the encoder's own units
        (frames, segments) over the windows still to read, and a cancel lands at the next of them
        (on a CPU, MMAudio's encoders take minutes)."""
        needed = [True] * len(self.windows) if needed is None else list(needed)
        missing = [w for w, want in enumerate(needed) if want and w not in self._features]
        encoder = self.model.video_encoder
        focus = self.region.focus
        # an encoder that knows nothing of a focus is never handed one
        extra = {} if focus is None else {"focus": focus}
        encoder_id = encoder.encoder_id if focus is None else f"{encoder.encoder_id}|{focus.key()}"
        units = [encoder.progress_units(self.windows[w][1] - self.windows[w][0]) for w in missing]
        total, done_before = sum(units), 0
        for w, count in zip(missing, units):
            start, end = (self.region.start + t for t in self.windows[w])

            def progress(done, done_before=done_before):
                stop_if_cancelled(is_cancelled, "while reading the picture")
                report("features", done_before + done, total)

            def compute(start=start, end=end, progress=progress):
                return encoder.encode_region(self.region.video, start, end, on_progress=progress, **extra)

            if self.feature_cache is None:
                features = compute()
            else:
                features = self.feature_cache.get_or_compute_region(
                    self.region.video, start, end, encoder_id, compute)
            done_before += count
            report("features", done_before, total)
            self._features[w] = tuple(f.to(self.model.device) for f in features)
        return [self._features[w] if want else None for w, want in enumerate(needed)]

    @torch.inference_mode()
    def _sample_window(self, method, weights, duration, clip_f, sync_f, text_f, negative_text, cond_audio,
                       seeds, window, grid, on_step, is_cancelled, known=None, loudness=None,
                       window_start=0.0) -> torch.Tensor:
        """Window `window`'s normalized latents (B, N, C), one row per seed. text_f and negative_text
        (B or 1, Lt, Dt); cond_audio (B, S): what the "audio" branch hears (x̃, or the reference),
        None for methods without one. known: (samples (S,), keep (S,) bool) of this window, or None.
        loudness: one curve per row for the model's loudness ControlNet (the window starts
        `window_start` seconds into the region), or None."""
        model, net, device = self.model, self.model.net, self.model.device
        # the audio the picture features condition, from the window's start: it may run past the
        # window's end (MMAudio's motion segments), and the decoded audio is cut back to the window
        span = model.video_encoder.conditioned_duration(duration)
        latent_len = window_latents(model, duration)
        length = self._samples(span)
        frame_s = span / latent_len
        margins = EdgeMargins.for_window(latent_len, clip_f.shape[1], sync_f.shape[1]) if model.edge_context else None
        pad = 0 if margins is None else margins.latent
        conditions = branch_conditions(net, method.branches, clip_f, sync_f, text_f, latent_len, negative_text)
        if margins is not None:
            conditions = pooled_over_core(branch_conditions(
                net, method.branches, mirror_pad(clip_f, margins.clip), mirror_pad(sync_f, margins.sync), text_f,
                latent_len + 2 * pad, negative_text), conditions)
        audio_latent = None
        if cond_audio is not None:
            wave = torch.from_numpy(np.ascontiguousarray(pad_after(cond_audio, length), np.float32)).to(device)
            audio_latent = mirror_pad(net.normalize(_fit_latent(model.codec.encode(wave), latent_len)), pad)
        loudness_condition = None
        if loudness is not None:
            rows = [curve_condition(c, latent_len + 2 * pad, frame_s, window_start - pad * frame_s) for c in loudness]
            loudness_condition = torch.from_numpy(np.stack(rows)[..., None]).to(device)       # (B, N, 1)
        velocity = guided_velocity(net, method, weights, conditions, audio_latent=audio_latent,
                                   controlnet=model.controlnet, loudness=loudness_condition,
                                   loudness_control=model.loudness_control, level_anchor=model.level_anchor())
        x0 = with_margin_noise(initial_noise(seeds, latent_len, net.latent_dim, device=device, window=window),
                               seeds, pad, window)
        constrain = None
        if known is not None:
            wave = torch.from_numpy(np.ascontiguousarray(pad_after(known[0], length)[None], np.float32)).to(device)
            known_latent_ = net.normalize(_fit_latent(model.codec.encode(wave), latent_len))      # (1, N, C)
            keep = held_frames(pad_after(known[1], length), latent_len, self._samples(SEAM_S))
            keep = torch.from_numpy(np.pad(keep, pad)).to(device, torch.float32)[None, :, None]  # margins: free
            constrain = known_latent(mirror_pad(known_latent_, pad), keep, x0)
        with autocast_context(device, model.precision):
            latent = euler_sample(velocity, x0, grid, on_step=on_step, is_cancelled=is_cancelled, constrain=constrain)
        return latent[:, pad:pad + latent_len]

    @torch.inference_mode()
    def _decode(self, latent: torch.Tensor) -> np.ndarray:
        # latent: (B, N, C) normalized -> (B, S) float32, as decoded (no clamp)
        net, codec = self.model.net, self.model.codec
        if latent.device.type == "cpu" and latent.shape[0] > 1:
            # one take at a time on a CPU: the embedded codec's Griffin-Lim over 8 takes at once
            # outgrows the caches and took 1.7x as long as 8 one by one (`bench variations`); a
            # codec decodes each take of a batch as it would alone
            return np.concatenate([codec.decode(net.unnormalize(take[None].float())).float().cpu().numpy()
                                   for take in latent])
        return codec.decode(net.unnormalize(latent.float())).float().cpu().numpy()


def held_frames(keep: np.ndarray, frames: int, margin: int) -> np.ndarray:
    """Which of `frames` latent frames over keep's samples (S,) hold the known latent: those
    whose samples, widened by `margin` samples each side, are all kept. (frames,) bool."""
    length = len(keep)
    edges = np.round(np.arange(frames + 1) * length / frames).astype(int)
    new = np.concatenate([[0], np.cumsum(~keep)])  # new samples before each index
    lo = np.clip(edges[:-1] - margin, 0, length)
    hi = np.clip(edges[1:] + margin, 0, length)
    return (new[hi] - new[lo]) == 0


def gated_power(power: np.ndarray, sample_rate: int) -> float:
    """The mean of `power` (S,) (squared samples) over the 400 ms blocks that sound: blocks
    every 100 ms, those more than 10 dB under the mean of all of them left out (BS.1770's
    relative gate, without its K-weighting or its absolute gate, so that a take at -80 dBFS is
    measured, not taken for silence), so that pauses between footsteps do not pull the level
    down. Shorter than a block: the plain mean. 0.0: digital silence."""
    block = int(round(0.4 * sample_rate))
    if power.size < block:
        return float(power.mean()) if power.size else 0.0
    sums = np.concatenate([[0.0], np.cumsum(power, dtype=np.float64)])
    starts = np.arange(0, power.size - block + 1, max(1, block // 4))
    blocks = (sums[starts + block] - sums[starts]) / block
    sounding = blocks[blocks > blocks.mean() * 10 ** (GATE_RELATIVE_DB / 10)]
    return float(sounding.mean()) if sounding.size else 0.0


def seam_sides(new: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside), (S,) bool each: the new samples (`new` (S,) True) and the kept ones
    within `reach` samples of a seam, where the new part's tone and level are matched to the take."""
    inside, outside = np.zeros_like(new), np.zeros_like(new)
    for edge in (e for a, b in true_runs(new) for e in (a, b) if 0 < e < len(new)):  # first sample after a change
        # only the stretch within reach is touched: a mask of the whole stem per seam took a
        # tenth of a second of a 600 s repair's finishing
        side = slice(max(0, edge - reach), edge + reach)
        inside[side] |= new[side]
        outside[side] |= ~new[side]
    return inside, outside


def _kept_offset(channels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    # channels: (C, S); keep: (S,) bool -> (C,) float64, each channel's mean over keep
    kept = max(int(np.count_nonzero(keep)), 1)
    return channels.sum(axis=-1, where=keep, dtype=np.float64) / kept


def _centred_power(channels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    # channels: (C, S); keep: (S,) bool -> (C, S) float64 squares, each channel's offset over keep out
    return _centred_squares(channels, _kept_offset(channels, keep))


def _centred_squares(channels: np.ndarray, offset: np.ndarray) -> np.ndarray:
    # channels: (C, S); offset: (C,) -> (C, S) float64 squares of each sample less its channel's
    # offset, sample by sample (so channel_balance squares only the samples it averages), but 0
    # for digital silence, which has no offset: a pause of zeros read as the offset's power
    # (-54 dBFS) counted as sound next to a seam, and the new part was matched to it, 35-55 dB
    # under the take, instead of to the whole kept take
    return np.where(channels == 0, 0.0, (channels.astype(np.float64) - offset[:, None]) ** 2)


def kept_power(channels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The mean square over the channels of (C, S) audio, (S,) float64, each channel's offset
    over the `keep` (S,) samples taken out first: a recorder's DC offset is not loudness (0.05 of
    it under a -40 dBFS take made its repair 14 dB too loud)."""
    return _centred_power(channels, keep).mean(axis=0)


def channel_balance(channels: np.ndarray, keep: np.ndarray, sample_rate: int, length: int | None = None) -> np.ndarray:
    """(C, 1) float32 gains that give the model's mono new part each channel's share of the kept
    take's power within LEVEL_MATCH_S outside the seams (of the whole kept take where it is silent
    there), their mean square 1, so the level the session matched is kept: a take panned hard
    left, or a 5.1 take with sound in its centre only, was repaired with the same audio in every
    channel, its surrounds and LFE included. A silent take: every channel alike, each with an equal
    share of the power (the session brought the mono new part to a stem's loudness; at that level
    in both channels of a stereo take it measured 3 dB over it). `length`: how many samples the
    take really has (the rest padding, past a seam at its end that still counts)."""
    # channels: (C, S) at sample_rate; keep: (S,) bool
    _, near = seam_sides(~keep, int(round(LEVEL_MATCH_S * sample_rate)))
    if length is not None and length < len(keep):
        keep = keep.copy()
        keep[length:] = False
        near = near & keep
    # the offset is the whole kept take's; the squares are worked out only where they are
    # averaged, next to the seams as a rule (a whole 600 s stereo take's took 0.6 s, for 4 s of them)
    offset = _kept_offset(channels, keep)
    for where in (near, keep):  # next to the seams, else (silent there: a pause) the whole kept take
        per_channel = (_centred_squares(channels[:, where], offset).mean(axis=-1) if where.any()
                       else np.zeros(channels.shape[0]))
        mean = float(per_channel.mean()) if per_channel.size else 0.0
        if mean > LEVEL_MATCH_FLOOR ** 2:
            return np.sqrt(per_channel / mean).astype(np.float32)[:, None]
    return np.full((channels.shape[0], 1), 1 / math.sqrt(channels.shape[0]), np.float32)


def seam_gain_db(known: KnownAudio, power: np.ndarray, audio: np.ndarray, edge: int, reach: int, new_reach: int,
                 sample_rate: int) -> float | None:
    """The level match at one seam, `edge` the first sample after a change between kept and new:
    the gain in dB that makes the new `audio` (S,) within `new_reach` samples inside the seam as
    loud as the take (its `power` (S,)) within `reach` outside it, each by `gated_power`, within
    LEVEL_MATCH_DB; None when either side is silent there, the take's also when its samples are
    (its power subtracts an offset measured over the whole take, which digital silence lacks)."""
    keep = known.keep
    if keep[edge]:  # new audio before the seam, the take after it
        take_side, new_side = slice(edge, edge + reach), slice(max(0, edge - new_reach), edge)
    else:
        take_side, new_side = slice(max(0, edge - reach), edge), slice(edge, edge + new_reach)
    kept = keep[take_side]
    take_samples = known.samples[take_side][kept]
    if not take_samples.size or np.abs(take_samples).max() <= LEVEL_MATCH_FLOOR:
        return None
    take_power = gated_power(power[take_side][kept], sample_rate)
    new_power = gated_power(audio[new_side][~keep[new_side]] ** 2, sample_rate)
    if take_power <= LEVEL_MATCH_FLOOR ** 2 or new_power <= LEVEL_MATCH_FLOOR ** 2:
        return None
    return float(np.clip(10 * math.log10(take_power / new_power), *LEVEL_MATCH_DB))


def finish_new_part(audio: np.ndarray, known: KnownAudio, sample_rate: int) -> tuple[np.ndarray, dict]:
    """The model's audio over the region (S,) made ready to splice into the take: matched to the
    take in tone (engine.tone_match: the balance of its bands within LEVEL_MATCH_S inside the
    seams made the take's within LEVEL_MATCH_S outside them), then brought to the take's level at
    each seam (`seam_gain_db`; a span between two seams goes from the one gain to the other in a
    straight line in dB, each seam measuring the new audio on its half of the span, so a repair
    between a loud and a quiet stretch meets each at its level; a seam where the take is silent
    takes the other's gain, and where it is silent next to both, the new audio is matched to the
    kept take as a whole), then true-peak limited; only the new part is measured, and the kept
    audio is never touched. Returns ((1, S), levels)."""
    # audio: (S,) at sample_rate, as decoded
    new = known.new_part()
    reach = int(round(LEVEL_MATCH_S * sample_rate))
    runs = true_runs(new)
    inside, outside = seam_sides(new, reach)
    # Why not the model's reproduction of the kept audio: held to the take's latent, it follows
    # the take's level whatever level the model makes the new audio at, so a quiet take got an
    # extension at the model's own level, 20 dB or more above it.
    power = kept_power(known.samples[None], known.keep) if known.power is None else known.power
    take_side, matched_to = outside, "the take next to the seams"
    take_power = gated_power(power[take_side], sample_rate)
    if take_power <= LEVEL_MATCH_FLOOR ** 2:
        take_side, matched_to = known.keep, "the whole kept take (silent next to the seams)"
        take_power = gated_power(power[take_side], sample_rate)
    tone_db = None
    new_power = gated_power(audio[inside] ** 2, sample_rate)
    if take_power > LEVEL_MATCH_FLOOR ** 2 and new_power > LEVEL_MATCH_FLOOR ** 2:
        tone_db = tone_match_gains(known.samples, take_side, audio, inside, sample_rate)
        if tone_db is not None:
            audio = apply_tone_gains(audio, tone_db, sample_rate, needed=new)
            new_power = gated_power(audio[inside] ** 2, sample_rate)
    # LEVEL_MATCH_DB bounds the whole gain after the match EQ, which is what raises the noise: a
    # new part whose power the EQ mostly took out can stay under the take by what exceeds it
    # (made up instead, it measured rougher seams: README, "The new part matched in tone")
    whole_db = 0.0  # where no seam can be matched: the take and the new audio as a whole
    if take_power > LEVEL_MATCH_FLOOR ** 2 and new_power > LEVEL_MATCH_FLOOR ** 2:
        whole_db = float(np.clip(10 * math.log10(take_power / new_power), *LEVEL_MATCH_DB))
    elif take_power > LEVEL_MATCH_FLOOR ** 2 or new_power <= LEVEL_MATCH_FLOOR ** 2:
        matched_to = "nothing (the new audio is silent): the model's own level"
    else:
        # a take of digital silence: the new part at a stem's level, as a new track is made (the
        # model's own level, decoded hot, met the limiter 14 dB over full scale and was squashed)
        lufs, blocks = mixing.loudness_and_blocks(audio[new][None], sample_rate)
        if math.isfinite(lufs) and lufs >= mixing.SILENCE_GATE_LUFS:
            # solved on the gating blocks, as a stem's is (a decaying hit decoded hot and turned
            # down by the plain difference lost its tail under the gate and left 0.8 LU over), and
            # as far up as a stem is brought: LEVEL_MATCH_DB's +24 dB left a quiet new part 7 dB
            # under the stem's loudness its metadata said it was brought to
            whole_db = float(mixing.loudness_gain_db(blocks, mixing.STEM_LUFS, lufs))
            matched_to = f"a stem's loudness ({mixing.STEM_LUFS:g} LUFS): the take is silent"
        elif math.isfinite(lufs):
            matched_to = "nothing (the take is silent, the new part nearly so): the model's own level"
        else:  # under a loudness block
            matched_to = "nothing (the take is silent, the new part too short to measure): the model's own level"
    matched = np.array(audio, np.float32)[None]                                  # (1, S)
    ends = []  # (gain at the first new sample, at the last) per span
    for a, b in runs:
        # between two seams each measures the new audio on its own half: the model's may itself
        # fade from the one side's level to the other's
        new_reach = min(reach, max(1, (b - a) // 2)) if 0 < a and b < len(new) else reach
        at_start = seam_gain_db(known, power, audio, a, reach, new_reach, sample_rate) if a > 0 else None
        at_end = seam_gain_db(known, power, audio, b, reach, new_reach, sample_rate) if b < len(new) else None
        if at_start is None and at_end is None:
            at_start = at_end = whole_db
        at_start = at_end if at_start is None else at_start
        at_end = at_start if at_end is None else at_end
        if at_start == at_end:
            matched[0, a:b] *= np.float32(10 ** (at_start / 20))
        else:
            matched[0, a:b] *= 10 ** (np.linspace(at_start, at_end, b - a, dtype=np.float32) / np.float32(20))
        ends.append((at_start, at_end))
    pre_limiter = matched[:, new]
    matched = np.where(new, limit_new_part(matched, new, sample_rate), matched)
    part = matched[:, new]
    levels = {"level_match_gain_db": ends[0][0] if ends else 0.0,
              # where a repair meets a take at another level after it than before it
              "level_match_gain_db_at_end": ends[-1][1] if ends else 0.0,
              "level_matched_to": matched_to,
              # the match EQ's deepest cut and highest boost over its bands; null: not matched in tone
              "tone_match_db": None if tone_db is None else [round(float(tone_db.min()), 1),
                                                            round(float(tone_db.max()), 1)],
              "new_part_lufs": mixing.reported_lufs(part, sample_rate)
              if part.shape[-1] >= sample_rate // 2 else None,
              "new_part_seconds": float(new.sum()) / sample_rate,
              "kept_seconds": float(known.keep.sum()) / sample_rate,
              "pre_limiter_clipped_fraction": mixing.clipped_fraction(pre_limiter)}
    return matched, levels


def limit_new_part(audio: np.ndarray, new: np.ndarray, sample_rate: int, gain_up_to_db: float = 0.0) -> np.ndarray:
    """`audio` (C, S) true-peak limited as its new part (S,) bool alone would be, and silent
    elsewhere: the model's reproduction of the kept audio is thrown away at the splice, so an
    over there must not push the new part through the limiter. `gain_up_to_db`:
    mixing.limit_true_peak's."""
    # audio: (C, S) -> (C, S)
    out = np.zeros(audio.shape, np.float32)
    where = np.flatnonzero(new)
    if where.size == 0:
        return out
    # Only the span over the new part is limited, with a margin into the silence around it,
    # starting on one of the limiter's blocks, so it comes out as limited whole: the whole of a
    # 600 s take took 5 of the 10 s of finishing a repair near its end.
    block = mixing.limiter_block(sample_rate)
    margin = int(round(LIMITER_SPAN_MARGIN_S * sample_rate))
    lo = max(0, int(where[0]) - margin) // block * block
    hi = min(audio.shape[-1], int(where[-1]) + 1 + margin)
    out[..., lo:hi] = mixing.limit_true_peak(audio[..., lo:hi] * new[lo:hi], sample_rate, mixing.STEM_CEILING_DBTP,
                                             gain_up_to_db=gain_up_to_db)
    return out


def splice(take: np.ndarray, new: np.ndarray, keep: np.ndarray, seam: int, take_length: int | None = None) -> np.ndarray:
    """The take (C, S) with its samples where `keep` (S,) is False replaced by `new` ((C or 1, S)),
    and an equal-gain crossfade of up to `seam` samples from the take into the new audio at
    each seam, always on the new side: where keep is True the result is the take, sample for
    sample. A repair (a gap the take goes on after) fades from the kept audio on each side
    carried into the gap by prediction (mixing.predict_continuation; backwards from the take
    after it), never from the gap's own samples: what is repaired is often a click, and one
    within a fade's length of the span's edge stayed. An extension from inside the take fades
    from the take's own samples past the seam, as an editor's crossfade does, unless they hold
    a transient (a peak more than TRANSIENT_CREST times the RMS of the kept audio just before
    the seam: a click the span was chosen to lose), then from the prediction too. Past the
    take's end (`take_length`: how many samples it really has; up to a millisecond short of the
    stem, the request's tolerance) its kept samples are carried on by prediction, since a cut
    from its last sample to zero clicks."""
    out = take.astype(np.float32, copy=True)
    new = np.broadcast_to(new, out.shape)
    length = out.shape[-1] if take_length is None else min(take_length, out.shape[-1])
    gap = ~keep
    runs = true_runs(gap)
    for a, b in runs:  # span by span: a mask over the whole of a 600 s take took 0.2 s for 1 s of it
        out[:, a:b] = new[:, a:b]
    if 0 < length < out.shape[-1] and keep[length:].all():
        out[:, length:] = mixing.predict_continuation(take[:, :length], out.shape[-1] - length, 2 * seam)
    for a, b in runs:
        repair = b < length
        # into the gap from the take before it
        n = min(seam, (b - a) // 2) if a > 0 else 0
        if n:
            w = _seam_fade(n)
            own = take[:, a:min(a + n, length)]
            if a < length and (repair or _holds_a_transient(own, take[:, max(0, a - 2 * seam):a])):
                before = mixing.predict_continuation(take[:, :a], n, 2 * seam)
            elif own.shape[-1] == n:
                before = own
            else:  # the take ends within the fade, or before the gap (by up to a millisecond): carried on
                carried = mixing.predict_continuation(take[:, :length], a + n - length, 2 * seam)
                out[:, length:a] = carried[:, :max(0, a - length)]
                before = np.concatenate([own, carried[:, max(0, a - length):]], axis=-1)
            out[:, a:a + n] = (1 - w) * before + w * new[:, a:a + n]
        # out of the gap into the take after it
        n = min(seam, (b - a) // 2) if repair else 0
        if n:
            w = _seam_fade(n)[::-1]
            after = mixing.predict_continuation(take[:, b:length][:, ::-1], n, 2 * seam)[:, ::-1]
            out[:, b - n:b] = (1 - w) * after + w * new[:, b - n:b]
    return out


# How far over the RMS of the kept audio just before a seam an extension's own samples may
# peak before its fade starts from the prediction instead: 15.6 dB, past the peaks of noise
# (about 4 times its RMS in a fade's 50 ms) and of a steady tone (1.4 times).
TRANSIENT_CREST = 6.0


def _holds_a_transient(own: np.ndarray, before: np.ndarray) -> bool:
    # own: (C, n) the take's samples past an extension's seam; before: (C, m) the kept ones before it
    if own.size == 0:
        return False
    level = float(np.sqrt(np.mean(np.square(before, dtype=np.float64)))) if before.size else 0.0
    return float(np.abs(own).max()) > TRANSIENT_CREST * max(level, LEVEL_MATCH_FLOOR)


def _equal_power(n: int) -> np.ndarray:
    """(n,) gains rising strictly between 0 and 1, sin over a quarter turn: with the falling
    ones, its reverse, the power of two uncorrelated signals holds through a crossfade (two
    windows, generated independently). Strictly: the sample next to the fade is the other
    signal's own."""
    return np.sin(0.5 * np.pi * np.arange(1, n + 1) / (n + 1)).astype(np.float32)


def _seam_fade(n: int) -> np.ndarray:
    """(n,) gains of the new audio at a 50 ms seam, rising strictly between 0 and 1; the take's
    are one minus these (equal gain). Not equal power: the new audio there was sampled to
    continue the take and its level matched to it, and equal gain measured the smoother seam
    (README, "Regions longer than 8 s")."""
    return _equal_power(n) ** 2


def pad_after(x: np.ndarray, length: int) -> np.ndarray:
    """x (..., S) -> (..., max(S, length)): zeros (False) after its end, past the window."""
    if x.shape[-1] >= length:
        return x
    return np.concatenate([x, np.zeros((*x.shape[:-1], length - x.shape[-1]), x.dtype)], axis=-1)


def _fit_latent(latent: torch.Tensor, length: int) -> torch.Tensor:
    # latent: (B, N', C) -> (B, length, C); codecs may round a region's frame count differently
    if latent.shape[1] >= length:
        return latent[:, :length]
    pad = latent[:, -1:].expand(-1, length - latent.shape[1], -1)
    return torch.cat([latent, pad], dim=1)
