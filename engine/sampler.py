"""Sampling: Euler integration of the flow ODE on MMAudio's time grid, initial noise, and the
guided velocity that evaluates every guidance branch of a step in one batched forward.

Time runs from t = 0 (noise) to t = 1 (data). The grid, the step sizes and the order of
operations follow MMAudio's `FlowMatching.to_data` exactly (golden README §4), so a checkpoint
gives the reference's numbers.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from stepfoley.engine.errors import InvalidInputError, not_finite, stop_if_cancelled
from stepfoley.engine.guidance import GuidanceMethod, GuidanceWeights

# velocity_fn(t, x): t is a 0-dim float32 tensor, x is (B, N, C); returns (B, N, C).
VelocityFn = Callable[[Tensor, Tensor], Tensor]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
# level_anchor(guided, reference): both (B, N, C) normalized data estimates; returns the guided one
LevelAnchor = Callable[[Tensor, Tensor], Tensor]

DEFAULT_STEPS = 25
_MAX_SEED = 2**63 - 1
_TORCH_SEEDS = 2**32  # torch.Generator.manual_seed on a CPU keeps a seed's low 32 bits


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
    grid: Tensor,
    on_step: ProgressFn | None = None,
    is_cancelled: CancelFn | None = None,
    constrain: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Integrate dx/dt = velocity_fn(t, x) over the time grid (`time_grid(steps)` for MMAudio's),
    one Euler step per interval.

    Exactly MMAudio's loop: x += (grid[i+1] − grid[i]) · v(grid[i], x), the step size a float32
    difference and grid[i] a 0-dim float32 tensor; the last grid point is never evaluated.
    `is_cancelled` is polled before every step (so a cancel lands within one step) and raises
    GenerationCancelled; a latent that turns NaN/Inf raises GenerationError. `on_step(done,
    total)` is called after each step. `constrain(t, x)`, when given, replaces x after each step
    (t = the time x has just reached): how a known part is held in place (`known_latent`).
    """
    # x0: (B, N, C); grid: (steps + 1,)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise InvalidInputError(f"A time grid needs at least two points, got shape {list(grid.shape)}.")
    grid = grid.to(x0.device)
    steps = grid.shape[0] - 1
    x = x0
    for i in range(steps):
        stop_if_cancelled(is_cancelled, f"at step {i} of {steps}")
        t = grid[i]
        dt = grid[i + 1] - grid[i]
        x = x + dt * velocity_fn(t, x)
        if constrain is not None:
            x = constrain(grid[i + 1], x)
        if not bool(torch.isfinite(x).all()):
            raise not_finite(f"at step {i + 1} of {steps}")
        if on_step is not None:
            on_step(i + 1, steps)
    return x


def known_latent(known: Tensor, keep: Tensor, noise: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """A `constrain` for euler_sample that holds a known latent in place where `keep` is 1:
    after every step the kept frames are set to where the straight path from this very noise to
    the known latent is at that time, x_t = (1 − t)·noise + t·known (t = 0 noise, t = 1 data, the
    grid's convention), so the frames around them are sampled next to the known ones at every
    noise level and continue them; at t = 1 they are the known latent exactly. Training-free:
    any flow model of this convention, official MMAudio weights included.

    known (B or 1, N, C) normalized latent; keep (B or 1, N, 1) in [0, 1]; noise (B, N, C) the
    run's starting noise."""
    def constrain(t: Tensor, x: Tensor) -> Tensor:
        # x: (B, N, C); t: 0-dim
        anchored = (1.0 - t) * noise + t * known
        return keep * anchored + (1.0 - keep) * x

    return constrain


def initial_noise(
    seeds: Sequence[int],
    seq_len: int,
    latent_dim: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    window: int = 0,
) -> Tensor:
    """Starting noise (B, N, C), one row per seed, for `window` (0, 1, ...) of a long region.

    Each row is drawn on its own CPU generator seeded with that item's seed, then moved to the
    device, so a seed gives the same sound whatever its position in the batch and whatever the
    device. A single seed reproduces MMAudio's `randn(1, N, C, generator=rng)`; window w is the
    (w+1)-th such draw of the same generator, so no window of one seed starts from another
    seed's noise (seeds s and s+1 are two variations, or two layers). torch's CPU generator
    keeps only a seed's low 32 bits, so seeds from 2^32 on are drawn from numpy's PCG64, which
    takes all 64: seed 5 and seed 5 + 2^32 used to give the same sound.
    """
    rows = []
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _MAX_SEED:
            raise InvalidInputError(
                f"Seed {seed!r} is not usable: a seed must be a whole number between 0 and "
                f"{_MAX_SEED}."
            )
        if seed < _TORCH_SEEDS:
            generator = torch.Generator(device="cpu").manual_seed(seed)
            for _ in range(window + 1):
                noise = torch.randn((1, seq_len, latent_dim), generator=generator)
        else:
            rng = np.random.Generator(np.random.PCG64(seed))
            for _ in range(window + 1):
                noise = torch.from_numpy(rng.standard_normal((1, seq_len, latent_dim), dtype=np.float32))
        rows.append(noise)
    if not rows:
        raise InvalidInputError("No seeds were given: at least one seed is needed per take.")
    return torch.cat(rows).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The guided velocity: every branch of a step in one batched forward


def branch_conditions(net, branches: Sequence[str], clip_f: Tensor, sync_f: Tensor, text_f: Tensor,
                      latent_len: int, negative_text_f: Tensor | None = None) -> dict:
    """The conditions of each branch a guidance method declares (engine.guidance.BRANCHES),
    computed once per generation. clip_f (1, Lc, Dc), sync_f (1, Ls, Ds), text_f (1 or B, Lt, Dt):
    one caption per take; negative_text_f (1 or B, Lt, Dt): the negative captions, in the
    "negative" branch when the method has one (the paper's baseline), else in place of the
    unconditional branch's empty caption (MMAudio's negative prompt)."""
    out = {}
    if "cond" in branches:
        out["cond"] = net.preprocess_conditions(clip_f, sync_f, text_f, latent_seq_len=latent_len)
    if "negative" in branches:
        if negative_text_f is None:
            raise InvalidInputError("The negative prompt needs a negative caption (the earlier tracks' captions).")
        out["negative"] = net.empty_conditions(negative_text_f.shape[0], latent_len, clip_f.shape[1], sync_f.shape[1],
                                               negative_text_features=negative_text_f)
    if "uncond" in branches:
        replaced = None if "negative" in branches else negative_text_f
        rows = 1 if replaced is None else replaced.shape[0]
        out["uncond"] = net.empty_conditions(rows, latent_len, clip_f.shape[1], sync_f.shape[1],
                                             negative_text_features=replaced)
    if "video" in branches or "audio" in branches:
        video_only = net.preprocess_conditions(clip_f, sync_f, net.empty_text_features(),
                                               latent_seq_len=latent_len)
        out.update({b: video_only for b in ("video", "audio") if b in branches})
    return out


def guided_velocity(
    net,
    method: GuidanceMethod,
    weights: GuidanceWeights,
    conditions: Mapping[str, object],
    *,
    audio_latent: Tensor | None = None,
    controlnet=None,
    loudness: Tensor | None = None,
    loudness_control=None,
    level_anchor: LevelAnchor | None = None,
) -> VelocityFn:
    """The guided velocity of one generation, as a `velocity_fn(t, x)` for `euler_sample`.

    net           engine.mmaudio.MMAudio (eval mode; call under torch.inference_mode()).
    method        a registry entry (engine.guidance); `resolve_method` first picks the entry
                  that needs the fewest branches for these weights.
    conditions    branch name -> PreprocessedConditions of batch B or 1 (`branch_conditions`).
    audio_latent  (B or 1, N, C): the normalized latent the "audio" branch hears through
                  `controlnet` (x̃ for NAG, the reference for method "reference").
    loudness      (B or 1, N, 1): the loudness curve (engine.loudness_curve.curve_condition)
                  the "cond" branch follows through `loudness_control`, a model's loudness
                  ControlNet; None: no curve.
    level_anchor  (guided estimate, conditional estimate) -> the guided estimate at the level it
                  should have, all (B, N, C) normalized latents of the data at t = 1 (a model's
                  `level_anchor()`); applied when the method combines more than the "cond" branch.
                  Why: in a log-mel latent guidance extrapolates band levels, so a guided track
                  decodes louder than the model's conditional one and overloads; the anchor
                  moves the level of where the step heads toward the conditional branch's and
                  leaves the guided shape of the sound as it is. None: guidance as written.

    All branches start from the same x, so the audio input projection (about a tenth of a
    forward) is computed once per step for every row and the ControlNets. Rows of the single
    forward per step are branch-major in BRANCHES order (B items each); a ControlNet's residuals
    are added to the rows of the branch it steers (NAG's to "audio", the loudness one's to
    "cond") and zeros to the others. The conditions are concatenated once per batch size, not
    per step.
    """
    names = method.branches
    missing = [b for b in names if b not in conditions]
    if missing:
        raise InvalidInputError(f"Guidance '{method.name}' needs conditions for {', '.join(missing)}.")
    for name in (f.name for f in fields(weights)):
        if not _finite(getattr(weights, name)):
            raise InvalidInputError(f"The guidance strength {name} must be a finite number, got "
                                    f"{getattr(weights, name)!r}.")
    batched = _BatchedConditions(*(conditions[b] for b in names))
    # (branch it steers, ControlNet, its condition, the condition's projection, the branch's
    # conditions); a condition's projection does not depend on x or t: once per generation.
    steering = []
    if method.needs_controlnet:
        if controlnet is None:
            raise InvalidInputError(
                f"Guidance '{method.name}' hears audio through the NAG ControlNet, but this model has none "
                "loaded. Load a ControlNet made for this model, or use a method without audio.")
        if audio_latent is None:
            raise InvalidInputError(f"Guidance '{method.name}' needs an audio condition (existing tracks or a reference).")
        steering.append(("audio", controlnet, audio_latent, controlnet.embed_condition(audio_latent),
                         _BatchedConditions(conditions["audio"])))
    if loudness is not None:
        if loudness_control is None:
            raise InvalidInputError("This model has no loudness ControlNet to follow a loudness curve with.")
        steering.append(("cond", loudness_control, loudness, loudness_control.embed_condition(loudness),
                         _BatchedConditions(conditions["cond"])))
    zero_rows: dict[tuple[int, int], Tensor] = {}
    anchored = level_anchor is not None and is_guided(method)

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        # x: (B, N, C) -> rows, one group of B per branch: (len(names) * B, N, C)
        B, N, _ = x.shape
        embedded = net.embed_latent(x)  # (B, N, H), shared by every branch and the ControlNets
        control = None
        if steering:
            residuals = {}
            for branch, steer, condition, features, branch_conditions_ in steering:
                if features.shape[0] not in (1, B):
                    raise InvalidInputError(
                        f"A condition has {features.shape[0]} items but {B} sounds are being made; give one "
                        "condition for all of them, or one per sound.")
                residuals[branch] = steer(x, _times(t, B), branch_conditions_(B), condition, base=net,
                                          audio_features=features.expand(B, -1, -1), latent_embedding=embedded)
            zeros = zero_rows.setdefault((B, N), x.new_zeros((B, N, embedded.shape[-1])))
            depth = max(len(r) for r in residuals.values())
            control = [torch.cat([residuals[name][i] if name in residuals and i < len(residuals[name]) else zeros
                                  for name in names]) for i in range(depth)]
        flows = net.predict_flow(torch.cat([x] * len(names)), _times(t, len(names) * B), batched(B),
                                 control=control, latent_embedding=torch.cat([embedded] * len(names)))
        by_branch = {name: flows[i * B:(i + 1) * B] for i, name in enumerate(names)}
        guided = method.combine(by_branch, weights)
        if not anchored:
            return guided
        remaining = 1.0 - t  # > 0: the grid's last point is never evaluated
        return (level_anchor(x + remaining * guided, x + remaining * by_branch["cond"]) - x) / remaining

    return velocity


def is_guided(method: GuidanceMethod) -> bool:
    """Whether the method combines the conditional branch with others (what `level_anchor` holds)."""
    return "cond" in method.branches and len(method.branches) > 1


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def _times(t: Tensor, rows: int) -> Tensor:
    # t: 0-dim -> (rows,); the same value on every row, as MMAudio's t * ones(B)
    return t.reshape(1).expand(rows)


class _BatchedConditions:
    """[group_0; group_1; ...] expanded to B rows each and concatenated once per batch size."""

    def __init__(self, *groups):
        self.groups = groups
        self.by_batch: dict[int, object] = {}

    def __call__(self, batch_size: int):
        if batch_size not in self.by_batch:
            expanded = [g.expand(batch_size) for g in self.groups]
            self.by_batch[batch_size] = expanded[0].cat(*expanded[1:]) if len(expanded) > 1 else expanded[0]
        return self.by_batch[batch_size]
