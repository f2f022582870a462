"""The step-invariant conditions of one generation: the network projects the features once
(MMAudio.preprocess_conditions) and every sampling step reuses them."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from stepfoley.engine.errors import InvalidInputError


@dataclass(frozen=True)
class PreprocessedConditions:
    """Step-invariant projections of the features (computed once per generation).

    clip_f (B, Lc, H), sync_f (B, N, H) already upsampled to the latent length, text_f (B, Lt, H),
    clip_f_c (B, H), text_f_c (B, H). Fields may be broadcast views (batch 1 expanded).
    """

    clip_f: torch.Tensor
    sync_f: torch.Tensor
    text_f: torch.Tensor
    clip_f_c: torch.Tensor
    text_f_c: torch.Tensor

    @property
    def batch_size(self) -> int:
        return max(t.shape[0] for t in self._tensors())

    @property
    def latent_seq_len(self) -> int:
        return self.sync_f.shape[1]

    def _tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def expand(self, bs: int) -> "PreprocessedConditions":
        """Broadcast batch-1 fields to `bs` rows (views, no copy)."""
        def grow(name: str, t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] == bs:
                return t
            if t.shape[0] == 1:
                return t.expand(bs, *t.shape[1:])
            raise InvalidInputError(
                f"Conditions field '{name}' has batch {t.shape[0]}, which cannot be used for a batch "
                f"of {bs}: it must be 1 or {bs}.")
        return PreprocessedConditions(**{f.name: grow(f.name, getattr(self, f.name)) for f in fields(self)})

    def cat(self, *others: "PreprocessedConditions") -> "PreprocessedConditions":
        """Stack condition sets along the batch so cond/uncond/NAG rows share one forward."""
        groups = [self, *others]
        groups = [g.expand(g.batch_size) for g in groups]
        lengths = {g.latent_seq_len for g in groups}
        if len(lengths) != 1:
            raise InvalidInputError(
                f"Cannot batch conditions made for different region lengths ({sorted(lengths)} latents).")
        return PreprocessedConditions(
            **{f.name: torch.cat([getattr(g, f.name) for g in groups]) for f in fields(self)})
