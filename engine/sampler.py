"""Sampling: Euler integration of the flow ODE on MMAudio's time grid, initial noise, and the
guided velocity that evaluates every guidance branch of a step in one batched forward.

Time runs from t = 0 (noise) to t = 1 (data). The grid, the step sizes and the order of
operations follow MMAudio's `FlowMatching.to_data` exactly (golden README §4), so a checkpoint
gives the reference's numbers.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from stepfoley.engine.errors import GenerationCancelled, GenerationError, InvalidInputError
from stepfoley.engine.guidance import (
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


# ---------------------------------------------------------------------------------------------
# The guided velocity: every branch of a step in one batched forward


def guided_velocity(
    net,
    conditions,
    unconditional,
    *,
    alpha: float = 4.5,
    beta: float = 0.0,
    nag=None,
    reference=None,
    controlnet=None,
) -> VelocityFn:
    """The guided velocity of one generation, as a `velocity_fn(t, x)` for `euler_sample`.

    net            engine.mmaudio.MMAudio (eval mode; call under torch.inference_mode()).
    conditions     `net.preprocess_conditions(clip_f, sync_f, text_f)`: u(V, C), batch B or 1.
    unconditional  `net.get_empty_conditions(1 or B)`: u(∅, ∅); for negative-text CFG pass
                   `net.get_empty_conditions(.., negative_text_features=...)` instead, which
                   makes the second branch u(∅, C_neg) (MMAudio's negative prompt).
    alpha          CFG strength α. Plain CFG with α < 1 evaluates only the conditional branch,
                   as MMAudio's ode_wrapper does.
    nag            (video_only, audio_latent) for Negative Audio Guidance (Eq. 9) with strength
                   β = `beta`: video_only = conditions with the video and the empty caption,
                   audio_latent (B or 1, N, C) = the normalized latent of the earlier tracks' mix.
    reference      (video_only, reference_latent) for positive reference-audio guidance with
                   strength `beta` (pulls toward the reference; see
                   guidance.reference_audio_guidance).
    controlnet     engine.controlnet.AudioControlNet; needed with `nag` or `reference`.

    Every branch starts from the same x, so the audio input projection (about a tenth of a
    forward) is computed once per step for all rows and the ControlNet.

    Rows of the single forward per step, item-major within each branch (B items):
        CFG:      [x; x]     with conditions [cond; uncond]
        NAG/ref:  [x; x; x]  with conditions [cond; uncond; video_only] and ControlNet residuals
                  added to the third group only (zeros for the others).
    The conditions are concatenated once per batch size, not per step. With β = 0 NAG is CFG
    exactly, so it runs the two-branch forward.
    """
    audio_branch = _audio_branch(nag, reference, controlnet, beta)
    if audio_branch is not None:
        return _three_branch_velocity(net, conditions, unconditional, alpha, beta, *audio_branch)
    if alpha < 1.0:
        return _conditional_velocity(net, conditions)
    return _cfg_velocity(net, conditions, unconditional, alpha)


def _audio_branch(nag, reference, controlnet, beta):
    if nag is not None and reference is not None:
        raise InvalidInputError(
            "Negative audio guidance and reference-audio guidance cannot be combined in one take; "
            "choose one."
        )
    pair = nag if nag is not None else reference
    if pair is None or beta == 0.0:
        return None
    if controlnet is None:
        raise InvalidInputError(
            "Audio guidance (NAG or a reference sound) needs the NAG ControlNet, but this model has "
            "none loaded. Load a ControlNet made for this model, or set beta to 0 (plain CFG)."
        )
    if not _finite(beta):
        raise InvalidInputError(f"The audio guidance strength beta must be a finite number, got {beta!r}.")
    video_only, audio_latent = pair
    combine = negative_audio_guidance if nag is not None else reference_audio_guidance
    return video_only, audio_latent, controlnet, combine


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _check_alpha(alpha: float) -> None:
    if not _finite(alpha):
        raise InvalidInputError(f"The CFG strength alpha must be a finite number, got {alpha!r}.")


def _times(t: Tensor, rows: int) -> Tensor:
    # t: 0-dim -> (rows,); the same value on every row, as MMAudio's t * ones(B)
    return t.reshape(1).expand(rows)


def _conditional_velocity(net, conditions) -> VelocityFn:
    def velocity(t: Tensor, x: Tensor) -> Tensor:
        # x: (B, N, C)
        return net.predict_flow(x, _times(t, x.shape[0]), conditions)

    return velocity


class _BatchedConditions:
    """[group_0; group_1; ...] expanded to B rows each and concatenated once per batch size."""

    def __init__(self, *groups):
        self.groups = groups
        self.by_batch: dict[int, object] = {}

    def __call__(self, batch_size: int):
        if batch_size not in self.by_batch:
            expanded = [g.expand(batch_size) for g in self.groups]
            self.by_batch[batch_size] = expanded[0].cat(*expanded[1:])
        return self.by_batch[batch_size]


def _cfg_velocity(net, conditions, unconditional, alpha: float) -> VelocityFn:
    _check_alpha(alpha)
    batched = _BatchedConditions(conditions, unconditional)

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        # x: (B, N, C) -> rows [cond; uncond]: (2B, N, C)
        B = x.shape[0]
        embedded = net.embed_latent(x)  # (B, N, H), shared by both branches
        flows = net.predict_flow(torch.cat([x, x]), _times(t, 2 * B), batched(B),
                                 latent_embedding=torch.cat([embedded, embedded]))
        v_cond, v_uncond = flows[:B], flows[B:]
        return classifier_free_guidance(v_cond, v_uncond, alpha)

    return velocity


def _three_branch_velocity(
    net, conditions, unconditional, alpha, beta, video_only, audio_latent, controlnet, combine
) -> VelocityFn:
    _check_alpha(alpha)
    batched = _BatchedConditions(conditions, unconditional, video_only)
    audio_only = _BatchedConditions(video_only)
    # The audio condition's own projection does not depend on x or t: once per generation.
    audio_features = controlnet.embed_audio_condition(audio_latent)  # (1 or B, N, H)
    zero_rows: dict[int, Tensor] = {}

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        # x: (B, N, C) -> rows [cond; uncond; video_only + ControlNet]: (3B, N, C)
        B, N, _ = x.shape
        if audio_features.shape[0] not in (1, B):
            raise InvalidInputError(
                f"The audio condition has {audio_features.shape[0]} items but {B} sounds are being "
                "made; give one condition for all of them, or one per sound."
            )
        embedded = net.embed_latent(x)  # (B, N, H), shared by the three branches and the ControlNet
        residuals = controlnet(
            x, _times(t, B), audio_only(B), audio_latent, base=net,
            audio_features=audio_features.expand(B, -1, -1), latent_embedding=embedded,
        )
        if B not in zero_rows:
            zero_rows[B] = x.new_zeros((2 * B, N, residuals[0].shape[-1])) if residuals else None
        control = [torch.cat([zero_rows[B], r]) for r in residuals]
        flows = net.predict_flow(torch.cat([x, x, x]), _times(t, 3 * B), batched(B), control=control,
                                 latent_embedding=torch.cat([embedded, embedded, embedded]))
        v_cond, v_uncond, v_audio = flows[:B], flows[B : 2 * B], flows[2 * B :]
        return combine(v_cond, v_uncond, v_audio, alpha, beta)

    return velocity
