"""Evaluation figures on constructed signals whose answers are known, the embedding's save/load
round trip, the runner end to end with the tiny-random model, and `stepfoley eval`'s files."""

import json
import math
import os

import numpy as np
import pytest

from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.lab.evaluation import metrics
from stepfoley.lab.evaluation.spectra import SAMPLE_RATE

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


# -- separability and the presence figures --

def test_similarity_to_earlier_is_the_mean_cosine_to_the_tracks_before():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert metrics.similarity_to_earlier(e, 1) == pytest.approx(0.0)
    # track 2 against tracks 0 and 1: cos 45 degrees with both
    assert metrics.similarity_to_earlier(e, 2) == pytest.approx(math.sqrt(0.5))
    assert metrics.similarity_to_earlier(np.stack([e[0], -5 * e[0]]), 1) == pytest.approx(-1.0)
    assert metrics.similarity_to_earlier(np.zeros((2, 4)), 1) == 0.0  # zero rows are not NaN
    with pytest.raises(InvalidInputError):
        metrics.similarity_to_earlier(e, 0)


def test_presence_leakage_is_the_mean_probability_of_the_earlier_kinds():
    probabilities = np.array([0.9, 0.1, 0.4, 0.0])
    assert metrics.presence_leakage(probabilities, [1, 2]) == pytest.approx(0.25)
    assert metrics.presence_leakage(probabilities, [0]) == pytest.approx(0.9)
    with pytest.raises(InvalidInputError):
        metrics.presence_leakage(probabilities, [])


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
    from stepfoley.lab.evaluation.embedding import train_audio_embedding

    path = tmp_path_factory.mktemp("embedding") / "audio_embedding.safetensors"
    report = train_audio_embedding(path, seed=3, text_encoder=text_encoder, **QUICK)
    return path, report


def test_training_is_deterministic_by_seed_and_saved_atomically(quick_embedding, tmp_path, text_encoder):
    from safetensors.torch import load_file

    from stepfoley.lab.evaluation.embedding import train_audio_embedding

    path, report = quick_embedding
    again = tmp_path / "again.safetensors"
    assert train_audio_embedding(again, seed=3, text_encoder=text_encoder, **QUICK)["steps_done"] == 2
    first, second = load_file(str(path)), load_file(str(again))
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first)
    assert report["complete"] and report["training"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors"]  # no temporary left behind


def test_loaded_embedding_gives_unit_vectors_for_audio_and_any_caption(quick_embedding, text_encoder):
    from stepfoley.lab.evaluation.embedding import load_audio_embedding

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
    from stepfoley.lab.evaluation.embedding import load_audio_embedding

    with pytest.raises(CheckpointError, match="does not exist"):
        load_audio_embedding(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    # says the command that trains one (it named a Python function) in English ("a evaluation")
    with pytest.raises(CheckpointError, match=r"cannot be read .*; give an evaluation embedding file, or train one "
                                              r"with `stepfoley eval --train-embedding FILE`"):
        load_audio_embedding(broken)


def test_default_embedding_prefers_the_shipped_file_then_the_cache(quick_embedding, tmp_path, monkeypatch,
                                                                   text_encoder):
    import shutil

    from stepfoley.lab.evaluation import embedding as module

    path, _ = quick_embedding
    monkeypatch.setattr(module, "SHIPPED_PATH", tmp_path / "shipped.safetensors")
    cached = tmp_path / "cache" / f"audio_embedding-{module.FORMAT}-seed0.safetensors"
    cached.parent.mkdir()
    shutil.copy(path, cached)
    monkeypatch.setattr(module, "train_audio_embedding", lambda *a, **k: pytest.fail("must not train"))
    assert module.default_audio_embedding(text_encoder, cache=cached.parent).path == cached
    shutil.copy(path, module.SHIPPED_PATH)
    assert module.default_audio_embedding(text_encoder, cache=cached.parent).path == module.SHIPPED_PATH


# -- paired bootstrap over scenes --

def test_a_constant_difference_has_a_zero_width_interval_at_that_difference():
    from stepfoley.lab.evaluation.stats import paired_bootstrap

    a = [0.5, 0.7, 0.2, 0.9, 0.4, 0.3, 0.8, 0.6, 0.1, 1.0]
    result = paired_bootstrap(a, [x - 0.1 for x in a])
    assert result["mean_diff"] == pytest.approx(0.1)
    assert result["ci95"] == pytest.approx([0.1, 0.1]) and result["n"] == 10


def test_too_few_scenes_get_no_interval_and_nothing_is_called_significant():
    """Over 2 scenes the percentile bootstrap's 95 % interval left out 0 for half the comparisons
    with no true difference (the star on a quick run's table)."""
    from stepfoley.lab.evaluation.stats import excludes_zero, paired_bootstrap

    rng = np.random.default_rng(3)
    starred = [excludes_zero(paired_bootstrap(list(rng.normal(size=2)), [0.0, 0.0], resamples=200))
               for _ in range(50)]
    assert not any(starred)
    few = paired_bootstrap([1.0, 1.2, 1.1], [0.0, 0.0, 0.0])
    assert few["ci95"] == [None, None] and few["mean_diff"] == pytest.approx(1.1) and few["n"] == 3


def test_bootstrap_interval_matches_the_normal_one_for_many_scenes_and_is_reproducible():
    from stepfoley.lab.evaluation.stats import excludes_zero, paired_bootstrap

    rng = np.random.default_rng(1)
    b = rng.normal(size=400)
    a = b + rng.normal(0.3, 1.0, size=400)
    result = paired_bootstrap(a, b)
    differences = a - b
    half_width = 1.96 * differences.std() / math.sqrt(len(differences))
    low, high = result["ci95"]
    assert result["mean_diff"] == pytest.approx(differences.mean())
    assert low == pytest.approx(differences.mean() - half_width, abs=0.1 * half_width)
    assert high == pytest.approx(differences.mean() + half_width, abs=0.1 * half_width)
    assert paired_bootstrap(a, b) == result and excludes_zero(result)
    assert not excludes_zero(paired_bootstrap(a[:5] - a[:5].mean(), np.zeros(5)))


def test_bootstrap_drops_scenes_missing_on_either_side_and_needs_pairs():
    from stepfoley.lab.evaluation.stats import paired_bootstrap

    result = paired_bootstrap([1.0, None, 3.0, float("nan")], [0.0, 2.0, None, 1.0])
    # one scene left: its difference, but no interval (and so nothing significant)
    assert result == {"mean_diff": 1.0, "ci95": [None, None], "n": 1}
    assert paired_bootstrap([None], [1.0]) == {"mean_diff": None, "ci95": [None, None], "n": 0}
    with pytest.raises(ValueError):
        paired_bootstrap([1.0, 2.0], [1.0])


# -- the source-presence classifier --

QUICK_CLASSIFIER = dict(steps=2, batch_size=4, clips_per_kind=1, validation_clips_per_kind=1,
                        validation_mixtures=8, clip_seconds=2.0)


@pytest.fixture(scope="module")
def quick_classifier(tmp_path_factory):
    from stepfoley.lab.evaluation.presence import train_source_presence

    path = tmp_path_factory.mktemp("classifier") / "source_presence.safetensors"
    return path, train_source_presence(path, seed=2, **QUICK_CLASSIFIER)


def test_presence_accuracy_counts_labels_examples_faint_kinds_and_single_sources():
    import torch

    from stepfoley.lab.evaluation.presence import presence_accuracy

    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    faint = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    probabilities = torch.tensor([[0.9, 0.2, 0.6], [0.7, 0.4, 0.1]])  # a faint kind heard, one present missed
    figures = presence_accuracy(probabilities, labels, faint)
    assert figures["label_accuracy"] == pytest.approx(4 / 6)
    assert figures["balanced_accuracy"] == pytest.approx(0.5 * (2 / 3 + 2 / 3))
    assert figures["exact_match"] == 0.0 and figures["faint_rejected"] == 0.0
    assert figures["single_source_accuracy"] == 0.0 and figures["mixtures"] == 2
    assert presence_accuracy(labels, labels, torch.zeros_like(labels))["faint_rejected"] is None


def test_classifier_round_trip_gives_probabilities_and_silence_holds_nothing(quick_classifier, tmp_path):
    from safetensors.torch import load_file

    from stepfoley.lab.evaluation.presence import load_source_presence, train_source_presence
    from stepfoley.lab.miniworld import SOURCE_KINDS

    path, report = quick_classifier
    assert report["complete"] and report["training"]["seed"] == 2
    assert set(report["validation"]) >= {"label_accuracy", "balanced_accuracy", "exact_match"}
    classifier = load_source_presence(path)
    probabilities = classifier.probabilities([LOW, SILENCE, HIGH], SR)
    assert probabilities.shape == (3, len(SOURCE_KINDS))
    assert ((probabilities >= 0) & (probabilities <= 1)).all() and (probabilities[1] == 0).all()
    assert classifier.kind_index("rain") == sorted(SOURCE_KINDS).index("rain")
    again = tmp_path / "again.safetensors"
    train_source_presence(again, seed=2, **QUICK_CLASSIFIER)
    first, second = load_file(str(path)), load_file(str(again))  # deterministic by seed
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)


def test_a_wrong_classifier_file_is_a_checkpoint_error(quick_embedding, tmp_path):
    from stepfoley.lab.evaluation.presence import load_source_presence

    with pytest.raises(CheckpointError, match="does not exist"):
        load_source_presence(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a StepFoley source-presence classifier"):
        load_source_presence(quick_embedding[0])


def test_the_shipped_classifier_names_each_kind_of_a_held_out_clip():
    from stepfoley.lab.evaluation.presence import SHIPPED_PATH, load_source_presence
    from stepfoley.lab.miniworld import SOURCE_KINDS, single_source_clip

    classifier = load_source_presence(SHIPPED_PATH)
    assert classifier.report["validation"]["balanced_accuracy"] > 0.95
    kinds = sorted(SOURCE_KINDS)
    clips = [single_source_clip(990_000_000 + i, kind).mixture for i, kind in enumerate(kinds)]
    probabilities = classifier.probabilities(clips, SR)
    assert [kinds[i] for i in probabilities.argmax(1)] == kinds
    assert (probabilities[np.arange(len(kinds)), np.arange(len(kinds))] > 0.5).all()


# -- the runner's figures on a constructed take --

def test_sequence_figures_read_separability_fidelity_and_leakage_from_their_sources():
    from stepfoley.lab.evaluation.runner import TRACK_FIGURES, sequence_figures
    from stepfoley.engine.mixing import finish_stem
    from stepfoley.engine.session import Track
    from dataclasses import asdict

    stems = np.stack([LOW, HIGH, LOW + HIGH])
    tracks = []
    for stem in stems:
        finished, levels = finish_stem(stem, SR)
        tracks.append(Track(finished[0], SR, asdict(levels)))
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.3], [0.5, 0.6, 0.7]])
    figures = sequence_figures(tracks, embeddings, probabilities, [0, 1, 2], stems, SR)
    later = figures["later"]
    assert set(later) == set(TRACK_FIGURES)
    assert later["separability"] == pytest.approx([0.0, math.sqrt(0.5)])
    assert later["text_fidelity"] == pytest.approx([0.8, 0.7])
    assert later["leakage"] == pytest.approx([0.2, 0.55])
    assert later["lufs"] == pytest.approx([tracks[1].metadata["decoded_lufs"], tracks[2].metadata["decoded_lufs"]])
    assert later["temporal_alignment"][0] > 0.95  # each track is its own true stem
    assert figures["track1"]["text_fidelity"] == pytest.approx(0.9)
    assert figures["track1"]["pre_limiter_clipped_fraction"] == 0.0
    assert figures["scene"]["composite_distance"] < 3.0


# -- end to end: `stepfoley eval` on one scene with the tiny-random model --

REQUIRED_COMPARISONS = ("nag_vs_independent", "nag_vs_text_boost", "nag_vs_negative_prompt",
                        "negative_prompt_vs_independent")


def _eval_argv(quick_embedding, quick_classifier, out, *extra):
    return ["eval", "--model", "tiny-random", "--device", "cpu", "--scenes", "1", "--seed", "0", "--takes", "2",
            "--tracks", "2", "--steps", "2", "--embedding", str(quick_embedding[0]),
            "--classifier", str(quick_classifier[0]), "--json", str(out), *extra]


def test_stepfoley_eval_json_schema_on_one_scene_and_never_overwrites(quick_embedding, quick_classifier, tmp_path,
                                                                      capsys):
    from stepfoley.cli import main
    from stepfoley.lab.evaluation.runner import TRACK_FIGURES

    out = tmp_path / "eval.json"
    argv = _eval_argv(quick_embedding, quick_classifier, out)
    assert main(argv) == 0
    report = json.loads(out.read_text())
    figures = set(TRACK_FIGURES) | {"composite_distance"}
    assert set(report["methods"]) == {"independent", "negative_prompt", "text_boost", "nag", "oracle"}
    for row in report["methods"].values():
        assert set(row) == figures
        assert all(row[f]["n"] == 1 and math.isfinite(row[f]["mean"]) for f in figures)  # one scene
    assert math.isfinite(report["track1"]["text_fidelity"]["mean"])
    assert math.isfinite(report["reference"]["ground_truth_stems"]["text_fidelity"]["mean"])
    for name in REQUIRED_COMPARISONS:
        for figure in figures:
            comparison = report["comparisons"][name][figure]
            assert set(comparison) == {"mean_diff", "ci95", "n"} and comparison["n"] == 1  # scenes, not tracks
            assert comparison["ci95"] == [None, None]  # one scene: no interval
    a, b = report["methods"]["nag"]["separability"]["mean"], report["methods"]["independent"]["separability"]["mean"]
    assert report["comparisons"]["nag_vs_independent"]["separability"]["mean_diff"] == pytest.approx(a - b)
    assert report["config"]["takes"] == 2 and report["config"]["scene_seeds"] == [10_000_000]
    assert report["config"]["rows"]["oracle"] == {"method": "nag", "beta": 1.5, "hears": "truth"}
    assert report["config"]["rows"]["independent"] == {"method": "independent", "beta": None, "hears": None}
    assert report["classifier"]["validation"]["label_accuracy"] == quick_classifier[1]["validation"]["label_accuracy"]
    assert {"sampling", "decoding", "scoring"} <= set(report["timings"])
    printed = capsys.readouterr().out
    assert "nag_vs_text_boost" in printed and "ground truth" in printed and "thread" in printed

    before = out.read_bytes()
    assert main(argv) == 2  # refused before any work, as an argument error
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_beta_sweep_rows_are_nag_at_each_beta(quick_embedding, quick_classifier, tmp_path):
    from stepfoley.cli import main

    out = tmp_path / "sweep.json"
    assert main(_eval_argv(quick_embedding, quick_classifier, out, "--beta-sweep", "0,2")) == 0
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["beta_0", "beta_2"]
    assert report["config"]["rows"]["beta_2"] == {"method": "nag", "beta": 2.0, "hears": "generated"}
    assert set(report["comparisons"]) == {"beta_2_vs_beta_0"}


def test_evaluate_refuses_bad_settings_before_any_work():
    from stepfoley.lab.evaluation.runner import MAX_SEED, Row, evaluate

    with pytest.raises(InvalidInputError, match="--tracks must be from 2"):
        evaluate(None, 1, 0, k=1, embedding=object(), presence=object())
    with pytest.raises(InvalidInputError, match="Unknown method"):
        evaluate(None, 1, 0, rows=(Row("x", "cfg++"),), embedding=object(), presence=object())
    with pytest.raises(InvalidInputError, match="hears"):
        evaluate(None, 1, 0, rows=(Row("x", "nag"),), embedding=object(), presence=object())
    with pytest.raises(InvalidInputError, match="takes"):
        evaluate(None, 1, 0, takes=0, embedding=object(), presence=object())
    with pytest.raises(InvalidInputError, match="choosing α"):
        evaluate(None, 1, MAX_SEED + 1, embedding=object(), presence=object())


# -- choosing α --

def _alpha_summaries(figures: dict) -> dict:
    return {alpha: {"text_fidelity": {"mean": fidelity}, "pre_limiter_clipped_fraction": {"mean": clipped}}
            for alpha, (fidelity, clipped) in figures.items()}


def test_alpha_rule_takes_the_most_faithful_alpha_within_the_clipping_limit():
    from stepfoley.lab.evaluation.calibration import pick_alpha

    summaries = _alpha_summaries({1.0: (0.30, 0.0), 2.0: (0.50, 0.0005), 3.0: (0.70, 0.01), 4.5: (0.60, 0.05)})
    assert pick_alpha(summaries)[0] == 2.0
    assert pick_alpha(summaries, limit=0.02)[0] == 3.0
    overloaded = _alpha_summaries({1.0: (0.3, 0.02), 2.0: (0.5, 0.03)})
    chosen, why = pick_alpha(overloaded)
    assert chosen == 1.0 and "least overloaded" in why


def _choose_and_write(quick_classifier, tmp_path, choice: str, grid: list[str]):
    """`stepfoley eval <choice> --write` on a copy of the packaged weights, one development scene
    at 1 step: (argv, the report, the copy, its metadata, the packaged file's metadata)."""
    import shutil

    from safetensors import safe_open

    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    weights = tmp_path / "mini.safetensors"
    shutil.copy(WEIGHTS_PATH, weights)
    out = tmp_path / "choice.json"
    argv = ["eval", choice, "--embedded-weights", str(weights), "--device", "cpu", "--scenes", "1", "--takes", "1",
            "--tracks", "2", "--steps", "1", *grid, "--classifier", str(quick_classifier[0]), "--json", str(out),
            "--write"]
    assert main(argv) == 0
    metadata = []
    for path in (weights, WEIGHTS_PATH):
        with safe_open(str(path), "pt") as f:
            metadata.append(f.metadata())
    return argv, json.loads(out.read_text()), weights, *metadata


def test_choose_alpha_writes_the_default_into_a_weights_file_and_the_engine_publishes_it(quick_classifier, tmp_path,
                                                                                        capsys):
    from safetensors.torch import load_file

    from stepfoley.engine.embedded.model import WEIGHTS_PATH, build_embedded_model

    packaged_before = WEIGHTS_PATH.read_bytes()
    _, report, weights, new_meta, old_meta = _choose_and_write(quick_classifier, tmp_path, "--choose-alpha",
                                                              ["--alphas", "1,3"])
    import hashlib

    # the report names the weights it measured (as they were, before --write recorded the choice)
    measured = report["config"]["weights"]
    assert (measured["file"], measured["sha256"]) == (str(weights), hashlib.sha256(packaged_before).hexdigest())
    assert measured["training_command"].startswith("stepfoley train embedded")
    # and the decoder that made its audio: this version's, not one the weights file recorded
    from stepfoley.engine.embedded.codec import MelCodecConfig
    assert report["config"]["decoder"] == {"nnls_iterations": MelCodecConfig.nnls_iterations, "momentum": 0.99,
                                           "griffin_lim_iterations": MelCodecConfig.griffin_lim_iterations,
                                           "synthesis_hop": MelCodecConfig.synthesis_hop}
    assert set(report["alphas"]) == {"1", "3"} and report["chosen"] in (1.0, 3.0)
    assert report["config"]["scene_seeds"] == [90_000_000]
    assert {k: v for k, v in new_meta.items() if not k.startswith("guidance_defaults")} == \
        {k: v for k, v in old_meta.items() if not k.startswith("guidance_defaults")}
    assert json.loads(new_meta["guidance_defaults_provenance"])["rule"] == report["rule"]
    old_tensors, new_tensors = load_file(str(WEIGHTS_PATH)), load_file(str(weights))
    assert old_tensors.keys() == new_tensors.keys() and all(old_tensors[k].equal(new_tensors[k]) for k in old_tensors)
    defaults = build_embedded_model(weights_path=weights).capabilities().defaults
    assert defaults.alpha == report["chosen"] and defaults.beta == build_embedded_model().defaults.beta
    assert WEIGHTS_PATH.read_bytes() == packaged_before
    assert "chosen" in capsys.readouterr().out


# -- choosing the level anchor --

def test_level_anchor_rule_takes_the_smallest_strength_within_the_clipping_limit():
    from stepfoley.lab.evaluation.calibration import pick_level_anchor

    summaries = _alpha_summaries({0.0: (0.9, 0.003), 0.25: (0.9, 0.0015), 0.5: (0.88, 0.0004), 1.0: (0.85, 0.0001)})
    assert pick_level_anchor(summaries)[0] == 0.5
    assert pick_level_anchor(summaries, limit=0.002)[0] == 0.25
    chosen, why = pick_level_anchor(_alpha_summaries({0.0: (0.9, 0.03), 1.0: (0.8, 0.02)}))
    assert chosen == 1.0 and "least overloaded" in why


def test_choose_level_anchor_writes_the_default_and_keeps_alpha_and_its_provenance(quick_classifier, tmp_path):
    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import build_embedded_model

    argv, report, weights, new_meta, old_meta = _choose_and_write(quick_classifier, tmp_path, "--choose-level-anchor",
                                                                  ["--anchors", "0,1"])
    assert set(report["strengths"]) == {"0", "1"} and report["chosen"] in (0.0, 1.0)
    assert report["config"]["method"] == "nag" and report["config"]["scene_seeds"] == [90_000_000]
    assert json.loads(new_meta["level_anchor_provenance"])["rule"] == report["rule"]
    assert new_meta["guidance_defaults_provenance"] == old_meta["guidance_defaults_provenance"]  # α's stays
    before, after = build_embedded_model().defaults, build_embedded_model(weights_path=weights).defaults
    assert after.level_anchor == report["chosen"] and (after.alpha, after.beta) == (before.alpha, before.beta)
    assert main(argv[:1] + ["--choose-alpha", "--choose-level-anchor"] + argv[2:]) == 2  # one choice at a time


# -- where the report goes, checked before any work; the report before the weights --

def test_eval_refuses_before_the_model_loads_what_it_took_and_got_wrong(tmp_path, capsys, monkeypatch):
    """Helper 197: --json DIR/ wrote a file named DIR; --force --json over the shipped classifier
    replaced it, and every later eval failed; calibration took --tracks 100 and recorded it."""
    import stepfoley.commands.eval as eval_command
    from stepfoley.cli import main
    from stepfoley.lab.evaluation import embedding, presence

    def never(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eval_command, "_load_model", never)
    shipped = {p: p.read_bytes() for p in (presence.SHIPPED_PATH, embedding.SHIPPED_PATH) if p.is_file()}
    (tmp_path / "e.safetensors").write_bytes(b"an embedding")
    cases = [(["--json", str(tmp_path / "results") + os.sep], "names a folder; give a file in it"),
             (["--json", str(presence.SHIPPED_PATH), "--force"], "is the file the run reads (--classifier)"),
             (["--json", str(embedding.SHIPPED_PATH), "--force"], "is the file the run reads (--embedding)"),
             (["--json", str(tmp_path / "a.json"), "--choose-alpha", "--alphas", "1,2", "--tracks", "100"],
              "--tracks must be from 1 to 4"),
             (["--json", str(tmp_path / "a.json"), "--choose-level-anchor", "--tracks", "5"],
              "--tracks must be from 2 to 4"),
             # taken, and read or trained for minutes, for nothing
             (["--json", str(tmp_path / "a.json"), "--controls", "--embedding", str(tmp_path / "e.safetensors")],
              "--embedding is read by the main evaluation only"),
             (["--train-classifier", str(tmp_path / "c.safetensors"), "--controls", "--json", str(tmp_path / "a.json")],
              "--train-classifier trains the network and runs nothing else; leave out --json, --controls")]
    for argv, words in cases:
        assert main(["eval", "--device", "cpu", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]
    assert all(path.read_bytes() == data for path, data in shipped.items())


def test_a_json_path_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import shutil

    import stepfoley.commands.eval as eval_command
    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    def never(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eval_command, "_load_model", never)
    weights = tmp_path / "mini.safetensors"
    shutil.copy(WEIGHTS_PATH, weights)
    before = weights.read_bytes()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "theirs.json").write_text("theirs")
    cases = [(tmp_path / "nowhere" / "a.json", "does not exist; create it"),
             (tmp_path / "a-file" / "a.json", "is not a folder"),
             (tmp_path, "is a folder; give a file name"),
             (tmp_path / "theirs.json", "already exists; choose another --json path or add --force")]
    for path, words in cases:
        for extra in ([], ["--choose-alpha", "--write", "--embedded-weights", str(weights)],
                      ["--choose-level-anchor", "--write", "--embedded-weights", str(weights)]):
            assert main(["eval", "--json", str(path), "--device", "cpu", *extra]) == 2, (path, extra)
            err = capsys.readouterr().err
            assert words in err and "Traceback" not in err, (path, extra, err)
    if os.path.isdir("/proc"):  # its permission bits let root in (the CI's user); only trying to make a file tells
        assert main(["eval", "--json", "/proc/stepfoley-eval.json", "--device", "cpu"]) == 2
        assert "/proc is not writable" in capsys.readouterr().err
    assert main(["eval", "--json", str(tmp_path), "--force"]) == 2  # --force replaces a file, never a folder
    assert "is a folder" in capsys.readouterr().err
    assert main(["eval", "--json", str(tmp_path / "new.json"), "--write"]) == 2  # an argument error, as elsewhere
    assert "--write goes with --choose-alpha" in capsys.readouterr().err
    # weights in a folder no file can be made in: --write failed after the whole run
    from stepfoley import atomic
    monkeypatch.setattr(atomic, "can_make_file_in", lambda folder: os.path.abspath(folder) != str(tmp_path))
    (tmp_path / "a-file").unlink()
    (tmp_path / "a-file").mkdir()  # the report's folder, which takes files
    assert main(["eval", "--json", str(tmp_path / "a-file" / "alpha.json"), "--device", "cpu", "--choose-alpha",
                 "--write", "--embedded-weights", str(weights)]) == 2
    assert "in a folder where no file can be made" in capsys.readouterr().err
    assert weights.read_bytes() == before and (tmp_path / "theirs.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "mini.safetensors", "theirs.json"]


def test_every_eval_option_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import stepfoley.commands.eval as eval_command
    from stepfoley.cli import main

    def never(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(eval_command, "_load_model", never)
    (tmp_path / "a-file").write_text("x")
    out = str(tmp_path / "e.json")
    cases = [(["--beta-sweep", "abc"], "--beta-sweep takes numbers"),
             (["--beta-sweep", "1,2", "--beta", "1"], "--beta-sweep sets β itself"),
             (["--choose-alpha", "--alpha", "2"], "--choose-alpha runs plain CFG"),
             (["--choose-alpha", "--alphas", "x"], "--alphas takes numbers"),
             (["--choose-level-anchor", "--anchors", ","], "--anchors takes numbers"),
             (["--choose-level-anchor", "--anchors", "2"], "Level anchors are numbers from 0 to 1"),
             (["--choose-alpha", "--alphas", "-1"], "--alphas must be a number from 0 to 100"),
             (["--choose-alpha", "--scenes", "0"], "Choosing the α takes 1 to 1000 scenes (--scenes)"),
             # ran its scenes' list up front with no progress: 10^8 scenes
             (["--choose-alpha", "--scenes", "100000000"], "Choosing the α takes 1 to 1000 scenes (--scenes)"),
             # repeated β: "Give at least one row, each with its own name"; β nan: named --beta
             (["--beta-sweep", "1,1,1"], "--beta-sweep lists β 1 more than once"),
             (["--beta-sweep", "0.1234561,0.1234562"], "--beta-sweep lists β 0.123456 more than once"),
             (["--beta-sweep", "1,nan"], "--beta-sweep must be a number from 0 to 100"),
             (["--choose-alpha", "--alphas", "1,1.0000001,2"], "--alphas lists α 1 more than once"),
             (["--choose-alpha", "--alphas", "2,1,1"], "--alphas lists α 1 more than once"),  # merged quietly
             (["--choose-level-anchor", "--anchors", "0.5,0.50000001"], "--anchors lists level anchor 0.5 more"),
             # a scene holds at most 4 sources: 9 was run as 3 and recorded as 9
             (["--tracks", "9"], "--tracks must be from 2 (separability and leakage compare tracks) to 4"),
             # the controls' α was not checked: a traceback after the model loaded
             (["--controls", "--alpha", "1e30"], "--alpha must be a number from 0 to 100"),
             (["--controls", "--alpha", "nan"], "--alpha must be a number from 0 to 100"),
             (["--choose-level-anchor", "--takes", "0"], "--takes must be a whole number from 1 to 10"),
             (["--choose-alpha", "--takes", "11"], "--takes must be a whole number from 1 to 10"),  # seeds would repeat
             (["--choose-level-anchor", "--tracks", "1"], "--tracks must be from 2 to 4 (a scene"),
             (["--choose-alpha", "--tracks", "0"], "--tracks must be from 1 to 4 (a scene"),
             (["--choose-alpha", "--seed", "5"], "--seed picks the test scenes"),
             (["--controls", "--beta", "2"], "leave --beta, --tracks and --markdown out"),
             (["--controls", "--markdown"], "leave --beta, --tracks and --markdown out"),
             (["--controls", "--tracks", "3"], "leave --beta, --tracks and --markdown out"),  # typed, even the default
             (["--choose-alpha", "--steps", "0"], "--steps must be a whole number from 1 to 200"),
             (["--scenes", "0"], "--scenes must be a whole number from 1"),
             (["--takes", "0"], "--takes must be a whole number from 1"),
             (["--steps", "0"], "--steps must be a whole number from 1 to 200"),
             # a request's bounds (stepfoley.request): these ran for 27,630 h, or to clipped noise
             (["--steps", "100000000"], "--steps must be a whole number from 1 to 200"),
             (["--alpha", "1e30"], "--alpha must be a number from 0 to 100"),
             (["--beta", "101"], "--beta must be a number from 0 to 100"),
             (["--tracks", "1"], "--tracks must be from 2"),
             (["--controls", "--scenes", "0"], "--scenes must be a whole number from 1"),
             (["--controls", "--steps", "0"], "--steps must be a whole number from 1 to 200"),
             (["--alphas", "1,2"], "--alphas is the grid --choose-alpha goes over"),
             (["--choose-alpha", "--anchors", "0.5"], "--anchors is the grid --choose-level-anchor goes over"),
             (["--device", "bogus"], "Unknown device 'bogus'"),
             (["--weights", str(tmp_path / "a-file")], "is not a file of the embedded model's weights (it cannot"),
             (["--embedded-weights", str(tmp_path)], "is a folder; give the .safetensors file"),
             (["--classifier", str(tmp_path / "none.safetensors")], "is not there; give the .safetensors file")]
    for extra, words in cases:
        assert main(["eval", "--json", out, "--device", "cpu", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (extra, err)
    # --json naming a file the run reads: with --force the report replaced the weights it measured
    for option in ("--embedded-weights", "--classifier", "--embedding"):
        assert main(["eval", "--json", str(tmp_path / "a-file"), "--force", option, str(tmp_path / "a-file")]) == 2
        assert f"is the file the run reads ({option})" in capsys.readouterr().err
    assert (tmp_path / "a-file").read_text() == "x"
    for option in ("--train-embedding", "--train-classifier"):  # the file is checked before minutes of training
        assert main(["eval", option, str(tmp_path / "a-file" / "net.safetensors")]) == 2
        assert f"is not a folder; choose another {option} path" in capsys.readouterr().err
        assert main(["eval", option, str(tmp_path / "a-file")]) == 2
        assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    for option in ("--train-embedding", "--train-classifier"):  # "": ignored, the whole evaluation ran instead
        assert main(["eval", option, "", "--json", out]) == 2
        assert f"{option} is empty" in capsys.readouterr().err
    # each seed draws its own clips: 2000 was the classifier's seed 0's, -7000 the base's training scenes
    for seed in ("2000", "-7000"):
        assert main(["eval", "--train-classifier", str(tmp_path / "c.safetensors"), "--seed", seed]) == 2
        assert "--seed must be from 0 to 1999 for a network" in capsys.readouterr().err
    # a folder the training makes is fine: the check passes and training starts (stopped here)
    import stepfoley.lab.evaluation.embedding as embedding
    from stepfoley.engine.errors import InvalidInputError

    def reached(*args, **kwargs):
        raise InvalidInputError("training reached")

    monkeypatch.setattr(embedding, "train_audio_embedding", reached)
    assert main(["eval", "--train-embedding", str(tmp_path / "new" / "net.safetensors")]) == 1
    assert "training reached" in capsys.readouterr().err


def _choose_alpha_then(monkeypatch, after):
    """The real choose_alpha, then `after()` (what happens meanwhile, outside StepFoley)."""
    from stepfoley.lab.evaluation import calibration

    real = calibration.choose_alpha
    monkeypatch.setattr(calibration, "choose_alpha", lambda *a, **k: (real(*a, **k), after())[0])


def _choose_alpha_argv(quick_classifier, weights, out):
    return ["eval", "--choose-alpha", "--alphas", "1,3", "--embedded-weights", str(weights), "--device", "cpu",
            "--scenes", "1", "--takes", "1", "--tracks", "2", "--steps", "1", "--classifier",
            str(quick_classifier[0]), "--json", str(out), "--write"]


def test_the_weights_are_not_rewritten_when_the_report_cannot_be_written(quick_classifier, tmp_path, capsys,
                                                                         monkeypatch):
    """--write records a choice only once its report is on disk: a report that cannot be written
    (its name taken meanwhile) leaves the weights as they were."""
    import shutil

    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    weights, out = tmp_path / "mini.safetensors", tmp_path / "alpha.json"
    shutil.copy(WEIGHTS_PATH, weights)
    before = weights.read_bytes()
    _choose_alpha_then(monkeypatch, lambda: out.write_text("theirs"))
    assert main(_choose_alpha_argv(quick_classifier, weights, out)) == 1
    captured = capsys.readouterr()
    assert "alpha.json already exists" in captured.err and "recorded" not in captured.out
    assert weights.read_bytes() == before and out.read_text() == "theirs"
    # the figures are not thrown away: saved beside it under a free name, which the message gives
    saved = tmp_path / "alpha.1.json"
    assert f"The report was saved as {saved} instead." in captured.err
    assert json.loads(saved.read_text())["chosen"] in (1.0, 3.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a file size limit (RLIMIT_FSIZE) needs POSIX")
def test_a_weights_file_that_cannot_be_rewritten_is_said_in_the_report(quick_classifier, tmp_path, capsys,
                                                                      monkeypatch):
    """The disk takes the report (a few kB) but not the new weights (10 MB): the report says they
    were not written and why, the weights file is as it was, and no temporary file stays."""
    import resource
    import shutil
    import signal

    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    weights, out = tmp_path / "mini.safetensors", tmp_path / "alpha.json"
    shutil.copy(WEIGHTS_PATH, weights)
    before = weights.read_bytes()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    try:
        _choose_alpha_then(monkeypatch, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, limits[1])))
        code = main(_choose_alpha_argv(quick_classifier, weights, out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    err = capsys.readouterr().err
    assert code == 1 and f"Cannot write the weights file {weights}" in err and "Traceback" not in err
    report = json.loads(out.read_text())
    assert "written" not in report and report["not_written"]["path"] == str(weights)
    assert "Cannot write the weights file" in report["not_written"]["error"]
    assert weights.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.json", "mini.safetensors"]


def test_the_oracle_hears_the_true_stems_as_finished_tracks_not_at_their_raw_balance(tmp_path):
    """The oracle row is NAG had its earlier tracks been the true stems: a generated track reaches
    x̃ finished (at stem loudness), so a true stem's raw level must not change what it hears."""
    from stepfoley.engine.loading import load_foley_model
    from stepfoley.lab.evaluation.runner import SceneRun

    run = SceneRun(load_foley_model(variant="tiny-random", device="cpu"), 10000000, 3, tmp_path)
    assert run.k == 3
    heard = run.truth_mix(2)
    run.stems = run.stems * np.array([1.0, 0.03, 1.0], np.float32)[:, None]  # the second stem 30 dB quieter
    assert np.allclose(run.truth_mix(2), heard, atol=1e-5)
    assert not np.allclose(run.truth_mix(2), run.truth_mix(1), atol=1e-3)  # the second stem is heard


def test_a_figure_that_is_not_a_number_is_written_as_null_not_lost_with_the_report(tmp_path):
    """A network's report holding NaN made the JSON writer raise at the end of the run: neither
    the file nor the copy beside it was written."""
    import json

    from stepfoley.commands.eval import write_json_atomic

    write_json_atomic(tmp_path / "e.json", {"classifier": {"faint_rejected": float("nan")},
                                            "figures": [1.5, float("inf"), (2.0, float("-inf"))]}, force=False)
    assert json.loads((tmp_path / "e.json").read_text()) == {"classifier": {"faint_rejected": None},
                                                            "figures": [1.5, None, [2.0, None]]}


def test_a_comparison_without_an_interval_says_how_many_scenes_it_rests_on():
    """Under 10 scenes there is no interval: every such comparison read "[n = 1]"."""
    from stepfoley.commands.eval import _interval
    from stepfoley.lab.evaluation import controls
    from stepfoley.lab.evaluation.stats import bootstrap_mean, paired_bootstrap

    assert _interval(paired_bootstrap([1.0, 2.0, 3.0, 4.0, 5.0], [0.5] * 5)) == "+2.500 [n = 5: no interval]"
    report = {"controls": {"region": {"leakage_other_vs_without": paired_bootstrap([0.1, 0.3], [0.2, 0.6]),
                                      "text_fidelity": {"with_vs_without": paired_bootstrap([0.5, 0.7], [0.4, 0.6])}}}}
    assert "-0.200 [n = 2: no interval]" in controls.format_controls(report)
    assert bootstrap_mean([1.0, 2.0])["ci95"] == [None, None]


def test_every_set_of_scenes_and_clips_is_apart_from_every_other():
    """The claims rest on scenes the model never saw: the training scenes, the test scenes of
    every --seed, the development scenes α is chosen on, and the clips of the two judges (every
    network seed) are seeds in ranges that do not meet."""
    from stepfoley.commands.eval import MAX_NETWORK_SEED
    from stepfoley.lab.evaluation import calibration, embedding, presence, runner, store
    from stepfoley.lab.miniworld import SOURCE_KINDS
    from stepfoley.lab.training.embedded import TRAINING_SEED_RANGE

    def clips(base: int) -> tuple[int, int]:
        last = store.first_clip_seed(base, MAX_NETWORK_SEED, len(SOURCE_KINDS) - 1, store.CLIP_SEEDS_PER_KIND - 1)
        return base, last + 1

    ranges = sorted([TRAINING_SEED_RANGE,
                     (runner.scene_seed(0, 0), runner.scene_seed(runner.MAX_SEED, runner.SCENES_PER_SEED - 1) + 1),
                     (calibration.development_scene_seed(0),
                      calibration.development_scene_seed(runner.SCENES_PER_SEED - 1) + 1),
                     clips(embedding.CLIP_SEED_BASE), clips(presence.CLIP_SEED_BASE)])
    assert all(end <= start for (_, end), (start, _) in zip(ranges, ranges[1:])), ranges


def test_the_network_seed_bound_keeps_the_embedding_s_clips_below_the_classifier_s():
    """eval's MAX_NETWORK_SEED is a literal (its --help imports no torch): it must be the last
    seed whose clips, every kind's, stay below the classifier's first clip seed."""
    from stepfoley.commands.eval import MAX_NETWORK_SEED
    from stepfoley.lab.evaluation import embedding, presence, store
    from stepfoley.lab.miniworld import SOURCE_KINDS

    def last_clip(seed: int) -> int:
        return store.first_clip_seed(embedding.CLIP_SEED_BASE, seed, len(SOURCE_KINDS) - 1, store.CLIP_SEEDS_PER_KIND - 1)

    assert len(SOURCE_KINDS) * store.CLIP_SEEDS_PER_KIND <= store.CLIP_SEEDS_PER_NETWORK_SEED
    assert last_clip(MAX_NETWORK_SEED) < presence.CLIP_SEED_BASE
    assert store.first_clip_seed(embedding.CLIP_SEED_BASE, MAX_NETWORK_SEED + 1, 0, 0) >= presence.CLIP_SEED_BASE


def test_a_damaged_weights_file_of_the_users_is_not_to_be_fixed_by_a_reinstall(tmp_path, capsys):
    """`eval --embedded-weights FILE` with a damaged FILE advised "Reinstall StepFoley", which puts
    back the packaged weights and leaves the user's own file as it was; /dev/null given as
    --embedding was "not there"."""
    from stepfoley.cli import main

    damaged = tmp_path / "mine.safetensors"
    damaged.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    out = str(tmp_path / "eval.json")
    assert main(["eval", "--embedded-weights", str(damaged), "--json", out, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"The embedded model's weights {damaged} cannot be read" in err
    assert "Give the file `stepfoley train embedded` wrote (its --out), or train them again" in err, err
    assert "einstall" not in err and "Traceback" not in err
    if os.path.exists(os.devnull):
        assert main(["eval", "--embedding", os.devnull, "--json", out, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"--embedding {os.devnull} is not a regular file (a device or a pipe); give the .safetensors" in err
    assert not os.path.exists(out)
    from stepfoley.engine.embedded.model import WEIGHTS_PATH, remedy

    assert remedy(WEIGHTS_PATH).startswith("Reinstall StepFoley")  # the packaged file: a reinstall puts it back
