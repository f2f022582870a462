"""A loudness curve (the request's `loudness_curve`) applied to a generated track as gain
automation: the track's momentary loudness is measured, a smoothed gain brings it onto the
curve, and the true-peak limiter has the last word. No loudness normalization: the curve sets
the absolute level. Every model gets it this way; a model with a loudness ControlNet (the
embedded one) has also generated the track with the curve as a condition
(`loudness_condition`, the same measure per latent frame), and the track's metadata says which.

The loudness the curve speaks is BS.1770's K-weighted loudness over 400 ms windows (EBU
R128's momentary window: a curve drawn over an 8 s region changes faster than the 3 s
short-term window could follow), every 50 ms, floored at BS.1770's absolute gate.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Sequence

import numpy as np
from pyloudnorm.iirfilter import IIRfilter

from stepfoley.engine import mixing

WINDOW_S = 0.4
HOP_S = 0.05
FLOOR_LUFS = mixing.SILENCE_GATE_LUFS
# A gain change spread over this long, so the automation does not flutter with every onset
# (the curve is a level, not an envelope follower).
SMOOTHING_S = 0.2
# Bounds of the automation: a near-silent stretch is raised at most this far (beyond, it is
# noise being raised), and a loud one lowered at most this far.
MAX_BOOST_DB, MAX_CUT_DB = 30.0, 60.0
# Measuring again after each correction takes in what the smoothing and the neighbouring
# windows changed.
PASSES = 3
APPLIED_AS = "gain automation"
LEARNED_AND_APPLIED_AS = "learned condition, then gain automation"
# The loudness condition's scale: the stem level reads 0 and 10 dB reads 1, so the network's
# input stays within about -5 (the absolute gate) and 2.
CONDITION_CENTRE_LUFS, CONDITION_DB_PER_UNIT = mixing.STEM_LUFS, 10.0


def _k_weighted(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    # samples: (S,) -> (S,) float64 through BS.1770's two K-weighting stages
    x = np.asarray(samples, np.float64)
    for stage in (IIRfilter(4.0, 1 / math.sqrt(2), 1500.0, sample_rate, "high_shelf"),
                  IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass")):
        x = stage.apply_filter(x)
    return x


def frame_times(length: int, sample_rate: int) -> np.ndarray:
    """The measuring instants (F,) in seconds: every HOP_S from 0 to the end."""
    return np.arange(0.0, length / sample_rate + 1e-9, HOP_S)


def loudness_over_time(samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(times (F,), loudness (F,) LUFS): K-weighted loudness of mono (S,) audio over WINDOW_S
    windows centred on each instant (cut at the ends), floored at FLOOR_LUFS."""
    energy = np.concatenate([[0.0], np.cumsum(_k_weighted(samples, sample_rate) ** 2)])
    times = frame_times(len(samples), sample_rate)
    half = WINDOW_S * sample_rate / 2
    lo = np.clip(np.round(times * sample_rate - half).astype(int), 0, len(samples))
    hi = np.clip(np.round(times * sample_rate + half).astype(int), 0, len(samples))
    mean_square = (energy[hi] - energy[lo]) / np.maximum(hi - lo, 1)
    with np.errstate(divide="ignore"):
        loudness = -0.691 + 10 * np.log10(mean_square)
    return times, np.maximum(loudness, FLOOR_LUFS)


def curve_at(curve: Sequence[tuple[float, float]], times: np.ndarray) -> np.ndarray:
    """The curve (seconds, dB) at `times`: straight lines between points, level beyond the ends."""
    points = np.asarray(curve, np.float64)
    return np.interp(times, points[:, 0], points[:, 1])


def loudness_condition(lufs: np.ndarray) -> np.ndarray:
    """Loudness values (LUFS, any shape) on the loudness ControlNet's input scale, float32."""
    return ((np.maximum(lufs, FLOOR_LUFS) - CONDITION_CENTRE_LUFS) / CONDITION_DB_PER_UNIT).astype(np.float32)


def latent_frame_centres(n_frames: int, frame_s: float, start_s: float = 0.0) -> np.ndarray:
    """The instants (n_frames,) in seconds that the latent frames (each `frame_s` long) of a
    window starting at `start_s` stand for: the middle of each frame."""
    return start_s + (np.arange(n_frames) + 0.5) * frame_s


def measured_condition(samples: np.ndarray, sample_rate: int, n_frames: int) -> np.ndarray:
    """The loudness condition (n_frames,) of audio (S,) as it is, its latent frames spread over
    it: what the network learns to follow (training) is what a curve asks for at inference
    (`curve_condition`)."""
    times, lufs = loudness_over_time(samples, sample_rate)
    centres = latent_frame_centres(n_frames, len(samples) / sample_rate / n_frames)
    return loudness_condition(np.interp(centres, times, lufs))


def curve_condition(curve: Sequence[tuple[float, float]], n_frames: int, frame_s: float,
                    start_s: float = 0.0) -> np.ndarray:
    """The loudness condition (n_frames,) that a curve (seconds from the region start, LUFS)
    asks of the latent frames of a window starting `start_s` seconds into the region."""
    return loudness_condition(curve_at(curve, latent_frame_centres(n_frames, frame_s, start_s)))


def _smooth(values: np.ndarray) -> np.ndarray:
    width = max(1, int(round(SMOOTHING_S / HOP_S))) | 1
    padded = np.pad(values, width // 2, mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def follow_curve(samples: np.ndarray, sample_rate: int, curve: Sequence[tuple[float, float]],
                 ceiling_dbtp: float = mixing.STEM_CEILING_DBTP, max_boost_db: float = MAX_BOOST_DB,
                 max_cut_db: float = MAX_CUT_DB) -> tuple[np.ndarray, dict]:
    """A generated track (S,) as decoded, brought onto `curve` (seconds from its start, LUFS)
    by gain automation (at most `max_boost_db` up and `max_cut_db` down), then true-peak
    limited. Returns ((1, S) float32, levels): the decoded measurements finish_stem also
    records, the automation's range and how far the result is from the curve."""
    audio = np.asarray(samples, np.float64)
    mixing._check_finite(audio[None], "The generated track")
    times = frame_times(len(audio), sample_rate)
    target = curve_at(curve, times)
    positions = np.arange(len(audio)) / sample_rate
    gain_db = np.zeros(len(times))
    for _ in range(PASSES):
        _, measured = loudness_over_time(audio * 10 ** (np.interp(positions, times, gain_db) / 20), sample_rate)
        # where nothing is left to measure (digital silence) no gain reaches the curve: hold it
        correction = np.where(measured > FLOOR_LUFS, target - measured, 0.0)
        gain_db = _smooth(np.clip(gain_db + correction, -max_cut_db, max_boost_db))
    shaped = (audio * 10 ** (np.interp(positions, times, gain_db) / 20)).astype(np.float32)[None]
    limiter_input = mixing.true_peak(shaped, sample_rate)
    finished = mixing.limit_true_peak(shaped, sample_rate, ceiling_dbtp)
    decoded = audio[None].astype(np.float32)
    levels = {
        **asdict(mixing.measured_levels(decoded, finished, sample_rate, None, limiter_input,
                                        mixing.integrated_loudness(decoded, sample_rate),
                                        mixing.integrated_loudness(finished, sample_rate))),
        "loudness_curve_applied_as": APPLIED_AS,
        "loudness_normalized": False,
        "loudness_curve_gain_db": [float(gain_db.min()), float(gain_db.max())],
        "loudness_curve_error_db": distance_from_curve(finished[0], sample_rate, curve),
    }
    return finished, levels


def distance_from_curve(samples: np.ndarray, sample_rate: int, curve: Sequence[tuple[float, float]]) -> float | None:
    """How far mono (S,) audio is from `curve` (seconds from its start, LUFS): the median in dB
    over where it is heard; None where it never is (silence is no distance from a curve: no gain
    could reach it)."""
    times, reached = loudness_over_time(samples, sample_rate)
    heard = reached > FLOOR_LUFS
    return float(np.median(np.abs(reached[heard] - curve_at(curve, times)[heard]))) if heard.any() else None
