"""Context past a window's ends: the embedded network sounds a short burst in the first latent
frames of every sequence it samples (and a smaller one in the last), one its training targets
do not hold (+12.3 dB in latent frame 0 over frames 1-3, against +1.1 dB for the targets), so
every stem started with a click. A model that has this (`FoleyModel.edge_context`) samples each
window with one segment of its Synchformer grid more on each side (1/3 s from 1.3 s windows up;
up to 0.64 s for the shortest, whose grid is spread wider), and the margins are cut off before
decoding: the burst falls in them. The picture features and the audio condition are mirrored
into the margins, the loudness curve goes on there as it is drawn (held at its first and last
points), and the global picture condition stays the window's own (pooled_over_core).

The margins are a whole Synchformer segment because the network adds an in-segment position to
each sync frame, and the latent's margin covers the same time, so sync and latent stay aligned
to within a sync frame; CLIP's frames take the nearest whole count (the rope that places them
drifts by under half a CLIP frame). The core's noise is the run's own (sampler.initial_noise);
the margins draw theirs from generators of their own, so a seed still gives the same take
wherever it is in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch

from stepfoley.engine.mmaudio import SYNC_FRAMES_PER_SEGMENT, PreprocessedConditions

_MARGIN_NOISE_TAG = 0xED6E  # keeps the margins' draws apart from any other use of a seed


@dataclass(frozen=True)
class EdgeMargins:
    """How many frames of each sequence are added before and after a window."""

    latent: int
    clip: int
    sync: int

    @staticmethod
    def for_window(latent_len: int, clip_len: int, sync_len: int) -> "EdgeMargins | None":
        """One sync segment's worth of each, or None for a window too short to mirror one (a
        mirror about the first frame needs a frame more than it copies)."""
        sync = SYNC_FRAMES_PER_SEGMENT
        latent = round(sync * latent_len / sync_len)
        clip = round(sync * clip_len / sync_len)
        if sync >= sync_len or latent >= latent_len or clip >= clip_len or not latent:
            return None
        return EdgeMargins(latent, clip, sync)


def mirror_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """x (B, L, D) -> (B, L + 2n, D), mirrored about its first and last rows (which are not repeated),
    so the margins hold what came just after the start and just before the end."""
    # x: (B, L, D)
    if n == 0:
        return x
    return torch.cat([x[:, 1:n + 1].flip(1), x, x[:, -n - 1:-1].flip(1)], dim=1)


def pooled_over_core(padded: Mapping[str, PreprocessedConditions],
                     core: Mapping[str, PreprocessedConditions]) -> dict[str, PreprocessedConditions]:
    """Each branch's conditions over the padded sequences, with the global picture condition (the
    network's mean over CLIP frames) of the window's own frames: the mirrored frames would count
    twice in it, moving it 1-7 % at 8 s and 10-14 % at 1 s."""
    return {branch: replace(conditions, clip_f_c=core[branch].clip_f_c) for branch, conditions in padded.items()}


def margin_noise(seeds: Sequence[int], n: int, latent_dim: int, window: int, side: int) -> torch.Tensor:
    """(B, n, C) standard normal float32 noise for one margin (side 0 before, 1 after) of `window`,
    one row per seed, each drawn on its own generator."""
    rows = [np.random.default_rng(np.random.SeedSequence([seed, window, side, _MARGIN_NOISE_TAG]))
            .standard_normal((1, n, latent_dim), dtype=np.float32) for seed in seeds]
    return torch.from_numpy(np.concatenate(rows))


def with_margin_noise(x0: torch.Tensor, seeds: Sequence[int], n: int, window: int) -> torch.Tensor:
    """The run's starting noise x0 (B, N, C) with each margin's noise around it: (B, N + 2n, C)."""
    # x0: (B, N, C)
    if n == 0:
        return x0
    before, after = (margin_noise(seeds, n, x0.shape[-1], window, side).to(x0) for side in (0, 1))
    return torch.cat([before, x0, after], dim=1)
