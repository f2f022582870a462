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
from stepfoley.engine.errors import GenerationCancelled, GenerationError, InvalidInputError
from stepfoley.engine.sampler import euler_sample, initial_noise, time_grid


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

    x1 = euler_sample(velocity, torch.zeros(1, 4, 2), time_grid(7))
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
    x1 = euler_sample(lambda t, x: 2 * t * torch.ones_like(x), torch.zeros(1, 1, 1), time_grid(steps))
    expected = sum(float(grid[i + 1] - grid[i]) * 2 * float(grid[i]) for i in range(steps))
    assert x1.item() == pytest.approx(expected, rel=1e-6)
    assert x1.item() == pytest.approx(1 - 1 / steps, rel=1e-5)


def test_progress_reports_every_step():
    calls = []
    euler_sample(lambda t, x: -x, torch.ones(1, 3, 2), time_grid(5), on_step=lambda i, n: calls.append((i, n)))
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
            time_grid(25),
            is_cancelled=lambda: len(evaluated) >= cancel_after,
        )
    assert len(evaluated) == cancel_after


def test_cancelled_before_start_evaluates_nothing():
    evaluated = []
    with pytest.raises(GenerationCancelled):
        euler_sample(lambda t, x: evaluated.append(1) or x, torch.ones(1, 2, 2), time_grid(25), is_cancelled=lambda: True)
    assert evaluated == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latent_raises_generation_error(bad):
    def velocity(t, x):
        v = -x.clone()
        if t.item() > 0.25:  # grid points 0.3, 0.4, ...: the 4th step is the first bad one
            v[0, 1, 0] = bad
        return v

    with pytest.raises(GenerationError) as info:
        euler_sample(velocity, torch.ones(2, 3, 2), time_grid(10))
    message = str(info.value)
    assert "step 4 of 10" in message and "NaN" in message


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_step_count_is_refused(steps):
    with pytest.raises(InvalidInputError):
        time_grid(steps)


def test_euler_follows_any_time_grid_it_is_given():
    seen = []
    grid = torch.tensor([0.0, 0.5, 0.75, 1.0])
    x1 = euler_sample(lambda t, x: seen.append(t.item()) or torch.ones_like(x), torch.zeros(1, 1, 1), grid)
    assert seen == [0.0, 0.5, 0.75] and x1.item() == 1.0
    with pytest.raises(InvalidInputError, match="two points"):
        euler_sample(lambda t, x: x, torch.ones(1, 2, 2), torch.tensor([0.0]))


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


def test_a_later_window_is_a_later_draw_of_its_own_seed():
    generator = torch.Generator().manual_seed(42)
    draws = [torch.randn((1, 250, 20), generator=generator) for _ in range(3)]
    assert torch.equal(initial_noise([42], 250, 20, window=2), draws[2])
    # never the next seed's noise (seeds s and s + 1 are two variations, or two layers)
    assert not torch.equal(initial_noise([42], 250, 20, window=1), initial_noise([43], 250, 20))
    top = 2**63 - 1  # the highest seed has windows too
    assert initial_noise([top], 4, 2, window=3).shape == (1, 4, 2)


def test_seeds_past_32_bits_give_their_own_noise():
    """torch's CPU generator keeps a seed's low 32 bits: seed 5 + 2^32 gave seed 5's sound under
    another number. Seeds below 2^32 keep MMAudio's draw; seeds from 2^32 on have their own, a
    window being a later draw as before."""
    low, high = initial_noise([5], 250, 20), initial_noise([5 + 2**32], 250, 20)
    assert not torch.equal(low, high) and torch.equal(high, initial_noise([5 + 2**32], 250, 20))
    last_torch = torch.randn((1, 250, 20), generator=torch.Generator().manual_seed(2**32 - 1))
    assert torch.equal(initial_noise([2**32 - 1], 250, 20), last_torch)
    top = initial_noise([2**63 - 1, 2**63 - 2], 250, 20)
    assert not torch.equal(top[0], top[1]) and not torch.equal(top[0], last_torch[0])
    assert not torch.equal(initial_noise([5 + 2**32], 250, 20, window=1), high)
    many = initial_noise([5 + 2**32], 20000, 20)  # a standard normal: 400,000 draws, 6 standard errors
    assert abs(float(many.std()) - 1.0) < 0.007 and abs(float(many.mean())) < 0.01


@pytest.mark.parametrize("seeds", [[], [-1], [1.5], ["3"], [2**64]])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(InvalidInputError):
        initial_noise(seeds, 10, 4)


def test_same_seed_same_sample_at_any_batch_position():
    # A per-row velocity (no cross-row mixing, as in the network) keeps rows independent.
    def velocity(t, x):
        return torch.tanh(x.flip(1)) * (1 - t) - 0.5 * x

    alone = euler_sample(velocity, initial_noise([99], 16, 4), time_grid(6))
    batched = euler_sample(velocity, initial_noise([3, 99], 16, 4), time_grid(6))
    assert torch.equal(alone[0], batched[1])


# ---------------------------------------------------------------- golden: MMAudio's sampler


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _group(tensors, prefix):
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _weights_sha256(tensors):
    # Golden README: sha256 over the sorted `weights.*` keys and their bytes.
    digest = hashlib.sha256()
    for key in sorted(k for k in tensors if k.startswith("weights.")):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _network_for(sampler_metadata):
    """The flow network whose weights the sampler fixture names, checked by its hash."""
    from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig

    wanted = sampler_metadata["weights_sha256_of_source"]
    for path in golden_files("mmaudio_flow_*.safetensors"):
        tensors, metadata = _read(path)
        if metadata.get("weights_sha256") != wanted:
            continue
        assert _weights_sha256(tensors) == wanted, f"{path.name}: weights do not match their hash"
        assert json.loads(metadata["config"]) == json.loads(sampler_metadata["config"])
        net = MMAudio(MMAudioConfig(**json.loads(metadata["config"])))
        net.load_weights(_group(tensors, "weights."))
        return net.eval(), path.name
    pytest.fail(f"no mmaudio_flow_* fixture has weights_sha256 {wanted}")


SAMPLER_FIXTURES = golden_files("mmaudio_sampler_cfg*.safetensors")


@pytest.mark.parametrize("fixture", SAMPLER_FIXTURES, ids=[p.name for p in SAMPLER_FIXTURES])
def test_golden_mmaudio_sampler_cfg(golden, fixture):
    """Reproduces outputs.x1[_negtext][_normalized] and the step-0 flows of `fixture`."""
    torch.set_num_threads(1)
    tensors, metadata = _read(fixture)
    inputs, outputs = _group(tensors, "inputs."), _group(tensors, "outputs.")
    intermediates = _group(tensors, "intermediates.")
    tol = json.loads(metadata["tolerance"])
    settings = json.loads(metadata["sampler"])
    assert settings["inference_mode"] == "euler" and settings["min_sigma"] == 0.0
    steps, alpha = settings["num_steps"], settings["cfg_strength"]
    net, _ = _network_for(metadata)
    B = inputs["x0"].shape[0]

    assert torch.equal(time_grid(steps), intermediates["t_grid"])
    grid = time_grid(steps)
    assert torch.equal(grid[1:] - grid[:-1], intermediates["dt"])

    def check(name, mine):
        torch.testing.assert_close(mine, outputs[name], atol=tol["atol"], rtol=tol["rtol"],
                                   msg=lambda m: f"{fixture.name} outputs.{name}: {m}")

    with torch.inference_mode():
        conditions = net.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
        empty = net.get_empty_conditions(B)
        velocity = _velocity(net, "independent", {"cond": conditions, "uncond": empty}, alpha=alpha)

        step0 = net.predict_flow(inputs["x0"].repeat(2, 1, 1), grid[0].expand(2 * B), conditions.cat(empty))
        for name, mine in (("step0_cond_flow", step0[:B]), ("step0_uncond_flow", step0[B:]),
                           ("step0_cfg_flow", velocity(grid[0], inputs["x0"]))):
            torch.testing.assert_close(mine, intermediates[name], atol=tol["atol"], rtol=tol["rtol"],
                                       msg=lambda m, name=name: f"{fixture.name} intermediates.{name}: {m}")

        x1 = euler_sample(velocity, inputs["x0"], time_grid(steps))
        check("x1_normalized", x1)
        check("x1", net.unnormalize(x1))

        if "negative_text_f" in inputs:
            negative = net.get_empty_conditions(B, negative_text_features=inputs["negative_text_f"])
            for field, value in _group(intermediates, "negtext_empty_cond.").items():
                torch.testing.assert_close(getattr(negative.expand(B), field), value,
                                           atol=tol["atol"], rtol=tol["rtol"])
            # MMAudio's negative prompt: a request's negative_caption with plain CFG
            x1_neg = euler_sample(_velocity(net, "independent", {"cond": conditions, "uncond": negative}, alpha=alpha),
                                  inputs["x0"], time_grid(steps))
            check("x1_negtext_normalized", x1_neg)
            check("x1_negtext", net.unnormalize(x1_neg))
            assert (x1_neg - x1).abs().max() > 10 * tol["atol"]  # the negative text mattered


def test_golden_sampler_fixtures_exist(golden):
    assert SAMPLER_FIXTURES, f"no mmaudio_sampler_cfg* fixture in {golden}"


# ---------------------------------------------------------------- the batched guided velocity


from stepfoley.engine.guidance import (GUIDANCE_METHODS, GuidanceWeights,  # noqa: E402
                                       classifier_free_guidance, four_term_guidance, negative_audio_guidance,
                                       reference_audio_guidance)
from stepfoley.engine.sampler import guided_velocity  # noqa: E402


def _velocity(net, method, branches, controlnet=None, audio_latent=None, **weights):
    return guided_velocity(net, GUIDANCE_METHODS[method], GuidanceWeights(**{"alpha": 4.5, **weights}), branches,
                           audio_latent=audio_latent, controlnet=controlnet)


@pytest.fixture(scope="module")
def tiny():
    from test_controlnet import TINY, randomize
    from stepfoley.engine.mmaudio import MMAudio

    torch.manual_seed(0)
    return randomize(MMAudio(TINY), seed=21).eval()


class ForwardSpy:
    """Counts predict_flow calls and their row counts, passing through to the network."""

    def __init__(self, net, monkeypatch):
        self.rows = []
        original = net.predict_flow

        def spy(latent, t, conditions, control=None, **kwargs):
            self.rows.append(latent.shape[0])
            return original(latent, t, conditions, control=control, **kwargs)

        monkeypatch.setattr(net, "predict_flow", spy)
        self.original = original


def _tiny_inputs(net, batch=2, seed=30):
    from test_controlnet import features, video_only_conditions

    clip_f, sync_f, text_f = features(seed, batch)
    g = torch.Generator().manual_seed(seed + 1)
    n, c = net.config.latent_seq_len, net.config.latent_dim
    return (net.preprocess_conditions(clip_f, sync_f, text_f), net.get_empty_conditions(1),
            video_only_conditions(net, clip_f, sync_f), torch.randn(batch, n, c, generator=g),
            torch.randn(batch, n, c, generator=g))


@torch.inference_mode()
def test_cfg_runs_both_branches_in_one_forward(tiny, monkeypatch):
    cond, uncond, _, x, _ = _tiny_inputs(tiny)
    spy = ForwardSpy(tiny, monkeypatch)
    t = torch.tensor(0.3)
    v = _velocity(tiny, "independent", {"cond": cond, "uncond": uncond})(t, x)
    assert spy.rows == [4]
    tt = t.reshape(1).expand(2)
    expected = classifier_free_guidance(spy.original(x, tt, cond), spy.original(x, tt, uncond), 4.5)
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_cfg_below_one_skips_the_unconditional_branch(tiny, monkeypatch):
    cond, uncond, _, x, _ = _tiny_inputs(tiny)
    spy = ForwardSpy(tiny, monkeypatch)
    t = torch.tensor(0.5)
    v = _velocity(tiny, "conditional", {"cond": cond}, alpha=0.5)(t, x)
    assert spy.rows == [2]
    assert torch.equal(v, spy.original(x, t.reshape(1).expand(2), cond))


@pytest.mark.parametrize("mode", ["nag", "reference"])
@torch.inference_mode()
def test_audio_guidance_runs_three_branches_in_one_forward(tiny, monkeypatch, mode):
    from test_controlnet import trained_looking
    cond, uncond, video_only, x, audio_latent = _tiny_inputs(tiny)
    controlnet = trained_looking(depth=2)
    spy = ForwardSpy(tiny, monkeypatch)
    t = torch.tensor(0.25)
    velocity = _velocity(tiny, mode, {"cond": cond, "uncond": uncond, "audio": video_only}, beta=1.5,
                         controlnet=controlnet, audio_latent=audio_latent)
    v = velocity(t, x)
    assert spy.rows == [6]
    tt = t.reshape(1).expand(2)
    residuals = controlnet(x, tt, video_only, audio_latent, base=tiny)
    v_audio = spy.original(x, tt, video_only, control=residuals)
    v_cond, v_uncond = spy.original(x, tt, cond), spy.original(x, tt, uncond)
    combine = negative_audio_guidance if mode == "nag" else reference_audio_guidance
    torch.testing.assert_close(v, combine(v_cond, v_uncond, v_audio, 4.5, 1.5), rtol=1e-5, atol=1e-5)
    # The audio branch really differs from u(V, ∅), or the test above proves little.
    assert (v_audio - spy.original(x, tt, video_only)).abs().max() > 1e-3


@torch.inference_mode()
def test_dual_runs_four_branches_and_computes_eq_a6(tiny, monkeypatch):
    from test_controlnet import trained_looking

    cond, uncond, video_only, x, audio_latent = _tiny_inputs(tiny)
    controlnet = trained_looking(depth=2)
    spy = ForwardSpy(tiny, monkeypatch)
    t = torch.tensor(0.4)
    branches = {"cond": cond, "uncond": uncond, "video": video_only, "audio": video_only}
    v = _velocity(tiny, "dual", branches, controlnet=controlnet, audio_latent=audio_latent,
                  w1=2.0, w2=5.0, w3=1.0)(t, x)
    assert spy.rows == [8]
    tt = t.reshape(1).expand(2)
    v_audio = spy.original(x, tt, video_only, control=controlnet(x, tt, video_only, audio_latent, base=tiny))
    expected = four_term_guidance(spy.original(x, tt, uncond), spy.original(x, tt, video_only),
                                  spy.original(x, tt, cond), v_audio, 2.0, 5.0, 1.0)
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_dual_with_nag_weights_is_nag_and_text_boost_is_dual_without_audio(tiny):
    from test_controlnet import trained_looking

    cond, uncond, video_only, x, audio_latent = _tiny_inputs(tiny)
    controlnet = trained_looking(depth=2)
    branches = {"cond": cond, "uncond": uncond, "video": video_only, "audio": video_only}
    t = torch.tensor(0.6)
    # Eq. A6 with w1 = α, w2 = α + β, w3 = β is Eq. 9
    dual = _velocity(tiny, "dual", branches, controlnet, audio_latent, w1=4.5, w2=6.0, w3=1.5)(t, x)
    nag = _velocity(tiny, "nag", branches, controlnet, audio_latent, beta=1.5)(t, x)
    torch.testing.assert_close(dual, nag, rtol=1e-4, atol=1e-4)
    boost = _velocity(tiny, "text_boost", branches, beta=1.5)(t, x)
    dual_text = _velocity(tiny, "dual", branches, controlnet, audio_latent, w1=4.5, w2=6.0, w3=0.0)(t, x)
    torch.testing.assert_close(boost, dual_text, rtol=1e-5, atol=1e-5)
    assert (boost - nag).abs().max() > 1e-3  # the audio term is what separates them


@pytest.mark.parametrize("beta", [0.0, 1.5])
@torch.inference_mode()
def test_audio_input_projection_runs_once_per_step_for_all_branches(tiny, beta):
    from test_controlnet import trained_looking
    cond, uncond, video_only, x, audio_latent = _tiny_inputs(tiny)
    rows = []
    hook = tiny.audio_input_proj.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        method = "nag" if beta else "independent"
        velocity = _velocity(tiny, method, {"cond": cond, "uncond": uncond, "audio": video_only}, beta=beta,
                             audio_latent=audio_latent, controlnet=trained_looking())
        euler_sample(velocity, x, time_grid(3))
    finally:
        hook.remove()
    assert rows == [2, 2, 2]  # B = 2 items, not 2B (CFG) or 3B + B (NAG with its ControlNet)


@torch.inference_mode()
def test_audio_guidance_without_controlnet_is_refused(tiny):
    cond, uncond, video_only, _, audio_latent = _tiny_inputs(tiny)
    with pytest.raises(InvalidInputError, match="ControlNet"):
        _velocity(tiny, "nag", {"cond": cond, "uncond": uncond, "audio": video_only}, beta=1.5,
                  audio_latent=audio_latent)
    with pytest.raises(InvalidInputError, match="needs conditions for audio"):
        _velocity(tiny, "nag", {"cond": cond, "uncond": uncond}, beta=1.5)


@torch.inference_mode()
def test_conditions_are_concatenated_once_per_generation(tiny, monkeypatch):
    from test_controlnet import trained_looking
    from stepfoley.engine.mmaudio import PreprocessedConditions
    cond, uncond, video_only, _, audio_latent = _tiny_inputs(tiny)
    calls = []
    original_cat = PreprocessedConditions.cat
    monkeypatch.setattr(PreprocessedConditions, "cat", lambda self, *o: calls.append(1) or original_cat(self, *o))
    velocity = _velocity(tiny, "nag", {"cond": cond, "uncond": uncond, "audio": video_only}, beta=1.5,
                         audio_latent=audio_latent, controlnet=trained_looking())
    euler_sample(velocity, initial_noise([1, 2], tiny.config.latent_seq_len, tiny.config.latent_dim), time_grid(4))
    assert len(calls) == 1  # the three-branch rows once, not once per step (the ControlNet's single group needs none)


@torch.inference_mode()
def test_same_seed_same_latent_at_any_batch_position_with_the_network(tiny):
    from test_controlnet import features
    clip_f, sync_f, text_f = features(40, batch=1)
    cond = tiny.preprocess_conditions(clip_f, sync_f, text_f)
    velocity = _velocity(tiny, "independent", {"cond": cond, "uncond": tiny.get_empty_conditions(1)})
    n, c = tiny.config.latent_seq_len, tiny.config.latent_dim
    first = euler_sample(velocity, initial_noise([7, 8], n, c), time_grid(3))
    second = euler_sample(velocity, initial_noise([8, 7], n, c), time_grid(3))
    assert torch.equal(first[0], second[1]) and torch.equal(first[1], second[0])
    # A different batch size may change the order of float additions inside the GEMMs.
    alone = euler_sample(velocity, initial_noise([7], n, c), time_grid(3))
    torch.testing.assert_close(alone[0], first[0], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_level_anchor_sees_where_the_guided_and_conditional_steps_head(tiny, monkeypatch):
    cond, uncond, _, x, _ = _tiny_inputs(tiny)
    weights, t = GuidanceWeights(alpha=4.5), torch.tensor(0.4)
    seen = []

    def to_reference(guided, reference):
        seen.append((guided, reference))
        return reference

    anchored = guided_velocity(tiny, GUIDANCE_METHODS["independent"], weights, {"cond": cond, "uncond": uncond},
                               level_anchor=to_reference)(t, x)
    plain = _velocity(tiny, "independent", {"cond": cond, "uncond": uncond})(t, x)
    tt = t.reshape(1).expand(2)
    v_cond = tiny.predict_flow(x, tt, cond)
    # the anchor gets the data estimates at t = 1 of the guided and the conditional velocity ...
    torch.testing.assert_close(seen[0][0], x + 0.6 * plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0][1], x + 0.6 * v_cond, rtol=1e-5, atol=1e-5)
    # ... and the step heads where it says: anchored to the reference, CFG becomes the conditional flow
    torch.testing.assert_close(anchored, v_cond, rtol=1e-4, atol=1e-4)
    assert (plain - v_cond).abs().max() > 1e-2  # guidance really moved the step, or this proves little
    # an anchor that keeps the guided estimate changes nothing
    kept = guided_velocity(tiny, GUIDANCE_METHODS["independent"], weights, {"cond": cond, "uncond": uncond},
                           level_anchor=lambda guided, reference: guided)(t, x)
    torch.testing.assert_close(kept, plain, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_level_anchor_leaves_the_conditional_flow_alone(tiny):
    cond, _, _, x, _ = _tiny_inputs(tiny)
    calls = []
    velocity = guided_velocity(tiny, GUIDANCE_METHODS["conditional"], GuidanceWeights(alpha=1.0), {"cond": cond},
                               level_anchor=lambda guided, reference: calls.append(1) or reference * 0)
    t = torch.tensor(0.2)
    assert torch.equal(velocity(t, x), tiny.predict_flow(x, t.reshape(1).expand(2), cond)) and not calls
