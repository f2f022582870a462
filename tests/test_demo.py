"""`stepfoley demo` end to end on the random-weight model (same code path as the shipped one)."""

import json
import os

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


def test_every_demo_argument_is_checked_before_anything_loads(tmp_path, capsys, monkeypatch):
    import stepfoley.engine.service
    from stepfoley.request import MAX_SEED

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stepfoley.engine.service, "load_runtime_model", never)
    (tmp_path / "a-file").write_text("mine")
    from stepfoley.engine.weights import check_weights_dir

    weights = tmp_path / "mmaudio"  # every file small_16k needs, and a ControlNet for another variant only
    weights.mkdir()
    report = check_weights_dir(weights, verify=False)
    for name in report.variants["small_16k"]:
        path = report.files[name].path
        if name == "clip":  # a folder, with its weights file
            path, _ = path / "open_clip_model.safetensors", path.mkdir(parents=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (weights / "controlnets").mkdir(exist_ok=True)
    (weights / "controlnets" / "large_44k_v2.safetensors").write_bytes(b"")
    flow_only = tmp_path / "flow-only"  # a ControlNet was asked for before the files the model cannot run without
    (flow_only / "weights").mkdir(parents=True)
    (flow_only / "weights" / "mmaudio_small_16k.pth").write_bytes(b"")
    out = tmp_path / "demo"
    cases = [(["--tracks", "0"], "--tracks 0: give 1 to 4"), (["--tracks", "5"], "--tracks 5: give 1 to 4"),
             (["--steps", "0"], "--steps 0: give 1 to 200"), (["--steps", "201"], "--steps 201: give 1 to 200"),
             (["--seed", "-1"], f"--seed -1: give 0 to {MAX_SEED - 2}"),
             (["--seed", str(MAX_SEED)], f"give 0 to {MAX_SEED - 2} (track k uses the seed plus k - 1)"),
             (["--out", str(tmp_path / "a-file")], "is a file, not a folder"),
             (["--out", str(tmp_path / "a-file" / "runs" / "demo")], "a-file is not a folder you can write to"),
             (["--weights", str(tmp_path / "a-file")], "a-file is not a file of the embedded model's weights (it "
                                                       "cannot be read as one"),
             (["--weights", str(tmp_path)], "No MMAudio flow network found in"),  # not "train a ControlNet"
             (["--weights", str(weights)], "controlnets for small_16k. The demo sets"),  # what the loader loads
             (["--weights", str(flow_only)], "flow-only cannot run small_16k: ext_weights/"),
             (["--weights", str(tmp_path), "--model", "small_16k"], "cannot run small_16k: weights/mmaudio_small_16k"),
             (["--threads", "100000"], "thread count (--threads) must be 1 to")]
    if os.path.isdir("/proc"):  # root passes its permission bits (the CI's user); only making a file tells
        cases.append((["--out", "/proc/stepfoley-demo"], "/proc is not a folder you can write to"))
    for extra, words in cases:
        model = [] if "--weights" in extra else ["--model", "tiny-random"]  # a folder: the variants it holds
        argv = ["demo", "--out", str(out), *model, "--device", "cpu", *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (extra, err)
    # the clip is new every run: features on disk would be keyed by its temporary folder, never read
    # again, and the options were taken and ignored (their folder made for nothing)
    for extra in (["--feature-cache", str(tmp_path / "cache")], ["--feature-cache-max-gb", "1"]):
        with pytest.raises(SystemExit) as refused:
            main(["demo", "--out", str(out), "--model", "tiny-random", *extra])
        assert refused.value.code == 2 and f"unrecognized arguments: {extra[0]}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "flow-only", "mmaudio"]
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_model_without_a_controlnet_is_refused_before_the_demo_runs(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import stepfoley.engine.service

    real = stepfoley.engine.service.load_runtime_model
    monkeypatch.setattr(stepfoley.engine.service, "load_runtime_model", lambda *a, **k: replace(
        real(*a, **k), controlnet=None, note="no NAG ControlNet at W/controlnets/small_16k.safetensors"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--model", "tiny-random", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "note: no NAG ControlNet at W/controlnets/small_16k.safetensors" in err
    assert "has no NAG ControlNet. The demo sets NAG beside independent generation" in err
    assert not (tmp_path / "demo").exists()


def test_a_failed_demo_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """A run that fails after its picture and tracks are made (here: scoring) leaves neither a
    half-made run_NNN nor its hidden work folder; the next run takes run_001."""
    import stepfoley.lab.demo
    from stepfoley.engine.errors import StepFoleyError

    def fail(*args, **kwargs):
        raise StepFoleyError("the classifier is gone")

    monkeypatch.setattr(stepfoley.lab.demo, "score_tracks", fail)
    args = ["demo", "--out", str(tmp_path), "--model", "tiny-random", "--steps", "1", "--tracks", "1", "--device", "cpu"]
    assert main(args) == 1
    assert "the classifier is gone" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(args) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run_001"]
    manifest = json.loads((tmp_path / "run_001" / "run.json").read_text())
    # the picture's path in each track's metadata is where it now is, not the work folder's
    assert manifest["tracks"][0]["nag"]["region"]["video"] == str(tmp_path / "run_001" / "picture.mp4")


def test_the_work_folder_of_a_killed_demo_is_removed_by_the_next(tmp_path):
    import subprocess
    import sys

    from stepfoley import atomic

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".run.{atomic._HOST}-{gone.stdout.strip()}-0badf00d.part"  # SIGKILL mid-run
    left.mkdir()
    (left / "picture.mp4").write_bytes(b"\0" * 1000)
    args = ["demo", "--out", str(tmp_path), "--model", "tiny-random", "--steps", "1", "--tracks", "1", "--device", "cpu"]
    assert main(args) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["run_001"]


def test_a_demo_on_a_full_disk_says_so_and_leaves_nothing(tmp_path, capsys):
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        args = ["demo", "--out", str(small), "--model", "tiny-random", "--steps", "1", "--tracks", "1",
                "--device", "cpu"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "Could not write the demo run in" in err and "Check free disk space" in err and "Traceback" not in err
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_the_demo_help_states_the_demos_track_bound():
    from stepfoley.commands import demo
    from stepfoley.lab.demo import MAX_TRACKS

    assert demo.MAX_TRACKS == MAX_TRACKS


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


def test_a_reader_that_leaves_early_is_no_error(tmp_path):
    """`stepfoley demo | head -1`: the run was written whole, then its report ended in a
    BrokenPipeError traceback and exit 1 (helper 197). Here the pipe is closed before a line."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "stepfoley", "demo", "--out", str(tmp_path), "--model", "tiny-random",
                             "--steps", "1", "--tracks", "1", "--device", "cpu", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=600) == 0 and "Traceback" not in err, err
    assert (tmp_path / "run_001" / "run.json").is_file()
