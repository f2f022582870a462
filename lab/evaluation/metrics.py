"""Evaluation figures for step-by-step generation: pure functions of waveforms, embeddings and
classifier outputs.

They mirror the paper's tables in the mini-world, where every source's true stem is known:
Table 2 (per track) -> separability (CLAP A-A, on the evaluation embedding), text fidelity and
leakage (from the source-presence classifier, evaluation.presence), and temporal alignment,
which the ground truth makes possible; Table 1 (composite) -> log-mel distance to the true
mixture.

Waveforms are mono float32 (S,) at 16 kHz (spectra.to_eval_rate converts). No figure is ever
NaN: silence and degenerate inputs have a defined value, stated in each docstring.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from stepfoley.engine import mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.lab.evaluation.spectra import SAMPLE_RATE, mel_power, power_to_db

# Stevens' power law: perceived loudness grows about as intensity^0.3, so envelopes are
# compared on mel power ** 0.3.
LOUDNESS_EXPONENT = 0.3
# A source's band: the mel bands within this many dB of the stem's strongest band.
BAND_RANGE_DB = 20.0
# Envelopes are smoothed over ~80 ms so that a one-frame timing jitter is not a mismatch.
ENVELOPE_SMOOTHING_FRAMES = 5
COMPOSITE_LUFS = -20.0  # the paper's composite loudness (Sec. 5.1)
COMPOSITE_FLOOR_DB = -80.0  # below this, both signals count as equally silent
EPS = 1e-12


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    if vectors.ndim != 2:
        raise InvalidInputError(f"Embeddings must be shaped (count, dimension), got {vectors.shape}.")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, EPS)  # a zero vector stays zero: cosine 0 with anything


def similarity_to_earlier(embeddings: np.ndarray, track: int) -> float:
    """Separability of track `track` (0-based, at least 1) of one take (CLAP A-A analogue, lower
    is better): the mean cosine similarity of its audio embedding to those of the tracks before
    it, rows of `embeddings` (k, D). A copy of an earlier track gives 1; a zero row gives 0."""
    if not 1 <= track < len(embeddings):
        raise InvalidInputError(f"Track {track} has no earlier track among {len(embeddings)} to compare with.")
    unit = _unit_rows(embeddings)
    return float(np.mean(unit[:track] @ unit[track]))


def presence_leakage(probabilities: np.ndarray, earlier_columns: Sequence[int]) -> float:
    """Leakage of a track (lower is better): the mean over the earlier tracks' kinds of the
    classifier's probability that the track holds that kind; `probabilities` (n_kinds,)."""
    if not len(earlier_columns):
        raise InvalidInputError("Leakage needs at least one earlier track (the first track has none).")
    return float(np.mean(np.asarray(probabilities, np.float64)[list(earlier_columns)]))


def source_band(stem: np.ndarray, range_db: float = BAND_RANGE_DB) -> np.ndarray:
    """Boolean mask over mel bands: where the stem's time-averaged power is within
    `range_db` of its strongest band. All bands for a silent stem."""
    spectrum = power_to_db(mel_power(stem).mean(axis=1))
    return spectrum >= spectrum.max() - range_db


def _smooth(envelope: np.ndarray, frames: int) -> np.ndarray:
    kernel = np.hanning(frames + 2)[1:-1]
    return np.convolve(envelope, kernel / kernel.sum(), mode="same")


def band_envelope(samples: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Per-frame loudness in the given mel bands, (frames,): (summed band power) ** 0.3,
    smoothed over ~80 ms."""
    power = mel_power(samples)[band].sum(axis=0)
    return _smooth(power ** LOUDNESS_EXPONENT, ENVELOPE_SMOOTHING_FRAMES)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    if denominator <= EPS:
        return 0.0
    return float(np.clip((a @ b) / denominator, -1.0, 1.0))


def temporal_alignment(track: np.ndarray, stem: np.ndarray) -> float:
    """How well a track follows its source's timing, in [-1, 1] (higher is better): the
    Pearson correlation between the track's and its ground-truth stem's loudness envelopes,
    both measured in the stem's band (source_band) at 16 ms frames smoothed over ~80 ms.
    A copy of the stem gives 1; 0 when either envelope is constant (e.g. silence)."""
    length = min(len(track), len(stem))
    track, stem = np.asarray(track)[:length], np.asarray(stem)[:length]
    band = source_band(stem)
    return _correlation(band_envelope(track, band), band_envelope(stem, band))


def log_mel_distance(a: np.ndarray, b: np.ndarray, floor_db: float = COMPOSITE_FLOOR_DB) -> float:
    """Log-mel spectral distance in dB (0 = identical spectrograms): per 16 ms frame, the RMS
    over mel bands of the difference of the two dB spectrograms, each floored at
    `floor_db`; averaged over frames. Signals are cut to the shorter length."""
    length = min(len(a), len(b))
    if length == 0:
        raise InvalidInputError("Cannot compare empty audio.")
    db_a = np.maximum(power_to_db(mel_power(np.asarray(a)[:length])), floor_db)
    db_b = np.maximum(power_to_db(mel_power(np.asarray(b)[:length])), floor_db)
    return float(np.sqrt(((db_a - db_b) ** 2).mean(axis=0)).mean())


def composite_distance(composite: np.ndarray, mixture: np.ndarray) -> float:
    """Composite quality (Table 1 analogue, lower is better): log_mel_distance between the
    composite (the sum of the generated tracks) and the ground-truth mixture, after both are
    loudness-normalized to -20 LUFS as in the paper, so only spectro-temporal content counts.
    A silent signal is left silent (it cannot be normalized)."""
    composite = mixing.loudness_normalize(np.asarray(composite, np.float32), SAMPLE_RATE, COMPOSITE_LUFS)[0]
    mixture = mixing.loudness_normalize(np.asarray(mixture, np.float32), SAMPLE_RATE, COMPOSITE_LUFS)[0]
    return log_mel_distance(composite, mixture)


def summarize(values: Sequence[float]) -> dict:
    """Mean, standard deviation (population) and count of finite values."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}
