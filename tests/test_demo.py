"""`stepfoley demo` end to end on the random-weight model (same code path as the shipped one)."""

import json

import av
import soundfile as sf
from PIL import Image

from stepfoley.cli import main


def test_demo_writes_every_file_and_never_reuses_a_run_folder(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path), "--model", "tiny-random", "--steps", "2", "--tracks", "2",
            "--device", "cpu"]
    assert main(args) == 0
    run = tmp_path / "run_001"
    names = {p.name for p in run.iterdir()}
    assert names == {"picture.mp4", "track_1.wav", "track_1.png", "track_2.wav", "track_2.png",
                     "composite.wav", "composite.png", "picture_with_foley.mp4", "run.json"}
    for name in ("track_1.wav", "track_2.wav", "composite.wav"):
        data, sr = sf.read(run / name)
        assert sr == 16000 and data.shape == (128000,)
    for name in ("track_1.png", "composite.png"):
        with Image.open(run / name) as image:
            assert image.format == "PNG" and image.width > 200
    with av.open(str(run / "picture_with_foley.mp4")) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        assert abs(float(container.duration) / av.time_base - 8.0) < 0.2
    with av.open(str(run / "picture.mp4")) as container:
        assert len(container.streams.audio) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert [t["method_used"] for t in manifest["tracks"]] == ["independent", "nag"]
    assert "sampling" in capsys.readouterr().out

    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(args) == 0
    assert (tmp_path / "run_002" / "composite.wav").exists()
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


# -- engine.spectrogram: the PNGs the demo writes --

import numpy as np
import pytest

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
