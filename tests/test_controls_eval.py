"""`stepfoley eval --controls`: its figures on signals whose answers are known, and the command
end to end on one scene with the tiny-random model."""

import json
import math
import os

import numpy as np
import pytest

from stepfoley.lab.evaluation import controls, stats

SR = 16000


def _noise(seconds: float, level: float, seed: int) -> np.ndarray:
    return (level * np.random.default_rng(seed).normal(0, 1, int(seconds * SR))).astype(np.float32)


def test_a_seam_inside_steady_noise_is_as_smooth_as_the_noise_and_a_jump_is_not():
    truth = _noise(4.0, 0.05, 0)
    same = np.concatenate([truth[: 2 * SR], _noise(2.0, 0.05, 1)])      # the same noise continued
    jump = np.concatenate([truth[: 2 * SR], _noise(2.0, 0.5, 1)])       # 20 dB louder from the seam on
    steady = controls.seam_flux_ratio(same, truth, [2.0], SR)
    assert 0.7 < steady < 1.4
    assert controls.seam_flux_ratio(jump, truth, [2.0], SR) > 1.3 * steady   # one jump among ~7 frame pairs


def test_flux_of_a_sparse_sound_is_defined_and_of_silence_is_not():
    silence = np.zeros(4 * SR, np.float32)
    clicks = silence.copy()
    clicks[SR::SR] = 0.5                                                 # one click a second, silence between
    assert controls.log_mel_flux(silence).max() == 0.0                   # the floor: no flux, no log(0)
    assert controls.seam_flux_ratio(clicks, silence, [2.0], SR) is None
    ratio = controls.seam_flux_ratio(silence, clicks, [2.5], SR)         # a silent seam in a sparse sound
    assert ratio == 0.0


def test_the_codec_round_trip_is_the_takes_length_and_level_and_adds_flux_to_a_steady_tone():
    from stepfoley.engine.embedded.model import build_embedded_model

    model = build_embedded_model(random_weights=True)               # the codec has no weights
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(int(2.3 * SR)) / SR)).astype(np.float32)
    back = controls.codec_round_trip(model, tone)
    assert back.shape == tone.shape and back.dtype == np.float32
    assert 20 * np.log10(np.sqrt(np.mean(back ** 2)) / np.sqrt(np.mean(tone ** 2))) == pytest.approx(0, abs=1.5)
    assert controls.mean_flux(back, SR) > controls.mean_flux(tone, SR)


def test_curve_following_is_measured_where_the_track_is_heard():
    curve = controls.scene_curve(10_000_000, 8.0)
    assert [t for t, _ in curve] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert min(db for _, db in curve) == pytest.approx(-45) and max(db for _, db in curve) == pytest.approx(-15)
    assert curve == controls.scene_curve(10_000_000, 8.0) != controls.scene_curve(10_000_001, 8.0)
    from stepfoley.engine.loudness_curve import follow_curve

    shaped = follow_curve(_noise(8.0, 0.1, 0), SR, curve)[0][0]
    correlation, error = controls.follows_curve(shaped, SR, curve)
    assert correlation > 0.99 and error < 0.5
    assert controls.follows_curve(np.zeros(SR, np.float32), SR, curve) == (None, None)
    steady, _ = controls.follows_curve(_noise(8.0, 0.1, 0), SR, curve)
    assert abs(steady) < 0.5                                                # a level sound does not follow it


def test_bootstrap_mean_is_the_mean_with_an_interval_around_it_and_skips_missing_scenes():
    result = stats.bootstrap_mean([1.0, None, 2.0, 3.0, float("nan")] + [1.0, 2.0, 3.0] * 3)
    assert result["n"] == 12 and result["mean"] == pytest.approx(2.0)
    assert 1.0 <= result["ci95"][0] < 2.0 < result["ci95"][1] <= 3.0
    assert stats.bootstrap_mean([None]) == {"mean": None, "ci95": [None, None], "n": 0}


def test_stepfoley_eval_controls_on_one_scene(tmp_path, capsys, monkeypatch):
    from stepfoley.cli import main
    from stepfoley.engine import output_folders

    # its temporary folders are not remembered for serve's sweep: each pushed out a project's
    monkeypatch.setenv("STEPFOLEY_STATE_DIR", str(tmp_path / "state"))
    output_folders.remember(tmp_path / "project")
    out = tmp_path / "controls.json"
    argv = ["eval", "--controls", "--model", "tiny-random", "--device", "cpu", "--scenes", "1", "--takes", "2",
            "--steps", "2", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    extend = report["controls"]["extend"]
    assert extend["kept_max_abs_diff"] == 0.0 and extend["kept_sample_rate"] == report["config"]["sample_rate"]
    ratio = extend["seam_flux_ratio"]
    assert ratio["n"] + ratio["undefined_scenes"] == 1
    if ratio["n"]:
        assert math.isfinite(ratio["mean"]) and ratio["ci95"] == [None, None]   # one scene: no interval
    for figure in ("seam_flux_ratio_to_own", "full_generation_flux_ratio", "codec_round_trip_flux_ratio"):
        assert extend[figure]["n"] + extend[figure]["undefined_scenes"] == 1
    for figure in ("text_fidelity", "temporal_alignment"):
        pair = extend[figure]
        assert pair["extended_vs_full"]["mean_diff"] == pytest.approx(pair["extended"]["mean"] - pair["full"]["mean"])
    region = report["controls"]["region"]
    assert region["leakage_other_vs_without"] == region["leakage_other"]["with_vs_without"]
    assert region["leakage_other_vs_without"]["n"] == 1
    loudness = report["controls"]["loudness"]
    for figure in ("curve_correlation", "level_error_db", "text_fidelity"):
        assert set(loudness[figure]) == {"with", "without", "with_vs_without"}
    assert loudness["curve_correlation"]["with"]["mean"] > 0.8 > loudness["curve_correlation"]["without"]["mean"]
    assert loudness["level_error_db"]["with"]["mean"] < loudness["level_error_db"]["without"]["mean"]
    assert report["config"]["takes"] == 2 and report["config"]["scene_seeds"] == [10_000_000]
    assert "seam flux ratio" in capsys.readouterr().out
    assert output_folders.recent() == [os.path.realpath(tmp_path / "project")]
    assert main(argv + ["--choose-alpha"]) == 2
