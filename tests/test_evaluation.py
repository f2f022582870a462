"""Evaluation figures on constructed signals whose answers are known, the embedding's save/load
round trip, the runner end to end with the tiny-random model, and `stepfoley eval`'s files."""

import json
import math

import numpy as np
import pytest

from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.evaluation import metrics
from stepfoley.engine.evaluation.spectra import SAMPLE_RATE

SR = SAMPLE_RATE


def _tone_bursts(freq: float, onsets_s, seconds: float = 3.0, burst_s: float = 0.15) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wave = np.zeros_like(t)
    for onset in onsets_s:
        inside = (t >= onset) & (t < onset + burst_s)
        wave[inside] += np.sin(2 * np.pi * freq * t[inside]) * np.exp(-(t[inside] - onset) / 0.05)
    return (0.5 * wave).astype(np.float32)


def _noise(seed: int, seconds: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)).astype(np.float32)


LOW = _tone_bursts(300.0, [0.2, 0.9, 1.7, 2.4])
HIGH = _tone_bursts(3000.0, [0.5, 1.3, 2.0])
SILENCE = np.zeros(3 * SR, np.float32)


# -- embeddings --

def test_identical_tracks_have_separability_one_and_orthogonal_ones_zero():
    v = np.random.default_rng(0).normal(size=16)
    assert metrics.separability(np.stack([v, 3 * v, v])) == pytest.approx(1.0)
    assert metrics.separability(np.eye(3)) == pytest.approx(0.0)
    assert metrics.separability(np.stack([v, -v])) == pytest.approx(-1.0)


def test_separability_is_the_mean_over_all_pairs():
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # pairs (0,1)=1, (0,2)=0, (1,2)=0
    assert metrics.pairwise_similarities(e) == pytest.approx([1.0, 0.0, 0.0])
    assert metrics.separability(e) == pytest.approx(1 / 3)


def test_separability_needs_two_tracks_and_zero_vectors_are_not_nan():
    with pytest.raises(InvalidInputError):
        metrics.separability(np.ones((1, 4)))
    assert metrics.separability(np.zeros((2, 4))) == 0.0


def test_text_fidelity_matches_rows_not_the_whole_matrix():
    audio = np.eye(3)
    assert metrics.text_fidelity(audio, np.eye(3)) == pytest.approx(1.0)
    assert metrics.text_fidelity(audio, np.eye(3)[[1, 2, 0]]) == pytest.approx(0.0)
    with pytest.raises(InvalidInputError):
        metrics.text_fidelity(audio, np.eye(3)[:2])


# -- leakage --

def test_a_copied_earlier_stem_leaks_fully_at_any_gain():
    assert metrics.leakage(0.3 * LOW, [LOW]) == pytest.approx(1.0, abs=1e-6)
    assert metrics.leakage(LOW, [HIGH, LOW]) == pytest.approx(1.0, abs=1e-6)


def test_an_unrelated_track_barely_leaks_and_a_mixed_one_is_in_between():
    clean = metrics.leakage(HIGH, [LOW])
    mixed = metrics.leakage(HIGH + LOW, [LOW])
    assert clean < 0.05
    assert clean + 0.2 < mixed < 0.95


def test_leakage_on_a_mini_world_scene_grows_when_an_earlier_source_is_mixed_in():
    from stepfoley.engine.miniworld import make_scene

    scene = make_scene(10_000_004, kinds=("wheel", "rain"))
    wheel, rain = scene.stems
    assert metrics.leakage(rain, [wheel]) < 0.05
    assert metrics.leakage(rain + 0.7 * wheel, [wheel]) > 0.5


def test_leakage_of_silence_is_zero_not_nan():
    assert metrics.leakage(SILENCE, [LOW]) == 0.0
    assert metrics.leakage(HIGH, [SILENCE]) == 0.0
    with pytest.raises(InvalidInputError):
        metrics.leakage(HIGH, [])


# -- temporal alignment --

def test_a_track_following_its_stem_aligns_and_a_shifted_one_does_not():
    assert metrics.temporal_alignment(0.2 * LOW, LOW) == pytest.approx(1.0, abs=1e-9)
    shifted = _tone_bursts(300.0, [0.55, 1.3, 2.05, 2.75])  # same sound, other times
    assert metrics.temporal_alignment(shifted, LOW) < 0.3
    # energy outside the source's band does not count against it
    assert metrics.temporal_alignment(LOW + HIGH, LOW) > 0.95


def test_temporal_alignment_of_silence_is_zero():
    assert metrics.temporal_alignment(SILENCE, LOW) == 0.0
    assert metrics.temporal_alignment(LOW, SILENCE) == 0.0


# -- composite --

def test_composite_distance_is_zero_for_the_mixture_at_any_gain():
    mixture = LOW + HIGH
    assert metrics.composite_distance(0.25 * mixture, mixture) == pytest.approx(0.0, abs=1e-3)
    assert metrics.composite_distance(LOW, mixture) > 1.0  # the high bursts are missing
    assert math.isfinite(metrics.composite_distance(SILENCE, mixture))


def test_log_mel_distance_is_symmetric_and_in_decibels():
    a, b = LOW + _noise(1), 0.5 * (LOW + _noise(1))
    d = metrics.log_mel_distance(a, b)
    assert d == pytest.approx(metrics.log_mel_distance(b, a))
    # halving the amplitude is -6.02 dB in every bin that stays above the floor
    assert d == pytest.approx(20 * math.log10(2), abs=0.05)


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    a = np.random.default_rng(0).normal(size=(200, 4))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a, a + 2.0) == pytest.approx(16.0, abs=1e-3)  # |shift|^2 = 4 * 2^2


def test_summarize_skips_nothing_finite_and_reports_spread():
    assert metrics.summarize([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}
    assert metrics.summarize([]) == {"mean": None, "std": None, "n": 0}


# -- the evaluation embedding --

QUICK = dict(steps=2, clips_per_kind=2, batch_per_kind=2, clip_seconds=4.0)


@pytest.fixture(scope="module")
def text_encoder():
    from stepfoley.engine.embedded.text import EmbeddedTextEncoder

    return EmbeddedTextEncoder()


@pytest.fixture(scope="module")
def quick_embedding(tmp_path_factory, text_encoder):
    from stepfoley.engine.evaluation.embedding import train_audio_embedding

    path = tmp_path_factory.mktemp("embedding") / "audio_embedding.safetensors"
    report = train_audio_embedding(path, seed=3, text_encoder=text_encoder, **QUICK)
    return path, report


def test_training_is_deterministic_by_seed_and_saved_atomically(quick_embedding, tmp_path, text_encoder):
    from safetensors.torch import load_file

    from stepfoley.engine.evaluation.embedding import train_audio_embedding

    path, report = quick_embedding
    again = tmp_path / "again.safetensors"
    assert train_audio_embedding(again, seed=3, text_encoder=text_encoder, **QUICK)["steps_done"] == 2
    first, second = load_file(str(path)), load_file(str(again))
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
    assert report["complete"] and report["training"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors"]  # no temporary left behind


def test_loaded_embedding_gives_unit_vectors_for_audio_and_any_caption(quick_embedding, text_encoder):
    from stepfoley.engine.evaluation.embedding import load_audio_embedding

    embedding = load_audio_embedding(quick_embedding[0], text_encoder)
    audio = embedding.embed_audio([LOW, SILENCE, HIGH], SR)
    assert audio.shape == (3, 128) and np.allclose(np.linalg.norm(audio, axis=1), 1.0)
    assert np.isfinite(audio).all()
    text = embedding.embed_text(["a bell rings", "a violin solo"])
    assert text.shape == (2, 128) and np.allclose(np.linalg.norm(text, axis=1), 1.0)
    # the same audio at another sample rate embeds (nearly) the same
    import scipy.signal

    at_32k = scipy.signal.resample_poly(LOW, 2, 1).astype(np.float32)
    assert float(embedding.embed_audio([at_32k], 32000)[0] @ audio[0]) > 0.99
    assert embedding.description()["text_tower"] == "minilm-sentence+linear"


def test_a_damaged_or_missing_embedding_file_is_a_checkpoint_error(tmp_path):
    from stepfoley.engine.evaluation.embedding import load_audio_embedding

    with pytest.raises(CheckpointError, match="does not exist"):
        load_audio_embedding(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_audio_embedding(broken)


def test_default_embedding_prefers_the_shipped_file_then_the_cache(quick_embedding, tmp_path, monkeypatch,
                                                                   text_encoder):
    import shutil

    from stepfoley.engine.evaluation import embedding as module

    path, _ = quick_embedding
    monkeypatch.setattr(module, "SHIPPED_PATH", tmp_path / "shipped.safetensors")
    cached = tmp_path / "cache" / f"audio_embedding-{module.FORMAT}-seed0.safetensors"
    cached.parent.mkdir()
    shutil.copy(path, cached)
    monkeypatch.setattr(module, "train_audio_embedding", lambda *a, **k: pytest.fail("must not train"))
    assert module.default_audio_embedding(text_encoder, cache=cached.parent).path == cached
    shutil.copy(path, module.SHIPPED_PATH)
    assert module.default_audio_embedding(text_encoder, cache=cached.parent).path == module.SHIPPED_PATH


# -- end to end: `stepfoley eval` on one scene with the tiny-random model --

def _figures_are_finite(report):
    for method, figures in report["methods"].items():
        for name, value in figures.items():
            values = [value["mean"], value["std"]] if isinstance(value, dict) else [value]
            assert all(isinstance(v, float) and math.isfinite(v) for v in values), (method, name, value)


def test_stepfoley_eval_writes_every_method_and_figure_and_never_overwrites(quick_embedding, tmp_path, capsys):
    from stepfoley.cli import main

    out = tmp_path / "eval.json"
    argv = ["eval", "--model", "tiny-random", "--device", "cpu", "--scenes", "1", "--seed", "0",
            "--tracks", "2", "--steps", "2", "--embedding", str(quick_embedding[0]), "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"independent", "negative_prompt", "nag"}
    for figures in report["methods"].values():
        assert set(figures) == {"separability", "text_fidelity", "leakage", "temporal_alignment",
                                "composite_distance"}
        # one scene, two tracks: one pair, two tracks, one later track, one composite
        assert [figures[k]["n"] for k in ("separability", "text_fidelity", "leakage", "temporal_alignment",
                                          "composite_distance")] == [1, 2, 1, 2, 1]
    _figures_are_finite(report)
    assert report["config"]["scene_seeds"] == [10_000_000]
    assert report["config"]["model"] == "stepfoley-mini-random"
    assert report["reference"]["ground_truth_stems"]["separability"]["n"] == 1
    printed = capsys.readouterr().out
    assert "negative_prompt" in printed and "ground truth" in printed

    before = out.read_bytes()
    assert main(argv) == 1  # refused before any work
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_evaluate_refuses_one_track_and_unknown_methods():
    from stepfoley.engine.evaluation.runner import evaluate

    with pytest.raises(InvalidInputError, match="at least 2"):
        evaluate(None, 1, 0, k=1, embedding=object())
    with pytest.raises(InvalidInputError, match="Unknown method"):
        evaluate(None, 1, 0, methods=("cfg++",), embedding=object())
