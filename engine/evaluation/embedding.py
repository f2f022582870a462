"""The mini-world's CLAP: an audio embedding trained contrastively against caption embeddings,
so one space gives both audio-audio (separability) and text-audio (text fidelity) similarity.

Audio tower: a small CNN over the 16 kHz log-mel of evaluation.spectra, pooled over time and
frequency, projected and L2-normalized. Text tower: the sentence vector of the embedded
model's text encoder (all-MiniLM-L6-v2, frozen, from engine/embedded/text.py) through a
learned linear projection, L2-normalized. MiniLM's weights come pinned from a package, so the
tower cannot drift when the embedded flow model is retrained; any caption can be embedded,
not only the mini-world's paraphrases.

Training (CPU, a few minutes) uses single-source clips only: random 2-4 s crops, each
contrasted against every mini-world caption at once (all paraphrases of all kinds; the
target spreads evenly over the paraphrases of the clip's kind), i.e. CLIP's contrastive
loss with the whole caption set in every batch. A fixed number of steps from a seed gives the
same weights on the same machine and thread count; `minutes` only stops a run that is
unexpectedly slow (the saved report then says `"complete": false`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.evaluation.spectra import FLOOR_DB, FRAMES_PER_SECOND, mel_power_torch, to_eval_rate
from stepfoley.engine.miniworld import CAPTIONS, SOURCE_KINDS, single_source_clip

FORMAT = "stepfoley-audio-embedding-1"
TEXT_TOWER = "minilm-sentence+linear"
SHIPPED_PATH = Path(__file__).resolve().parents[1] / "embedded" / "audio_embedding.safetensors"
# Clip seeds far from the base model's training seeds [0, 1e5) and the eval scenes (1e7 + ...).
CLIP_SEED_BASE = 500_000_000
VALIDATION_CLIPS_PER_KIND = 3


@dataclass(frozen=True)
class AudioEmbeddingConfig:
    kinds: tuple = tuple(sorted(SOURCE_KINDS))
    channels: tuple = (8, 16, 32, 64)
    embed_dim: int = 128
    text_dim: int = 384       # EmbeddedTextEncoder.sentence_embedding
    text_tower: str = TEXT_TOWER


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 0
    steps: int = 300
    batch_per_kind: int = 8
    clips_per_kind: int = 40
    clip_seconds: float = 8.0
    crop_seconds: tuple = (2.0, 4.0)
    learning_rate: float = 2e-3


def normalized_log_mel(mel_power: torch.Tensor) -> torch.Tensor:
    """(B, M, T) mel power -> (B, 1, M, T) log-mel with each clip's mean removed (gain-free)."""
    # mel_power: (B, M, T)
    log_mel = torch.log10(mel_power.clamp_min(10.0 ** (FLOOR_DB / 10.0))) * 0.5
    log_mel = log_mel - log_mel.mean(dim=(1, 2), keepdim=True)
    return log_mel[:, None]


def _all_captions(kinds: tuple) -> tuple[list[str], torch.Tensor]:
    """Every paraphrase of every kind, and the (n_captions,) kind index of each."""
    captions = [(k, c) for k, kind in enumerate(kinds) for c in CAPTIONS[kind]]
    return [c for _, c in captions], torch.tensor([k for k, _ in captions])


class AudioEmbedding(nn.Module):
    def __init__(self, config: AudioEmbeddingConfig, text_encoder=None):
        super().__init__()
        self.config = config
        self._text_encoder = text_encoder  # not a submodule: its weights are not saved here
        self.report: dict = {}  # the training report, once loaded from a file
        self.path: Path | None = None
        blocks, width = [], 1
        for out in config.channels:
            blocks += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.conv = nn.Sequential(*blocks)
        self.project = nn.Linear(2 * width, config.embed_dim)
        self.text_project = nn.Linear(config.text_dim, config.embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        # log_mel: (B, 1, M, T) -> (B, D), unit length
        h = self.conv(log_mel)                                   # (B, C, M', T')
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
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

    # -- numpy API for the metrics --

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


# -- training --

def _clip_pool(config: TrainingConfig, kinds: tuple, first: int, count: int) -> torch.Tensor:
    """Log-mel of `count` single-source clips per kind: (n_kinds, count, 1, M, T)."""
    per_kind = []
    for k, kind in enumerate(kinds):
        first_seed = CLIP_SEED_BASE + config.seed * 100_000 + k * 1000 + first
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
    config = AudioEmbeddingConfig()
    training = TrainingConfig(seed=int(seed), **overrides)
    deadline = time.monotonic() + 60.0 * float(minutes)
    torch.manual_seed(training.seed)
    generator = torch.Generator().manual_seed(training.seed)
    model = AudioEmbedding(config, text_encoder)
    captions, caption_kinds = _all_captions(config.kinds)
    sentences = model.sentence_vectors(captions)             # (n_captions, text_dim), frozen
    pool = _clip_pool(training, config.kinds, 0, training.clips_per_kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, training.learning_rate, total_steps=training.steps,
                                                   pct_start=0.1)
    model.train()
    done, loss = 0, float("nan")
    for done in range(1, training.steps + 1):
        crops, labels = _crop_batch(pool, generator, training)
        logits = model(crops) @ model.project_text(sentences).T * model.log_scale.clamp(max=np.log(100.0)).exp()
        target = (caption_kinds[None, :] == labels[:, None]).float()
        loss_t = F.cross_entropy(logits, target / target.sum(1, keepdim=True))
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        optimizer.step()
        schedule.step()
        loss = float(loss_t.detach())
        if on_progress is not None:
            on_progress(done, training.steps)
        if time.monotonic() > deadline:
            break
    model.eval()
    held_out = _clip_pool(training, config.kinds, 900, VALIDATION_CLIPS_PER_KIND)
    centre = held_out.shape[-1] // 2 - int(1.5 * FRAMES_PER_SECOND)
    held_out = held_out[..., centre:centre + int(3 * FRAMES_PER_SECOND)]
    report = {"format": FORMAT, "config": asdict(config), "training": asdict(training), "steps_done": done,
              "complete": done == training.steps, "final_loss": loss, "validation": _validate(model, held_out, sentences, caption_kinds)}
    save_audio_embedding(model, out_path, report)
    return report


def save_audio_embedding(model: AudioEmbedding, path: Path, report: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, temp, metadata={"stepfoley": json.dumps(report)})
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_report(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("stepfoley", "{}"))


def load_audio_embedding(path: str | os.PathLike, text_encoder=None) -> AudioEmbedding:
    """The evaluation embedding saved by train_audio_embedding, in eval mode on the CPU.
    `text_encoder`: an EmbeddedTextEncoder already loaded (e.g. the model's), else one is
    loaded on first use."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The evaluation embedding {path} does not exist; train one with "
                              "stepfoley.engine.evaluation.embedding.train_audio_embedding, or let `stepfoley eval` do it.")
    try:
        report = read_report(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"The evaluation embedding {path} cannot be read ({e}); delete it and train again.")
    if report.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a StepFoley evaluation embedding (format {report.get('format')!r}, "
                              f"expected {FORMAT!r}); delete it and train again.")
    config = AudioEmbeddingConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in report["config"].items()})
    if set(config.kinds) != set(SOURCE_KINDS):
        raise CheckpointError(f"{path} was trained on source kinds {list(config.kinds)}, but the mini-world now "
                              f"has {sorted(SOURCE_KINDS)}; delete it and train again.")
    model = AudioEmbedding(config, text_encoder)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the evaluation embedding's layout ({e}); "
                              "delete it and train again.")
    model.report, model.path = report, path
    return model.eval().requires_grad_(False)


def cache_dir() -> Path:
    """$STEPFOLEY_CACHE_DIR, else $XDG_CACHE_HOME/stepfoley, else ~/.cache/stepfoley."""
    if os.environ.get("STEPFOLEY_CACHE_DIR"):
        return Path(os.environ["STEPFOLEY_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stepfoley"


def default_audio_embedding(text_encoder=None, cache: str | os.PathLike | None = None, seed: int = 0,
                            minutes: float = 3.0, on_message: Callable[[str], None] | None = None,
                            on_progress: Callable[[int, int], None] | None = None) -> AudioEmbedding:
    """The shipped embedding (engine/embedded/audio_embedding.safetensors) if present; else
    the one trained earlier into the cache; else train it there now (a few CPU minutes, once)."""
    from stepfoley.engine.embedded.text import EmbeddedTextEncoder

    if not isinstance(text_encoder, EmbeddedTextEncoder):
        text_encoder = None
    if SHIPPED_PATH.is_file():
        return load_audio_embedding(SHIPPED_PATH, text_encoder)
    path = Path(cache) if cache is not None else cache_dir()
    path = path / f"audio_embedding-{FORMAT}-seed{seed}.safetensors"
    if not path.is_file():
        if on_message is not None:
            on_message(f"no shipped evaluation embedding at {SHIPPED_PATH}; training one into {path} "
                       f"(about {minutes:.0f} CPU minutes, once)")
        train_audio_embedding(path, seed=seed, minutes=minutes, on_progress=on_progress, text_encoder=text_encoder)
    return load_audio_embedding(path, text_encoder)
