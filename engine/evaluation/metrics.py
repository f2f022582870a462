"""Evaluation figures for step-by-step generation: pure functions of waveforms and embeddings.

They mirror the paper's tables in the mini-world, where every source's true stem is known:
Table 2 (per track) -> separability (CLAP A-A), text fidelity (CLAP T-A), and two figures
the ground truth makes possible, leakage and temporal alignment; Table 1 (composite) ->
log-mel distance to the true mixture and a Fréchet distance between embedding distributions.

Waveforms are mono float32 (S,) at 16 kHz (spectra.to_eval_rate converts). No figure is ever
NaN: silence and degenerate inputs have a defined value, stated in each docstring.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.linalg import sqrtm
from scipy.optimize import nnls

from stepfoley.engine import mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.evaluation.spectra import SAMPLE_RATE, mel_power, power_to_db

# Stevens' power law: perceived loudness grows about as intensity^0.3. Compressing mel power
# this way keeps quiet but audible leaks visible without letting a -90 dB noise floor count.
LOUDNESS_EXPONENT = 0.3
# A source's band: the mel bands within this many dB of the stem's strongest band.
BAND_RANGE_DB = 20.0
# Envelopes are smoothed over ~80 ms so that a one-frame timing jitter is not a mismatch.
ENVELOPE_SMOOTHING_FRAMES = 5
COMPOSITE_LUFS = -20.0  # the paper's composite loudness (Sec. 5.1)
COMPOSITE_FLOOR_DB = -80.0  # below this, both signals count as equally silent
FD_REGULARIZATION = 1e-6
EPS = 1e-12


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    if vectors.ndim != 2:
        raise InvalidInputError(f"Embeddings must be shaped (count, dimension), got {vectors.shape}.")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, EPS)  # a zero vector stays zero: cosine 0 with anything


def pairwise_similarities(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of every unordered pair (i < j) of the rows of `embeddings` (K, D),
    in the order (0,1), (0,2), ..., (K-2,K-1). A zero row has similarity 0 with every row."""
    unit = _unit_rows(embeddings)
    rows, cols = np.triu_indices(len(unit), k=1)
    return np.einsum("pd,pd->p", unit[rows], unit[cols])


def separability(embeddings: np.ndarray) -> float:
    """Audio independence of the K tracks made for one video (CLAP A-A analogue, lower is
    better): the mean cosine similarity over the K(K-1)/2 pairs of their audio embeddings.
    Identical tracks give 1. Needs K >= 2."""
    if len(embeddings) < 2:
        raise InvalidInputError("Separability compares tracks pairwise: it needs at least two tracks.")
    return float(pairwise_similarities(embeddings).mean())


def text_similarities(audio_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity between track i's audio embedding and its caption's text
    embedding; both (K, D)."""
    audio, text = _unit_rows(audio_embeddings), _unit_rows(text_embeddings)
    if audio.shape != text.shape:
        raise InvalidInputError(f"{len(audio)} track embeddings but {len(text)} caption embeddings; "
                                "every track needs the caption it was made from.")
    return np.einsum("kd,kd->k", audio, text)


def text_fidelity(audio_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """How well tracks follow their captions (CLAP T-A analogue, higher is better): the mean
    over tracks of the cosine similarity between the track's audio embedding and the text
    embedding of the caption it was generated from."""
    return float(text_similarities(audio_embeddings, text_embeddings).mean())


def loudness_envelope(samples: np.ndarray) -> np.ndarray:
    """Mel power raised to LOUDNESS_EXPONENT: (N_MELS, frames), zero for digital silence."""
    return mel_power(samples) ** LOUDNESS_EXPONENT


def leakage(track: np.ndarray, earlier_stems: Sequence[np.ndarray]) -> float:
    """How much of the earlier sources reappears in a later track, in [0, 1] (lower is better).

    Both sides are seen as loudness envelopes (mel power ** 0.3, bands x frames). The track's
    envelope is fitted, by least squares with one *non-negative* gain per earlier stem plus a
    constant, from the envelopes of the earlier sources' ground-truth stems; leakage is the
    fraction of the track's envelope variance that fit explains (the R^2 of the fit).

    A copy of an earlier stem (at any gain) gives 1; a track whose sound shares no
    time-frequency pattern with the earlier stems gives about 0 (sounds with similar
    spectral tilt score a little above 0: compare with the ground-truth reference row);
    a silent or constant track gives 0, and silent earlier stems explain nothing.
    The track and stems are cut to the shorter length first.
    """
    if not len(earlier_stems):
        raise InvalidInputError("Leakage needs at least one earlier stem (the first track has none).")
    length = min([len(track)] + [len(s) for s in earlier_stems])
    target = loudness_envelope(np.asarray(track)[:length]).ravel()
    target = target - target.mean()
    total = float(target @ target)
    if total <= EPS * max(1, target.size):
        return 0.0
    basis = []
    for stem in earlier_stems:
        column = loudness_envelope(np.asarray(stem)[:length]).ravel()
        column = column - column.mean()
        if float(column @ column) > EPS * column.size:
            basis.append(column)
    if not basis:
        return 0.0
    basis = np.stack(basis, axis=1)
    scale = np.linalg.norm(basis, axis=0)  # unit columns keep NNLS well conditioned
    gains, residual_norm = nnls(basis / scale, target)
    explained = 1.0 - residual_norm ** 2 / total
    return float(min(1.0, max(0.0, explained)))


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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)), covariances regularized by
    1e-6 I. An FD analogue of Table 1; it needs many samples to be stable."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise InvalidInputError("The Fréchet distance needs at least two embeddings on each side.")
    mean_gap = a.mean(0) - b.mean(0)
    identity = np.eye(a.shape[1]) * FD_REGULARIZATION
    cov_a, cov_b = np.cov(a, rowvar=False) + identity, np.cov(b, rowvar=False) + identity
    cross = sqrtm(cov_a @ cov_b)
    cross = np.real(cross)
    value = float(mean_gap @ mean_gap + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cross))
    return max(0.0, value)


def summarize(values: Sequence[float]) -> dict:
    """Mean, standard deviation (population) and count of finite values."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}
