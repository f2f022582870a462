"""The loudness ControlNet: a ControlNet that reads one loudness value per latent frame, steers
only the conditional branch, ships inside the embedded weights (optional: older weights have
none) and is trained as an extension of the embedded model's training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from stepfoley.engine.controlnet import AudioControlNet, ControlNetConfig
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.guidance import GUIDANCE_METHODS, GuidanceWeights, negative_audio_guidance
from stepfoley.engine.loudness_curve import (LEARNED_AND_APPLIED_AS, curve_condition, loudness_condition,
                                             measured_condition)
from stepfoley.engine.sampler import guided_velocity

from test_controlnet import TINY, features, randomize, trained_looking, video_only_conditions


def loudness_net(seed=11, depth=1):
    return randomize(AudioControlNet(ControlNetConfig.for_base(TINY, depth=depth, condition_dim=1)), seed).eval()


@pytest.fixture(scope="module")
def tiny():
    from stepfoley.engine.mmaudio import MMAudio

    return randomize(MMAudio(TINY), seed=21).eval()


# ------------------------------------------------------------------------------- the condition


def test_the_condition_scale_puts_the_stem_level_at_zero_and_ten_db_at_one():
    np.testing.assert_allclose(loudness_condition(np.array([-23.0, -13.0, -43.0, -200.0])), [0, 1, -2, -4.7],
                               atol=1e-6)


def test_a_curve_is_read_at_the_middle_of_each_latent_frame_of_its_window():
    curve = [(0.0, -33.0), (2.0, -13.0)]  # a 10 dB per second ramp
    values = curve_condition(curve, n_frames=4, frame_s=0.5, start_s=0.5)  # frames centred 0.75 ... 2.25 s
    np.testing.assert_allclose(values, loudness_condition(np.array([-25.5, -20.5, -15.5, -13.0])), atol=1e-6)


def test_measured_condition_reads_a_tone_at_its_loudness():
    """A 1 kHz tone, 6 dB louder in its second half: the condition's second half reads 0.6
    higher, and its first half the tone's measured loudness."""
    import pyloudnorm

    sr = 16000
    t = np.arange(2 * sr) / sr
    tone = 0.05 * np.sin(2 * np.pi * 1000 * t)
    tone[sr:] *= 2
    values = measured_condition(tone.astype(np.float32), sr, n_frames=50)
    first = pyloudnorm.Meter(sr, block_size=0.4).integrated_loudness(tone[:sr])
    assert values[:10].mean() == pytest.approx(float(loudness_condition(np.array(first))), abs=0.05)
    assert values[-10:].mean() - values[:10].mean() == pytest.approx(0.6, abs=0.03)


# ---------------------------------------------------------------------------------- the network


def test_a_fresh_loudness_controlnet_is_an_exact_no_op(tiny):
    control = AudioControlNet.from_base(tiny, depth=1, condition_dim=1)
    clip_f, sync_f, text_f = features(3)
    cond = tiny.preprocess_conditions(clip_f, sync_f, text_f)
    x = torch.randn(2, TINY.latent_seq_len, TINY.latent_dim)
    t = torch.full((2,), 0.4)
    with torch.no_grad():
        residuals = control(x, t, cond, torch.randn(2, TINY.latent_seq_len, 1), base=tiny)
        assert torch.equal(tiny.predict_flow(x, t, cond, control=residuals), tiny.predict_flow(x, t, cond))


def test_a_loudness_condition_of_the_wrong_shape_is_refused_in_words():
    with pytest.raises(InvalidInputError, match=r"loudness condition has shape \[2, 20, 6\].*\(batch, frames, 1\)"):
        loudness_net().embed_condition(torch.zeros(2, TINY.latent_seq_len, 6))


def test_a_controlnet_config_stored_before_condition_dim_is_a_nag_controlnet():
    stored = {k: v for k, v in vars(ControlNetConfig.for_base(TINY, depth=2)).items() if k != "condition_dim"}
    config = ControlNetConfig(**json.loads(json.dumps(stored)))
    assert config.condition_channels == TINY.latent_dim


@torch.inference_mode()
def test_the_curve_steers_the_conditional_branch_only(tiny):
    """NAG with a curve: the cond rows get the loudness ControlNet's residuals, the audio rows
    the NAG ControlNet's, the unconditional rows none: Eq. 9 of exactly those three flows."""
    clip_f, sync_f, text_f = features(30)
    cond = tiny.preprocess_conditions(clip_f, sync_f, text_f)
    uncond = tiny.get_empty_conditions(1)
    video_only = video_only_conditions(tiny, clip_f, sync_f)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, TINY.latent_seq_len, TINY.latent_dim, generator=g)
    audio_latent = torch.randn(2, TINY.latent_seq_len, TINY.latent_dim, generator=g)
    curve = torch.randn(2, TINY.latent_seq_len, 1, generator=g)
    nag, steer = trained_looking(depth=2), loudness_net()
    weights = GuidanceWeights(alpha=4.5, beta=1.5)
    v = guided_velocity(tiny, GUIDANCE_METHODS["nag"], weights, {"cond": cond, "uncond": uncond, "audio": video_only},
                        audio_latent=audio_latent, controlnet=nag, loudness=curve, loudness_control=steer)
    t = torch.tensor(0.3)
    tt = t.reshape(1).expand(2)
    v_cond = tiny.predict_flow(x, tt, cond, control=steer(x, tt, cond, curve, base=tiny))
    v_audio = tiny.predict_flow(x, tt, video_only, control=nag(x, tt, video_only, audio_latent, base=tiny))
    v_uncond = tiny.predict_flow(x, tt, uncond.expand(2))
    torch.testing.assert_close(v(t, x), negative_audio_guidance(v_cond, v_uncond, v_audio, 4.5, 1.5),
                               rtol=1e-5, atol=1e-5)
    assert (v_cond - tiny.predict_flow(x, tt, cond)).abs().max() > 1e-3  # the curve did something


def test_a_curve_without_a_loudness_controlnet_is_refused(tiny):
    cond = tiny.preprocess_conditions(*features(1))
    with pytest.raises(InvalidInputError, match="no loudness ControlNet"):
        guided_velocity(tiny, GUIDANCE_METHODS["conditional"], GuidanceWeights(alpha=1.0), {"cond": cond},
                        loudness=torch.zeros(1, TINY.latent_seq_len, 1))


# -------------------------------------------------------------------------- the embedded model


def with_loudness_control(model):
    """The random-weight embedded model (which has none) with a random loudness ControlNet."""
    from stepfoley.engine.embedded.model import loudness_config

    model.loudness_control = randomize(AudioControlNet(loudness_config(model.net)), seed=2).eval()
    return model


def test_embedded_weights_with_and_without_a_loudness_controlnet(tmp_path):
    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights

    model = build_embedded_model(random_weights=True)
    assert model.loudness_control is None  # random weights: no curve reader to scramble the sound
    with_loudness_control(model)
    older = save_embedded_weights(tmp_path / "older.safetensors", model.net, model.controlnet, model.codec, metadata={})
    newer = save_embedded_weights(tmp_path / "newer.safetensors", model.net, model.controlnet, model.codec, metadata={},
                                  loudness=model.loudness_control)
    assert build_embedded_model(weights_path=older).loudness_control is None
    loaded = build_embedded_model(weights_path=newer).loudness_control
    for (name, a), (_, b) in zip(model.loudness_control.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_track_with_a_curve_says_the_model_followed_it(tmp_path):
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.pipeline import Region
    from stepfoley.engine.session import StepSession, TrackSettings
    from stepfoley.lab.miniworld import make_scene, write_scene

    model = with_loudness_control(build_embedded_model(random_weights=True))
    scene = make_scene(3, duration=2.0)
    session = StepSession(model, Region(write_scene(scene, tmp_path, mux_audio=False)["video"], 0.0, 2.0))
    curve = ((0.0, -30.0), (2.0, -20.0))
    [shaped] = session.generate_takes([TrackSettings("rain", seed=1, steps=2, loudness_curve=curve)], [None])
    assert shaped.metadata["loudness_curve_applied_as"] == LEARNED_AND_APPLIED_AS
    model.loudness_control = None
    [plain] = session.generate_takes([TrackSettings("rain", seed=1, steps=2, loudness_curve=curve)], [None])
    assert plain.metadata["loudness_curve_applied_as"] == "gain automation"
    assert not np.array_equal(shaped.samples, plain.samples)
    with pytest.raises(InvalidInputError, match="every take made together follows a loudness curve, or none"):
        session.generate_takes([TrackSettings("rain", seed=1, steps=2, loudness_curve=curve),
                                TrackSettings("rain", seed=2, steps=2)], [None, None])


def test_the_controls_evaluation_measures_what_the_learned_condition_adds(tmp_path):
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.lab.evaluation.controls import evaluate_controls

    model = with_loudness_control(build_embedded_model(random_weights=True))
    report = evaluate_controls(model, scenes=1, seed=0, takes=1, steps=2, work_dir=tmp_path)
    loudness = report["controls"]["loudness"]
    for figure in ("curve_correlation", "level_error_db", "text_fidelity"):
        pair = loudness[figure]
        assert {"gain_only", "with_vs_gain_only"} <= set(pair)
        assert pair["with_vs_gain_only"]["mean_diff"] == pytest.approx(pair["with"]["mean"] - pair["gain_only"]["mean"])
    assert model.loudness_control is not None  # put back after the gain-only takes


# ------------------------------------------------------------------------------------- training


def test_extending_weights_adds_the_loudness_controlnet_and_keeps_everything_else(tmp_path):
    """`stepfoley train loudness` on a tiny recipe: the written file has loudness.* tensors, its
    net.* and controlnet.* tensors are those of the weights it extended, the metadata keeps
    theirs and adds the loudness figures (held-out losses no / own / other curve) and how its
    targets were shaped."""
    from safetensors import safe_open

    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights
    from stepfoley.lab.training.embedded import EmbeddedRecipe, extend_with_loudness
    from stepfoley.lab.training.miniworld_data import DataRecipe

    model = build_embedded_model(random_weights=True)
    source = save_embedded_weights(tmp_path / "source.safetensors", model.net, model.controlnet, model.codec,
                                   metadata={"training_command": "stepfoley train embedded --work w",
                                             "figures": json.dumps({"base": {"steps": 8000}}),
                                             "recipe": json.dumps({"data": {"scenes": 480, "shaped_prob": 0.1}})})
    recipe = replace(EmbeddedRecipe(), data=replace(DataRecipe(), scenes=5, held_out_scenes=2), loudness_steps=3,
                     warmup_steps=1, checkpoint_every=2, data_workers=1)
    out = tmp_path / "out.safetensors"
    figures = extend_with_loudness(source, tmp_path / "work", out, recipe, torch.device("cpu"))
    assert set(figures["loudness"]["held_out_loss"]) == {"no_curve", "own_curve", "other_curve"}
    with safe_open(str(source), "pt") as a, safe_open(str(out), "pt") as b:
        assert {k for k in b.keys() if not k.startswith("loudness.")} == set(a.keys())
        assert any(k.startswith("loudness.") for k in b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
        meta = b.metadata()
    assert meta["training_command"] == "stepfoley train embedded --work w"
    trained = json.loads(meta["figures"])
    assert trained["base"] == {"steps": 8000} and trained["loudness"]["steps"] == 3
    assert json.loads(meta["recipe"])["loudness_steps"] == 3 and "loudness_training_command" in meta
    # the base's data recipe is kept; how this phase shaped its targets is the one it ran with
    assert json.loads(meta["recipe"])["data"] == {"scenes": 480, "shaped_prob": 0.75, "shaped_point_s": [0.5, 3.0],
                                                  "shaped_span_db": [6.0, 36.0]}
    assert build_embedded_model(weights_path=out).loudness_control is not None
