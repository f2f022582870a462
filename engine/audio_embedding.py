"""The shipped audio-text embedding (the mini-world's CLAP) at inference: ranking judges takes
with it, and the lab's evaluation measures with it. Its input view, its network and its file.

Input view: fixed parameters (not options) so that two runs always measure the same thing:
16 kHz, 512-point FFT (32 ms Hann window), 256-sample hop (16 ms), 64 mel bands from 0 to
8 kHz. Each mel band is the *average* power of the FFT bins under its triangle, and power is
scaled so that a full-scale sine reads about 0 dB in its FFT bin. The network sees the log-mel
with each clip's mean removed, so it is the same at any gain.

Network: audio tower, a small CNN over that log-mel, pooled over time and frequency, projected
and L2-normalized; text tower, the sentence vector of the embedded model's text encoder
(all-MiniLM-L6-v2, frozen, from engine/embedded/text.py) through a learned linear projection,
L2-normalized. MiniLM's weights come pinned from a package, so the tower cannot drift when the
embedded flow model is retrained; any caption can be embedded, not only the mini-world's
paraphrases.

It is trained in the lab (lab/evaluation/embedding.py); the engine only loads the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stepfoley.engine import mixing
from stepfoley.engine.checkpoints import config_from_report, load_with_report
from stepfoley.engine.codec.mel import slaney_mel_filterbank
from stepfoley.engine.errors import InvalidInputError

# -- the input view --

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


# -- the network --

def conv_trunk(channels: tuple) -> nn.Sequential:
    """(B, 1, M, T) log-mel -> (B, channels[-1], M', T'): 3x3 conv, batch norm, ReLU, 2x2 max pool
    per entry of `channels`. The lab's source-presence classifier uses the same trunk."""
    blocks, width = [], 1
    for out in channels:
        blocks += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*blocks)


def pool_time_frequency(h: torch.Tensor) -> torch.Tensor:
    # h: (B, C, M', T') -> (B, 2C): mean and max over time and frequency, so any length works
    return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


FORMAT = "stepfoley-audio-embedding-1"
TEXT_TOWER = "minilm-sentence+linear"
SHIPPED_PATH = Path(__file__).resolve().parent / "embedded" / "audio_embedding.safetensors"
WHAT = "evaluation embedding"
HOW_TO_TRAIN = "train one with `stepfoley eval --train-embedding FILE`, or let `stepfoley eval` do it"


@dataclass(frozen=True)
class AudioEmbeddingConfig:
    kinds: tuple              # the mini-world's source kinds it was trained on (the lab checks them)
    channels: tuple = (8, 16, 32, 64)
    embed_dim: int = 128
    text_dim: int = 384       # EmbeddedTextEncoder.sentence_embedding
    text_tower: str = TEXT_TOWER


class AudioEmbedding(nn.Module):
    def __init__(self, config: AudioEmbeddingConfig, text_encoder=None):
        super().__init__()
        self.config = config
        self._text_encoder = text_encoder  # not a submodule: its weights are not saved here
        self.report: dict = {}  # the training report, once loaded from a file
        self.path: Path | None = None
        self.conv = conv_trunk(config.channels)
        self.project = nn.Linear(2 * config.channels[-1], config.embed_dim)
        self.text_project = nn.Linear(config.text_dim, config.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        # log_mel: (B, 1, M, T) -> (B, D), unit length
        pooled = pool_time_frequency(self.conv(log_mel))   # (B, 2C)
        return F.normalize(self.project(pooled), dim=-1)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from stepfoley.engine.embedded.text import EmbeddedTextEncoder

            self._text_encoder = EmbeddedTextEncoder()
        return self._text_encoder

    def sentence_vectors(self, captions: Sequence[str]) -> torch.Tensor:
        """Frozen MiniLM sentence vectors (B, text_dim), on the CPU."""
        return self.text_encoder.sentence_embedding(list(captions)).float().cpu().clone()

    def project_text(self, sentence_vectors: torch.Tensor) -> torch.Tensor:
        # sentence_vectors: (B, text_dim) -> (B, D), unit length
        return F.normalize(self.text_project(sentence_vectors), dim=-1)

    def description(self) -> dict:
        """What to record next to figures measured with this embedding."""
        return {"path": str(self.path) if self.path else None, "text_tower": self.config.text_tower,
                "training_seed": self.report.get("training", {}).get("seed"),
                "steps_done": self.report.get("steps_done"), "validation": self.report.get("validation", {})}

    # -- numpy API for ranking and the metrics --

    @torch.inference_mode()
    def embed_audio(self, tracks: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Mono tracks (each (S,), any lengths of at least 0.1 s) -> (K, D) float64, unit rows."""
        rows = []
        for samples in tracks:
            wave = to_eval_rate(np.asarray(samples, np.float32), sample_rate)
            if len(wave) < 1600:
                raise InvalidInputError(f"A track of {len(wave)} samples is too short to evaluate; "
                                        "the evaluation needs at least 0.1 s of audio.")
            mel = mel_power_torch(torch.from_numpy(np.ascontiguousarray(wave))[None])
            rows.append(self(normalized_log_mel(mel))[0])
        return torch.stack(rows).double().numpy()

    @torch.inference_mode()
    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        """Captions -> (K, D) float64, unit rows."""
        captions = list(captions)
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise InvalidInputError("Every track needs a non-empty caption to measure text fidelity against.")
        return self.project_text(self.sentence_vectors(captions)).double().numpy()


def embedding_from_report(report: dict, text_encoder=None) -> AudioEmbedding:
    """The empty network of the config a file's training report records."""
    return AudioEmbedding(config_from_report(AudioEmbeddingConfig, report), text_encoder)


def load_audio_embedding(path: str | os.PathLike, text_encoder=None) -> AudioEmbedding:
    """The embedding saved by the lab's training, in eval mode on the CPU. `text_encoder`: an
    EmbeddedTextEncoder already loaded (e.g. the model's), else one is loaded on first use."""
    return load_with_report(path, FORMAT, WHAT, HOW_TO_TRAIN,
                            lambda report: embedding_from_report(report, text_encoder))
