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
    assert [t["method_used"] for t in manifest["tracks"]] == ["cfg", "nag"]
    assert "sampling" in capsys.readouterr().out

    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(args) == 0
    assert (tmp_path / "run_002" / "composite.wav").exists()
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
