"""The one time-frequency view every evaluation figure is computed on: the 16 kHz mel view the
judging embedding sees (defined in engine/audio_embedding.py, because ranking uses it when
serving and the engine never imports the lab), and its numpy and decibel forms.
"""

from __future__ import annotations

import numpy as np
import torch

from stepfoley.engine.audio_embedding import (FLOOR_DB, FRAMES_PER_SECOND, SAMPLE_RATE, mel_power_torch,
                                              normalized_log_mel, to_eval_rate)
from stepfoley.engine.errors import InvalidInputError

__all__ = ["FRAMES_PER_SECOND", "SAMPLE_RATE", "mel_power", "mel_power_torch", "normalized_log_mel", "power_to_db",
           "to_eval_rate"]


def mel_power(samples: np.ndarray) -> np.ndarray:
    """Mono (S,) at 16 kHz -> mel power (N_MELS, frames) float64."""
    samples = np.asarray(samples, np.float32)
    if samples.size == 0:
        raise InvalidInputError("A track to evaluate is empty (zero samples).")
    return mel_power_torch(torch.from_numpy(samples)[None])[0].double().numpy()


def power_to_db(power: np.ndarray) -> np.ndarray:
    """Decibels, floored at FLOOR_DB so silence is a finite constant."""
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))
