"""The source-presence classifier: which of the mini-world's source kinds a track holds.

Text fidelity and leakage are read from it (lab.evaluation.runner): a track made for "rain"
should hold rain (text fidelity = P(rain)) and none of the sources of the tracks before it
(leakage = their mean probability).

Model: the evaluation embedding's convolutional trunk over the gain-free log-mel of an 8 s
track (evaluation.spectra), mean and max pooled, then one logit per kind (multi-label).

Training (CPU, about two minutes): mixtures built on the fly from single-source clips, each
clip at unit RMS. A mixture holds 1-4 kinds ("present"), each at a random gain of -20..0 dB
(so present means: within about 20 dB of the loudest source), sometimes one more kind 30-45 dB
down, labelled absent (so a faint trace is not "present"), and a random overall level. Half the
mixtures go through the embedded model's codec (encode, Griffin-Lim decode), so generated
audio is in-distribution. The validation set is built the same way from clips of other seeds,
once, with a fixed seed; its figures are stored with the weights and reported by `stepfoley
eval`. A fixed number of steps from a seed gives the same weights on the same machine and
thread count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stepfoley.engine import embedded, mixing
from stepfoley.engine.audio_embedding import conv_trunk, pool_time_frequency
from stepfoley.engine.checkpoints import config_from_report
from stepfoley.engine.errors import InvalidInputError
from stepfoley.lab.evaluation import store
from stepfoley.lab.evaluation.spectra import SAMPLE_RATE, mel_power_torch, normalized_log_mel, to_eval_rate
from stepfoley.lab.miniworld import SOURCE_KINDS, single_source_clip

FORMAT = "stepfoley-source-presence-1"
SHIPPED_PATH = Path(embedded.__file__).resolve().with_name("source_presence.safetensors")
# Clip seeds: disjoint from the base model's training seeds [0, 1e5), the evaluation and
# development scenes [1e7, 1e8) and the evaluation embedding's clips [5e8, 6e8).
CLIP_SEED_BASE = 700_000_000
VALIDATION_FIRST_CLIP = 900  # validation clips: seeds from here on, per kind
PRESENT = 0.5  # a probability at or above this counts as "present" in the validation figures


@dataclass(frozen=True)
class PresenceConfig:
    kinds: tuple = tuple(sorted(SOURCE_KINDS))
    channels: tuple = (8, 16, 32, 64)


@dataclass(frozen=True)
class PresenceTraining:
    seed: int = 0
    steps: int = 600
    batch_size: int = 32
    clips_per_kind: int = 24
    validation_clips_per_kind: int = 6
    validation_mixtures: int = 384
    clip_seconds: float = 8.0
    max_sources: int = 4
    present_gain_db: tuple = (-20.0, 0.0)
    faint_gain_db: tuple = (-45.0, -30.0)
    faint_probability: float = 0.3
    level_dbfs: tuple = (-40.0, -10.0)  # the mixture's RMS
    codec_probability: float = 0.5
    learning_rate: float = 3e-3


class SourcePresence(nn.Module):
    def __init__(self, config: PresenceConfig):
        super().__init__()
        self.config = config
        self.report: dict = {}
        self.path: Path | None = None
        self.conv = conv_trunk(config.channels)
        self.classify = nn.Linear(2 * config.channels[-1], len(config.kinds))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        # log_mel: (B, 1, M, T) -> logits (B, n_kinds)
        return self.classify(pool_time_frequency(self.conv(log_mel)))

    def kind_index(self, kind: str) -> int:
        return self.config.kinds.index(kind)

    def description(self) -> dict:
        """What to record next to figures measured with this classifier."""
        return {"path": str(self.path) if self.path else None, "kinds": list(self.config.kinds),
                "training_seed": self.report.get("training", {}).get("seed"),
                "steps_done": self.report.get("steps_done"), "validation": self.report.get("validation", {})}

    @torch.inference_mode()
    def probabilities(self, tracks: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Mono tracks (each (S,), one length) -> (K, n_kinds) float64: the probability that each
        kind is present. A silent track (under BS.1770's absolute gate) holds nothing: all 0."""
        waves = np.stack([to_eval_rate(np.asarray(t, np.float32), sample_rate) for t in tracks])
        if waves.shape[1] < SAMPLE_RATE // 10:
            raise InvalidInputError(f"A track of {waves.shape[1]} samples is too short to evaluate; "
                                    "the evaluation needs at least 0.1 s of audio.")
        log_mel = normalized_log_mel(mel_power_torch(torch.from_numpy(waves)))
        probabilities = torch.sigmoid(self(log_mel)).double().numpy()
        silent = [mixing.integrated_loudness(w, SAMPLE_RATE) < mixing.SILENCE_GATE_LUFS for w in waves]
        probabilities[np.asarray(silent, bool)] = 0.0
        return probabilities


# -- training --

def _clip_pool(training: PresenceTraining, kinds: tuple, first: int, count: int, codec) -> torch.Tensor:
    """(2, n_kinds, count, S) float32 clips at unit RMS: [0] as made, [1] through the codec."""
    clips = []
    for k, kind in enumerate(kinds):
        first_seed = store.first_clip_seed(CLIP_SEED_BASE, training.seed, k, first)
        for i in range(count):
            wave = single_source_clip(first_seed + i, kind, training.clip_seconds).mixture
            clips.append(wave / max(float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))), 1e-9))
    clean = torch.from_numpy(np.stack(clips).astype(np.float32))                 # (n_kinds * count, S)
    with torch.inference_mode():  # in chunks: Griffin-Lim holds a few complex spectrograms per clip
        through_codec = torch.cat([codec.decode(codec.encode(chunk))[:, : clean.shape[1]]
                                   for chunk in clean.split(16)])
    return torch.stack([clean, through_codec]).reshape(2, len(kinds), count, -1)


def _mixtures(pool: torch.Tensor, count: int, training: PresenceTraining, generator: torch.Generator):
    """`count` random mixtures from the pool: (log-mel (count, 1, M, T), labels (count, n_kinds),
    faint (count, n_kinds) marking kinds mixed in 30-45 dB down)."""
    _, n_kinds, n_clips, length = pool.shape

    def uniform(bounds, size=()):
        low, high = bounds
        return low + (high - low) * torch.rand(size, generator=generator)

    waves = torch.zeros(count, length)
    labels = torch.zeros(count, n_kinds)
    faint = torch.zeros(count, n_kinds)
    for b in range(count):
        n = int(torch.randint(1, training.max_sources + 1, (1,), generator=generator))
        order = torch.randperm(n_kinds, generator=generator)
        version = int(torch.rand((), generator=generator) < training.codec_probability)
        chosen = [(int(k), training.present_gain_db, labels) for k in order[:n]]
        if n < n_kinds and float(torch.rand((), generator=generator)) < training.faint_probability:
            chosen.append((int(order[n]), training.faint_gain_db, faint))
        for k, gains, mark in chosen:
            clip = int(torch.randint(0, n_clips, (1,), generator=generator))
            waves[b] += pool[version, k, clip] * 10.0 ** (float(uniform(gains)) / 20.0)
            mark[b, k] = 1.0
        rms = waves[b].square().mean().sqrt().clamp_min(1e-9)
        waves[b] *= 10.0 ** (float(uniform(training.level_dbfs)) / 20.0) / rms
    return normalized_log_mel(mel_power_torch(waves)), labels, faint


def presence_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, faint: torch.Tensor) -> dict:
    """Validation figures of (N, n_kinds) probabilities against 0/1 labels, a kind counting as
    present at PRESENT or above: label_accuracy (over every example and kind), balanced_accuracy
    (mean of the rates on present and on absent labels), exact_match (every kind right),
    faint_rejected (kinds mixed in 30-45 dB down, marked in `faint`, called absent),
    single_source_accuracy (exact match on one-source examples); None where there are none."""
    present = probabilities >= PRESENT
    truth = labels.bool()
    single = truth.sum(1) == 1
    return {
        "label_accuracy": float((present == truth).float().mean()),
        "balanced_accuracy": float(0.5 * (present[truth].float().mean() + (~present[~truth]).float().mean())),
        "exact_match": float((present == truth).all(1).float().mean()),
        "faint_rejected": float((~present[faint.bool()]).float().mean()) if faint.any() else None,
        "single_source_accuracy": float((present[single] == truth[single]).all(1).float().mean())
        if single.any() else None,
        "mixtures": int(len(labels)),
    }


def _validation_figures(model: SourcePresence, log_mel: torch.Tensor, labels: torch.Tensor,
                        faint: torch.Tensor) -> dict:
    with torch.inference_mode():
        return presence_accuracy(torch.sigmoid(model(log_mel)), labels, faint)


def train_source_presence(out_path: str | os.PathLike, seed: int = 0, minutes: float = 10.0,
                          on_progress: Callable[[int, int], None] | None = None, **overrides) -> dict:
    """Train the classifier on the CPU and save it (atomically) to `out_path`. `overrides`:
    PresenceTraining fields (steps, clips_per_kind, ...), e.g. for a quick test. `minutes` only
    stops a run that is unexpectedly slow (the report then says "complete": false). Returns the
    training report, also stored in the file."""
    from stepfoley.engine.embedded.codec import MelCodec, MelCodecConfig

    config = PresenceConfig()
    training = PresenceTraining(seed=int(seed), **overrides)
    torch.manual_seed(training.seed)
    # The shipped classifier learned the round trip of the first codec (log_offset 0) through
    # the first decoder (Griffin-Lim at the latent's hop); the same command must make the same
    # classifier.
    codec = MelCodec(MelCodecConfig(log_offset=0.0, nnls_iterations=30, griffin_lim_iterations=32, synthesis_hop=512))
    pool = _clip_pool(training, config.kinds, 0, training.clips_per_kind, codec)
    held_out = _clip_pool(training, config.kinds, VALIDATION_FIRST_CLIP, training.validation_clips_per_kind, codec)
    validation = _mixtures(held_out, training.validation_mixtures, training,
                           torch.Generator().manual_seed(training.seed + 1))
    generator = torch.Generator().manual_seed(training.seed)
    model = SourcePresence(config)

    def batch_loss() -> torch.Tensor:
        log_mel, labels, _ = _mixtures(pool, training.batch_size, training, generator)
        return F.binary_cross_entropy_with_logits(model(log_mel), labels)

    done, loss = store.fit(model, batch_loss, training.steps, training.learning_rate, minutes, on_progress)
    report = {"format": FORMAT, "config": asdict(config), "training": asdict(training),
              "threads": torch.get_num_threads(), "steps_done": done,
              "complete": done == training.steps, "final_loss": loss,
              "validation": _validation_figures(model, *validation)}
    store.save_with_report(model, out_path, report)
    return report


def load_source_presence(path: str | os.PathLike) -> SourcePresence:
    """The classifier saved by train_source_presence, in eval mode on the CPU."""
    return store.load_with_report(
        path, FORMAT, "source-presence classifier",
        "train one with `stepfoley eval --train-classifier FILE`, or let `stepfoley eval` do it",
        lambda report: SourcePresence(config_from_report(PresenceConfig, report)))


def default_source_presence(cache: str | os.PathLike | None = None, seed: int = 0, minutes: float = 10.0,
                            on_message: Callable[[str], None] | None = None,
                            on_progress: Callable[[int, int], None] | None = None) -> SourcePresence:
    """The shipped classifier (engine/embedded/source_presence.safetensors) if present; else the
    one trained earlier into the cache; else train it there now (a few CPU minutes, once)."""
    return store.shipped_or_cached(
        SHIPPED_PATH, f"source_presence-{FORMAT}-seed{seed}.safetensors", "source-presence classifier", minutes,
        load=load_source_presence,
        train=lambda path: train_source_presence(path, seed=seed, minutes=minutes, on_progress=on_progress),
        cache=cache, on_message=on_message)
