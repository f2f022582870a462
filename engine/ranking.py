"""Ranking the variations of one track, best first.

A sound designer auditions the first take; the ranking puts first the take that holds the
caption most clearly and repeats the earlier layers least. Both are judged in one audio-text
embedding (a CLAP): text fidelity is the cosine between the take and its caption, similarity to
the earlier layers the cosine between the take and their mix (x̃). A take's score is the first
minus the second (only the first where no earlier layer is heard).

The only embedding shipped is the mini-world's (engine/audio_embedding.py), trained against
the embedded model's own text encoder: it judges the embedded model's sounds and nothing else.
For any other model the takes stay in seed order, and the ranking says so (`ranked_by` "seed"
and the reason): a ranking is never invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

RANKED_BY_EMBEDDING = "text_fidelity_minus_similarity"
RANKED_BY_SEED = "seed"


class Judge(Protocol):
    """What ranking needs of an embedding (engine.audio_embedding.AudioEmbedding has it)."""

    def embed_audio(self, tracks: Sequence[np.ndarray], sample_rate: int) -> np.ndarray: ...  # (K, D) unit rows
    def embed_text(self, captions: Sequence[str]) -> np.ndarray: ...  # (K, D) unit rows


@dataclass(frozen=True)
class Ranking:
    order: tuple[int, ...]  # take indices, best first
    ranked_by: str  # RANKED_BY_EMBEDDING or RANKED_BY_SEED
    reason: str  # for the reply: how the order was made, or why it is only seed order
    figures: tuple[dict, ...]  # per take, in take order: the scores behind the order (empty dicts for seed order)

    def to_json(self) -> dict:
        return {"ranked_by": self.ranked_by, "reason": self.reason}


def seed_order(count: int, reason: str) -> Ranking:
    return Ranking(tuple(range(count)), RANKED_BY_SEED, reason, tuple({} for _ in range(count)))


def one_take() -> Ranking:
    """The ranking of a job that made one take: nothing to rank."""
    return seed_order(1, "one take: nothing to rank")


def rank_takes(takes: Sequence[np.ndarray], sample_rate: int, caption: str, earlier: np.ndarray | None,
               judge: Judge | None, no_judge_reason: str = "") -> Ranking:
    """takes: mono (S,) each, one caption; earlier: the earlier layers' mix (S',) or None on a
    first layer. Ties keep seed order."""
    if len(takes) == 1:
        return one_take()
    if judge is None:
        return seed_order(len(takes), no_judge_reason or "no embedding to judge this model's sounds")
    audio = judge.embed_audio(list(takes), sample_rate)                     # (K, D)
    text = judge.embed_text([caption])[0]                                   # (D,)
    fidelity = audio @ text                                                 # (K,)
    similarity = None
    if earlier is not None and np.any(earlier):
        similarity = audio @ judge.embed_audio([earlier], sample_rate)[0]   # (K,)
    score = fidelity - (similarity if similarity is not None else 0.0)
    order = tuple(sorted(range(len(takes)), key=lambda i: (-round(float(score[i]), 9), i)))
    figures = tuple({"text_fidelity": float(fidelity[i]),
                     "similarity_to_earlier": None if similarity is None else float(similarity[i]),
                     "score": float(score[i])} for i in range(len(takes)))
    reason = ("text fidelity minus similarity to the earlier layers, in the mini-world's audio-text embedding"
              if similarity is not None else "text fidelity in the mini-world's audio-text embedding (no earlier layer heard: "
              "a first layer, a method that hears none, none of their audio sent, or it is silent here)")
    return Ranking(order, RANKED_BY_EMBEDDING, reason, figures)


def judge_for(model) -> tuple[Judge | None, str]:
    """The embedding that can judge `model`'s takes, or None and why not. Only the embedded
    model's text encoder is the one the shipped embedding was trained against; the embedding is
    loaded from the file shipped with the package, never trained here (that takes minutes)."""
    from stepfoley.engine.embedded.text import EmbeddedTextEncoder
    from stepfoley.engine.audio_embedding import SHIPPED_PATH, load_audio_embedding

    if not isinstance(model.text_encoder, EmbeddedTextEncoder):
        return None, (f"the model '{model.model_id}' has no embedding to judge its sounds with; "
                      "the takes are in seed order")
    if not SHIPPED_PATH.is_file():
        return None, f"the judging embedding ({SHIPPED_PATH.name}) is not installed; the takes are in seed order"
    return load_audio_embedding(SHIPPED_PATH, model.text_encoder), ""
