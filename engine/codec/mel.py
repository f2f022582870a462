"""Log-mel spectrograms exactly as MMAudio's VAE and vocoders expect them.

The 16 kHz stack (Make-An-Audio 2 lineage) compresses with log10, the 44.1 kHz stack
(BigVGAN-v2 lineage) with the natural log; mixing them up gives plausible-looking but wrong
mels, so the choice lives in the config, not at call sites.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from stepfoley.engine.errors import InvalidInputError


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float
    fmax: float
    log: str  # "log10" or "ln"

    @staticmethod
    def preset(mode: str) -> "MelConfig":
        if mode not in MEL_PRESETS:
            raise InvalidInputError(f"Unknown codec mode {mode!r}: use one of {sorted(MEL_PRESETS)}.")
        return MEL_PRESETS[mode]


MEL_PRESETS = {
    "16k": MelConfig(16_000, 1024, 256, 1024, 80, 0.0, 8_000.0, "log10"),
    "44k": MelConfig(44_100, 2048, 512, 2048, 128, 0.0, 22_050.0, "ln"),
}


# Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_HZ_PER_MEL
    log_part = _SLANEY_BREAK_MEL + np.log(np.maximum(hz, _SLANEY_BREAK_HZ) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_BREAK_HZ, log_part, linear)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_HZ_PER_MEL
    log_part = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP * (np.maximum(mel, _SLANEY_BREAK_MEL) - _SLANEY_BREAK_MEL))
    return np.where(mel >= _SLANEY_BREAK_MEL, log_part, linear)


def slaney_mel_filterbank(sample_rate: float, n_fft: int, num_mels: int, fmin: float, fmax: float,
                          librosa_rounding: bool = True) -> torch.Tensor:
    """Triangular filters, equally spaced on the Slaney mel scale, each scaled to unit area
    in Hz ("slaney" norm). Returns (num_mels, n_fft // 2 + 1) float32: with `librosa_rounding`
    the same matrix librosa.filters.mel builds with its defaults, to the last bit (MMAudio's
    converters); without it, computed in float64 and rounded once at the end, the matrix the
    embedded codec's model was trained with (the two differ by float32 rounding only, 1e-9)."""
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges_hz = slaney_mel_to_hz(np.linspace(hz_to_slaney_mel(fmin), hz_to_slaney_mel(fmax), num_mels + 2))
    widths_hz = np.diff(edges_hz)
    offsets = edges_hz[:, None] - bin_hz[None, :]  # (num_mels + 2, bins)
    # librosa stores the ramps in float32 before the area scaling; do the same so the
    # matrix agrees to the last bit rather than to 1e-7.
    weights = np.zeros((num_mels, bin_hz.size), dtype=np.float32 if librosa_rounding else np.float64)
    for m in range(num_mels):
        rising = -offsets[m] / widths_hz[m]
        falling = offsets[m + 2] / widths_hz[m + 1]
        weights[m] = np.maximum(0.0, np.minimum(rising, falling))
    area_scale = 2.0 / (edges_hz[2 : num_mels + 2] - edges_hz[:num_mels])
    weights *= area_scale[:, None]
    return torch.from_numpy(weights.astype(np.float32))


class MelConverter(nn.Module):
    """waveform (B, S) in [-1, 1] -> log-mel (B, num_mels, frames), channels-first.

    frames = S // hop_size for S a multiple of hop_size (the reflect padding of
    (n_fft - hop) / 2 on each side replaces STFT centering)."""

    def __init__(self, config: MelConfig):
        super().__init__()
        self.config = config
        basis = slaney_mel_filterbank(config.sample_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
        # Not persistent: they are derived from the config, and the official checkpoints
        # have no mel-converter entries.
        self.register_buffer("mel_basis", basis, persistent=False)
        self.register_buffer("hann_window", torch.hann_window(config.win_size), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # waveform: (B, S)
        c = self.config
        pad = (c.n_fft - c.hop_size) // 2
        if waveform.ndim != 2 or waveform.shape[-1] <= pad:
            raise InvalidInputError(
                f"Audio for the mel converter must be (batch, samples) with more than {pad} samples; "
                f"got shape {tuple(waveform.shape)}."
            )
        x = waveform.clamp(-1.0, 1.0).to(self.mel_basis.device)
        x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            x,
            c.n_fft,
            hop_length=c.hop_size,
            win_length=c.win_size,
            window=self.hann_window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        # The 1e-9 keeps the sqrt differentiable at silent bins (training code's choice).
        magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)  # (B, bins, frames)
        mel = torch.matmul(self.mel_basis, magnitude)
        mel = torch.clamp(mel, min=1e-5)
        return torch.log10(mel) if c.log == "log10" else torch.log(mel)
