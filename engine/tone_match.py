"""Match EQ for an extended or repaired take: the new part's balance of frequencies brought to
the take's next to the seams, as a Foley editor matches a pickup to the take it continues (and
for a long region's windows, each to the one before it through their handover:
engine.session.ease_handovers).

Why: a model makes its sound with whatever else it hears in the picture (the embedded model
its background too), so the continuation of a clean take can hold energy in bands where the
take has almost none, and the seam reads as a change of sound. One static, zero-phase filter
over the model's audio: per mel-spaced band, the take's share of its power over the new
audio's share, within TONE_MATCH_DB. Shares, not powers: the level is set afterwards, as it
was before (engine.session.finish_new_part). Measured in the README ("The new part matched in
tone").
"""

from __future__ import annotations

import numpy as np
from scipy.signal import firwin2, oaconvolve

TONE_BANDS = 24
# Cuts go deep enough to take out a background the take does not have; boosts stay small, as
# raising a band the model left nearly empty raises its noise.
TONE_MATCH_DB = (-24.0, 6.0)
ANALYSIS_S = 0.064  # the spectrum's frame (a power of two of samples near this), hop a quarter of it
# The filter's length: its response can turn within about 60 Hz (its window's main lobe), under
# the width of the lowest bands, so gains that change from band to band as a balance does are
# met (extremes alternating between neighbouring low bands would be smoothed).
FILTER_S = 0.064
FRAMES_AT_ONCE = 512  # spectra computed this many frames at a time: a 10 min take stays small


def band_edges(sample_rate: int, bands: int = TONE_BANDS) -> np.ndarray:
    """(bands + 1,) Hz: edges evenly spaced in mel from 0 to the Nyquist frequency."""
    top = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    return 700.0 * (10.0 ** (np.linspace(0.0, top, bands + 1) / 2595.0) - 1.0)


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, end) sample ranges where mask (S,) is True, in order."""
    flags = np.zeros(len(mask) + 2, np.int8)  # int8 throughout: a 10 min mask stays 26 MB
    flags[1:-1] = mask
    change = np.diff(flags)
    return list(zip(np.flatnonzero(change == 1), np.flatnonzero(change == -1)))


def band_power(samples: np.ndarray, where: np.ndarray, sample_rate: int, edges: np.ndarray) -> np.ndarray | None:
    """Mean power per frame of mono `samples` (S,) in each band between `edges`, over the frames
    lying wholly where `where` (S,) is True, (bands,); None when no frame fits there. Each frame's
    mean is taken out first: an offset is not a sound, and its leakage drove the lowest band to
    a limit."""
    # samples, where: (S,)
    frame = 1 << int(round(np.log2(ANALYSIS_S * sample_rate)))
    hop = frame // 4
    window = np.hanning(frame).astype(np.float32)
    bins = np.fft.rfftfreq(frame, 1.0 / sample_rate)
    band = np.clip(np.searchsorted(edges, bins, side="right") - 1, 0, len(edges) - 2)   # (F,) band of each bin
    total, frames = np.zeros(len(edges) - 1), 0
    for start, end in true_runs(where):
        if end - start < frame:
            continue
        chunks = np.lib.stride_tricks.sliding_window_view(samples[start:end].astype(np.float32, copy=False),
                                                          frame)[::hop]                  # (K, frame), a view
        for first in range(0, len(chunks), FRAMES_AT_ONCE):
            block = chunks[first:first + FRAMES_AT_ONCE]
            block = block - block.mean(axis=-1, keepdims=True)
            power = (np.abs(np.fft.rfft(block * window, axis=-1)) ** 2).sum(axis=0)      # (F,)
            total += np.bincount(band, weights=power, minlength=len(edges) - 1)
        frames += len(chunks)
    return total / frames if frames else None


def tone_match_gains(take: np.ndarray, take_side: np.ndarray, new: np.ndarray, new_side: np.ndarray,
                     sample_rate: int) -> np.ndarray | None:
    """Per band (TONE_BANDS), the gain in dB that gives `new`'s audio where `new_side` is True the
    balance of bands of `take` where `take_side` is True, within TONE_MATCH_DB; None when either
    side is silent or too short to measure (nothing to match)."""
    # take, new: (S,) mono; take_side, new_side: (S,) bool
    edges = band_edges(sample_rate)
    take_power = band_power(take, take_side, sample_rate, edges)
    new_power = band_power(new, new_side, sample_rate, edges)
    if take_power is None or new_power is None or take_power.sum() <= 0 or new_power.sum() <= 0:
        return None
    tiny = 1e-12  # a band empty on one side: the clip below sets its gain
    ratio = (take_power / take_power.sum() + tiny) / (new_power / new_power.sum() + tiny)
    return np.clip(10.0 * np.log10(ratio), *TONE_MATCH_DB)


def apply_tone_gains(audio: np.ndarray, gains_db: np.ndarray, sample_rate: int,
                     needed: np.ndarray | None = None) -> np.ndarray:
    """Mono `audio` (S,) through the zero-phase filter whose response passes through `gains_db`
    at the centres of the bands (straight lines in dB between them, level beyond the first and
    last), float32, as long as `audio`. `needed` (S,) bool: only the samples where it is True
    are wanted, so only the stretch from the first to the last of them is filtered (with the
    filter's reach of real audio either side); the rest come back as they were. A 2 s extension
    of a 10 min take filters 2 s. The ends are mirrored before filtering (audio shorter than half
    the filter, 32 ms, is padded with silence instead); with gains this smooth the filter's
    response is short, so padding with silence would dim the ends by well under 1 dB too."""
    # audio: (S,); gains_db: (bands,); needed: (S,) bool or None
    audio = np.asarray(audio, np.float32)
    if needed is not None:
        where = np.flatnonzero(needed)
        if len(where) == 0:
            return audio.copy()
        reach = filter_taps(sample_rate) // 2
        start, end = max(0, int(where[0]) - reach), min(len(audio), int(where[-1]) + 1 + reach)
        out = audio.copy()
        out[start:end] = apply_tone_gains(audio[start:end], gains_db, sample_rate)
        return out
    if len(audio) == 0:
        return np.zeros(0, np.float32)
    taps = _match_filter(np.asarray(gains_db, np.float64), sample_rate)
    half = len(taps) // 2
    padded = np.pad(audio, half, mode="reflect" if len(audio) > half else "constant")
    return oaconvolve(padded, taps, mode="valid").astype(np.float32, copy=False)


def filter_taps(sample_rate: int) -> int:
    """The match filter's length in samples: odd and symmetric, so it delays nothing."""
    return int(FILTER_S * sample_rate) | 1


def _match_filter(gains_db: np.ndarray, sample_rate: int) -> np.ndarray:
    """The FIR taps (float32) for `gains_db` at the band centres. firwin2 draws straight lines in
    amplitude between the points it is given, which between a 0 dB band and a -24 dB one sits
    only 5.5 dB down half way; so the lines are drawn in dB here, on a grid as fine as its own."""
    edges = band_edges(sample_rate, len(gains_db))
    centres = (edges[:-1] + edges[1:]) / 2
    points = np.concatenate([[0.0], centres, [sample_rate / 2]]) / (sample_rate / 2)
    levels = np.concatenate([gains_db[:1], gains_db, gains_db[-1:]])
    taps = filter_taps(sample_rate)
    grid = np.linspace(0.0, 1.0, 1 + (1 << int(np.ceil(np.log2(taps)))))   # firwin2's own grid size
    response = 10.0 ** (np.interp(grid, points, levels) / 20.0)
    return firwin2(taps, grid, response).astype(np.float32)
