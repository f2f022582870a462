"""The Euler sampler, initial noise, and the batched guided velocity.

Golden tests reproduce every mmaudio_sampler_cfg* fixture (golden README §4) with the weights of
the flow fixture its metadata names.
"""
import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from conftest import golden_files
from engine.errors import GenerationCancelled, GenerationError, InvalidInputError
from engine.sampler import euler_sample, initial_noise, time_grid


# ---------------------------------------------------------------- grid and Euler loop


def test_time_grid_is_float32_linspace_with_endpoints():
    grid = time_grid(25)
    assert grid.dtype == torch.float32 and grid.shape == (26,)
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0
    assert bool((grid[1:] > grid[:-1]).all())


def test_euler_visits_grid_points_and_never_t_one():
    seen = []

    def velocity(t, x):
        assert t.dim() == 0 and t.dtype == torch.float32
        seen.append(t.item())
        return torch.ones_like(x)

    x1 = euler_sample(velocity, torch.zeros(1, 4, 2), steps=7)
    assert len(seen) == 7 and 1.0 not in seen
    assert seen == time_grid(7)[:-1].tolist()
    # Constant unit velocity: x1 is the sum of the float32 step sizes.
    grid = time_grid(7)
    expected = torch.zeros(()) + sum((grid[i + 1] - grid[i] for i in range(7)), torch.zeros(()))
    assert torch.equal(x1, torch.full((1, 4, 2), expected.item()))


def test_euler_is_exact_for_velocity_linear_in_t():
    # dx/dt = 2t: left-point Euler gives the Riemann sum Σ h·2·t_i = 1 − h, not the exact 1.
    steps = 10
    grid = time_grid(steps)
    x1 = euler_sample(lambda t, x: 2 * t * torch.ones_like(x), torch.zeros(1, 1, 1), steps=steps)
    expected = sum(float(grid[i + 1] - grid[i]) * 2 * float(grid[i]) for i in range(steps))
    assert x1.item() == pytest.approx(expected, rel=1e-6)
    assert x1.item() == pytest.approx(1 - 1 / steps, rel=1e-5)


def test_progress_reports_every_step():
    calls = []
    euler_sample(lambda t, x: -x, torch.ones(1, 3, 2), steps=5, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_cancellation_raises_within_one_step():
    evaluated = []

    def velocity(t, x):
        evaluated.append(t.item())
        return -x

    cancel_after = 3
    with pytest.raises(GenerationCancelled):
        euler_sample(
            velocity,
            torch.ones(1, 3, 2),
            steps=25,
            is_cancelled=lambda: len(evaluated) >= cancel_after,
        )
    assert len(evaluated) == cancel_after


def test_cancelled_before_start_evaluates_nothing():
    evaluated = []
    with pytest.raises(GenerationCancelled):
        euler_sample(lambda t, x: evaluated.append(1) or x, torch.ones(1, 2, 2), is_cancelled=lambda: True)
    assert evaluated == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latent_raises_generation_error(bad):
    def velocity(t, x):
        v = -x.clone()
        if t.item() > 0.25:  # grid points 0.3, 0.4, ...: the 4th step is the first bad one
            v[0, 1, 0] = bad
        return v

    with pytest.raises(GenerationError) as info:
        euler_sample(velocity, torch.ones(2, 3, 2), steps=10)
    message = str(info.value)
    assert "step 4 of 10" in message and "NaN" in message


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_step_count_is_refused(steps):
    with pytest.raises(InvalidInputError):
        euler_sample(lambda t, x: x, torch.ones(1, 2, 2), steps=steps)


# ---------------------------------------------------------------- noise


def test_same_seed_gives_same_noise_at_any_batch_position():
    alone = initial_noise([1234], 250, 20)
    first = initial_noise([1234, 5, 6], 250, 20)
    last = initial_noise([7, 8, 1234], 250, 20)
    assert alone.shape == (1, 250, 20)
    assert torch.equal(alone[0], first[0]) and torch.equal(alone[0], last[2])
    assert not torch.equal(first[1], first[2])


def test_single_seed_matches_a_seeded_generator_draw():
    expected = torch.randn((1, 250, 20), generator=torch.Generator().manual_seed(42))
    assert torch.equal(initial_noise([42], 250, 20), expected)


@pytest.mark.parametrize("seeds", [[], [-1], [1.5], ["3"], [2**64]])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(InvalidInputError):
        initial_noise(seeds, 10, 4)


def test_same_seed_same_sample_at_any_batch_position():
    # A per-row velocity (no cross-row mixing, as in the network) keeps rows independent.
    def velocity(t, x):
        return torch.tanh(x.flip(1)) * (1 - t) - 0.5 * x

    alone = euler_sample(velocity, initial_noise([99], 16, 4), steps=6)
    batched = euler_sample(velocity, initial_noise([3, 99], 16, 4), steps=6)
    assert torch.equal(alone[0], batched[1])
