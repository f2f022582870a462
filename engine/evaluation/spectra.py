"""The one time-frequency view every evaluation figure is computed on: a mel power
spectrogram of 16 kHz mono audio, and its decibel form.

Fixed parameters (not options) so that two runs of `stepfoley eval` always measure the same
thing: 16 kHz, 512-point FFT (32 ms Hann window), 256-sample hop (16 ms), 64 mel bands from
0 to 8 kHz. Each mel band is the *average* power of the FFT bins under its triangle, and
power is scaled so that a full-scale sine reads about 0 dB in its FFT bin.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from stepfoley.engine import mixing
from stepfoley.engine.codec.mel import slaney_mel_filterbank
from stepfoley.engine.errors import InvalidInputError

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 64
FLOOR_DB = -100.0  # quieter than any sound of interest; keeps log(0) out of every figure
FRAMES_PER_SECOND = SAMPLE_RATE / HOP


@lru_cache(maxsize=1)
def _mel_matrix() -> torch.Tensor:
    # (N_MELS, N_FFT // 2 + 1), rows summing to 1: a band's value is the mean power under it
    weights = slaney_mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS, 0.0, SAMPLE_RATE / 2)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, dtype=torch.float32)


def to_eval_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 (S,) at 16 kHz from mono (S,) audio at `sample_rate`."""
    samples = np.asarray(samples, np.float32)
    if samples.ndim != 1:
        raise InvalidInputError(f"Evaluation takes mono audio shaped (samples,), got shape {samples.shape}.")
    if sample_rate == SAMPLE_RATE:
        return samples
    return mixing.resample(samples[None], sample_rate, SAMPLE_RATE)[0]


def mel_power_torch(waves: torch.Tensor) -> torch.Tensor:
    """waves (B, S) float32 at 16 kHz -> mel power (B, N_MELS, frames), frames = S // HOP + 1."""
    # waves: (B, S)
    window = _window().to(waves.device)
    spec = torch.stft(waves, N_FFT, HOP, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    power = spec.real.square() + spec.imag.square()
    power = power / (window.sum() / 2) ** 2
    return torch.einsum("mf,bft->bmt", _mel_matrix().to(waves.device), power)


def normalized_log_mel(mel_power: torch.Tensor) -> torch.Tensor:
    """(B, M, T) mel power -> (B, 1, M, T) log-mel (bels) with each clip's mean removed: what the
    evaluation's networks see, the same at any gain."""
    # mel_power: (B, M, T)
    log_mel = torch.log10(mel_power.clamp_min(10.0 ** (FLOOR_DB / 10.0))) * 0.5
    log_mel = log_mel - log_mel.mean(dim=(1, 2), keepdim=True)
    return log_mel[:, None]


def mel_power(samples: np.ndarray) -> np.ndarray:
    """Mono (S,) at 16 kHz -> mel power (N_MELS, frames) float64."""
    samples = np.asarray(samples, np.float32)
    if samples.size == 0:
        raise InvalidInputError("A track to evaluate is empty (zero samples).")
    return mel_power_torch(torch.from_numpy(samples)[None])[0].double().numpy()


def power_to_db(power: np.ndarray) -> np.ndarray:
    """Decibels, floored at FLOOR_DB so silence is a finite constant."""
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))
