"""Loudness, summing, true-peak limiting, resampling and channel handling for stems.

Every function here takes and returns numpy float32 arrays shaped (channels, samples),
the layout of most audio libraries; a 1-D array is accepted as mono (1, samples). Nothing here
touches torch: stems arrive here already decoded to waveforms.

The composite follows the paper (Sec. 5.1): sum the tracks without weighting, then
loudness-normalize the sum to -20 LUFS (BS.1770, via pyloudnorm). A true-peak limiter
runs last so that a normalized mix never clips in the DAW.

Every generated track leaves the engine through `finish_stem`: measured as the model made it,
brought to STEM_LUFS, then true-peak limited, like a stem from a sound library.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import numpy as np
import pyloudnorm
from scipy.linalg import solve_toeplitz
from scipy.signal import firwin, lfilter, lfiltic, resample_poly

from stepfoley.engine.errors import AudioError, InvalidInputError

# BS.1770 measures loudness over 400 ms gating blocks; shorter audio has no defined loudness.
LOUDNESS_BLOCK_S = 0.4
# BS.1770's absolute gate: anything quieter is treated as silence, never amplified.
SILENCE_GATE_LUFS = -70.0
# 4x oversampling is what BS.1770 Annex 2 asks for at 48 kHz to catch inter-sample peaks.
TRUE_PEAK_OVERSAMPLING = 4
# A steeper window than resample_poly's default keeps the interpolation's passband error
# near 0.001 dB, so the meter does not invent peaks that a DAW's meter would not show.
TRUE_PEAK_WINDOW = ("kaiser", 8.0)
# true_peak works on blocks of this many samples, each with this much context on either side
# (resample_poly's filter for 4x reaches 10 input samples each way).
TRUE_PEAK_BLOCK = 1 << 18
TRUE_PEAK_CONTEXT = 64
# Largest term (numerator or denominator) of a resampling ratio; the filter has
# 2 * RESAMPLE_ZERO_CROSSINGS taps per unit of the larger one. 48000/44100 = 160/147 is exact; a
# ratio with larger terms is approximated. Next to a simple ratio the fractions within reach
# are 1/MAX apart, so a varispeed for a playrate of 1.0004 (the closest fraction with terms up
# to 1000 is 1) stays within 5 ppm of its length: 3 ms over a 600 s stem, where terms up to
# 1000 let it drift 0.3 s.
MAX_RESAMPLE_TERM = 100_000
# The resampling filter. resample_poly's own (Kaiser beta 5, 10 zero crossings a side, cut at the
# lower Nyquist frequency) leaves the image of a 7 kHz tone in 16 kHz audio taken to 48 kHz only
# 31 dB down, at 9 kHz, where a Foley stem's highs are heard. This one takes it 107 dB down for
# 0.15 dB off the tone, and costs 2.4 times the arithmetic.
RESAMPLE_ZERO_CROSSINGS = 24
RESAMPLE_KAISER_BETA = 10.0
RESAMPLE_CUTOFF = 0.96  # of the lower Nyquist frequency
# BS.1770 weighs the channels of mono, stereo, L R C, quad (L R Ls Rs: WAV's order), L R C Ls Rs
# and 5.1 (L R C LFE Ls Rs, the LFE left out); pyloudnorm weighs by position as L R C Ls Rs.
MAX_LOUDNESS_CHANNELS = 6
LOUDNESS_HOP_S = 0.1  # gating blocks overlap by 75 %
# Audio at a lower rate is measured upsampled to it: the K-weighting's 1.5 kHz shelf lies past the
# top of such a file, and its filters blew up (a loud 2 kHz file read as silence, a 10 Hz one
# +479 LUFS).
MIN_METER_RATE = 8000
# Headroom left below the ceiling by the final safety gain, so float32 rounding of the
# scaled samples cannot land a hair above it.
SAFETY_MARGIN_DB = 0.001
# The loudness every generated track leaves the engine at: EBU R128's programme loudness, so a
# stem sits where a library effect would, and three of them sum to about -18 LUFS.
STEM_LUFS = -23.0
STEM_CEILING_DBTP = -1.0
# The true-peak limiter (lookahead_gain): how fast its gain falls before a peak, how long it
# holds after it (a cycle of a 50 Hz tone's magnitude is 10 ms) and how fast it rises again,
# and the step it is worked out on.
LIMITER_ATTACK_MS = 2.0
LIMITER_HOLD_MS = 20.0
LIMITER_RELEASE_MS = 100.0
LIMITER_BLOCK_MS = 0.5
# How much harder the limiter may be driven to bring a peaky stem to STEM_LUFS (finish_stem),
# how close to it is close enough, and how many limiter passes that may take.
MAX_LIMITER_DRIVE_DB = 6.0
LOUDNESS_TOLERANCE_LU = 0.05
MAX_DRIVE_PASSES = 6
MIN_DRIVE_GAIN = 0.1  # LU per dB of drive, below which a pass is not kept
# Silence, for the figures: 50 ms blocks of a finished stem whose RMS is under -60 dBFS
# (37 dB under STEM_LUFS: the gaps between events, not quiet sound).
SILENCE_BLOCK_S = 0.05
SILENCE_BLOCK_DBFS = -60.0


def as_channels_first(samples: np.ndarray) -> np.ndarray:
    """A float32 (channels, samples) view of `samples`; 1-D input is taken as mono."""
    array = np.asarray(samples)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise InvalidInputError(
            f"Audio must be shaped (channels, samples), got an array with shape {array.shape}."
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_finite(samples: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(samples)):
        raise AudioError(
            f"{what} contains NaN or infinite samples and cannot be mixed. "
            "Regenerate or re-export it."
        )


def _check_sample_rate(sample_rate: int, what: str = "sample rate") -> int:
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise InvalidInputError(f"The {what} must be a positive whole number of Hz, got {sample_rate!r}.")
    return int(sample_rate)


def _check_channel_count(channels: int) -> int:
    if isinstance(channels, bool) or int(channels) != channels or channels < 1:
        raise InvalidInputError(f"The channel count must be 1 or more, got {channels!r}.")
    return int(channels)


def _gain_db(samples: np.ndarray, gain_db: float) -> np.ndarray:
    gain = 10.0 ** (gain_db / 20.0)
    return (samples.astype(np.float64) * gain).astype(np.float32)


def integrated_loudness(samples: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS, or -inf for silence or audio under 400 ms."""
    # samples: (C, S)
    return loudness_and_blocks(samples, sample_rate)[0]


def loudness_and_blocks(samples: np.ndarray, sample_rate: int) -> tuple[float, np.ndarray]:
    """integrated_loudness, and the loudness (LUFS, K-weighted, channels weighed) of each 400 ms
    gating block, (J,): what BS.1770's gates sort; no blocks for silence or audio under 400 ms."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    sample_rate = _check_sample_rate(sample_rate)
    channels, length = audio.shape
    if channels > MAX_LOUDNESS_CHANNELS:
        raise InvalidInputError(
            f"Loudness can be measured on at most {MAX_LOUDNESS_CHANNELS} channels, "
            f"this audio has {channels}. Downmix it first."
        )
    # Padding a short clip with silence would change its measured loudness, so a clip
    # shorter than one gating block is reported as unmeasurable rather than guessed.
    _check_finite(audio, "The audio")
    if length < math.ceil(LOUDNESS_BLOCK_S * sample_rate) or not np.any(audio):
        return -math.inf, np.empty(0)
    if sample_rate < MIN_METER_RATE:
        audio, sample_rate = resample(audio, sample_rate, MIN_METER_RATE), MIN_METER_RATE
    meter = pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_S)
    loudness = float(meter.integrated_loudness(_whole_blocks(_in_bs1770_order(audio), sample_rate).T.astype(np.float64)))
    # pyloudnorm yields -inf (or NaN from an empty gate) when every block is below -70 LUFS.
    return (loudness if math.isfinite(loudness) else -math.inf), np.asarray(meter.blockwise_loudness, np.float64)


def is_heard(samples: np.ndarray, sample_rate: int) -> bool:
    """Whether (C, S) audio is over BS.1770's -70 LUFS gate once each channel's mean is taken
    out: an offset is no sound, though the K-weighting filter, starting from rest, reads its
    onset as a click (a bounce of nothing but 0.01 of offset measured -66 LUFS, and NAG was
    guided away from it)."""
    audio = as_channels_first(samples)
    return math.isfinite(integrated_loudness(audio - audio.mean(axis=-1, keepdims=True), sample_rate))


def _in_bs1770_order(audio: np.ndarray) -> np.ndarray:
    """(C, S) audio as pyloudnorm weighs it, L R C Ls Rs by position: quad gets a silent centre
    (its surrounds were weighed as a centre and one surround), 5.1 loses its LFE."""
    channels = audio.shape[0]
    if channels == 4:
        return np.concatenate([audio[:2], np.zeros_like(audio[:1]), audio[2:]])
    if channels == 6:
        return np.delete(audio, 3, axis=0)
    return audio


def _whole_blocks(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(C, S) audio up to the end of its last whole gating block: pyloudnorm counted a last
    partial block as a whole one, read quieter (0.46 s of noise measured 0.24 dB low), where
    BS.1770 gates whole blocks only."""
    blocks = math.floor((audio.shape[1] / sample_rate - LOUDNESS_BLOCK_S) / LOUDNESS_HOP_S + 1e-6) + 1
    # the end of the last block as pyloudnorm places it
    return audio[:, :int(LOUDNESS_BLOCK_S * ((blocks - 1) * LOUDNESS_HOP_S / LOUDNESS_BLOCK_S + 1) * sample_rate)]


def loudness_normalize(
    samples: np.ndarray,
    sample_rate: int,
    target_lufs: float = -20.0,
    silence_gate_lufs: float = SILENCE_GATE_LUFS,
) -> np.ndarray:
    """Scale `samples` so their integrated loudness is `target_lufs`.

    Audio quieter than `silence_gate_lufs`, or too short to measure, comes back unchanged:
    amplifying silence would only raise the noise floor (or produce an infinite gain).
    """
    # samples: (C, S)
    audio = as_channels_first(samples)
    if not math.isfinite(target_lufs):
        raise InvalidInputError(f"The loudness target must be a number of LUFS, got {target_lufs!r}.")
    loudness, blocks = loudness_and_blocks(audio, sample_rate)
    if not math.isfinite(loudness) or loudness < silence_gate_lufs:
        return audio.copy()
    return _gain_db(audio, loudness_gain_db(blocks, target_lufs, loudness))


# How far from the absolute gate a block must sit for a gain solved on the blocks to count it
# (or leave it out) once the audio is scaled in float32: a millionth of the level's step.
GATE_MARGIN_DB = 1e-5


def gated_loudness(blocks: np.ndarray, gain_db: float = 0.0) -> float:
    """BS.1770's integrated loudness of audio whose gating blocks measure `blocks` (LUFS, J,)
    once turned up by `gain_db`: the absolute gate at -70 LUFS, then the relative one 10 LU
    under the blocks that pass it (-inf when none does)."""
    level = blocks + gain_db
    power = 10.0 ** ((level + 0.691) / 10.0)
    passed = level >= SILENCE_GATE_LUFS
    if not passed.any():
        return -math.inf
    relative = -0.691 + 10.0 * math.log10(power[passed].mean()) - 10.0
    kept = (level > relative) & (level > SILENCE_GATE_LUFS)
    return -0.691 + 10.0 * math.log10(power[kept].mean()) if kept.any() else -math.inf


def loudness_gain_db(blocks: np.ndarray, target_lufs: float, loudness: float) -> float:
    """The gain (dB) that brings audio whose gating blocks measure `blocks` (LUFS, loudness_and_blocks;
    `loudness` over them, over the absolute gate) to `target_lufs`. The difference of the two is
    not always it: BS.1770's -70 LUFS gate sits at a fixed level, so blocks cross it as the gain
    moves, and with them the relative gate (a clang decoded 50 dB hot, turned down by that
    difference, lost its tail's quiet blocks under it and left at -21.8 LUFS). Nor does the
    loudness rise with the gain everywhere: a sparse stem's faint floor falling under the gate
    raises the relative gate over its whole mid-level tail, so stepping by what is missing
    wandered and stopped 6 LU over. The gain is found on the blocks instead: between two gains
    where a block crosses -70 LUFS the gated set is fixed and the loudness moves dB for dB, so
    each such stretch holds at most one answer; of those that exist the one nearest the plain
    difference is taken, and where none does (a jump over the target), the gain measuring
    closest under it."""
    naive = target_lufs - loudness
    order = np.sort(blocks)[::-1]                                     # loudest first
    power = 10.0 ** ((order + 0.691) / 10.0)
    count = np.arange(1, len(order) + 1)
    summed = np.cumsum(power)
    mean_passed = summed / count                                      # the k loudest over the absolute gate
    # the relative gate is the passed blocks' mean power / 10 whatever the gain: those over it
    # are the loudest ones, a count of them
    kept = np.minimum(count, np.searchsorted(-power, -mean_passed / 10.0, side="left"))
    kept = np.maximum(kept, 1)
    gains = target_lufs + 0.691 - 10.0 * np.log10(summed[kept - 1] / kept)
    # the k loudest are the ones over -70 LUFS at that gain, and the next is not
    below = np.append(order[1:], -np.inf)
    last, next_ = order + gains - SILENCE_GATE_LUFS, below + gains - SILENCE_GATE_LUFS
    exact = (last >= -GATE_MARGIN_DB) & (next_ < GATE_MARGIN_DB)  # on the gate to float precision, too
    # ... each by a margin, an answer moved into its stretch by up to that much (as many
    # millionths of an LU): with a block on the gate itself, the float32 rounding of the gain
    # decided whether it counted, and with it the relative gate (a stem left 7.5 LU over)
    with np.errstate(invalid="ignore"):  # silent blocks (-inf) in the stretches left out here
        shift = np.where(exact, np.maximum(GATE_MARGIN_DB - last, 0.0) - np.maximum(next_ + GATE_MARGIN_DB, 0.0), 0.0)
    gains = gains + shift
    exact &= (last + shift >= GATE_MARGIN_DB / 2) & (next_ + shift <= -GATE_MARGIN_DB / 2)
    if exact.any():
        answers = gains[exact]
        return float(answers[np.argmin(np.abs(answers - naive))])
    measured = np.array([gated_loudness(blocks, g) for g in gains])
    under = measured <= target_lufs
    return float(gains[under][np.argmax(measured[under])]) if under.any() else naive


def true_peak(samples: np.ndarray, sample_rate: int) -> float:
    """The true peak in dBTP: the largest magnitude of the 4x oversampled signal (-inf if silent)."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    _check_sample_rate(sample_rate)
    if audio.size == 0:
        return -math.inf
    _check_finite(audio, "The audio")
    peak = max(float(np.max(np.abs(oversampled))) for _, _, oversampled in _oversampled_blocks(audio))
    # The interpolation filter can never remove a sample peak, so both are taken.
    peak = max(peak, float(np.max(np.abs(audio))))
    return 20.0 * math.log10(peak) if peak > 0.0 else -math.inf


def true_peak_envelope(samples: np.ndarray) -> np.ndarray:
    """Per sample of (C, S) audio, the largest magnitude over its channels of the sample itself
    and of the 4x oversampled signal from it to the next, (S,) float32."""
    audio = as_channels_first(samples)
    envelope = np.abs(audio).max(axis=0).astype(np.float32)
    for start, end, oversampled in _oversampled_blocks(audio):
        between = np.abs(oversampled).max(axis=0).reshape(end - start, TRUE_PEAK_OVERSAMPLING).max(axis=1)
        np.maximum(envelope[start:end], between, out=envelope[start:end])
    return envelope


def _oversampled_blocks(audio: np.ndarray):
    """(start, end, the 4x oversampled (C, 4 * (end - start)) float64) over (C, S) audio, block
    by block, each with the context the interpolation filter reaches: a long stem at a high rate
    never has its 4x float64 copy in memory, and each block is as it would be in one piece."""
    length = audio.shape[1]
    for start in range(0, length, TRUE_PEAK_BLOCK):
        end = min(length, start + TRUE_PEAK_BLOCK)
        before, after = min(start, TRUE_PEAK_CONTEXT), min(length - end, TRUE_PEAK_CONTEXT)
        yield start, end, resample_poly(
            audio[:, start - before:end + after].astype(np.float64), TRUE_PEAK_OVERSAMPLING, 1, axis=-1,
            window=TRUE_PEAK_WINDOW,
        )[:, before * TRUE_PEAK_OVERSAMPLING:(before + end - start) * TRUE_PEAK_OVERSAMPLING]


def limit_true_peak(
    samples: np.ndarray,
    sample_rate: int,
    ceiling_dbtp: float = -1.0,
    release_ms: float = LIMITER_RELEASE_MS,
    gain_up_to_db: float = 0.0,
    envelope: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the true peak at or below `ceiling_dbtp`. `envelope`: the audio's
    `true_peak_envelope`, where the caller has it already (finish_stem limits one stem at
    several drives).

    Audio already under the ceiling is returned unchanged. Audio at most `gain_up_to_db` over
    it is turned down by one gain (resampling a finished stem to the project's rate leaves its
    peak a few tenths over, and one gain changes nothing of its sound). Hotter audio goes
    through `lookahead_gain`: the gain falls ahead of each peak as far as it must and rises
    again over `release_ms`, the same for every channel; a final gain measured on the result
    guarantees the ceiling (the gain's own movement can shift a peak between samples).
    """
    # samples: (C, S)
    audio = as_channels_first(samples)
    sample_rate = _check_sample_rate(sample_rate)
    if not math.isfinite(ceiling_dbtp) or ceiling_dbtp > 0.0:
        raise InvalidInputError(
            f"The true-peak ceiling must be a number of dBTP at or below 0, got {ceiling_dbtp!r}."
        )
    if envelope is None:
        _check_finite(audio, "The audio")
        envelope = true_peak_envelope(audio)
    peak_dbtp = _envelope_dbtp(envelope)
    if peak_dbtp <= ceiling_dbtp:
        return audio.copy()
    if peak_dbtp - ceiling_dbtp <= gain_up_to_db:
        return _gain_db(audio, ceiling_dbtp - SAFETY_MARGIN_DB - peak_dbtp)
    ceiling = 10.0 ** ((ceiling_dbtp - SAFETY_MARGIN_DB) / 20.0)
    gain = lookahead_gain(envelope, ceiling, sample_rate, release_ms)
    limited = (audio * gain).astype(np.float32)
    limited_peak_dbtp = true_peak(limited, sample_rate)
    if limited_peak_dbtp > ceiling_dbtp - SAFETY_MARGIN_DB:
        limited = _gain_db(limited, ceiling_dbtp - SAFETY_MARGIN_DB - limited_peak_dbtp)
    return limited


def _envelope_dbtp(envelope: np.ndarray) -> float:
    """The true peak in dBTP that a `true_peak_envelope` holds (-inf if silent or empty)."""
    peak = float(envelope.max()) if envelope.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0.0 else -math.inf


def limiter_block(sample_rate: int) -> int:
    """The samples in one of `lookahead_gain`'s blocks (LIMITER_BLOCK_MS), counted from the
    first sample: a span limited alone comes out as within the whole when it starts on one."""
    return max(1, int(round(LIMITER_BLOCK_MS * sample_rate / 1000)))


def lookahead_gain(envelope: np.ndarray, ceiling: float, sample_rate: int,
                   release_ms: float = LIMITER_RELEASE_MS) -> np.ndarray:
    """The gain (S,) float32 that keeps `envelope` (S,) (peak magnitudes) at or below `ceiling`,
    moving smoothly: ahead of a peak it falls with a time constant of LIMITER_ATTACK_MS (the
    whole stem is at hand, so it looks ahead without delaying anything), holds for
    LIMITER_HOLD_MS after it (so it does not ripple with the cycles of a low tone, which
    distorts it), then rises back with a time constant of `release_ms`. Worked out on blocks of
    LIMITER_BLOCK_MS, each asking the least gain of itself and its two neighbours, so the
    straight lines between block centres never exceed what any sample needs. Why not
    pedalboard's Limiter: it has no look-ahead, and it clips at full scale after its make-up
    gain, which flattened every peak it missed at -4.75 dBFS."""
    # envelope: (S,)
    length = len(envelope)
    block = limiter_block(sample_rate)
    count = -(-length // block)
    padded = np.full(count * block, np.float32(0.0))
    padded[:length] = envelope
    loudest = padded.reshape(count, block).max(axis=1).astype(np.float64)        # (K,)
    loudest = np.maximum(loudest, np.maximum(np.r_[loudest[1:], 0.0], np.r_[0.0, loudest[:-1]]))
    hold = int(round(LIMITER_HOLD_MS / LIMITER_BLOCK_MS))
    loudest = np.lib.stride_tricks.sliding_window_view(np.r_[np.zeros(hold), loudest], hold + 1).max(axis=1)
    need_db = np.minimum(0.0, 20.0 * np.log10(ceiling / np.maximum(loudest, 1e-30)))
    seconds = block / sample_rate
    attack = math.exp(-seconds / (LIMITER_ATTACK_MS / 1000.0))
    release = math.exp(-seconds / (max(release_ms, LIMITER_BLOCK_MS) / 1000.0))
    # back in time from each peak the gain returns toward 0 dB at the attack's pace, forward
    # in time at the release's; each pass only ever lowers it, so it stays within what is needed
    ahead = list(itertools.accumulate(need_db[::-1], lambda later, now: min(now, later * attack)))[::-1]
    gain_db = np.fromiter(itertools.accumulate(ahead, lambda earlier, now: min(now, earlier * release)),
                          np.float64, count)
    centres = (np.arange(count) + 0.5) * block - 0.5
    gains = 10.0 ** (gain_db / 20.0)
    out = np.empty(length, np.float32)
    for start in range(0, length, TRUE_PEAK_BLOCK):  # a long stem's sample grid never whole in float64
        end = min(length, start + TRUE_PEAK_BLOCK)
        out[start:end] = np.interp(np.arange(start, end), centres, gains)
    return out


def _resample_ratio(exact: Fraction) -> tuple[int, int]:
    """(up, down) for resample_poly: `exact`, or the closest ratio whose terms are both at most
    about MAX_RESAMPLE_TERM."""
    ratio = exact.limit_denominator(max(1, int(MAX_RESAMPLE_TERM / max(exact, 1))))
    return ratio.numerator, ratio.denominator


# A varispeed's filter has up to 2 * RESAMPLE_ZERO_CROSSINGS * MAX_RESAMPLE_TERM taps (38 MB) and
# takes most of a second to design; a session's stems share one playrate, so keep the last few
# (at most about 150 MB for the engine's life; a real rate pair's filter is a few KB).
@lru_cache(maxsize=4)
def _resample_lowpass(most: int) -> np.ndarray:
    lowpass = firwin(2 * RESAMPLE_ZERO_CROSSINGS * most + 1, RESAMPLE_CUTOFF / most,
                     window=("kaiser", RESAMPLE_KAISER_BETA))
    lowpass.setflags(write=False)
    return lowpass


def _resample_poly(audio: np.ndarray, up: int, down: int) -> np.ndarray:
    # audio: (C, S) -> (C, ceil(S * up / down)) float64
    lowpass = _resample_lowpass(max(up, down))
    return resample_poly(audio.astype(np.float64), up, down, axis=-1, window=lowpass)


def resample(samples: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """Band-limited polyphase resampling; the result has exactly round(S * to_sr / from_sr) samples."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    from_sr = _check_sample_rate(from_sr, "source sample rate")
    to_sr = _check_sample_rate(to_sr, "target sample rate")
    if from_sr == to_sr:
        return audio.copy()
    target_length = round(audio.shape[1] * to_sr / from_sr)
    if audio.shape[1] == 0:
        return np.zeros((audio.shape[0], 0), dtype=np.float32)
    resampled = _resample_poly(audio, *_resample_ratio(Fraction(to_sr, from_sr)))
    return fit_length(resampled.astype(np.float32), target_length)


def resample_span(samples: np.ndarray, from_sr: int, to_sr: int, length: int, first: int, end: int) -> np.ndarray:
    """`fit_length(resample(samples, from_sr, to_sr), length)` over its samples [first, end) and
    silent elsewhere, from the input that reaches them alone (starting on a whole period of the
    polyphase filter, so each comes out as resampled whole): for a 400 s take's few new
    seconds at 48 kHz, 0.015 s instead of 0.55 s."""
    # samples: (C, S) -> (C, length)
    audio = as_channels_first(samples)
    out = np.zeros((audio.shape[0], length), np.float32)
    end = min(end, length)
    if first >= end:
        return out
    if _check_sample_rate(from_sr) == _check_sample_rate(to_sr):
        out[:, first:end] = fit_length(audio, length)[:, first:end]
        return out
    up, down = _resample_ratio(Fraction(to_sr, from_sr))
    reach = len(_resample_lowpass(max(up, down))) // up + 2  # input samples the filter reaches, with room
    start = max(0, first * down // up - reach) // down * down
    stop = min(audio.shape[1], end * down // up + reach + 1)
    part = _resample_poly(audio[:, start:stop], up, down).astype(np.float32)                # (C, ~)
    shift = start * up // down
    whole = round(audio.shape[1] * to_sr / from_sr)  # `resample`'s length: past it, silence
    last = min(end, whole, shift + part.shape[1])
    if last > first:
        out[:, first:last] = part[:, first - shift:last - shift]
    return out


def resample_to_length(samples: np.ndarray, from_sr: int, to_sr: int, length: int) -> np.ndarray:
    """Resample to `to_sr` with exactly `length` samples, in one band-limited pass. When `length`
    is not the resampled length (a picture that plays at another rate), the audio is varispeeded
    to it, tape-style: pitch follows speed, as the picture's sound would."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    from_sr = _check_sample_rate(from_sr, "source sample rate")
    to_sr = _check_sample_rate(to_sr, "target sample rate")
    if isinstance(length, bool) or int(length) != length or length < 0:
        raise InvalidInputError(f"The length must be a whole number of samples, got {length!r}.")
    if length == round(audio.shape[1] * to_sr / from_sr) or audio.shape[1] == 0:
        return fit_length(resample(audio, from_sr, to_sr), int(length))
    stretched = _resample_poly(audio, *_resample_ratio(Fraction(int(length), audio.shape[1])))
    return fit_length(stretched.astype(np.float32), int(length))


def match_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Downmix to mono by averaging, or upmix mono by copying it to every channel."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    channels = _check_channel_count(channels)
    have = audio.shape[0]
    if have == channels:
        return audio.copy()
    if channels == 1:
        return audio.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    raise AudioError(
        f"Cannot map {have}-channel audio onto {channels} channels: only mono-to-many and "
        "many-to-mono are supported. Export the stem as mono or stereo."
    )


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim to `length` samples, or pad the end with silence."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    if isinstance(length, bool) or int(length) != length or length < 0:
        raise InvalidInputError(f"The length must be a whole number of samples, got {length!r}.")
    have = audio.shape[1]
    if have >= length:
        return audio[:, :length].copy()
    padded = np.zeros((audio.shape[0], int(length)), dtype=np.float32)
    padded[:, :have] = audio
    return padded


PREDICTION_ORDER = 32


def predict_continuation(samples: np.ndarray, count: int, context: int) -> np.ndarray:
    """`count` samples that carry on each channel of (C, S) audio past its end, (C, count)
    float32: linear prediction from its last `context` samples, driven by that context's own
    prediction error played backwards (its transients clipped to its steady level), so a hum
    carries on in phase and noise carries on as noise of its level and colour, and a click just
    before the end is not heard again. Why: a take extended from its very end has nothing of its own
    past the seam to crossfade from, and a cut straight into new audio clicks. Stable by
    construction (the autocorrelation method on a windowed context), and never further from the
    context's mean (its offset, carried on as it is) than the context is."""
    # samples: (C, S)
    audio = as_channels_first(samples)
    out = np.zeros((audio.shape[0], max(0, int(count))), np.float32)
    context = audio[:, -max(1, int(context)):].astype(np.float64)
    order = min(PREDICTION_ORDER, context.shape[1] // 4)
    if count <= 0 or not context.shape[1]:
        return out
    if order < 1:  # too short to predict from: its offset alone carries on
        out[:] = context.mean(axis=1, keepdims=True)
        return out
    window = np.hanning(context.shape[1] + 2)[1:-1]
    for c, raw in enumerate(context):
        # centred: an offset is no sound to carry on, and undriven (a channel that is offset
        # alone) the prediction of it decayed, a dip of a fifth of the offset across a seam
        offset = float(raw.mean())
        channel = raw - offset
        out[c] = offset
        tapered = channel * window
        lags = np.array([np.dot(tapered[: len(tapered) - k], tapered[k:]) for k in range(order + 1)])
        if not lags[0] > 0:
            continue  # a silent (or constant) context carries on as it is
        lags[0] *= 1.0 + 1e-6  # a touch of white noise keeps the system well posed
        predictor = np.concatenate([[1.0], -solve_toeplitz(lags[:-1], lags[1:])])  # y[n] = sum a_k y[n-k] + e[n]
        error = lfilter(predictor, [1.0], channel)[order:]          # past the filter's start-up
        # the error's transients (a footstep just before the end) clipped to its steady level, or
        # played back they came again just after the seam: a doubled step
        spread = 1.4826 * float(np.median(np.abs(error - np.median(error))))
        error = np.clip(error, -3.0 * spread, 3.0 * spread)
        drive = np.resize(error[::-1], out.shape[1])                  # the newest first, as a mirror would
        state = lfiltic([1.0], predictor, channel[::-1][:order])     # the last samples, newest first
        carried, _ = lfilter([1.0], predictor, drive, zi=state)
        peak = float(np.max(np.abs(channel)))
        out[c] = np.clip(np.nan_to_num(carried), -peak, peak) + offset
    return out


def mix_tracks(
    tracks: Sequence[tuple[np.ndarray, int]],
    sample_rate: int,
    length: int,
    channels: int = 1,
    target_lufs: float = -20.0,
    ceiling_dbtp: float = -1.0,
) -> np.ndarray:
    """The composite of the paper: every stem brought to (channels, length) at `sample_rate`,
    summed unweighted, loudness-normalized to `target_lufs`, then true-peak limited.

    `tracks` holds (samples (C, S), sample_rate) pairs. No tracks gives silence.
    Returns float32 (channels, length).
    """
    sample_rate = _check_sample_rate(sample_rate)
    channels = _check_channel_count(channels)
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise InvalidInputError(f"The mix length must be at least one sample, got {length!r}.")
    mix = np.zeros((channels, int(length)), dtype=np.float64)
    for index, (stem, stem_rate) in enumerate(tracks, start=1):
        what = f"Stem {index} of {len(tracks)}"
        audio = as_channels_first(stem)
        if audio.shape[1] == 0:
            raise AudioError(f"{what} has no samples (it is empty). Remove it from the mix or regenerate it.")
        _check_finite(audio, what)
        audio = resample(audio, _check_sample_rate(stem_rate, f"sample rate of {what.lower()}"), sample_rate)
        audio = match_channels(audio, channels)
        mix += fit_length(audio, length)
    if not tracks:
        return mix.astype(np.float32)
    normalized = loudness_normalize(mix.astype(np.float32), sample_rate, target_lufs)
    return limit_true_peak(normalized, sample_rate, ceiling_dbtp)


@dataclass(frozen=True)
class StemLevels:
    """What `finish_stem` measured; recorded in each track's metadata. A loudness or peak of
    None is silence (nothing above BS.1770's absolute gate)."""

    decoded_lufs: float | None  # the track as the model made it, before any gain or limiter
    decoded_peak_dbfs: float | None  # its sample peak (above 0 dBFS: the model overloaded)
    pre_limiter_clipped_fraction: float  # its samples beyond full scale (|x| > 1), 0..1
    gain_db: float | None  # the loudness-normalizing gain applied (None: not one gain, a curve's automation)
    limiter_input_true_peak_dbtp: float | None  # what the limiter saw (above the ceiling: it worked)
    lufs: float | None  # the finished stem
    silence_fraction: float  # of the finished stem's 50 ms blocks, under SILENCE_BLOCK_DBFS


def clipped_fraction(samples: np.ndarray) -> float:
    """The fraction of samples (over every channel) beyond full scale, |x| > 1."""
    audio = as_channels_first(samples)
    return float(np.mean(np.abs(audio) > 1.0)) if audio.size else 0.0


def silence_fraction(samples: np.ndarray, sample_rate: int, block_s: float = SILENCE_BLOCK_S,
                     threshold_dbfs: float = SILENCE_BLOCK_DBFS) -> float:
    """The fraction of `block_s` blocks whose RMS over every channel is under `threshold_dbfs`
    (a partial last block is left out; audio shorter than one block is one block; no audio is silent)."""
    # samples: (C, S)
    audio = as_channels_first(samples).astype(np.float64)
    if audio.shape[1] == 0:
        return 1.0
    block = min(audio.shape[1], max(1, int(round(block_s * _check_sample_rate(sample_rate)))))
    count = audio.shape[1] // block
    blocks = audio[:, :count * block].reshape(audio.shape[0], count, block)
    rms = np.sqrt(np.mean(blocks ** 2, axis=(0, 2)))
    return float(np.mean(rms < 10.0 ** (threshold_dbfs / 20.0)))


def finish_stem(samples: np.ndarray, sample_rate: int, target_lufs: float = STEM_LUFS,
                ceiling_dbtp: float = STEM_CEILING_DBTP) -> tuple[np.ndarray, StemLevels]:
    """A generated track made ready to leave the engine: measured as decoded (loudness, peak,
    samples beyond full scale), loudness-normalized to `target_lufs`, then true-peak limited to
    `ceiling_dbtp`; where limiting took loudness too, the limiter is driven harder (up to
    MAX_LIMITER_DRIVE_DB) until the stem is at `target_lufs`. So a stem leaves at `target_lufs`
    unless its peaks would need more than that, and never above. Silence (under the absolute
    gate) is left at its level. Returns the finished (C, S) float32 samples and the measurements."""
    # samples: (C, S), any level (a decoder that does not clamp may exceed full scale)
    audio = as_channels_first(samples)
    _check_finite(audio, "The generated track")
    decoded_lufs, blocks = loudness_and_blocks(audio, sample_rate)
    gain_db = loudness_gain_db(blocks, target_lufs, decoded_lufs) if decoded_lufs >= SILENCE_GATE_LUFS else 0.0
    normalized = _gain_db(audio, gain_db)
    envelope = true_peak_envelope(normalized)
    limiter_input = _envelope_dbtp(envelope)
    finished = limit_true_peak(normalized, sample_rate, ceiling_dbtp, envelope=envelope)
    lufs = integrated_loudness(finished, sample_rate)
    # Limiting took loudness with the peaks: the limiter is driven harder, as a mastering
    # engineer would, until the stem is at the target (a peaky track, such as footsteps, can ask
    # for a few dB; past MAX_LIMITER_DRIVE_DB it stays under the target instead). The drive is
    # found by false position between the best drive under the target and the least over it,
    # and a drive that lands over the target is never kept.
    under, over = (0.0, lufs), None                               # (drive dB, LUFS)
    for _ in range(MAX_DRIVE_PASSES if limiter_input > ceiling_dbtp and math.isfinite(lufs) else 0):
        if target_lufs - under[1] <= LOUDNESS_TOLERANCE_LU or under[0] >= MAX_LIMITER_DRIVE_DB:
            break
        if over is None:  # a first guess: each dB of drive a dB of loudness
            drive = min(under[0] + target_lufs - under[1], MAX_LIMITER_DRIVE_DB)
        else:
            drive = under[0] + (target_lufs - under[1]) * (over[0] - under[0]) / (over[1] - under[1])
        driven = limit_true_peak(_gain_db(normalized, drive), sample_rate, ceiling_dbtp,
                                 envelope=envelope * np.float32(10.0 ** (drive / 20.0)))
        driven_lufs = integrated_loudness(driven, sample_rate)
        if driven_lufs > target_lufs + LOUDNESS_TOLERANCE_LU:
            over = (drive, driven_lufs)
        elif (driven_lufs - under[1]) / (drive - under[0]) < MIN_DRIVE_GAIN:
            break  # the peaks take nearly every dB back: driving harder is no use
        else:
            under, finished, lufs = (drive, driven_lufs), driven, driven_lufs
    return finished, measured_levels(audio, finished, sample_rate, float(gain_db), limiter_input, decoded_lufs, lufs)


def measured_levels(decoded: np.ndarray, finished: np.ndarray, sample_rate: int, gain_db: float | None,
                    limiter_input_dbtp: float, decoded_lufs: float, lufs: float) -> StemLevels:
    """StemLevels of a stem `finished` from `decoded` (both (C, S)), as every way of finishing
    one records them."""
    peak = float(np.max(np.abs(decoded))) if decoded.size else 0.0
    return StemLevels(
        decoded_lufs=finite_or_none(decoded_lufs),
        decoded_peak_dbfs=finite_or_none(20.0 * math.log10(peak) if peak > 0 else -math.inf),
        pre_limiter_clipped_fraction=clipped_fraction(decoded), gain_db=gain_db,
        limiter_input_true_peak_dbtp=finite_or_none(limiter_input_dbtp), lufs=finite_or_none(lufs),
        silence_fraction=silence_fraction(finished, sample_rate))


def finite_or_none(value: float) -> float | None:
    """A measured figure for metadata (JSON has no infinity): None where it is not finite."""
    return float(value) if math.isfinite(value) else None


def reported_lufs(samples: np.ndarray, sample_rate: int) -> float | None:
    """A stem's integrated loudness for its metadata: None for silence or audio under 400 ms,
    and for more channels than BS.1770 weighs (a 7.1 take extended keeps its channels)."""
    # samples: (C, S)
    if as_channels_first(samples).shape[0] > MAX_LOUDNESS_CHANNELS:
        return None
    return finite_or_none(integrated_loudness(samples, sample_rate))
