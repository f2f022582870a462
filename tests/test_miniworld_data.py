"""The embedded model's training data: windows, VGGSound-style examples, ControlNet pairs."""

from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from stepfoley.engine import mixing
from stepfoley.lab.training.miniworld_data import (OFFSET_GRID_S, WINDOW_S, DataRecipe, EmbeddedData,
                                                      _at_loudness, base_batches, build_embedded_data,
                                                      controlnet_batches, held_out_controlnet_losses,
                                                      loudness_envelope, scene_features, window_offsets)

RECIPE = DataRecipe(scenes=4, held_out_scenes=2, scene_seconds=16.0, windows_per_scene=3)


@pytest.fixture(scope="module")
def tiny():
    from stepfoley.engine.embedded.model import build_embedded_model
    return build_embedded_model(random_weights=True)


@pytest.fixture(scope="module")
def data(tiny):
    return build_embedded_data(tiny, RECIPE, first_seed=90_000)


def test_window_offsets_sit_on_the_grid_and_the_first_two_do_not_overlap():
    rng = np.random.default_rng(0)
    for _ in range(200):
        offsets = window_offsets(rng, 20.0, 4)
        assert offsets[1] - offsets[0] >= WINDOW_S - 1e-9
        assert all(0 <= o <= 12.0 + 1e-9 and abs(o / OFFSET_GRID_S - round(o / OFFSET_GRID_S)) < 1e-6 for o in offsets)


def test_targets_are_normalized_and_silence_is_dropped():
    t = np.arange(16000 * 8) / 16000
    wave = (0.01 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = _at_loudness(wave, 16000, -20.0)
    assert abs(mixing.integrated_loudness(out[None], 16000) + 20.0) < 0.1
    assert np.abs(_at_loudness(wave * 50, 16000, -3.0)).max() <= 0.89 + 1e-6  # lowered below -1 dBFS
    assert _at_loudness(np.zeros_like(wave), 16000, -20.0) is None


def test_a_loudness_envelope_is_a_smooth_gain_spanning_at_most_its_range():
    recipe = DataRecipe(shaped_point_s=(0.5, 3.0), shaped_span_db=(6.0, 36.0))
    rng = np.random.default_rng(3)
    for _ in range(50):
        gain = loudness_envelope(rng, 16000 * 8, 16000, recipe)
        db = 20 * np.log10(gain)
        assert gain.shape == (16000 * 8,) and gain.max() == 1.0
        assert db.min() >= -36.0 - 1e-9
        # linear in dB between points at least 0.5 s apart: no step larger than 36 dB per 0.5 s
        assert np.abs(np.diff(db)).max() <= 36.0 / (0.5 * 16000) + 1e-9


def test_shaping_changes_the_loudness_examples_only_and_the_curve_is_the_shaped_targets(tiny):
    recipe = replace(RECIPE, scenes=1, held_out_scenes=0)
    natural = scene_features(tiny, replace(recipe, shaped_prob=0.0), 0, 90_000)
    shaped = scene_features(tiny, replace(recipe, shaped_prob=1.0), 0, 90_000)
    assert torch.equal(natural["latent"], shaped["latent"]) and natural["captions"] == shaped["captions"]
    assert torch.equal(natural["shaped"], natural["latent"])  # unshaped: the target as it is
    assert all(not torch.equal(a, b) for a, b in zip(shaped["shaped"], shaped["latent"]))

    def follows(latent, curve):  # correlation, per example, of each frame's level (log energy) with the curve
        level = torch.logsumexp(2 * latent, dim=-1)
        level, curve = level - level.mean(-1, keepdim=True), curve - curve.mean(-1, keepdim=True)
        return float(((level * curve).sum(-1) / (level.norm(dim=-1) * curve.norm(dim=-1) + 1e-9)).mean())

    assert follows(shaped["shaped"], shaped["loudness"]) > follows(shaped["latent"], shaped["loudness"]) + 0.2
    assert follows(natural["latent"], natural["loudness"]) > 0.5


def test_every_audible_source_of_a_window_leads_one_example(data, tiny):
    assert data.clip.shape[1:] == (64, 96) and data.latent.shape[1:] == (250, 40)
    assert len(data.clip) == RECIPE.scenes * RECIPE.windows_per_scene
    on_picture = data.window[data.window >= 0]
    assert torch.equal(torch.unique(on_picture), torch.arange(len(data.clip)))  # every window has examples
    assert bool((data.window == -1).any())  # and there are audio-text pairs without picture
    assert len(data.texts) == len(torch.unique(data.text))  # one text feature per distinct caption


def test_controlnet_pairs_are_apart_in_the_same_scene_and_held_out_is_kept_apart(data):
    for held in (False, True):
        pairs = data.controlnet_pairs(held_out=held)
        assert len(pairs) > 0
        assert bool((data.scene[pairs[:, 0]] == data.scene[pairs[:, 1]]).all())
        assert bool(((data.offset[pairs[:, 0]] - data.offset[pairs[:, 1]]).abs() >= WINDOW_S - 1e-6).all())
        assert bool((data.held_out[pairs].all() if held else ~data.held_out[pairs].any()))
    training = data.training_examples()
    windows = data.window[training]
    assert not bool(data.held_out[windows[windows >= 0]].any())


def test_the_latent_statistics_are_of_the_training_examples_alone(data):
    # held-out scenes' targets stay out of latent_mean / latent_std too (they ship in the weights)
    mean, std = data.latent_stats()
    kept = data.latent[data.training_examples()].reshape(-1, data.latent.shape[-1])
    assert len(data.training_examples()) < len(data.latent)
    torch.testing.assert_close(mean.flatten(), kept.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(std.flatten(), kept.std(0).clamp_min(1e-3), rtol=0, atol=1e-6)


def test_batches_carry_what_the_objectives_need(data, tiny):
    base = next(base_batches(data, tiny.net.normalize, 6, seed=1))
    assert base.latent.shape == (6, 250, 40) and base.text.shape == (6, 77, 384)
    cn = next(controlnet_batches(data, tiny.net.normalize, 5, seed=1))
    assert cn.cond_latent.shape == (5, 250, 40) and bool(cn.has_video.all())


def test_an_untrained_controlnet_changes_no_held_out_loss(data, tiny):
    from stepfoley.engine.controlnet import AudioControlNet

    controlnet = AudioControlNet.from_base(tiny.net, depth=2)
    losses = held_out_controlnet_losses(tiny.net, controlnet, data, batch_size=4)
    assert losses["no_condition"] == losses["same_clip"] == losses["other_clip"] > 0


def test_data_of_another_codec_is_stale(data, tmp_path):
    import json
    from dataclasses import asdict

    from stepfoley.engine.embedded.codec import MelCodecConfig
    from stepfoley.lab.training.miniworld_data import StaleFeaturesError

    path = data.save(tmp_path / "features.safetensors", {"codec_config": json.dumps(asdict(MelCodecConfig()))})
    EmbeddedData.check_current(path, MelCodecConfig())
    with pytest.raises(StaleFeaturesError, match="another audio codec"):
        EmbeddedData.load(path, MelCodecConfig(log_offset=0.0))
    older = data.save(tmp_path / "older.safetensors", {"recipe": "test"})  # before the codec was recorded
    EmbeddedData.check_current(older, MelCodecConfig(log_offset=0.0))
    with pytest.raises(StaleFeaturesError):
        EmbeddedData.check_current(older, MelCodecConfig())


def test_saved_data_loads_back_equal(data, tmp_path):
    path = data.save(tmp_path / "features.safetensors", {"recipe": "test"})
    again = EmbeddedData.load(path)
    assert all(torch.equal(getattr(data, k), getattr(again, k)) for k in ("latent", "clip", "window", "texts"))


def test_a_held_out_scene_gives_no_stem_alone_example_and_old_features_are_stale(tiny, data, tmp_path):
    """A stem alone belongs to no window, so it was trained on whatever its scene; from a
    held-out scene it would lead that scene's held-out examples too."""
    from stepfoley.lab.training.miniworld_data import StaleFeaturesError
    from stepfoley.engine.checkpoints import save_safetensors_atomic

    recipe = replace(RECIPE, scenes=2, held_out_scenes=1, stem_alone_prob=1.0)
    trained, held = (scene_features(tiny, recipe, i, 90_000) for i in (0, 1))
    assert -1 in trained["window"] and -1 not in held["window"]
    # the scene's other examples are what they were: dropped after every random draw
    as_trained = scene_features(tiny, replace(recipe, held_out_scenes=0), 1, 90_000)
    windowed = [i for i, w in enumerate(as_trained["window"]) if w >= 0]
    assert held["captions"] == [as_trained["captions"][i] for i in windowed]
    assert torch.equal(held["latent"], as_trained["latent"][windowed])
    path = data.save(tmp_path / "features.safetensors", {"recipe": "test"})
    EmbeddedData.check_current(path)
    with pytest.raises(StaleFeaturesError, match="another data recipe"):
        EmbeddedData.check_current(path, recipe=recipe)
    old = save_safetensors_atomic({f.name: getattr(data, f.name).contiguous() for f in fields(EmbeddedData)},
                                  tmp_path / "old.safetensors", {"recipe": "test"})
    with pytest.raises(StaleFeaturesError, match="older version of the training data"):
        EmbeddedData.check_current(old)
