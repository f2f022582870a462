"""engine.mpeg_audio: MP3 inputs read through FFmpeg, as libsndfile decodes them, without the
line per damaged frame that libsndfile's mpg123 writes to the engine's standard error."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from stepfoley.engine import audio_io, mpeg_audio
from stepfoley.engine.errors import AudioError

RATE = 44100

pytestmark = pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")


def write_mp3(path, seconds=6.0, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    samples = np.stack([tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)], axis=1)
    sf.write(path, samples.astype(np.float32), RATE, format="MP3")
    return path


def frame_offsets(path) -> list[int]:
    import av

    with av.open(str(path), format="mp3") as container:
        return [p.pos for p in container.demux(container.streams.audio[0]) if p.size]


def damaged_mp3(tmp_path):
    """An MP3 whose Xing header claims an absurd length and with two frames' headers zeroed:
    mpg123 writes a warning and three notes to stderr for it."""
    path = write_mp3(tmp_path / "good.mp3")
    data = bytearray(path.read_bytes())
    xing = data.find(b"Xing") if b"Xing" in data else data.find(b"Info")
    data[xing + 8:xing + 12] = b"\xff\xff\xff\xff"
    for k in (100, 101):
        start = frame_offsets(path)[k]
        data[start:start + 8] = bytes(8)
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    return damaged


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, timeout=120)


def test_the_sniff_names_mpeg_audio_and_nothing_libsndfile_reads_otherwise():
    assert mpeg_audio.is_mpeg_audio(b"ID3\x04") and mpeg_audio.is_mpeg_audio(b"\xff\xfb\x90")
    assert mpeg_audio.is_mpeg_audio(b"\xff\xe3\x18")  # MPEG 2.5
    for head in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"\xff\x00\x00", b"", b"I"):
        assert not mpeg_audio.is_mpeg_audio(head)


def test_an_mp3_reads_as_libsndfile_decodes_it(tmp_path):
    path = write_mp3(tmp_path / "steps.mp3")
    theirs, their_rate = sf.read(path, dtype="float32", always_2d=True)
    ours, rate = audio_io.read_audio(path)
    assert rate == their_rate == RATE and ours.shape == theirs.T.shape  # the encoder's delay taken out alike
    np.testing.assert_allclose(ours, theirs.T, atol=1e-4)
    mono, _ = audio_io.read_audio(path, mono=True, max_seconds=2.5)
    assert mono.shape == (1, int(2.5 * RATE))
    np.testing.assert_allclose(mono[0], theirs[:int(2.5 * RATE)].mean(axis=1), atol=1e-4)


def test_a_damaged_mp3_is_read_without_a_word_on_stderr(tmp_path):
    """The engine's standard error is its log's: mpg123 wrote a line there per damaged header."""
    path = damaged_mp3(tmp_path)
    code = ("import sys; from stepfoley.engine import audio_io; "
            "x, r = audio_io.read_input_audio(sys.argv[1], 10.0); print(x.shape[1], r)")
    done = run_python(code, path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    frames, rate = map(int, done.stdout.split())
    with sf.SoundFile(path) as sound:  # mpg123's decode, in this process: its words are not checked here
        theirs = sound.read(10 * RATE, dtype="float32")  # its header claims 4e12 frames
    assert rate == RATE and frames == len(theirs)  # the refused frame kept as silence, as mpg123 does


def test_an_mp3_over_the_rate_limit_is_refused_before_decoding(tmp_path):
    path = write_mp3(tmp_path / "wind.mp3", seconds=1.0)
    with pytest.raises(AudioError, match="is at 44100 Hz; at most 32000 Hz is read"):
        audio_io.read_audio(path, max_rate=32000)


def test_a_file_that_only_looks_like_mpeg_audio_is_refused_in_words(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_bytes(b"ID3" + bytes(64) + b"not audio at all" * 8)
    with pytest.raises(AudioError, match="Cannot read audio file .*export it again as WAV"):
        audio_io.read_audio(path)


def test_mp3_files_joined_end_to_end_keep_the_first_ones_channels(tmp_path):
    """A stereo file followed by a mono one (a crafted or naively joined stream) comes back as
    one stereo recording, the mono part on both channels; its length is both files'."""
    stereo, mono = write_mp3(tmp_path / "s.mp3", 1.0, 2), write_mp3(tmp_path / "m.mp3", 1.0, 1, seed=1)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(stereo.read_bytes() + mono.read_bytes())
    samples, rate = audio_io.read_audio(joined)
    assert rate == RATE and samples.shape[0] == 2 and samples.shape[1] >= 2 * RATE
    np.testing.assert_array_equal(samples[0, -RATE // 2:], samples[1, -RATE // 2:])  # the mono part


def test_an_mp3_whose_rate_changes_midway_is_refused_in_words(tmp_path):
    first = write_mp3(tmp_path / "a.mp3", 1.0, 1)
    data, _ = sf.read(first, dtype="float32")
    other = tmp_path / "b.mp3"
    sf.write(other, data, 32000, format="MP3")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + other.read_bytes())
    with pytest.raises(AudioError, match="its sample rate changes midway"):
        audio_io.read_audio(joined)
