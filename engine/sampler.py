"""Sampling: Euler integration of the flow ODE on MMAudio's time grid, initial noise, and the
guided velocity that evaluates every guidance branch of a step in one batched forward.

Time runs from t = 0 (noise) to t = 1 (data). The grid, the step sizes and the order of
operations follow MMAudio's `FlowMatching.to_data` exactly (golden README §4), so a checkpoint
gives the reference's numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from engine.errors import GenerationCancelled, GenerationError, InvalidInputError
from engine.guidance import (
    classifier_free_guidance,
    negative_audio_guidance,
    reference_audio_guidance,
)

# velocity_fn(t, x): t is a 0-dim float32 tensor, x is (B, N, C); returns (B, N, C).
VelocityFn = Callable[[Tensor, Tensor], Tensor]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

DEFAULT_STEPS = 25
_MAX_SEED = 2**63 - 1


def time_grid(steps: int) -> Tensor:
    """MMAudio's Euler grid: float32 linspace(0, 1, steps + 1). Bit-exact with the reference."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidInputError(
            f"The number of sampling steps must be a whole number of at least 1, got {steps!r}. "
            f"{DEFAULT_STEPS} is the usual choice."
        )
    return torch.linspace(0, 1, steps + 1, dtype=torch.float32)


def euler_sample(
    velocity_fn: VelocityFn,
    x0: Tensor,
    steps: int = DEFAULT_STEPS,
    on_step: ProgressFn | None = None,
    is_cancelled: CancelFn | None = None,
) -> Tensor:
    """Integrate dx/dt = velocity_fn(t, x) from t = 0 to 1 with `steps` Euler steps.

    Exactly MMAudio's loop: x += (grid[i+1] − grid[i]) · v(grid[i], x), the step size a float32
    difference and grid[i] a 0-dim float32 tensor; t = 1 is never evaluated. `is_cancelled` is
    polled before every step (so a cancel lands within one step) and raises
    GenerationCancelled; a latent that turns NaN/Inf raises GenerationError. `on_step(done,
    total)` is called after each step.
    """
    # x0: (B, N, C)
    grid = time_grid(steps).to(x0.device)
    x = x0
    for i in range(steps):
        if is_cancelled is not None and is_cancelled():
            raise GenerationCancelled(
                f"Generation was cancelled at step {i} of {steps}; nothing was written."
            )
        t = grid[i]
        dt = grid[i + 1] - grid[i]
        x = x + dt * velocity_fn(t, x)
        if not bool(torch.isfinite(x).all()):
            raise GenerationError(
                f"Generation failed at step {i + 1} of {steps}: the audio latent became NaN or "
                "infinite, so there is no sound to write. This usually comes from guidance "
                "strengths far above the usual range (CFG around 4.5, NAG around 1.5) or from "
                "running in reduced precision; lower the guidance, or run in float32, and try "
                "again. If it persists, the model weights may be damaged."
            )
        if on_step is not None:
            on_step(i + 1, steps)
    return x


def initial_noise(
    seeds: Sequence[int],
    seq_len: int,
    latent_dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Starting noise (B, N, C), one row per seed.

    Each row is drawn on its own CPU generator seeded with that item's seed, then moved to the
    device, so a seed gives the same sound whatever its position in the batch and whatever the
    device. A single seed reproduces MMAudio's `randn(1, N, C, generator=rng)`.
    """
    rows = []
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
            raise InvalidInputError(
                f"Seed {seed!r} is not usable: a seed must be a whole number between 0 and "
                f"{_MAX_SEED}."
            )
        generator = torch.Generator(device="cpu").manual_seed(seed)
        rows.append(torch.randn((1, seq_len, latent_dim), generator=generator))
    if not rows:
        raise InvalidInputError("No seeds were given: at least one seed is needed per take.")
    return torch.cat(rows).to(device=device, dtype=dtype)
