"""`stepfoley generate` through the CLI's main() on the random-weight model: --out as a file or
a folder, --force, the --existing stems heard from memory, and every argument checked before
the model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import stepfoley.engine.service
from stepfoley.cli import main


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from stepfoley.lab.miniworld import make_scene, write_scene

    return write_scene(make_scene(20_000_004, duration=3.0), tmp_path_factory.mktemp("scene"))["video"]


def generate(video, *extra, caption="rain falling"):
    return main(["generate", str(video), "0.5", "2.5", caption, "--model", "tiny-random", "--device", "cpu",
                 "--steps", "1", *map(str, extra)])


def wavs(folder):
    return sorted(p.name for p in folder.iterdir())


def test_out_as_a_file_never_replaces_one_without_force(video, tmp_path, capsys):
    take = tmp_path / "take.wav"
    assert generate(video, "--out", take, "--seed", 1) == 0
    assert wavs(tmp_path) == ["take.wav"]
    assert f"wrote {take}  (2.00 s, 16000 Hz" in capsys.readouterr().out
    first = take.read_bytes()

    assert generate(video, "--out", take, "--seed", 2) == 2
    assert "'" + str(take) + "' already exists. Pass --force" in capsys.readouterr().err
    assert take.read_bytes() == first and wavs(tmp_path) == ["take.wav"]

    assert generate(video, "--out", take, "--seed", 2, "--force") == 0
    assert take.read_bytes() != first and wavs(tmp_path) == ["take.wav"]
    assert sf.info(str(take)).frames == 32000

    assert generate(video, "--out", tmp_path / "Other Take.WAV") == 0  # any case, any name
    assert wavs(tmp_path) == ["Other Take.WAV", "take.wav"]


def test_metadata_goes_to_a_new_json_file_beside_the_stems(video, tmp_path, capsys):
    meta = tmp_path / "take.json"
    assert generate(video, "--out", tmp_path, "--variations", 2, "--metadata", meta) == 0
    report = json.loads(meta.read_text())
    assert [s["metadata"]["rank"] for s in report["stems"]] == [1, 2] and report["ranking"]["ranked_by"]
    assert all(os.path.isfile(s["stem_path"]) and s["metadata"]["precision"] == "fp32" for s in report["stems"])
    capsys.readouterr()
    assert generate(video, "--out", tmp_path, "--metadata", meta) == 2  # never over a file, before the model
    assert "already exists" in capsys.readouterr().err and len(wavs(tmp_path)) == 3  # 2 stems and the json


def test_a_reader_gone_from_stdout_neither_fails_the_job_nor_loses_the_metadata(video, tmp_path):
    """`stepfoley generate ... | head -1`: the first line read, the pipe closed; the job ended in
    a BrokenPipeError traceback and exit 1, and with the pipe closed from the start the
    metadata file was never written."""
    import subprocess
    import sys

    for closed_first in (False, True):
        out = tmp_path / f"run{int(closed_first)}"
        out.mkdir()
        command = [sys.executable, "-m", "stepfoley", "generate", str(video), "0.5", "2.5", "rain", "--model",
                   "tiny-random", "--device", "cpu", "--steps", "1", "--feature-cache", "off", "--out", str(out),
                   "--variations", "3", "--metadata", str(out / "takes.json")]
        reader_r, reader_w = os.pipe()
        if closed_first:
            os.close(reader_r)
        done = subprocess.run(command, stdout=reader_w, stderr=subprocess.PIPE, timeout=300)
        os.close(reader_w)
        if not closed_first:
            os.close(reader_r)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
        assert len(json.loads((out / "takes.json").read_text())["stems"]) == 3


def test_out_as_a_folder_gets_a_new_name_each_time(video, tmp_path):
    for _ in range(2):
        assert generate(video, "--out", tmp_path) == 0
    assert wavs(tmp_path) == ["rain_falling_001.wav", "rain_falling_002.wav"]


def test_existing_stems_are_heard_from_memory(video, tmp_path, capsys, monkeypatch):
    stems, out = tmp_path / "stems", tmp_path / "out"
    stems.mkdir()
    out.mkdir()
    rng = np.random.default_rng(0)
    left, right = 0.1 * rng.standard_normal((2, 4 * 48000))
    sf.write(stems / "a.wav", np.stack([left, right], axis=1), 48000)  # stereo at 48 kHz, 4 s
    sf.write(stems / "b.wav", 0.1 * rng.standard_normal(20000), 16000)  # shorter than the region
    other = 0.1 * rng.standard_normal(3 * 48000)
    sf.write(stems / "c.wav", other, 48000)
    heard = []
    add_track = stepfoley.engine.session.StepSession.add_track
    monkeypatch.setattr(stepfoley.engine.session.StepSession, "add_track", lambda self, samples, sr, *a, **k: (
        heard.append((samples, sr)) or add_track(self, samples, sr, *a, **k)))
    assert generate(video, "--out", out, "--existing", stems / "a.wav", stems / "b.wav", stems / "c.wav",
                    "--metadata", tmp_path / "made.json") == 0
    said = capsys.readouterr()
    assert "method nag" in said.out
    # b.wav covers part of the region only: heard from START as it lies, and said
    assert f"note: --existing {stems / 'b.wav'} holds 1.250 s of the 2.000 s region" in said.err
    assert "a.wav holds" not in said.err
    # a.wav and c.wav go on after END: heard from their first sample, and said (a whole film's
    # bounce was heard from its start at START without a word)
    for longer in ("a.wav", "c.wav"):
        assert (f"note: --existing {stems / longer} is longer than the 2.000 s region: it is heard from its first "
                "sample at START") in said.err
    assert "b.wav is longer" not in said.err and "silent over the region" not in said.err
    # as an OSC request's input audio is read: mono, the region's 2 s only (the stem's length);
    # the session hears their sum, and the stems of one rate are summed as they are read
    assert [(samples.shape, sr) for samples, sr in heard] == [((1, 96000), 48000), ((1, 20000), 16000)]
    assert np.allclose(heard[0][0][0], ((left + right) / 2)[:96000] + other[:96000], atol=1e-4)
    (made,) = json.loads((tmp_path / "made.json").read_text())["stems"]
    assert made["metadata"]["track_index"] == 4  # three stems below it, however they were summed
    assert wavs(out) == ["rain_falling_001.wav"] and wavs(stems) == ["a.wav", "b.wav", "c.wav"]  # no bounce file


def test_existing_stems_silent_over_the_region_are_said(video, tmp_path, capsys):
    """A whole film's bounce whose first 2 s are silent: heard at START, the layer was made as a
    first track, NAG did nothing, and only `method conditional` hinted at it."""
    film = tmp_path / "film.wav"
    sf.write(film, np.concatenate([np.zeros(2 * 16000), 0.1 * np.random.default_rng(1).standard_normal(4 * 16000)]),
             16000)
    assert generate(video, "--out", tmp_path / "take.wav", "--existing", film) == 0
    err = capsys.readouterr().err
    assert "is longer than the 2.000 s region" in err
    assert ("note: the --existing stems are silent over the region (each heard from its first sample at START), so "
            "the track was made as a first one: nothing was negated") in err


def bad_arguments(video, tmp_path):
    """(arguments, words of the message) for every check that needs no model."""
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "a-file").write_text("x")
    sf.write(tmp_path / "silent.wav", np.zeros(0), 16000)
    sf.write(tmp_path / "tone.wav", 0.1 * np.sin(np.arange(48000) * 0.1), 16000)
    sf.write(tmp_path / "fast.wav", np.zeros(1000), 384000)
    sf.write(tmp_path / "short.wav", np.zeros(8000), 16000)
    sf.write(tmp_path / "one.wav", np.array([0.5]), 48000)
    sf.write(tmp_path / "whisper.wav", 1e-5 * np.random.default_rng(0).standard_normal(16000), 16000)  # -100 dBFS
    sf.write(tmp_path / "offset.wav", np.full(16000, 0.01), 16000)  # an offset alone: no sound
    late_nan = np.full(48000, 0.1, np.float32)
    late_nan[20000] = np.nan  # after the first 0.1 s, which was all that was read before the model loaded
    sf.write(tmp_path / "late-nan.wav", late_nan, 16000, subtype="FLOAT")
    sf.write(tmp_path / "short.ogg", 0.1 * np.sin(np.arange(8000) * 0.1), 16000, format="OGG", subtype="VORBIS")
    if not (tmp_path / "pipe.json").exists():
        os.link(tmp_path / "tone.wav", tmp_path / "tone-link.json")
        os.mkfifo(tmp_path / "pipe.json")
        os.mkfifo(tmp_path / "pipe.wav")
    huge = tmp_path / "huge.wav"  # a valid header, then 1 GiB (sparse: no disk used)
    sf.write(huge, np.zeros(1000), 16000)
    os.truncate(huge, 2**30 + 1)
    gone = tmp_path / "gone.wav"
    return [
        ([tmp_path / "gone.mp4", "0", "2"], "gone.mp4 does not exist"),
        ([tmp_path / "notes.txt", "0", "2"], "Could not read notes.txt as a video"),
        ([tmp_path / "tone.wav", "0", "2"], "tone.wav has no picture"),
        ([video, "1", "4"], "runs past the end"),
        ([video, "1", "1.5"], "select at least 1 s"),
        ([video, "0", "2", "--existing", gone], "gone.wav"),
        ([video, "0", "2", "--existing", tmp_path / "silent.wav"], "is empty"),
        ([video, "0", "2", "--reference", gone], "gone.wav"),
        # looped over the region: a sample of it is a buzz, and one under the gate pulls toward silence
        ([video, "0", "2", "--reference", tmp_path / "one.wav"], "The reference sound is 0.0208 ms long"),
        ([video, "0", "2", "--reference", tmp_path / "whisper.wav"], "silent or too quiet to hear"),
        ([video, "0", "2", "--reference", tmp_path / "offset.wav"], "silent or too quiet to hear"),
        ([video, "0", "2", "--existing", tmp_path / "silent.wav", "--reference", tmp_path / "silent.wav"],
         "leave out --existing"),
        ([video, "0", "2", "--out", tmp_path / "no-such-folder"], "does not exist. Create it, or give a file name"),
        ([video, "0", "2", "--out", tmp_path / "nowhere" / "take.wav"], "does not exist. Create it first"),
        ([video, "0", "2", "--steps", "0"], "steps = 0 is outside"),
        ([video, "0", "2", "--take", tmp_path / "late-nan.wav", "--regenerate", "1,2"], "contains NaN or infinite"),
        # an Ogg's header states no length: read, it is 0.5 s, and the stem keeps it up to 1 s
        ([video, "0", "2", "--take", tmp_path / "short.ogg", "--regenerate", "1,2"], "but the stem keeps it up to"),
        # a weights file mistyped is not a folder to create
        ([video, "0", "2", "--weights", tmp_path / "nope.safetensors"], "The weights file "),
        ([video, "0", "2", "--feature-cache-max-gb", "0"], "gigabytes above 0"),
        ([video, "0", "2", "--region", "0,0,1"], "--region takes 4 numbers separated by commas"),
        ([video, "0", "2", "--region", "0,0,0.02,1"], "each side must be at least 0.05"),
        ([video, "0", "2", "--region-time", "0,1"], "it needs picture_region"),
        # the request's own words, translated to the command's
        ([video, "0", "2", "--region-time", "0,1"], "(here: picture_region_time is --region-time; "
                                                     "picture_region is --region)"),
        ([video, "-1", "2"], "region.file_in = -1 is outside 0 .. 604800. (here: region.file_in is START)"),
        ([tmp_path, "0", "2"], "point it to a file. (here: region.video is VIDEO)"),
        ([video, "0", "300"], "Shorten the time selection or use a longer video. (here: time selection is START to END)"),
        ([video, "0", "2", "--take-offset", "1"], "(here: project_start is START; take_offset is --take-offset; "
                                                   "regenerate is --regenerate)"),
        ([video, "0", "2", "--region", "0,0,1,1", "--region-time=-1,2"], "--region-time"),
        ([video, "0", "2", "--loudness-curve", "0-30"], "--loudness-curve takes time:LUFS points"),
        ([video, "0", "2", "--loudness-curve", "0:-30,3:-20"], "a point at 3 s, after the stem's end"),
        # a time option's time that is not one, in START's words
        ([video, "0", "2", "--regenerate", "1:60,2"],
         "--regenerate: '1:60' is not a time: give seconds (12.5) or minutes:seconds (1:02.5)"),
        ([video, "0", "2", "--regenerate", "1:00,1:01,1:02"], "--regenerate takes 2 times separated by a comma"),
        ([video, "0", "2", "--region", "0,0,1,1", "--region-time", "0,1.5:3"],
         "--region-time: '1.5:3' is not a time"),
        ([video, "0", "2", "--loudness-curve", "0:-40,1:60:-20"], "--loudness-curve: '1:60' is not a time"),
        ([video, "0", "2", "--take-offset", "1"], "it needs take and regenerate"),
        ([video, "0", "2", "--take", gone, "--regenerate", "1,2"], "gone.wav"),
        ([video, "0", "2", "--take", tmp_path / "tone.wav"], "take and regenerate go together"),
        ([video, "0", "2", "--take", tmp_path / "short.wav", "--regenerate", "0.5,1"],
         "is 0.500 s long, but the stem keeps it up to 2.000 s"),
        ([video, "0", "2", "--take", tmp_path / "tone.wav", "--take-offset", "4", "--regenerate", "1,2"],
         "ends before take_offset (4 s)"),
        ([video, "0", "2", "--feature-cache", tmp_path / "a-file"], "feature cache folder"),
        ([video, "0", "2", "--weights", tmp_path / "no-weights"], "weights folder"),
        ([video, "0", "2", "--method", "reference"], "--method reference makes the track sound like a recording"),
        ([video, "0", "2", "--threads", "100000"], "thread count (--threads) must be 1 to"),
        ([video, "0", "2", "--threads", "0"], "thread count (--threads) must be 1 to"),
        ([video, "0", "2", "--feature-cache", ""], "(--feature-cache) is empty"),
        ([video, "0", "2", "--feature-cache-max-gb", "1e300"], "at most 100000"),
        ([video, "0", "2", "--existing", huge], "at most 1024 MiB is read"),
        ([video, "0", "2", "--reference", huge], "at most 1024 MiB is read"),
        ([video, "0", "2", "--existing", tmp_path / "fast.wav"], "at most 192000 Hz is read"),
        # each is read whole before the model loads: 500 took 609 MB
        ([video, "0", "2", "--existing", *[tmp_path / "tone.wav"] * 17], "--existing names 17 stems; at most 16"),
        # no file after it, last or before another option: a first track was made without a word
        ([video, "0", "2", "--out", tmp_path, "--existing"], "--existing names no stems: give the earlier layers'"),
        ([video, "0", "2", "--existing", "--seed", "3"], "--existing names no stems"),
        ([video, "0", "2", "--reference", tmp_path / "fast.wav"], "at most 192000 Hz is read"),
        ([video, "0", "2", "--sample-rate", "0"], "sample_rate 0 is not supported"),
        ([video, "0", "2", "--method", "negative_prompt"], "give them with --negative-caption"),
        ([video, "0", "2", "--method", "negative_prompt", "--negative-caption", " \u200b"],
         "give them with --negative-caption"),  # blank: the request would have none, and plain CFG ran
        # a Latin-1 name, legal on Linux: refused in the user's words, not as a protocol field
        ([video, "0", "2", "--out", os.fsdecode(bytes(tmp_path) + b"/n\xe9w.wav")],
         "n\ufffdw.wav': the file or folder name is not UTF-8 text"),
        ([video, "0", "2", "--take", os.fsdecode(bytes(tmp_path) + b"/st\xe9m.wav"), "--regenerate", "1,2"],
         "st\ufffdm.wav': the file or folder name is not UTF-8 text"),
        # the metadata over the stem it describes, even with --force
        ([video, "0", "2", "--out", tmp_path / "take.wav", "--metadata", tmp_path / "take.wav", "--force"],
         "--metadata and --out name the same file"),
        # an input the run reads, or a pipe or device: replaced by the metadata with --force (run as
        # root, --metadata /dev/null made /dev/null a file)
        ([video, "0", "2", "--metadata", video, "--force"], "is the video, which the run reads"),
        ([video, "0", "2", "--existing", tmp_path / "tone.wav", "--metadata", tmp_path / "tone.wav", "--force"],
         "is --existing, which the run reads"),
        # a hard link is the same file by another name
        ([video, "0", "2", "--existing", tmp_path / "tone.wav", "--metadata", tmp_path / "tone-link.json", "--force"],
         "is --existing, which the run reads"),
        # the stem over an input the run reads: an earlier layer (or the reference, the take) was lost
        ([video, "0", "2", "--existing", tmp_path / "tone.wav", "--out", tmp_path / "tone.wav", "--force"],
         "--out " + str(tmp_path / "tone.wav") + " is --existing, which the run reads"),
        ([video, "0", "2", "--reference", tmp_path / "tone.wav", "--out", tmp_path / "tone.wav", "--force"],
         "is --reference, which the run reads"),
        ([video, "0", "2", "--metadata", tmp_path / "pipe.json", "--force"], "is not a regular file (a device or"),
        ([video, "0", "2", "--out", tmp_path / "pipe.wav", "--force"], "is not a regular file (a device or"),
        # names longer than the file system takes: found before the model, not after it
        ([video, "0", "2", "--out", tmp_path / ("a" * 300 + ".wav")], "--out: the file name"),
        ([video, "0", "2", "--metadata", tmp_path / ("m" * 300 + ".json")], "--metadata: the file name"),
    ]


def test_every_argument_is_checked_before_the_model_loads(video, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stepfoley.engine.service, "build_service", never)
    for arguments, words in bad_arguments(video, tmp_path):
        argv = ["generate", *map(str, arguments[:3]), "rain", *map(str, arguments[3:])]
        if "--out" not in argv:
            argv += ["--out", str(tmp_path)]
        assert main(argv) == 2, arguments
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (arguments, err)


def test_a_value_that_reads_as_an_option_is_said_how_to_give(video, tmp_path, capsys):
    """argparse takes "-1,2" for an option and said only "expected one argument". The example
    is the option's own (it was always --regenerate's), and a value simply left out gets none."""
    with pytest.raises(SystemExit) as stopped:
        main(["generate", str(video), "0", "2", "rain", "--region", "0,0,1,1", "--region-time", "-1,2"])
    assert stopped.value.code == 2
    assert ("argument --region-time: expected one argument (a value that starts with '-' reads as an option: "
            "join it with '=', e.g. --region-time=-1,2)") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", str(video), "0", "2", "rain", "--reference"])
    assert capsys.readouterr().err.rstrip().endswith("argument --reference: expected one argument")


def test_a_list_option_before_the_video_is_said_to_take_every_word(video, tmp_path, capsys):
    """--existing takes every word after it, so given first it left argparse's bare "required"."""
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "--existing", "a.wav", "b.wav", str(video), "0", "2", "rain"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert ("the following arguments are required: video, start, end, caption (if those were given after "
            "--existing, it took them as its own: it takes every word after it, so give it after them, e.g. "
            "VIDEO START END CAPTION --existing …)") in err
    for argv in (["generate", str(video), "0", "2"],  # a caption simply missing gets no such hint
                 ["generate", "--existing", "a.wav", str(video), "0"]):  # nor do too few words after it
        with pytest.raises(SystemExit):
            main(argv)
        assert "takes every word" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse takes an abbreviation: so does the hint
        main(["generate", "--exist", "a.wav", str(video), "0", "2", "rain"])
    assert "given after --existing" in capsys.readouterr().err


def test_a_region_given_in_minutes_and_seconds_makes_its_take(video, tmp_path):
    assert main(["generate", str(video), "0:00.5", "0:02.5", "wind", "--model", "tiny-random", "--device", "cpu",
                 "--steps", "1", "--out", str(tmp_path / "take.wav")]) == 0
    assert sf.info(str(tmp_path / "take.wav")).duration == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("start, words", [
    ("1,5", "'1,5': write seconds with a decimal point (1.5, not 1,5)"),
    ("1:60", "'1:60' is not a time"), ("nan", "'nan' is not a time"), ("1.5:3", "'1.5:3' is not a time"),
    ("1:-3", "'1:-3' is not a time"), ("0:1:2:3", "'0:1:2:3' is not a time"),
])
def test_a_time_that_is_not_one_is_refused_in_words(video, capsys, start, words):
    with pytest.raises(SystemExit) as stopped:
        main(["generate", str(video), start, "2", "rain"])
    assert stopped.value.code == 2
    assert f"argument start: {words}" in capsys.readouterr().err


def test_a_take_offset_that_is_not_a_time_is_refused_as_start_is(video, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["generate", str(video), "0", "2", "rain", "--take-offset", "1:60"])
    assert stopped.value.code == 2
    assert ("argument --take-offset: '1:60' is not a time: give seconds (12.5) or minutes:seconds (1:02.5)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("text, value", [("12.5", 12.5), ("1:02.5", 62.5), ("0:01:02.5", 62.5), (" 2:00 ", 120.0),
                                         ("-0.5", -0.5)])
def test_times_are_read_as_seconds_or_minutes_and_seconds(text, value):
    from stepfoley.commands.generate import seconds

    assert seconds(text) == value


def test_one_take_is_not_said_to_be_ranked(video, tmp_path, capsys):
    assert generate(video, "--out", tmp_path, "--region", "0,0,1,1") == 0  # a protocol-2 request of one take
    out = capsys.readouterr().out
    assert "seed 0)" in out and "rank" not in out


def test_out_file_is_named_straight_from_its_temporary_file(video, tmp_path, monkeypatch):
    """The stem used to be published as take_001.wav and renamed: a kill in between left a
    stray numbered file, and a DAW watching the folder saw one come and go."""
    from stepfoley import atomic

    named = []
    real = atomic.StagedFile.publish
    monkeypatch.setattr(atomic.StagedFile, "publish", lambda self, path, replace=False:
                        named.append(Path(path).name) or real(self, path, replace))
    take = tmp_path / "take.wav"
    assert generate(video, "--out", take, "--seed", 2) == 0
    assert [n for n in named if n.endswith(".wav")] == ["take.wav"] and wavs(tmp_path) == ["take.wav"]


def test_a_take_at_a_rate_no_stem_is_written_at_keeps_all_of_it(video, tmp_path, capsys):
    """A 64 kHz take came back at the model's 16 kHz, everything above 8 kHz gone without a word;
    it now comes back at 88.2 kHz, the lowest stem rate above it, and the command says so."""
    take = tmp_path / "take64.wav"
    t = np.arange(2 * 64000) / 64000
    sf.write(take, (0.1 * np.sin(2 * np.pi * 20000 * t)).astype(np.float32), 64000, subtype="PCM_24")
    out = tmp_path / "out"
    out.mkdir()
    assert generate(video, "--take", take, "--regenerate", "1.5,2", "--out", out) == 0
    captured = capsys.readouterr()
    assert "the take is at 64000 Hz, which a stem is not written at; the stem is at 88200 Hz" in captured.err
    [stem] = out.iterdir()
    samples, rate = sf.read(stem, dtype="float32")
    assert rate == 88200 and len(samples) == 2 * 88200
    kept = samples[: int(1.4 * 88200)]  # the 20 kHz tone, kept (resampled), not cut off
    assert np.sqrt(np.mean(kept ** 2)) > 0.05


def test_publish_stem_replaces_only_when_told(tmp_path):
    from stepfoley.engine.audio_io import publish_stem, stage_new_wav

    take = tmp_path / "take.wav"
    take.write_bytes(b"old")
    staged = stage_new_wav(tmp_path, "take", np.zeros((1, 100), np.float32), 8000)
    assert publish_stem(staged, tmp_path, "take", take) == tmp_path / "take_001.wav"  # taken: left untouched
    assert take.read_bytes() == b"old"
    staged = stage_new_wav(tmp_path, "take", np.zeros((1, 100), np.float32), 8000)
    assert publish_stem(staged, tmp_path, "take", take, replace=True) == take and take.read_bytes()[:4] == b"RIFF"
    # a name that cannot be replaced (a folder now; a file another program holds, on Windows):
    # the stem is kept under a numbered name, not lost with its temporary file
    (tmp_path / "folder.wav").mkdir()
    staged = stage_new_wav(tmp_path, "take", np.zeros((1, 100), np.float32), 8000)
    assert publish_stem(staged, tmp_path, "take", tmp_path / "folder.wav", replace=True) == tmp_path / "take_002.wav"


def test_variations_write_every_take_in_one_job(video, tmp_path, capsys, monkeypatch):
    jobs = []
    real = stepfoley.engine.service.FoleyService.__call__
    monkeypatch.setattr(stepfoley.engine.service.FoleyService, "__call__",
                        lambda self, request, *a, **k: jobs.append(request) or real(self, request, *a, **k))
    assert generate(video, "--out", tmp_path, "--seed", 5, "--variations", 3) == 0
    out = capsys.readouterr().out
    assert len(jobs) == 1 and (jobs[0].protocol, jobs[0].variations) == (2, 3)
    assert wavs(tmp_path) == ["rain_falling_001.wav", "rain_falling_002.wav", "rain_falling_003.wav"]
    assert sorted(int(line.split("seed ")[1].split(",")[0]) for line in out.splitlines()
                  if line.startswith("wrote")) == [5, 6, 7]
    assert "rank 1)" in out and "rank 3)" in out and "ranked by " in out


def test_variations_need_a_folder_and_stay_within_bounds(video, tmp_path, capsys):
    assert generate(video, "--out", tmp_path / "take.wav", "--variations", 2) == 2
    assert "give --out a folder, not the file" in capsys.readouterr().err
    assert generate(video, "--out", tmp_path, "--variations", 9) == 2
    assert "variations = 9 is outside 1 .. 8" in capsys.readouterr().err
    assert generate(video, "--out", tmp_path / "take.wav", "--variations", -1) == 2   # the range first
    assert "variations = -1 is outside 1 .. 8" in capsys.readouterr().err
    assert wavs(tmp_path) == []


def test_a_picture_region_and_a_loudness_curve_make_one_protocol_2_job(video, tmp_path, capsys, monkeypatch):
    jobs = []
    real = stepfoley.engine.service.FoleyService.__call__
    monkeypatch.setattr(stepfoley.engine.service.FoleyService, "__call__",
                        lambda self, request, *a, **k: jobs.append(request) or real(self, request, *a, **k))
    take = tmp_path / "shaped.wav"
    # their times in minutes:seconds too, as START's (a curve's point: time:LUFS, the level last)
    assert generate(video, "--out", take, "--region", "0,0,0.5,0.5", "--region-time", "0:00.5,1.5",
                    "--loudness-curve", "0:-40,0:01:-20,2:-30") == 0
    (job,) = jobs
    assert (job.protocol, job.picture_region, job.picture_region_time) == (2, (0, 0, 0.5, 0.5), (0.5, 1.5))
    assert job.loudness_curve == ((0.0, -40.0), (1.0, -20.0), (2.0, -30.0))
    assert wavs(tmp_path) == ["shaped.wav"] and f"wrote {take}" in capsys.readouterr().out


def test_the_metadata_file_holds_the_loudness_curve_itself(video, tmp_path):
    # a reply's datagram has room only for "3 points"; the command's own file can reproduce the curve
    assert generate(video, "--out", tmp_path / "shaped.wav", "--loudness-curve", "0:-40,1:-20,2:-30",
                    "--metadata", tmp_path / "shaped.json") == 0
    (stem,) = json.loads((tmp_path / "shaped.json").read_text())["stems"]
    assert stem["metadata"]["loudness_curve"] == [[0.0, -40.0], [1.0, -20.0], [2.0, -30.0]]


def test_embedded_weights_retrained_by_train_embedded_are_given_as_weights(video, tmp_path, capsys, monkeypatch):
    """`train embedded --out FILE` wrote weights that only `eval --embedded-weights` could use:
    --weights took MMAudio's folder alone. A file there is the embedded model's; one that holds
    none of its weights (MMAudio's, converted) says what --weights takes."""
    import torch
    from safetensors.torch import save_file

    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights, write_guidance_defaults
    from stepfoley.request import GuidanceDefaults

    model = build_embedded_model(random_weights=True)
    path = save_embedded_weights(tmp_path / "retrained.safetensors", model.net, model.controlnet, model.codec,
                                 metadata={})
    write_guidance_defaults(path, GuidanceDefaults(alpha=2.5, beta=0.5, steps=1), {"rule": "test"})
    out = tmp_path / "out"
    out.mkdir()
    assert main(["generate", str(video), "0.5", "2.5", "rain", "--weights", str(path), "--device", "cpu",
                 "--out", str(out), "--metadata", str(tmp_path / "m.json")]) == 0
    (stem,) = json.loads((tmp_path / "m.json").read_text())["stems"]
    assert (stem["metadata"]["alpha"], stem["metadata"]["beta"], stem["metadata"]["steps"]) == (2.5, 0.5, 1)
    assert main(["generate", str(video), "0.5", "2.5", "rain", "--weights", str(path), "--model", "small_16k",
                 "--out", str(out)]) == 2  # a usage error, before anything loads (it failed at load)
    assert "is the embedded model's weights, one model: --model chooses" in capsys.readouterr().err
    monkeypatch.setenv("HOME", str(tmp_path))  # `--weights=~/…`, which no shell expands: as a folder is
    assert main(["generate", str(video), "0.5", "2.5", "rain", "--weights=~/retrained.safetensors", "--device", "cpu",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    save_file({"latent_mean": torch.zeros(4)}, str(tmp_path / "mmaudio.safetensors"))
    assert main(["generate", str(video), "0.5", "2.5", "rain", "--weights", str(tmp_path / "mmaudio.safetensors"),
                 "--out", str(out)]) == 2  # checked before anything loads
    assert ("mmaudio.safetensors is not a file of the embedded model's weights (it holds none of its network's "
            "weights). --weights takes a folder of MMAudio's weights (the one that holds weights/ and ext_weights/), "
            "or a file that `stepfoley train embedded` wrote.") in capsys.readouterr().err


def test_out_naming_an_existing_file_that_is_no_wav_says_so(video, tmp_path, capsys):
    """It was said not to exist (the video given by mistake, /dev/null)."""
    assert generate(video, "--out", video) == 2
    assert f"'{video}' is a file, not a folder. Give a folder, or a file name ending in .wav." in capsys.readouterr().err


def test_a_take_is_kept_at_its_own_rate_unless_told_otherwise(video, tmp_path, capsys):
    """The model makes 16 kHz audio; a 48 kHz take stays a 48 kHz take, its kept part bit for bit."""
    take = tmp_path / "take48.wav"
    samples = (0.1 * np.random.default_rng(3).standard_normal((2 * 48000, 2))).astype(np.float32)
    sf.write(take, samples, 48000, subtype="FLOAT")
    out = tmp_path / "out"
    out.mkdir()
    assert generate(video, "--out", out, "--take", take, "--regenerate", "1.5,2", "--format", "wav32f") == 0
    captured = capsys.readouterr()
    assert "48000 Hz" in captured.out and "not bit for bit" not in captured.err
    (stem,) = out.iterdir()
    written, rate = sf.read(stem, dtype="float32")
    assert rate == 48000 and np.array_equal(written[:72000], samples[:72000])
    assert generate(video, "--out", out, "--take", take, "--regenerate", "1.5,2", "--sample-rate", "16000") == 0
    captured = capsys.readouterr()
    assert "16000 Hz" in captured.out and ("not bit for bit the take's: it was resampled from the take's 48000 Hz "
                                           "to 16000 Hz (--sample-rate 48000 keeps it)") in captured.err
    # at the take's rate, a float take rounded to 24 bits: the cause is the format (resampling was named too)
    assert generate(video, "--out", out, "--take", take, "--regenerate", "1.5,2") == 0
    assert ("not bit for bit the take's: its samples do not fit wav24 (--format wav32f keeps a float take's)"
            in capsys.readouterr().err)
    # a 32-bit integer take: no format keeps it, so wav32f is not advised (following that advice met a second note)
    sf.write(take, samples, 48000, subtype="PCM_32")
    assert generate(video, "--out", out, "--take", take, "--regenerate", "1.5,2") == 0
    err = capsys.readouterr().err
    assert "not bit for bit the take's: the take holds 32-bit integer or 64-bit float samples" in err
    assert "--format wav32f" not in err


def test_extend_and_repair_from_the_command_line_keep_the_take(video, tmp_path, capsys):
    take, extended = tmp_path / "take.wav", tmp_path / "extended.wav"
    assert generate(video, "--out", take, "--seed", 1) == 0
    assert generate(video, "--out", extended, "--seed", 2, "--take", take, "--regenerate", "1.25,2") == 0
    assert f"wrote {extended}" in capsys.readouterr().out
    kept, new = sf.read(take, dtype="float32")[0], sf.read(extended, dtype="float32")[0]
    assert len(new) == len(kept) == 32000
    assert np.array_equal(new[:20000], kept[:20000]) and not np.array_equal(new[20800:], kept[20800:])
    offset = tmp_path / "offset.wav"
    # in minutes:seconds as START takes them: "--regenerate 1:00,1:01" was refused
    assert generate(video, "--out", offset, "--take", take, "--take-offset", "0:00.25", "--regenerate",
                    "0:01.5,0:02") == 0
    assert np.array_equal(sf.read(offset, dtype="float32")[0][:24000], kept[4000:28000])   # start is 0.25 s into it
    assert generate(video, "--out", tmp_path, "--take", take, "--regenerate", "0.5,1") == 0         # repair
    repaired = sf.read(tmp_path / "rain_falling_001.wav", dtype="float32")[0]
    assert np.array_equal(repaired[:8000], kept[:8000]) and np.array_equal(repaired[16000:], kept[16000:])


def test_a_take_is_decoded_and_the_request_parsed_once(video, tmp_path, monkeypatch):
    """Both were done twice: the take decoded as it was checked and again by the job (a 600 s
    stereo take at 48 kHz: 219 MiB and a second each time), the request parsed before the model
    loaded and again after."""
    import stepfoley.request
    from stepfoley.engine import audio_io

    take = tmp_path / "take.wav"
    sf.write(take, (0.1 * np.random.default_rng(4).standard_normal((2 * 48000, 2))).astype(np.float32), 48000)
    decoded, parsed = [], []
    read, parse = audio_io.read_audio_and_subtype, stepfoley.request.parse_request
    monkeypatch.setattr(audio_io, "read_audio_and_subtype", lambda path, max_seconds=None, *a, **k: (
        decoded.append((Path(path), max_seconds)) or read(path, max_seconds, *a, **k)))
    monkeypatch.setattr(stepfoley.request, "parse_request", lambda *a, **k: parsed.append(a) or parse(*a, **k))
    out = tmp_path / "out.wav"
    assert generate(video, "--out", out, "--take", take, "--regenerate", "1.5,2") == 0
    # its rate from its first 0.1 s (before the request, which it sets), then the stem's stretch, once
    assert [seconds for path, seconds in decoded if path == take] == [0.1, 2.0 + 1e-3]
    assert len(parsed) == 1
    assert np.array_equal(sf.read(out, dtype="float32")[0][:72000], sf.read(take, dtype="float32")[0][:72000])


def test_the_metadata_file_has_one_shape_for_one_take_or_several(video, tmp_path, capsys):
    """A plain track's file had no rank and a null ranking; with --region or --variations (a
    protocol-2 job) each stem had its rank and the file its ranking."""
    reports = {}
    for name, extra in (("plain", ()), ("region", ("--region", "0,0,1,1")), ("two", ("--variations", 2))):
        out = tmp_path / name
        out.mkdir()
        assert generate(video, "--out", out, "--metadata", out / "take.json", *extra) == 0
        reports[name] = json.loads((out / "take.json").read_text())
    said = capsys.readouterr().out
    assert said.count(", rank ") == 2 and said.count("ranked by") == 1  # of the two takes only: as before
    one_take = {"ranked_by": "seed", "reason": "one take: nothing to rank"}
    assert reports["plain"]["ranking"] == reports["region"]["ranking"] == one_take
    for report in reports.values():
        assert list(report) == ["stems", "ranking"] and set(report["ranking"]) == {"ranked_by", "reason"}
        assert [s["metadata"]["rank"] for s in report["stems"]] == list(range(1, len(report["stems"]) + 1))
    assert reports["plain"]["stems"][0]["metadata"]["ranking"] == reports["region"]["stems"][0]["metadata"]["ranking"]
    plain, region = (set(reports[name]["stems"][0]["metadata"]) for name in ("plain", "region"))
    assert plain == region - {"picture_region", "picture_region_time"}, region ^ plain


def test_a_negative_caption_or_beta_that_has_no_weight_is_said_to_have_had_no_effect(video, tmp_path, capsys):
    # at alpha 1 (the embedded model's) the unconditional branch, which carries it, weighs 0:
    # the take is the same as without it, and only the metadata used to say so
    assert generate(video, "--out", tmp_path, "--negative-caption", "music", "--alpha", "1") == 0
    assert ("note: --negative-caption had no effect: method conditional at alpha 1 gives it no weight"
            in capsys.readouterr().err)
    assert generate(video, "--out", tmp_path, "--negative-caption", "music", "--alpha", "4.5") == 0
    assert "--negative-caption" not in capsys.readouterr().err
    # --beta with a method that has none was taken without a word, and recorded as if it had counted
    assert generate(video, "--out", tmp_path, "--method", "independent", "--beta", "3") == 0
    assert "note: --beta has no effect with method independent" in capsys.readouterr().err
    assert generate(video, "--out", tmp_path, "--method", "nag", "--beta", "3") == 0
    assert "--beta has no effect" not in capsys.readouterr().err
    # dual's w2 and w3 take it when not given (w2 = α + β, w3 = β), and not when both are
    assert generate(video, "--out", tmp_path, "--method", "dual", "--beta", "3") == 0
    assert "--beta has no effect" not in capsys.readouterr().err
    assert generate(video, "--out", tmp_path, "--method", "dual", "--beta", "3", "--w2", "2", "--w3", "1") == 0
    assert "note: --beta has no effect with method dual" in capsys.readouterr().err
    # method dual weighs it by its own w1: naming alpha, which the user had raised, said nothing
    assert generate(video, "--out", tmp_path, "--negative-caption", "music", "--method", "dual", "--alpha", "3",
                    "--w1", "1", "--w2", "3", "--w3", "0") == 0
    said = capsys.readouterr().err
    assert "method dual_text at w1 1 gives it no weight (it is heard with --method negative_prompt, or at --w1 " \
           "above 1)" in said, said


def test_the_kept_part_note_offers_the_takes_rate_only_where_a_stem_can_have_it():
    """A 12 kHz take was told "--sample-rate 12000 keeps it", a rate then refused."""
    import argparse

    from stepfoley.commands.generate import _why_kept_changed

    args = argparse.Namespace(format="wav24")
    said = _why_kept_changed({"take_sample_rate": 12000, "sample_rate": 16000}, args, "PCM_24")
    assert said == "it was resampled from the take's 12000 Hz to 16000 Hz (no stem is written at the take's rate)"
    said = _why_kept_changed({"take_sample_rate": 44100, "sample_rate": 48000}, args, "PCM_24")
    assert said.endswith("(--sample-rate 44100 keeps it)")
