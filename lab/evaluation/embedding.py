"""Training the mini-world's CLAP: an audio embedding trained contrastively against caption
embeddings, so one space gives both audio-audio (separability) and text-audio (text fidelity)
similarity. The network, its input view and its loader are the engine's
(engine/audio_embedding.py), because ranking judges takes with it when serving.

Training (CPU, a few minutes) uses single-source clips only: random 2-4 s crops, each
contrasted against every mini-world caption at once (all paraphrases of all kinds; the
target spreads evenly over the paraphrases of the clip's kind), i.e. CLIP's contrastive
loss with the whole caption set in every batch. A fixed number of steps from a seed gives the
same weights on the same machine and thread count; `minutes` only stops a run that is
unexpectedly slow (the saved report then says `"complete": false`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stepfoley.engine.audio_embedding import (FORMAT, HOW_TO_TRAIN, SHIPPED_PATH, WHAT, AudioEmbedding,
                                              AudioEmbeddingConfig, embedding_from_report)
from stepfoley.lab.evaluation import store
from stepfoley.lab.evaluation.spectra import FRAMES_PER_SECOND, mel_power_torch, normalized_log_mel
from stepfoley.lab.miniworld import CAPTIONS, SOURCE_KINDS, single_source_clip

# Clip seeds far from the base model's training seeds [0, 1e5) and the eval scenes (1e7 + ...).
CLIP_SEED_BASE = 500_000_000
VALIDATION_CLIPS_PER_KIND = 3


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 0
    steps: int = 300
    batch_per_kind: int = 8
    clips_per_kind: int = 40
    clip_seconds: float = 8.0
    crop_seconds: tuple = (2.0, 4.0)
    learning_rate: float = 2e-3


def _all_captions(kinds: tuple) -> tuple[list[str], torch.Tensor]:
    """Every paraphrase of every kind, and the (n_captions,) kind index of each."""
    captions = [(k, c) for k, kind in enumerate(kinds) for c in CAPTIONS[kind]]
    return [c for _, c in captions], torch.tensor([k for k, _ in captions])


def _clip_pool(config: TrainingConfig, kinds: tuple, first: int, count: int) -> torch.Tensor:
    """Log-mel of `count` single-source clips per kind: (n_kinds, count, 1, M, T)."""
    per_kind = []
    for k, kind in enumerate(kinds):
        first_seed = store.first_clip_seed(CLIP_SEED_BASE, config.seed, k, first)
        waves = np.stack([single_source_clip(first_seed + i, kind, config.clip_seconds).mixture
                          for i in range(count)])
        per_kind.append(normalized_log_mel(mel_power_torch(torch.from_numpy(waves))))
    return torch.stack(per_kind)


def _crop_batch(pool: torch.Tensor, generator: torch.Generator, config: TrainingConfig):
    """A balanced batch of random crops, one crop length per batch. Returns (x, labels)."""
    n_kinds, n_clips, _, _, frames = pool.shape
    low, high = (int(s * FRAMES_PER_SECOND) for s in config.crop_seconds)
    length = int(torch.randint(low, high + 1, (1,), generator=generator))
    labels = torch.arange(n_kinds).repeat_interleave(config.batch_per_kind)
    clips = torch.randint(0, n_clips, (len(labels),), generator=generator)
    starts = torch.randint(0, frames - length + 1, (len(labels),), generator=generator)
    crops = torch.stack([pool[k, c, :, :, s:s + length] for k, c, s in zip(labels, clips, starts)])
    # Removing each crop's own mean again keeps crops gain-free like whole tracks at eval time.
    return crops - crops.mean(dim=(1, 2, 3), keepdim=True), labels


def _validate(model: AudioEmbedding, pool: torch.Tensor, sentences: torch.Tensor, caption_kinds) -> dict:
    n_kinds, n_clips = pool.shape[:2]
    with torch.inference_mode():
        emb = model(pool.flatten(0, 1))                        # (n_kinds * n_clips, D)
        labels = torch.arange(n_kinds).repeat_interleave(n_clips)
        # a kind's text vector for validation: the mean of its paraphrases' similarities
        caption_sim = emb @ model.project_text(sentences).T   # (clips, n_captions)
        text_sim = torch.stack([caption_sim[:, caption_kinds == k].mean(1) for k in range(n_kinds)], 1)
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
        audio_sim = emb @ emb.T
        different = labels[:, None] != labels[None, :]
    return {
        "kind_accuracy": float((text_sim.argmax(1) == labels).float().mean()),
        "text_audio_matching": float(text_sim[torch.arange(len(labels)), labels].mean()),
        "audio_audio_same_kind": float(audio_sim[same].mean()),
        "audio_audio_other_kind": float(audio_sim[different].mean()),
    }


def train_audio_embedding(out_path: str | os.PathLike, seed: int = 0, minutes: float = 3.0,
                          on_progress: Callable[[int, int], None] | None = None, text_encoder=None,
                          **overrides) -> dict:
    """Train the evaluation embedding on the CPU and save it (atomically) to `out_path`.
    `text_encoder`: an EmbeddedTextEncoder already loaded (else one is loaded).
    `overrides`: TrainingConfig fields (steps, clips_per_kind, ...), e.g. for a quick test.
    Returns the training report also stored in the file's metadata."""
    out_path = Path(out_path)
    config = AudioEmbeddingConfig(kinds=tuple(sorted(SOURCE_KINDS)))
    training = TrainingConfig(seed=int(seed), **overrides)
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    model = AudioEmbedding(config, text_encoder)
    captions, caption_kinds = _all_captions(config.kinds)
    sentences = model.sentence_vectors(captions)             # (n_captions, text_dim), frozen
    pool = _clip_pool(training, config.kinds, 0, training.clips_per_kind)

    def batch_loss() -> torch.Tensor:
        crops, labels = _crop_batch(pool, generator, training)
        logits = model(crops) @ model.project_text(sentences).T * model.log_scale.clamp(max=np.log(100.0)).exp()
        target = (caption_kinds[None, :] == labels[:, None]).float()
        return F.cross_entropy(logits, target / target.sum(1, keepdim=True))

    done, loss = store.fit(model, batch_loss, training.steps, training.learning_rate, minutes, on_progress)
    held_out = _clip_pool(training, config.kinds, 900, VALIDATION_CLIPS_PER_KIND)
    centre = held_out.shape[-1] // 2 - int(1.5 * FRAMES_PER_SECOND)
    held_out = held_out[..., centre:centre + int(3 * FRAMES_PER_SECOND)]
    report = {"format": FORMAT, "config": asdict(config), "training": asdict(training),
              "threads": torch.get_num_threads(), "steps_done": done,
              "complete": done == training.steps, "final_loss": loss,
              "validation": _validate(model, held_out, sentences, caption_kinds)}
    store.save_with_report(model, out_path, report)
    return report


def load_audio_embedding(path: str | os.PathLike, text_encoder=None) -> AudioEmbedding:
    """engine.audio_embedding.load_audio_embedding, refusing an embedding trained on other source
    kinds than the mini-world has now. `text_encoder`: an EmbeddedTextEncoder already loaded
    (e.g. the model's), else one is loaded on first use."""
    return store.load_with_report(path, FORMAT, WHAT, HOW_TO_TRAIN,
                                  lambda report: embedding_from_report(report, text_encoder))


def default_audio_embedding(text_encoder=None, cache: str | os.PathLike | None = None, seed: int = 0,
                            minutes: float = 3.0, on_message: Callable[[str], None] | None = None,
                            on_progress: Callable[[int, int], None] | None = None) -> AudioEmbedding:
    """The shipped embedding (engine/embedded/audio_embedding.safetensors) if present; else
    the one trained earlier into the cache; else train it there now (a few CPU minutes, once)."""
    from stepfoley.engine.embedded.text import EmbeddedTextEncoder

    if not isinstance(text_encoder, EmbeddedTextEncoder):
        text_encoder = None
    return store.shipped_or_cached(
        SHIPPED_PATH, f"audio_embedding-{FORMAT}-seed{seed}.safetensors", "evaluation embedding", minutes,
        load=lambda path: load_audio_embedding(path, text_encoder),
        train=lambda path: train_audio_embedding(path, seed=seed, minutes=minutes, on_progress=on_progress,
                                                 text_encoder=text_encoder),
        cache=cache, on_message=on_message)
