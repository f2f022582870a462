"""`stepfoley demo` end to end on the random-weight model (same code path as the shipped one)."""

import json

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from stepfoley.cli import main


def test_demo_writes_both_soundtracks_and_never_reuses_a_run_folder(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--model", "tiny-random", "--steps", "2", "--tracks", "3",
            "--device", "cpu"]
    assert main(args) == 0
    run = tmp_path / "run_001"
    names = {p.name for p in run.iterdir()}
    stems = ["track_1", "track_2_nag", "track_2_independent", "track_3_nag", "track_3_independent",
             "composite_nag", "composite_independent"]
    assert names == ({f"{s}.wav" for s in stems} | {f"{s}.png" for s in stems}
                     | {"picture.mp4", "picture_with_foley_nag.mp4", "picture_with_foley_independent.mp4", "run.json"})
    for name in stems:
        data, sr = sf.read(run / f"{name}.wav")
        assert sr == 16000 and data.shape == (128000,)
    with Image.open(run / "composite_nag.png") as image:
        assert image.format == "PNG" and image.width > 200
    for method in ("nag", "independent"):
        with av.open(str(run / f"picture_with_foley_{method}.mp4")) as container:
            assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
            assert abs(float(container.duration) / av.time_base - 8.0) < 0.2
    with av.open(str(run / "picture.mp4")) as container:
        assert len(container.streams.audio) == 0

    manifest = json.loads((run / "run.json").read_text())
    tracks = manifest["tracks"]
    assert [t["track"] for t in tracks] == [1, 2, 3]
    assert [t["nag"]["method_used"] for t in tracks] == ["independent", "nag", "nag"]
    assert [t["independent"]["method_used"] for t in tracks] == ["independent"] * 3
    # Track 1 is one track shared by both soundtracks; later tracks differ by method only.
    assert tracks[0]["independent"]["file"] == tracks[0]["nag"]["file"] == "track_1.wav"
    assert tracks[1]["nag"]["seed"] == tracks[1]["independent"]["seed"]
    for t in tracks:
        for method in ("nag", "independent"):
            assert 0.0 <= t[method]["text_fidelity"] <= 1.0
        assert 0.0 <= t["true_stem_text_fidelity"] <= 1.0
    assert tracks[0]["nag"]["similarity_to_earlier"] is None
    for t in tracks[1:]:
        assert -1.0 <= t["nag"]["similarity_to_earlier"] <= 1.0
        assert t["nag"]["similarity_to_earlier"] != t["independent"]["similarity_to_earlier"]
    out = capsys.readouterr().out
    assert "sampling" in out and "text fidelity" in out and tracks[2]["caption"] in out

    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(args) == 0
    assert (tmp_path / "run_002" / "composite_nag.wav").exists()
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_similarity_to_earlier_tracks_in_the_demo_scores():
    """score_tracks on known audio: a copy of track 1 scores similarity 1 to it, and the true
    stem's text fidelity is the classifier's for that stem."""
    from stepfoley.lab.demo import score_tracks
    from stepfoley.lab.evaluation.runner import default_presence
    from stepfoley.lab.miniworld import make_scene
    from stepfoley.engine.session import Track

    scene = make_scene(5, kinds=("rain", "bell"))
    stems = [s.astype(np.float32) for s in scene.stems]
    presence = default_presence()

    class Embedding:  # identity "embedding" of the first samples, so a copy is exactly similar
        def embed_audio(self, tracks, sample_rate):
            return np.stack([np.asarray(t[:64], np.float64) for t in tracks])

    made = {"nag": [Track(stems[0], scene.sample_rate), Track(stems[0].copy(), scene.sample_rate)]}
    scores = score_tracks(made, stems, scene.kinds, scene.sample_rate, Embedding(), presence)
    assert scores["nag"][0]["similarity_to_earlier"] is None
    assert scores["nag"][1]["similarity_to_earlier"] == pytest.approx(1.0)
    expected = presence.probabilities(stems, scene.sample_rate)
    assert scores["true_stems"] == [pytest.approx(expected[0, presence.kind_index("rain")]),
                                    pytest.approx(expected[1, presence.kind_index("bell")])]
    assert scores["nag"][1]["text_fidelity"] == pytest.approx(expected[0, presence.kind_index("bell")])


# -- engine.spectrogram: the PNGs the demo writes --

from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.spectrogram import SpectrogramStyle, spectrogram_image


def _plot_row_brightness(image, style):
    left, top, right, bottom = style.plot_box
    plot = np.asarray(image.convert("L"), np.float64)[top:bottom, left + 2:right - 2]
    return plot.mean(axis=1)  # one value per image row of the plot area


@pytest.mark.parametrize("tone_hz", [1000.0, 3000.0, 6000.0])
def test_a_loud_tone_is_a_bright_line_at_its_frequency_row(tmp_path, tone_hz):
    sr, style = 16000, SpectrogramStyle()
    t = np.arange(2 * sr) / sr
    noise = np.random.default_rng(0).normal(0, 0.01, t.size)
    wave = (0.5 * np.sin(2 * np.pi * tone_hz * t) + noise).astype(np.float32)
    path = tmp_path / "tone.png"
    spectrogram_image(wave, sr, f"{tone_hz:g} Hz tone", style).save(path, format="PNG")

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (style.width, style.height)
        rows = _plot_row_brightness(image, style)
    brightest = style.plot_box[1] + int(np.argmax(rows))
    assert abs(brightest - style.frequency_row(tone_hz, sr)) <= 2
    assert rows.max() > 3 * np.median(rows)  # a line, not a bright picture overall


def test_silence_draws_a_dark_plot_and_bad_audio_is_refused():
    style = SpectrogramStyle(width=300, height=150)
    image = spectrogram_image(np.zeros(8000, np.float32), 16000, "silence", style)
    assert image.size == (300, 150)
    assert _plot_row_brightness(image, style).max() < 10
    with pytest.raises(InvalidInputError):
        spectrogram_image(np.zeros(0, np.float32), 16000)
    with pytest.raises(InvalidInputError):
        spectrogram_image(np.array([0.0, np.nan], np.float32), 16000)
