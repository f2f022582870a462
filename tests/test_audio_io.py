import errno
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from stepfoley import atomic
from stepfoley.engine import audio_formats, audio_io
from stepfoley.engine.audio_io import read_audio, sanitize_stem_name, unique_path, write_new_wav, write_wav_atomic
from stepfoley.engine.errors import AudioError, InvalidInputError, OutputError


def noise(channels, length, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    return (scale * rng.uniform(-1, 1, (channels, length))).astype(np.float32)


def test_pcm24_round_trip_keeps_shape_rate_and_values(tmp_path):
    samples = noise(2, 1000)
    written = write_wav_atomic(tmp_path / "take.wav", samples, 44100)
    assert written == tmp_path / "take.wav"
    assert soundfile.info(str(written)).subtype == "PCM_24"
    back, rate = read_audio(written)
    assert rate == 44100 and back.shape == (2, 1000) and back.dtype == np.float32
    np.testing.assert_allclose(back, samples, atol=2.0**-23)


def test_float_round_trip_is_exact_and_keeps_overs(tmp_path):
    samples = noise(1, 300, scale=1.8)
    write_wav_atomic(tmp_path / "hot.wav", samples, 16000, subtype="FLOAT")
    back, rate = read_audio(tmp_path / "hot.wav")
    assert rate == 16000 and np.array_equal(back, samples)


def test_pcm_clips_overs_instead_of_wrapping(tmp_path):
    samples = np.array([[0.25, 1.5, -3.0]], dtype=np.float32)
    write_wav_atomic(tmp_path / "clip.wav", samples, 8000, subtype="PCM_16")
    back, _ = read_audio(tmp_path / "clip.wav")
    np.testing.assert_allclose(back, [[0.25, 1.0, -1.0]], atol=2.0**-14)


def test_mono_vector_is_written_as_one_channel(tmp_path):
    write_wav_atomic(tmp_path / "mono.wav", noise(1, 50)[0], 8000)
    back, _ = read_audio(tmp_path / "mono.wav")
    assert back.shape == (1, 50)


def test_refuses_to_overwrite_and_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "mine.wav"
    target.write_bytes(b"the user's precious take")
    with pytest.raises(AudioError, match="already exists"):
        write_wav_atomic(target, noise(1, 10), 8000)
    assert target.read_bytes() == b"the user's precious take"
    assert os.listdir(tmp_path) == ["mine.wav"]


def test_missing_folder_is_reported(tmp_path):
    # a request's field, whenever it is found: it was bad_audio when the folder went while the
    # job ran, invalid_input when before it
    with pytest.raises(InvalidInputError, match="The output folder '.*nowhere' does not exist"):
        write_wav_atomic(tmp_path / "nowhere" / "x.wav", noise(1, 10), 8000)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InvalidInputError, match="The output folder '.*a-file' is not a folder"):
        write_new_wav(tmp_path / "a-file", "rain", noise(1, 10), 8000)


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InvalidInputError, match="WAV format"):
        write_wav_atomic(tmp_path / "a.wav", noise(1, 10), 8000, subtype="MP3")
    with pytest.raises(InvalidInputError, match="sample rate"):
        write_wav_atomic(tmp_path / "a.wav", noise(1, 10), 0)
    with pytest.raises(AudioError, match="NaN"):
        write_wav_atomic(tmp_path / "a.wav", np.full((1, 4), np.nan, np.float32), 8000)
    with pytest.raises(AudioError, match="no samples"):
        write_wav_atomic(tmp_path / "a.wav", np.zeros((1, 0), np.float32), 8000)
    with pytest.raises(AudioError, match="beyond what a 32-bit float"):  # finite as float64: inf once written
        write_wav_atomic(tmp_path / "a.wav", np.array([[0.5, 1e39, -1e39]]), 8000, subtype="FLOAT")
    assert os.listdir(tmp_path) == []


def test_failure_mid_write_leaves_no_final_and_no_temp_file(tmp_path, monkeypatch):
    real_write = soundfile.write

    def write_half_then_fail(file, data, *args, **kwargs):
        real_write(file, data[: len(data) // 2], *args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(audio_io.soundfile, "write", write_half_then_fail)
    with pytest.raises(OutputError, match="disk full"):
        write_wav_atomic(tmp_path / "take.wav", noise(2, 1000), 44100)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), where this machine lets the tests mount one."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_disk_that_fills_while_a_stem_is_written_is_said_as_that(small_disk):
    """soundfile writes through callbacks that swallow the OSError of a full disk, then asserts
    on the count: the stem's writer says the file could not be written, with what to check, and
    leaves nothing. A new stem is named by its folder (its name is chosen once it is written: the
    message named '<caption>.wav', which never existed), and the code is not bad_audio."""
    with pytest.raises(OutputError, match="Could not write .*take.wav.*: the disk is full. Check free disk space"):
        write_wav_atomic(small_disk / "take.wav", noise(2, 192000), 192000)  # libsndfile says "System error"
    with pytest.raises(OutputError, match=f"Could not write a new stem in '{small_disk}': the disk is full") as e:
        audio_io.stage_new_wav(small_disk, "steps", noise(2, 192000), 192000)
    assert e.value.code == "cannot_write"
    assert os.listdir(small_disk) == []


def test_failure_while_publishing_leaves_nothing(tmp_path, monkeypatch):
    def no_space(src, dst, **options):
        raise OSError(errno.ENOSPC, "No space left on device")

    # the hard link fails, then so does the exclusive create's move that stands in for it
    monkeypatch.setattr(audio_io.os, "link", no_space)
    monkeypatch.setattr(atomic, "_rename_no_replace", no_space)
    monkeypatch.setattr(audio_io.os, "replace", no_space)
    with pytest.raises(OutputError, match="No space"):  # cannot_write, not a bad input
        write_wav_atomic(tmp_path / "take.wav", noise(1, 100), 8000)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="libsndfile is handed the descriptor on POSIX only")
def test_ctrl_c_while_a_stem_is_written_stops_it_as_a_stop_not_as_a_full_disk(tmp_path):
    """Through soundfile's Python callbacks, a Ctrl-C landing in one was swallowed ("Exception
    ignored from cffi callback"): the write came out short and was said as a full disk."""
    script = """
import os, signal, sys, threading, time
import numpy as np
from pathlib import Path
from stepfoley.engine import audio_formats, audio_io
folder = Path(sys.argv[1])
# as in a terminal: a run started in the background (nohup, CI) inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
def being_written():
    try:  # a loaded machine may see the stem only once it is named (the temp name gone meanwhile)
        return any((p.name.endswith(".part") and p.stat().st_size > 8 << 20) or p.name == "take.wav"
                   for p in folder.iterdir())
    except FileNotFoundError:
        return True
def press_ctrl_c_once_it_is_being_written():
    while not being_written():
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=press_ctrl_c_once_it_is_being_written, daemon=True).start()
outcome = "written"
try:
    audio_io.write_wav_atomic(folder / "take.wav", np.zeros((2, 12_000_000), np.float32), 48000, "FLOAT")
    outcome = "written, then stopped"
    time.sleep(5)  # a loaded machine: the press may come after the last sample, while the file is named
    outcome = "the stop was lost"
except KeyboardInterrupt:
    outcome = "stopped" if outcome == "written" else outcome
except audio_io.AudioError as e:
    outcome = str(e)
print(outcome)
"""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    said = done.stdout.strip()
    assert said in ("stopped", "written, then stopped"), done.stdout + done.stderr
    # stopped while writing: nothing left; after: the whole stem, under its name
    assert os.listdir(tmp_path) == ([] if said == "stopped" else ["take.wav"])
    if said != "stopped":
        assert audio_io.read_audio(tmp_path / "take.wav")[0].shape == (2, 12_000_000)


def test_a_writer_that_wins_the_race_is_not_clobbered(tmp_path, monkeypatch):
    target = tmp_path / "take.wav"
    real_write = soundfile.write

    def write_while_someone_else_creates_the_file(file, data, *args, **kwargs):
        real_write(file, data, *args, **kwargs)
        target.write_bytes(b"the other writer's take")

    monkeypatch.setattr(audio_io.soundfile, "write", write_while_someone_else_creates_the_file)
    with pytest.raises(AudioError, match="someone else"):
        write_wav_atomic(target, noise(1, 100), 8000)
    assert target.read_bytes() == b"the other writer's take"
    assert os.listdir(tmp_path) == ["take.wav"]


def test_filesystem_without_hard_links_still_writes_exclusively(tmp_path, monkeypatch):
    def links_not_supported(src, dst, **options):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(audio_io.os, "link", links_not_supported)
    samples = noise(2, 200)
    write_wav_atomic(tmp_path / "take.wav", samples, 8000, subtype="FLOAT")
    assert os.listdir(tmp_path) == ["take.wav"]
    assert np.array_equal(read_audio(tmp_path / "take.wav")[0], samples)

    real_write = soundfile.write

    def write_while_someone_else_creates_the_file(file, data, *args, **kwargs):
        real_write(file, data, *args, **kwargs)
        (tmp_path / "second.wav").write_bytes(b"theirs")

    monkeypatch.setattr(audio_io.soundfile, "write", write_while_someone_else_creates_the_file)
    with pytest.raises(AudioError, match="someone else"):
        write_wav_atomic(tmp_path / "second.wav", samples, 8000)
    assert (tmp_path / "second.wav").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["second.wav", "take.wav"]


def test_a_path_longer_than_libsndfile_takes_by_name_is_written_and_read(tmp_path):
    # libsndfile opens files by name only up to 1023 bytes; a project folder can be deeper
    folder = tmp_path.joinpath(*(f"{i}" + "d" * 200 for i in range(6)))
    folder.mkdir(parents=True)
    assert len(os.fsencode(folder)) > 1024
    samples = np.linspace(-0.5, 0.5, 2 * 800, dtype=np.float32).reshape(2, 800)
    path = audio_io.write_new_wav(folder, "a long way down", samples, 16000, "FLOAT")
    back, rate = read_audio(path)
    assert rate == 16000 and np.array_equal(back, samples) and os.listdir(folder) == [path.name]


def test_read_missing_file_names_it(tmp_path):
    with pytest.raises(AudioError, match="not found.*ghost.wav"):
        read_audio(tmp_path / "ghost.wav")


def test_read_folder_is_refused(tmp_path):
    with pytest.raises(AudioError, match="folder"):
        read_audio(tmp_path)


def test_read_unreadable_file_names_it(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a riff header" * 20)
    with pytest.raises(AudioError) as e:
        read_audio(junk)
    assert str(e.value).startswith(f"Audio file '{junk}' is not in a format StepFoley reads (WAV, AIFF, FLAC, Ogg "
                                   "Vorbis or Opus, CAF or MP3): it does not begin as any of them do (damaged, or")


def test_read_empty_file_names_it(tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros((0, 1), np.float32), 8000)
    with pytest.raises(AudioError, match="empty.wav' is empty"):
        read_audio(empty)


def test_read_zero_byte_file_is_an_audio_error(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="zero.wav"):
        read_audio(tmp_path / "zero.wav")


@pytest.mark.parametrize(
    "hint, expected",
    [
        ("Footsteps on gravel", "Footsteps_on_gravel"),
        ("  door   slam!! (wet) ", "door_slam_wet"),
        ("café-crowd_02", "cafe-crowd_02"),
        ("../../etc/passwd", "etc_passwd"),
        # punctuation parts words: "Kick 1/2" read "Kick_12"
        ("Kick 1/2", "Kick_1_2"), ("glass+metal, wood", "glass_metal_wood"), ("dog's bark", "dogs_bark"),
        ("dog’s bark", "dogs_bark"), ("Kick 1–2", "Kick_1_2"), ("door—slam", "door_slam"), ("2×4 plank", "2_4_plank"),
        ("glass·metal", "glass_metal"), ("rain 雨 wind", "rain_wind"),
        ("雨", "stem"),
        # letters no decomposition reaches ASCII from were dropped ("Fuschritte", "yzka", all Cyrillic "stem")
        ("Fußschritte auf der Straße", "Fussschritte_auf_der_Strasse"),
        ("Łyżka uderza o talerz", "Lyzka_uderza_o_talerz"),
        ("Ærø ørnen — Øl", "AEro_ornen_Ol"),
        ("шаги по гравию", "shagi_po_graviyu"),
        ("Щётка ЖЁСТКАЯ", "Shchetka_ZhESTKAYa"),
        ("", "stem"),
        (None, "stem"),
        ("con", "con_stem"),
    ],
)
def test_sanitize_stem_name(hint, expected):
    assert sanitize_stem_name(hint) == expected


def test_sanitize_limits_length():
    name = sanitize_stem_name("rain " * 40)
    assert len(name) <= audio_io.MAX_STEM_NAME_CHARS and name.startswith("rain_rain")
    assert not name.endswith("_")


def test_unique_path_numbers_takes_and_skips_existing(tmp_path):
    first = unique_path(tmp_path, "Glass break")
    assert first == tmp_path / "Glass_break_001.wav" and not first.exists()
    first.write_bytes(b"x")
    (tmp_path / "Glass_break_002.wav").write_bytes(b"x")
    assert unique_path(tmp_path, "Glass break") == tmp_path / "Glass_break_003.wav"
    assert unique_path(tmp_path, "glass break", ext="flac") == tmp_path / "glass_break_001.flac"


def test_a_name_taken_in_another_case_is_taken(tmp_path):
    # one file on a case-insensitive disk (macOS, Windows, exFAT, shares), where a project folder
    # made on Linux may be copied: three takes used to come out as Rain_/rain_/RAIN_on_glass_001
    made = []
    for hint in ("Rain on glass", "rain on glass", "RAIN ON GLASS"):
        made.append(write_wav_atomic(unique_path(tmp_path, hint), noise(1, 10), 8000).name)
    assert made == ["Rain_on_glass_001.wav", "rain_on_glass_002.wav", "RAIN_ON_GLASS_003.wav"]


def test_unique_path_then_atomic_write(tmp_path):
    samples = noise(1, 64)
    paths = [write_wav_atomic(unique_path(tmp_path, "hit"), samples, 8000) for _ in range(3)]
    assert [p.name for p in paths] == ["hit_001.wav", "hit_002.wav", "hit_003.wav"]


def test_unique_path_needs_an_existing_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        unique_path(tmp_path / "missing", "rain")
    with pytest.raises(InvalidInputError, match="extension"):
        unique_path(tmp_path, "rain", ext="/../x")


def test_a_new_file_gets_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        written = write_wav_atomic(tmp_path / "take.wav", noise(1, 10), 8000)
    finally:
        os.umask(old)
    assert os.stat(written).st_mode & 0o777 == 0o644


def test_read_audio_reads_only_what_is_asked_and_downmixes_as_it_goes(tmp_path, monkeypatch):
    samples = noise(4, 8000 * 10)
    soundfile.write(str(tmp_path / "long.wav"), samples.T, 8000, subtype="FLOAT")
    monkeypatch.setattr(audio_io, "READ_BLOCK_SAMPLES", 4 * 1000)  # several blocks
    back, rate = read_audio(tmp_path / "long.wav", max_seconds=2.5, mono=True)
    assert rate == 8000 and back.shape == (1, 20000)
    np.testing.assert_allclose(back[0], samples[:, :20000].mean(axis=0), atol=1e-6)
    assert read_audio(tmp_path / "long.wav", max_seconds=60)[0].shape == (4, 80000)  # a shorter file: all of it


def test_a_file_whose_header_does_not_give_its_length_is_read_into_a_growing_buffer(tmp_path, monkeypatch):
    """A FLAC written to a pipe says "length unknown", which libsndfile gives as 2**63 - 1
    frames: read whole, that many were allocated up front (a bare ValueError)."""
    path = tmp_path / "piped.flac"
    soundfile.write(str(path), 0.5 * np.sin(np.arange(48000) / 10), 48000, format="FLAC")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0  # STREAMINFO's 36-bit total sample count: 0, unknown
    data[22:26] = bytes(4)
    path.write_bytes(bytes(data))
    assert soundfile.info(str(path)).frames == audio_io.UNKNOWN_FRAMES
    assert read_audio(path, max_seconds=0.5)[0].shape == (1, 24000)
    # libsndfile's own seek fails some way before its end (it said "Internal psf_fseek() failed")
    for start in (0.0, 0.9, 2.0):  # to the end, from near it (a take's offset), from past it
        with pytest.raises(AudioError, match="does not say how long it is in its header"):
            audio_io.read_audio_and_subtype(path, start_seconds=start)
    assert audio_io.read_audio_and_subtype(path, max_seconds=0.2, start_seconds=0.5)[0].shape == (1, 9600)
    # the growing buffer, on a file whose length is known (taken as unknown here)
    samples = noise(2, 8000 * 3)
    soundfile.write(str(tmp_path / "known.wav"), samples.T, 8000, subtype="FLOAT")
    monkeypatch.setattr(audio_io, "UNKNOWN_FRAMES", 1)
    monkeypatch.setattr(audio_io, "READ_BLOCK_SAMPLES", 2 * 1000)
    back, _ = read_audio(tmp_path / "known.wav")
    np.testing.assert_array_equal(back, samples)


def test_read_audio_refuses_big_files_and_high_rates_before_reading(tmp_path):
    soundfile.write(str(tmp_path / "hi.wav"), noise(1, 600_000).T, 384000, subtype="FLOAT")
    with pytest.raises(AudioError, match="384000 Hz; at most 192000 Hz"):
        read_audio(tmp_path / "hi.wav", max_rate=192000)
    with pytest.raises(AudioError, match="is 2 MiB; at most 1 MiB"):
        read_audio(tmp_path / "hi.wav", max_bytes=2**20)
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(AudioError, match="not a regular file"):
        read_audio(tmp_path / "pipe.wav")


def test_write_refuses_more_than_max_bytes(tmp_path):
    with pytest.raises(AudioError, match="more than the"):
        write_wav_atomic(tmp_path / "big.wav", noise(2, 1000), 8000, subtype="FLOAT", max_bytes=7999)
    assert os.listdir(tmp_path) == []


def test_sweep_removes_only_the_temp_files_of_writers_that_are_gone(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._HOST
    names = {
        "gone": f".take_001.wav.{host}-{dead.pid}-0123abcd.part",
        "alive": f".take_002.wav.{host}-{os.getppid()}-0123abcd.part",  # a live process of this machine
        "other machine": f".take_003.wav.{'0' * 8 if host != '0' * 8 else '1' * 8}-{dead.pid}-0123abcd.part",
        "not ours": ".take_004.wav.abc.part",
        "a user's file": "take_005.wav",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert atomic.sweep_stale_parts(tmp_path) == [names["gone"]]
    write_wav_atomic(tmp_path / "take_006.wav", noise(1, 10), 8000)  # a write sweeps too, and keeps the rest
    assert sorted(os.listdir(tmp_path)) == sorted([*list(names.values())[1:], "take_006.wav"])


@pytest.mark.parametrize("damaged", [
    '["/tmp/a\\u0000b"]',         # a NUL: os.scandir raised ValueError
    "[" * 100_000 + "]" * 100_000,  # nested too deep for the parser: RecursionError
    '["/\\ud800/x"]',             # a lone surrogate: no file name can hold it
    '["relative/folder", 7, null, {"a": 1}]',
])
def test_a_damaged_list_of_output_folders_never_stops_the_start_up_sweep(tmp_path, monkeypatch, damaged):
    # `stepfoley serve` sweeps these folders before it loads the model; the file is the engine's
    # own, but another version or a damaged disk may have written it: it used to stop every start
    from stepfoley.engine import output_folders

    monkeypatch.setenv("STEPFOLEY_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    state = tmp_path / "state" / output_folders.STATE_FILE
    state.write_text(damaged, encoding="utf-8")
    assert output_folders.sweep() == [] and output_folders.recent() == []
    output_folders.remember(tmp_path)  # the next job's folder replaces what could not be used
    assert json.loads(state.read_text(encoding="utf-8")) == [os.path.realpath(tmp_path)]


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symbolic links as a user makes them")
def test_a_temp_name_swapped_for_a_link_cannot_redirect_the_stem(tmp_path, monkeypatch):
    # Another user who can write to the output folder swaps the freshly created temporary name
    # for a link to a file of ours; here, just after the exclusive create, where os.fstat reads it.
    victim = tmp_path / "private" / "thesis.txt"
    victim.parent.mkdir()
    victim.write_text("the only copy")
    victim.chmod(0o600)
    out = tmp_path / "shared"
    out.mkdir()
    real_fstat, swapped = os.fstat, []

    def fstat_then_swap(fd):
        result = real_fstat(fd)
        temps = [n for n in os.listdir(out) if atomic.is_temp_name(n)]
        if temps and not swapped:
            (out / "link").symlink_to(victim)
            os.replace(out / "link", out / temps[0])
            swapped.append(temps[0])
        return result

    monkeypatch.setattr(atomic.os, "fstat", fstat_then_swap)
    with pytest.raises(OutputError, match="was replaced by another file while it was written"):
        write_wav_atomic(out / "rain.wav", noise(1, 1000), 16000)
    monkeypatch.undo()
    assert swapped and victim.read_text() == "the only copy" and oct(victim.stat().st_mode & 0o777) == "0o600"
    assert not (out / "rain.wav").exists() and not (out / "rain.wav").is_symlink()


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symbolic links as a user makes them")
def test_a_link_swapped_in_at_the_last_moment_is_never_published(tmp_path, monkeypatch):
    # the swap between publish's check of the temporary name and the hard link itself
    victim = tmp_path / "thesis.txt"
    victim.write_text("the only copy")
    out = tmp_path / "shared"
    out.mkdir()
    real_publish = atomic._publish_exclusively

    def swap_then_publish(temp, path):
        (out / "link").symlink_to(victim)
        os.replace(out / "link", temp)
        real_publish(temp, path)

    monkeypatch.setattr(atomic, "_publish_exclusively", swap_then_publish)
    with pytest.raises(OutputError, match="was replaced by another file while it was written"):
        write_wav_atomic(out / "rain.wav", noise(1, 1000), 16000)
    assert victim.read_text() == "the only copy"
    assert not (out / "rain.wav").is_symlink() and not (out / "rain.wav").exists()


def test_samples_far_beyond_full_scale_are_refused_as_damaged(tmp_path):
    """A float file of +-3e38: the job failed saying the latent became NaN (lower the guidance),
    or that the stem held NaN, blaming the wrong thing."""
    from stepfoley.engine.audio_io import read_audio

    soundfile.write(tmp_path / "hot.wav", np.full(16000, 3e38, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="holds samples up to 3e\\+38 times full scale"):
        read_audio(tmp_path / "hot.wav")
    soundfile.write(tmp_path / "over.wav", np.full(16000, 4.0, np.float32), 16000, subtype="FLOAT")  # an over: kept
    assert read_audio(tmp_path / "over.wav")[0].max() == 4.0
    scaled = tmp_path / "scaled.wav"  # floats scaled to 32-bit integers, as old editors wrote them
    soundfile.write(scaled, np.full(16000, 2.1e9, np.float32), 16000, subtype="FLOAT")
    assert read_audio(scaled)[0].max() == np.float32(2.1e9)


# --- Ogg: whole pages end to end ---------------------------------------------------------------


def ogg_bytes(subtype="VORBIS", seconds=2.0, rate=48000):
    import io

    buffer = io.BytesIO()
    noise = np.random.default_rng(5).standard_normal((int(seconds * rate), 2)).astype(np.float32) * 0.1
    soundfile.write(buffer, noise, rate, format="OGG", subtype=subtype)
    return buffer.getvalue()


def page_starts(data: bytes) -> list[int]:
    starts, position = [], 0
    while position < len(data):
        starts.append(position)
        lacing = data[position + 27: position + 27 + data[position + 26]]
        position += 27 + len(lacing) + sum(lacing)
    return starts


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_the_ogg_page_checksum_is_the_one_libsndfile_writes(subtype):
    data = ogg_bytes(subtype)
    starts = page_starts(data)
    assert len(starts) > 3
    for a, b in zip(starts, starts[1:] + [len(data)]):
        assert audio_formats.ogg_checksum(data[a:b]) == int.from_bytes(data[a + 22:a + 26], "little")


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_a_whole_ogg_file_or_one_whose_last_page_is_cut_short_is_read(tmp_path, subtype):
    data = ogg_bytes(subtype)
    for name, content in (("whole.ogg", data), ("cut.ogg", data[:-100])):
        (tmp_path / name).write_bytes(content)
        samples, rate = read_audio(tmp_path / name)
        assert rate == 48000 and samples.shape[0] == 2 and samples.shape[1] > 48000


def test_bytes_between_ogg_pages_are_named_before_libsndfile_searches_them(tmp_path):
    """A tail of false page headers between an Ogg file's pages made libsndfile search every one
    for the last page, 0.3 s a MiB: minutes for a 1 GiB input, in a job that could not be
    cancelled. So are contiguous pages with wrong checksums, which libogg skips as damage."""
    data = ogg_bytes()
    last = page_starts(data)[-1]
    junk = bytearray(np.random.default_rng(1).integers(0, 256, 256 * 1024, dtype=np.uint8).tobytes())
    for k in range(0, len(junk) - 5, 28):
        junk[k:k + 5] = b"OggS\0"
    header = bytearray(data[last:last + 27])
    header[26] = 1  # one lacing value: 255 bytes; the checksum is still the real page's
    false_pages = (bytes(header) + bytes([255]) + bytes(255)) * 1000
    for name, content in (("between.ogg", data[:last] + bytes(junk) + data[last:]),
                          ("checksums.ogg", data[:last] + false_pages + data[last:])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioError, match=f"'.*{name}' is damaged: at byte {last:,} of its .* no whole Ogg page"):
            read_audio(tmp_path / name)
    # less than a page of other bytes after the last page is left to libsndfile, which reads the pages
    (tmp_path / "trailing.ogg").write_bytes(data + bytes(junk[:4000]))
    assert read_audio(tmp_path / "trailing.ogg")[0].shape[1] > 48000


def test_an_ogg_file_of_tiny_pages_is_refused_before_they_are_all_checked(tmp_path):
    """Each page costs microseconds to check: a GiB of valid empty 27-byte pages took minutes."""
    import time

    data = ogg_bytes()
    empty = bytearray(data[:27])
    empty[5], empty[26] = 0, 0  # a continued-nothing page with no segments
    empty[22:26] = audio_formats.ogg_checksum(bytes(empty)).to_bytes(4, "little")
    (tmp_path / "tiny.ogg").write_bytes(data + bytes(empty) * 200_000)  # 5.4 MB
    started = time.perf_counter()
    with pytest.raises(AudioError, match="holds Ogg pages of .* bytes on average, far smaller than any encoder writes"):
        read_audio(tmp_path / "tiny.ogg")
    assert time.perf_counter() - started < 5  # 4,097 pages checked of 200,000 (a generous bound: no timing claim)


def test_an_ogg_file_behind_an_id3_tag_is_refused_without_libsndfiles_search(tmp_path, monkeypatch):
    """libsndfile cannot read one ("embedding not supported"), and said so only after searching
    the whole file for its last page: minutes for a crafted GiB, on the thread that answers
    every client (the request's check) and in the job."""
    from stepfoley.engine.input_files import check_request_paths
    from stepfoley.request import parse_request
    from test_bridge_kit import make_request
    from test_request import capabilities

    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)
    (tmp_path / "tagged.ogg").write_bytes(tag + ogg_bytes())
    opened = []
    real_info = soundfile.info
    monkeypatch.setattr(soundfile, "info", lambda file, *a, **k: opened.append(file) or real_info(file, *a, **k))
    with pytest.raises(AudioError, match="'.*tagged.ogg' has an ID3 tag in front of its audio, which only MP3 and"):
        read_audio(tmp_path / "tagged.ogg")
    check_request_paths(parse_request(make_request(tmp_path, existing_mix=str(tmp_path / "tagged.ogg")),
                                      capabilities()))
    assert opened == []


# --- the containers libsndfile is let open (engine.audio_formats) ------------------------------


def svx_of_empty_chunks(chunks: int) -> bytes:
    """An Amiga 8SVX header and `chunks` empty chunks: past 8,100 of them libsndfile never returned."""
    body = b"8SVX" + b"VHDR" + (20).to_bytes(4, "big") + bytes(12) + (8000).to_bytes(2, "big") + bytes(6)
    body += b"ANNO" + bytes(4) + (b"ABCD" + bytes(4)) * chunks + b"BODY" + (4).to_bytes(4, "big") + bytes(4)
    return b"FORM" + len(body).to_bytes(4, "big") + body


def test_a_format_libsndfile_guesses_but_no_daw_bounces_is_refused_unopened(tmp_path, monkeypatch):
    """An 8SVX file of 8,200 empty chunks kept libsndfile looping for ever (on the thread that
    answers every client, through the request's header check); a MIDI sample dump printed two
    lines for each packet. Only WAV, RF64, Wave64, AIFF, FLAC, Ogg, CAF (and MP3, FFmpeg's) are opened."""
    (tmp_path / "loop.8svx").write_bytes(svx_of_empty_chunks(8_200))
    soundfile.write(tmp_path / "voice.au", noise(1, 800).T, 8000, format="AU")
    assert_refused_unopened(tmp_path, monkeypatch, ("loop.8svx", "voice.au"),
                            r"is not in a format StepFoley reads \(WAV, AIFF, FLAC, ")


def assert_refused_unopened(folder, monkeypatch, names, words):
    """Each file is refused with `words` by the job's read and left to the job by the request's
    check (which answers every client), neither opening it with libsndfile."""
    from stepfoley.engine.input_files import check_request_paths
    from stepfoley.request import parse_request
    from test_bridge_kit import make_request
    from test_request import capabilities

    opened = []
    monkeypatch.setattr(soundfile, "info", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(soundfile, "SoundFile", lambda *a, **k: opened.append(a))
    for name in names:
        with pytest.raises(AudioError, match=f"'.*{name}' {words}"):
            read_audio(folder / name)
        check_request_paths(parse_request(make_request(folder, existing_mix=str(folder / name)), capabilities()))
    assert opened == []


@pytest.mark.parametrize("container, subtype", [("WAV", "PCM_16"), ("RF64", "PCM_24"), ("W64", "FLOAT"),
                                                ("AIFF", "PCM_16"), ("FLAC", "PCM_16"), ("CAF", "ALAC_16"),
                                                ("OGG", "OPUS")])
def test_the_containers_a_daw_bounces_are_read(tmp_path, container, subtype):
    path = tmp_path / f"bounce.{container.lower()}"
    soundfile.write(path, noise(2, 48000).T, 48000, format=container, subtype=subtype)
    samples, rate = read_audio(path)
    assert rate == 48000 and samples.shape[0] == 2 and abs(samples.shape[1] - 48000) < 1000


def caf_with_chunk(kind: bytes, size: int) -> bytes:
    desc = b"desc" + (32).to_bytes(8, "big") + bytes(32)
    return b"caff" + (1).to_bytes(2, "big") + bytes(2) + desc + kind + size.to_bytes(8, "big") + bytes(size) \
        + b"data" + (-1).to_bytes(8, "big", signed=True) + bytes(4)


def flac_with_blocks(count: int, kind: int = 1, size: int = 0) -> bytes:
    info = bytes([0]) + (34).to_bytes(3, "big") + bytes(34)
    return b"fLaC" + info + (bytes([kind]) + size.to_bytes(3, "big") + bytes(size)) * count \
        + bytes([0x80 | 1]) + bytes(3)


def test_chunks_and_blocks_libsndfile_decodes_whole_are_bounded_before_it_opens_them(tmp_path):
    """A CAF `info` chunk cost 0.09 s a MiB on the answering thread, a `pakt` table 5 MiB of
    memory a MiB; millions of empty FLAC metadata blocks, 20 ms a MiB."""
    cases = {"info.caf": (caf_with_chunk(b"info", 70_000), "holds a info chunk of 70,000 bytes"),
             "pakt.caf": (caf_with_chunk(b"pakt", 1_100_000), "holds a pakt chunk of 1,100,000 bytes"),
             "blocks.flac": (flac_with_blocks(200), "holds over 128 metadata blocks"),
             "tags.flac": (flac_with_blocks(2, kind=4, size=600_000), "holds over 1 MiB of tags")}
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioError, match=f"'.*{name}' {words}"):
            read_audio(tmp_path / name)
    # within the bounds, the file is libsndfile's to judge (these hold no audio it can read)
    for name, content in (("small.caf", caf_with_chunk(b"info", 100)), ("few.flac", flac_with_blocks(5))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AudioError, match=f"Cannot read audio file '.*{name}'"):
            read_audio(tmp_path / name)


def test_nothing_behind_an_id3_tag_but_mp3_or_flac_reaches_libsndfile(tmp_path, monkeypatch):
    """libsndfile skips an ID3 tag by its own reckoning (no footer, sizes masked): a v2.4 tag
    with a footer flag, a second tag header where the footer would be and a WAV header behind
    it showed a WAV to a walk that counts the footer, and libsndfile the 8SVX file of empty
    chunks behind them (for ever, on the answering thread too). A WAV behind a tag lost the
    tag's length of audio at its end in libsndfile."""
    def syncsafe(n):
        return bytes([(n >> 21) & 127, (n >> 14) & 127, (n >> 7) & 127, n & 127])

    footer_tag = b"ID3\x04\x00\x10" + syncsafe(20) + bytes(20)
    wav_header = b"RIFF" + (36).to_bytes(4, "little") + b"WAVE" + b"fmt " + bytes(84)
    (tmp_path / "bypass.wav").write_bytes(footer_tag + b"ID3\x04\x00\x00" + syncsafe(100) + wav_header
                                          + svx_of_empty_chunks(8_200))
    plain = tmp_path / "plain.wav"
    soundfile.write(plain, noise(1, 4800).T, 48000)
    (tmp_path / "tagged.wav").write_bytes(b"ID3\x04\x00\x00" + syncsafe(30) + bytes(30) + plain.read_bytes())
    assert_refused_unopened(tmp_path, monkeypatch, ("bypass.wav", "tagged.wav"),
                            "has an ID3 tag in front of its audio, which only MP3 and FLAC")


def test_a_caf_chunk_after_the_audio_is_bounded_as_one_before_it(tmp_path):
    """libsndfile reads on past a sized `data` chunk: a 200 MB `info` chunk after the audio
    took 18 s and 243 MB on the answering thread."""
    desc = b"desc" + (32).to_bytes(8, "big") + bytes(32)
    after = b"caff" + (1).to_bytes(2, "big") + bytes(2) + desc + b"data" + (8).to_bytes(8, "big") + bytes(8) \
        + b"info" + (70_000).to_bytes(8, "big") + bytes(70_000)
    (tmp_path / "after.caf").write_bytes(after)
    with pytest.raises(AudioError, match="'.*after.caf' holds a info chunk of 70,000 bytes"):
        read_audio(tmp_path / "after.caf")


def test_a_caf_chunk_size_that_is_negative_or_past_the_end_is_left_to_libsndfile(tmp_path):
    """The walk stops at a size it cannot follow (no huge seek, no loop); libsndfile refuses the file."""
    desc = b"desc" + (32).to_bytes(8, "big") + bytes(32)
    for name, size in (("negative.caf", -5), ("past.caf", 2**62)):
        (tmp_path / name).write_bytes(b"caff" + (1).to_bytes(2, "big") + bytes(2) + desc + b"free"
                                      + size.to_bytes(8, "big", signed=True) + bytes(16))
        with open(tmp_path / name, "rb") as file:
            assert audio_formats.container_problem(file) is None and file.tell() == 0
        with pytest.raises(AudioError, match=f"Cannot read audio file '.*{name}'"):
            read_audio(tmp_path / name)


@pytest.mark.skipif(os.name == "nt", reason="libsndfile is handed the descriptor on POSIX only")
def test_libsndfile_reads_by_descriptor_so_a_crafted_seek_prints_no_traceback(tmp_path, monkeypatch):
    """An RF64 file whose ds64 chunk gives a data size of 2^63 made libsndfile seek past any
    offset; through a file object the seek raised inside soundfile's callback and Python printed
    "Exception ignored from cffi callback" and a traceback at every open, on the engine's output."""
    from stepfoley.engine.input_files import check_request_paths
    from stepfoley.request import parse_request
    from test_bridge_kit import make_request
    from test_request import capabilities

    ds64 = struct.pack("<QQQI", 0, 2**63 - 5, 0, 0)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"ds64" + struct.pack("<I", len(ds64)) + ds64 + b"fmt " + struct.pack("<I", len(fmt)) + fmt \
        + b"data" + struct.pack("<I", 0xFFFFFFFF) + struct.pack("<50h", *range(50))
    (tmp_path / "crafted.wav").write_bytes(b"RF64" + struct.pack("<I", 0xFFFFFFFF) + body)
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    samples, rate = read_audio(tmp_path / "crafted.wav")
    check_request_paths(parse_request(make_request(tmp_path, existing_mix=str(tmp_path / "crafted.wav")),
                                      capabilities()))
    assert ignored == []
    assert rate == 16000 and np.array_equal(samples[0] * 32768, np.arange(50))


@pytest.mark.parametrize("container, subtype, rate", [("OGG", "VORBIS", 44100), ("OGG", "VORBIS", 22050),
                                                      ("FLAC", "PCM_16", 44100), ("WAV", "PCM_24", 48000)])
def test_audio_read_from_a_start_is_the_full_read_from_there(tmp_path, container, subtype, rate):
    """A take is read from take_offset. Seeking into a Vorbis file's last page, libsndfile landed
    48 samples late at 44.1 kHz (the kept part of an extension came back shifted)."""
    path = tmp_path / f"take.{container.lower()}"
    soundfile.write(path, noise(1, 30 * rate).T, rate, format=container, subtype=subtype)
    whole, _, _ = audio_io.read_audio_and_subtype(path)
    for start in (29.6, 29.95, 12.0):
        part, _, _ = audio_io.read_audio_and_subtype(path, max_seconds=0.02, start_seconds=start)
        first = round(start * rate)
        assert np.array_equal(part, whole[:, first:first + part.shape[1]]) and part.shape[1] > 0, start
