"""engine.mpeg_audio: MP3 inputs read through FFmpeg, as libsndfile decodes them, without the
line per damaged frame that libsndfile's mpg123 writes to the engine's standard error."""

import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stepfoley.engine import audio_io, mpeg_audio
from stepfoley.engine.errors import AudioError

RATE = 44100
HERE = Path(__file__).resolve().parent

needs_mp3 = pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile cannot write MP3")
# an empty ID3v2.3 tag: its 10-byte header, a size of 10 (syncsafe), 10 bytes of padding
ID3_TAG = b"ID3\x03\x00\x00\x00\x00\x00\x0a" + bytes(10)
# an MPEG-2 layer III frame header: 24 kHz mono, 8 kbit/s, frames of 24 bytes and 576 samples
SMALL_FRAME_HEADER = bytes([0xFF, 0xF3, 0x14, 0xC0])


def write_mp3(path, seconds=6.0, channels=2, seed=0, rate=RATE):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    samples = np.stack([tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)], axis=1)
    sf.write(path, samples.astype(np.float32), rate, format="MP3")
    return path


def frame_offsets(path) -> list[int]:
    import av

    with av.open(str(path), format="mp3") as container:
        return [p.pos for p in container.demux(container.streams.audio[0]) if p.size]


def damaged_mp3(tmp_path, frames=(100, 101), how="header"):
    """An MP3 whose Xing header claims an absurd length (frames and bytes), with the given frames
    damaged: their header zeroed, or their side information filled with 0xFF (a frame the
    decoder refuses)."""
    path = write_mp3(tmp_path / "good.mp3")
    data = bytearray(path.read_bytes())
    xing = data.find(b"Xing") if b"Xing" in data else data.find(b"Info")
    data[xing + 8:xing + 16] = b"\xff\xff\xff\xff\x00\x00\x00\x10"
    offsets = frame_offsets(path)
    for k in frames:
        if how == "header":
            data[offsets[k]:offsets[k] + 8] = bytes(8)
        else:
            data[offsets[k] + 4:offsets[k] + 40] = b"\xff" * 36
    damaged = tmp_path / f"damaged-{how}-{'-'.join(map(str, frames))}.mp3"
    damaged.write_bytes(bytes(data))
    return damaged


def run_python(code: str, *args) -> subprocess.CompletedProcess:
    # -W ignore: the engine's standard error is what is checked, not a library's import warnings
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code, *map(str, args)], capture_output=True,
                          timeout=120, env=env)


def test_the_sniff_names_mpeg_audio_and_nothing_libsndfile_reads_otherwise():
    def sniff(data: bytes) -> bool:
        file = io.BytesIO(data + bytes(64))
        file.seek(0)
        found = mpeg_audio.is_mpeg_audio(file)
        assert file.tell() == 0  # left where it was
        return found

    assert sniff(b"\xff\xfb\x90\x00") and sniff(b"\xff\xe3\x18\x00") and sniff(SMALL_FRAME_HEADER)  # MPEG 1, 2.5, 2
    assert sniff(ID3_TAG + b"\xff\xfb\x90\x00") and sniff(ID3_TAG + ID3_TAG + b"\xff\xfb\x90\x00")
    for data in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"\xff\x00\x00", b"", b"I"):
        assert not sniff(data)
    for behind_a_tag in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM"):  # libsndfile reads these itself
        assert not sniff(ID3_TAG + behind_a_tag) and not sniff(ID3_TAG + ID3_TAG + behind_a_tag)
    with_footer = b"ID3\x04\x00\x10\x00\x00\x00\x02" + bytes(2) + b"3DI\x04\x00\x10\x00\x00\x00\x02"  # v2.4
    assert not sniff(with_footer + b"RIFF") and sniff(with_footer + b"\xff\xfb\x90\x00")
    # anything else after "ID3" is MP3's: padding after the tag, a size that is not syncsafe
    # (an old iTunes bug), a tag longer than the file, a bare "ID3"
    assert sniff(ID3_TAG + bytes(1) + b"\xff\xfb\x90\x00") and sniff(b"ID3\x03\x00\x00\x00\x00\x00\x80")
    assert sniff(b"ID3\x03\x00\x00\x7f\x7f\x7f\x7f") and sniff(b"ID3")


def test_a_flac_behind_an_id3_tag_is_still_read_by_libsndfile(tmp_path):
    samples = (0.3 * np.sin(np.arange(48000) / 10)).astype(np.float32)
    plain = tmp_path / "plain.flac"
    sf.write(plain, samples, 48000, format="FLAC")
    tagged = tmp_path / "tagged.flac"
    tagged.write_bytes(ID3_TAG + plain.read_bytes())
    ours, rate = audio_io.read_audio(tagged)
    assert rate == 48000 and ours.shape[1] == 48_000
    np.testing.assert_allclose(ours[0], samples, atol=1e-4)


@needs_mp3
def test_an_mp3_reads_as_libsndfile_decodes_it(tmp_path):
    path = write_mp3(tmp_path / "steps.mp3")
    theirs, their_rate = sf.read(path, dtype="float32", always_2d=True)
    ours, rate = audio_io.read_audio(path)
    assert rate == their_rate == RATE and ours.shape == theirs.T.shape  # the encoder's delay taken out alike
    np.testing.assert_allclose(ours, theirs.T, atol=1e-4)
    mono, _ = audio_io.read_audio(path, mono=True, max_seconds=2.5)
    assert mono.shape == (1, int(2.5 * RATE))
    np.testing.assert_allclose(mono[0], theirs[:int(2.5 * RATE)].mean(axis=1), atol=1e-4)


@needs_mp3
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
    assert rate == RATE and frames == len(theirs)


@needs_mp3
def test_an_mp3_behind_a_malformed_tag_is_read_silently_too(tmp_path):
    """A tag size that is not syncsafe (an old iTunes bug) sent the file to libsndfile, whose
    mpg123 wrote "Bad tag length" and a line per damaged frame after it."""
    path = damaged_mp3(tmp_path)
    tagged = tmp_path / "itunes.mp3"
    tagged.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x80" + bytes(128) + path.read_bytes())
    code = ("import sys; from stepfoley.engine import audio_io; "
            "x, r = audio_io.read_input_audio(sys.argv[1], 10.0); print(x.shape[1], r)")
    done = run_python(code, tagged)
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    assert done.stdout.split()[1] == str(RATE).encode()


@needs_mp3
def test_the_header_check_before_accepting_a_job_is_silent_too(tmp_path):
    """check_request_paths reads each audio input's header before /accepted; through
    libsndfile that wrote mpg123's warning about the damaged length to stderr."""
    path = damaged_mp3(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    request = {"region": {"video": "/v.mp4", "file_in": 2, "file_out": 6}, "caption": "rain",
               "output_dir": str(out), "existing_mix": str(path)}
    code = ("import json, sys; from stepfoley.request import parse_request; "
            "from stepfoley.engine.input_files import check_request_paths; from test_request import capabilities; "
            "r = check_request_paths(parse_request(json.loads(sys.argv[1]), capabilities())); print(r.existing_mix)")
    done = run_python(code, json.dumps(request))
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"" and done.stdout.decode().strip() == str(path)


@needs_mp3
@pytest.mark.parametrize("frame", [0, 1, 50])
def test_a_frame_the_decoder_refuses_keeps_the_time_of_what_follows(tmp_path, frame):
    """Measured from the stream's start, not from the first frame that decodes: a refused first
    frame shifted everything after it by 47 samples, a refused second one by 1,152."""
    path = damaged_mp3(tmp_path, frames=(frame,), how="side information")
    theirs, _ = sf.read(path, dtype="float32", always_2d=True, frames=10 * RATE)
    ours, _ = audio_io.read_audio(path)
    assert ours.shape == theirs.T.shape
    np.testing.assert_allclose(ours[:, 2 * RATE:], theirs.T[:, 2 * RATE:], atol=1e-4)


@needs_mp3
@pytest.mark.parametrize("header", ["stated", "damaged"])
def test_frames_the_decoder_refuses_at_the_end_are_silence_as_long_as_libsndfiles(tmp_path, header):
    """The file's last two frames refused: they were lost, so the audio came back 2,304 samples
    short (a take refused as too short for what it keeps). With its length stated in the header
    (the encoder's padding taken out), up to that; with that header damaged, to the frames' end."""
    if header == "stated":
        path = write_mp3(tmp_path / "good.mp3")
        last = len(frame_offsets(path)) - 1
        data = bytearray(path.read_bytes())
        for k in (last - 1, last):
            data[frame_offsets(path)[k] + 4:frame_offsets(path)[k] + 40] = b"\xff" * 36
        path.write_bytes(bytes(data))
    else:
        last = len(frame_offsets(write_mp3(tmp_path / "good.mp3"))) - 1
        path = damaged_mp3(tmp_path, frames=(last - 1, last), how="side information")
    theirs, _ = sf.read(path, dtype="float32", always_2d=True, frames=10 * RATE)
    ours, _ = audio_io.read_audio(path)
    assert ours.shape == theirs.T.shape
    assert not ours[:, -1152:].any()
    np.testing.assert_allclose(ours[:, 2 * RATE:-3 * 1152], theirs.T[:, 2 * RATE:-3 * 1152], atol=1e-4)


def test_a_small_file_of_refused_frames_is_not_decoded_past_what_is_asked(tmp_path):
    """2.4 MB of frames the decoder refuses between good ones claim 40 minutes of silence: the
    gap was allocated whole (hundreds of MB, 96 GiB a channel for a 1 GiB file) whatever was asked."""
    good, refused = SMALL_FRAME_HEADER + bytes(20), SMALL_FRAME_HEADER + b"\xff" * 20
    path = tmp_path / "crafted.mp3"
    path.write_bytes(good * 3 + refused * 100_000 + good * 3)
    tracemalloc.start()
    try:
        samples, rate = audio_io.read_audio(path, max_seconds=1.0, mono=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rate == 24000 and samples.shape == (1, 24000)  # the refused frames as silence, up to what was asked
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB"


@needs_mp3
def test_the_header_gives_rate_and_channels(tmp_path):
    path = write_mp3(tmp_path / "rain.mp3", seconds=3.0, channels=1)
    with open(path, "rb") as file:
        assert mpeg_audio.header(file) == (RATE, 1)


@needs_mp3
def test_an_mp3_over_the_rate_limit_is_refused_before_decoding(tmp_path):
    path = write_mp3(tmp_path / "wind.mp3", seconds=1.0)
    with pytest.raises(AudioError, match="is at 44100 Hz; at most 32000 Hz is read"):
        audio_io.read_audio(path, max_rate=32000)


def test_a_file_that_only_looks_like_mpeg_audio_is_refused_in_words(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_bytes(b"\xff\xfb" + bytes(64) + b"not audio at all" * 8)
    with pytest.raises(AudioError, match="Cannot read audio file .*export it again as WAV") as refused:
        audio_io.read_audio(path)
    assert "Errno" not in str(refused.value) and str(refused.value).count(str(path)) == 1


@needs_mp3
def test_mp3_files_joined_end_to_end_keep_the_first_ones_channels(tmp_path):
    """A stereo file followed by a mono one (a crafted or naively joined stream) comes back as
    one stereo recording, the mono part on both channels; its length is both files'."""
    stereo, mono = write_mp3(tmp_path / "s.mp3", 1.0, 2), write_mp3(tmp_path / "m.mp3", 1.0, 1, seed=1)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(stereo.read_bytes() + mono.read_bytes())
    samples, rate = audio_io.read_audio(joined)
    assert rate == RATE and samples.shape[0] == 2 and samples.shape[1] >= 2 * RATE
    np.testing.assert_array_equal(samples[0, -RATE // 2:], samples[1, -RATE // 2:])  # the mono part


@needs_mp3
def test_an_mp3_whose_rate_changes_midway_is_refused_in_words(tmp_path):
    first = write_mp3(tmp_path / "a.mp3", 1.0, 1)
    data, _ = sf.read(first, dtype="float32")
    other = tmp_path / "b.mp3"
    sf.write(other, data, 32000, format="MP3")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + other.read_bytes())
    with pytest.raises(AudioError, match="its sample rate changes midway"):
        audio_io.read_audio(joined)


@needs_mp3
def test_without_a_length_an_mp3_past_the_bound_is_refused_not_cut(tmp_path, monkeypatch):
    path = write_mp3(tmp_path / "long.mp3", seconds=3.0, channels=1)
    monkeypatch.setattr(mpeg_audio, "MAX_DECODED_SECONDS", 1.0)  # 2 hours in use
    with pytest.raises(AudioError, match="it holds more than 0.000277778 hours of audio"):
        audio_io.read_audio(path)
    samples, _ = audio_io.read_audio(path, max_seconds=0.5)  # a length asked for is read as ever
    assert samples.shape == (1, RATE // 2)
    # past the bound too (its caller bounds it): a take read from an offset past 2 hours came
    # back empty, "ends before take_offset"
    samples, _, _ = audio_io.read_audio_and_subtype(path, start_seconds=1.5, max_seconds=1.0)
    whole, _ = audio_io.read_audio(path, max_seconds=3.0)
    assert whole.shape == (1, 3 * RATE)
    np.testing.assert_array_equal(samples, whole[:, round(1.5 * RATE):round(2.5 * RATE)])


class CountingReader(io.RawIOBase):
    """A file's bytes, counting how many are read."""

    def __init__(self, data: bytes):
        super().__init__()
        self.inner, self.read_bytes = io.BytesIO(data), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        data = self.inner.read(len(buffer))
        buffer[:len(data)] = data
        self.read_bytes += len(data)
        return len(data)

    def seek(self, offset, whence=io.SEEK_SET):
        return self.inner.seek(offset, whence)

    def tell(self):
        return self.inner.tell()


def test_the_header_is_looked_for_near_the_start_only(tmp_path):
    """A frame sync followed by nothing a decoder can use (a cut download, a placeholder): FFmpeg
    searched the whole file for a frame, 11 s a GiB, on the engine's thread that answers every
    client before a job is accepted. Only HEADER_SEARCH_BYTES past the tags are searched now."""
    junk = CountingReader(SMALL_FRAME_HEADER[:2] + bytes(32 * 2**20))
    try:
        assert mpeg_audio.header(junk) == (0, 0)  # nothing to check: the job reads it and says so
    except mpeg_audio.MpegAudioError:
        pass
    assert junk.read_bytes <= 2 * mpeg_audio.HEADER_SEARCH_BYTES  # FFmpeg reads its probe twice
    # a real file behind a tag as long as the search is still found: the search starts after the tags
    size = mpeg_audio.HEADER_SEARCH_BYTES + 1000
    tag = b"ID3\x03\x00\x00" + bytes([(size >> s) & 0x7F for s in (21, 14, 7, 0)]) + bytes(size)
    tagged = CountingReader(tag + write_mp3(tmp_path / "tone.mp3", seconds=1.0, channels=1).read_bytes())
    assert mpeg_audio.header(tagged) == (RATE, 1)
    assert tagged.read_bytes < mpeg_audio.HEADER_SEARCH_BYTES
