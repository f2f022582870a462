"""engine.video on the files a sound designer brings that are not a tidy MP4: MPEG-TS whose
seeks land between keyframes, a picture that starts after the sound or ends before it, an audio
file with cover art, files that do not state their duration. Real files written with PyAV,
each frame's index painted in as a brightness level (test_video's helpers)."""

import os
import re
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import stepfoley.engine.video as video
from stepfoley.engine.errors import OutOfMemory, VideoError
from stepfoley.engine.pipeline import PictureFocus
from stepfoley.engine.video import check_video_region, probe, read_region
from test_video import TICKS, cfr_pts, decoded_index, frame_image, has_encoder, shown_at, write_video

ROOT = Path(__file__).resolve().parents[1]


def expected(pts_ms: list[int], start: float, end: float, fps: int = 25) -> list[int]:
    return [shown_at(pts_ms, start + k / fps) for k in range(round((end - start) * fps))]


def mux_frames(container, stream, frames) -> None:
    """Encode the frames into the stream, then flush it."""
    for frame in frames:
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def picture_frame(i: int, pts: int, time_base: Fraction | None = Fraction(1, TICKS)):
    frame = av.VideoFrame.from_ndarray(frame_image(i, 64, 48), format="rgb24")
    frame.pts = pts
    if time_base is not None:
        frame.time_base = time_base
    return frame


def add_silence(container, stream, seconds: float, rate: int = 16000) -> None:
    block = 1024
    for first in range(0, int(seconds * rate), block):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, block), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, first
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_with_sound(path: Path, pts_ms: list[int], sound_s: float) -> Path:
    """A 64x48 H.264 picture at pts_ms and an AAC track of silence from 0 to sound_s."""
    with av.open(str(path), "w") as container:
        picture = container.add_stream("libx264", rate=25)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        picture.time_base = picture.codec_context.time_base = Fraction(1, TICKS)
        sound = container.add_stream("aac", rate=16000)
        mux_frames(container, picture, (picture_frame(i, pts) for i, pts in enumerate(pts_ms)))
        add_silence(container, sound, sound_s)
    return path


class CountingDecodes:
    """Stands in for video._open's container and counts the frames decoded from it."""

    def __init__(self, opened, counter: list[int]):
        self.opened, self.counter = opened, counter

    def __getattr__(self, name):
        return getattr(self.container, name)

    def __enter__(self):
        self.container = self.opened.__enter__()
        return self

    def __exit__(self, *exc):
        return self.opened.__exit__(*exc)

    def decode(self, *streams):
        for frame in self.container.decode(*streams):
            self.counter[0] += 1
            yield frame


# --- 1. MPEG-TS: a seek lands on a frame the decoder drops up to the next keyframe ----------


def test_mpeg_ts_region_in_the_last_keyframe_interval_is_read(tmp_path):
    pts = cfr_pts(100)  # 4 s, keyframes at 0 and 2 s
    path = write_video(tmp_path / "cam.ts", pts, gop=50)
    assert decoded_index(read_region(path, 3.0, 3.4, fps=25, size=16)) == expected(pts, 3.0, 3.4)
    assert decoded_index(read_region(path, 2.2, 2.6, fps=25, size=16)) == expected(pts, 2.2, 2.6)


def test_mpeg_ts_seek_starts_at_the_keyframe_before_the_region_not_at_the_file_start(tmp_path, monkeypatch):
    pts = cfr_pts(100)  # 4 s, a keyframe every second
    path = write_video(tmp_path / "cam.ts", pts, gop=25)
    decoded = [0]
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda p: CountingDecodes(real_open(p), decoded))
    assert decoded_index(read_region(path, 2.2, 2.6, fps=25, size=16)) == expected(pts, 2.2, 2.6)
    # from the keyframe at 2 s: 15 frames (and a few dropped at a missed seek), not the 65 from 0
    assert decoded[0] < 30


def test_mpeg_ts_whose_clock_wraps_is_read_from_its_own_start(tmp_path):
    """MPEG-TS timestamps are 33 bits: a recording that crosses the wrap starts before 0 on the
    clock FFmpeg unwraps. A region near the start that no seek lands before is decoded from
    the file's beginning, not from timestamp 0, which is 2 s into this file."""
    clock = Fraction(1, 90000)
    pts = cfr_pts(100)  # 4 s at 25 fps
    path = tmp_path / "wrap.ts"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = stream.codec_context.time_base = clock
        stream.codec_context.gop_size = 25  # a keyframe every second
        mux_frames(container, stream, [picture_frame(i, 2**33 - 2 * 90000 + ms * 90, clock) for i, ms in enumerate(pts)])
    assert probe(path).duration == pytest.approx(4.0, abs=0.05)
    for start, end in ((0.5, 1.0), (0.0, 0.4), (2.5, 3.0)):
        assert decoded_index(read_region(path, start, end, fps=25, size=16)) == expected(pts, start, end), start


# --- 2. the PyAV this code needs -------------------------------------------------------------


def test_the_declared_pyav_has_the_frame_rotation_the_reader_uses():
    declared = re.search(r'"av>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert declared, "pyproject.toml names no lower bound for av"
    assert tuple(int(part) for part in declared.group(1).split(".")) >= (14, 2)  # VideoFrame.rotation
    assert hasattr(av.VideoFrame, "rotation")


# --- 3. a picture that starts after the sound ------------------------------------------------


def test_a_picture_that_starts_after_the_sound_keeps_its_place_on_the_file_timeline(tmp_path):
    pts = [500 + t for t in cfr_pts(25)]  # the picture from 0.5 s to 1.5 s, the sound from 0
    path = write_with_sound(tmp_path / "late.mp4", pts, sound_s=1.5)
    frames = read_region(path, 0.3, 1.3, fps=25, size=16)
    assert decoded_index(frames) == expected(pts, 0.3, 1.3)  # held first frame until 0.5 s, then 0, 1...
    assert probe(path).duration == pytest.approx(1.5, abs=0.01)


# --- 4. a picture that ends before the sound -------------------------------------------------


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_a_region_after_the_picture_ends_is_refused_though_the_sound_goes_on(tmp_path, suffix):
    path = write_with_sound(tmp_path / f"short.{suffix}", cfr_pts(25), sound_s=3.0)  # 1 s of picture
    assert probe(path).duration == pytest.approx(1.0, abs=0.01)
    with pytest.raises(VideoError, match=rf"2\.000-2\.500 s runs past the end of short\.{suffix} \(1\.0\d\d s\)"):
        read_region(path, 2.0, 2.5, fps=25, size=16)
    with pytest.raises(VideoError, match=r"runs past the end"):
        check_video_region(path, 0.5, 1.5)


# --- 5. an audio file with cover art ---------------------------------------------------------


def test_an_audio_file_with_cover_art_is_audio_only(tmp_path):
    path = tmp_path / "song.mp3"
    with av.open(str(path), "w", format="mp3") as container:
        sound = container.add_stream("libmp3lame", rate=16000)
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
        picture = picture.reformat(format="yuvj420p")
        picture.pts = 0
        for packet in list(cover.encode(picture)) + list(cover.encode()):
            container.mux(packet)
        add_silence(container, sound, 3.0)
    assert probe(path).has_video is False
    for check in (lambda: check_video_region(path, 1.0, 2.0), lambda: read_region(path, 0.0, 1.0, 25, 16),
                  lambda: read_region(path, 1.0, 2.0, 25, 16)):
        with pytest.raises(VideoError, match=r"song\.mp3 has no picture"):
            check()


def test_a_still_image_stream_not_marked_as_cover_art_is_not_the_picture(tmp_path):
    """A Matroska file whose first video stream is a one-frame MJPEG (a poster frame, unmarked)
    and whose second is the film: the film is read."""
    path = tmp_path / "poster.mkv"
    pts = cfr_pts(25)
    with av.open(str(path), "w") as container:
        still = container.add_stream("mjpeg", rate=1)
        still.width, still.height, still.pix_fmt = 32, 32, "yuvj420p"
        picture = container.add_stream("libx264", rate=25)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        picture.time_base = picture.codec_context.time_base = Fraction(1, TICKS)
        poster = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")
        poster = poster.reformat(format="yuvj420p")
        poster.pts = 0
        mux_frames(container, still, [poster])
        mux_frames(container, picture, (picture_frame(i, p) for i, p in enumerate(pts)))
    assert probe(path).has_video
    assert decoded_index(read_region(path, 0.2, 0.8, fps=25, size=16)) == expected(pts, 0.2, 0.8)


# --- 6. files that do not state their duration -----------------------------------------------


class Unseekable:
    """A write-only file the muxer cannot go back into, as a browser's MediaRecorder writes:
    the WebM gets no duration in its header."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        return self.handle.write(data)

    def seekable(self):
        return False


def write_unsized_webm(path: Path, pts_ms: list[int]) -> Path:
    with open(path, "wb") as handle, av.open(Unseekable(handle), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        mux_frames(container, stream, (picture_frame(i, pts) for i, pts in enumerate(pts_ms)))
    return path


def write_raw_h264(path: Path, frames: int) -> Path:
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        mux_frames(container, stream, (picture_frame(i, i, time_base=None) for i in range(frames)))
    return path


def test_a_webm_without_a_duration_is_read_and_its_end_found_while_decoding(tmp_path):
    pts = cfr_pts(50)  # 2 s
    path = write_unsized_webm(tmp_path / "recording.webm", pts)
    assert probe(path).duration is None
    check_video_region(path, 0.5, 1.5)  # nothing to check the end against before decoding
    assert decoded_index(read_region(path, 0.5, 1.0, fps=25, size=16)) == expected(pts, 0.5, 1.0)
    # a region that starts on the picture keeps its last frame on screen to the end
    assert decoded_index(read_region(path, 1.9, 2.3, fps=25, size=16)) == expected(pts, 1.9, 2.3)
    with pytest.raises(VideoError, match=r"starting at 3\.0 s is past the end of the picture of "
                                         r"recording\.webm \(its last frame ends at 2\.0 s\)"):
        read_region(path, 3.0, 3.5, fps=25, size=16)


def test_a_raw_h264_stream_is_read_from_its_beginning(tmp_path):
    path = write_raw_h264(tmp_path / "camera.h264", 50)  # 2 s at 25 fps, no timestamps, no seeking
    pts = cfr_pts(50)
    assert probe(path).duration is None
    assert decoded_index(read_region(path, 1.0, 1.4, fps=25, size=16)) == expected(pts, 1.0, 1.4)
    with pytest.raises(VideoError, match=r"past the end of the picture of camera\.h264"):
        read_region(path, 2.5, 3.0, fps=25, size=16)


# --- files from the review of 2026-12-02 ------------------------------------------------------


def faststart_cut_short(whole, folder):
    """`whole` remuxed as a faststart MP4 (its index first), then cut after 60 % of its bytes,
    as a copy or download that stopped: cut.mp4 in `folder`."""
    with av.open(str(whole)) as source, av.open(str(folder / "fast.mp4"), "w",
                                                 options={"movflags": "faststart"}) as fast:
        stream = fast.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                fast.mux(packet)
    data = (folder / "fast.mp4").read_bytes()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    return cut


def test_a_file_cut_short_is_refused_not_frozen_on_its_last_frame(tmp_path):
    """A faststart MP4 whose copy stopped at 60 %: the header still says 10 s, so the region
    passes the length check, and its last decodable frame would stand in for the rest."""
    whole = write_video(tmp_path / "whole.mp4", cfr_pts(250), gop=25)
    cut = faststart_cut_short(whole, tmp_path)
    assert probe(cut).duration == pytest.approx(10.0, abs=0.05)
    ends = None
    with av.open(str(cut)) as container:
        try:
            for frame in container.decode(video=0):
                ends = float(frame.pts * frame.time_base) + 0.04
        except av.error.InvalidDataError:  # the last packet is cut in half
            pass
    assert 1.0 < ends < 6.0
    with pytest.raises(VideoError, match=rf"cut\.mp4 stops at {ends:.1f} s, though the file says it lasts 10\.0 s"):
        read_region(cut, ends - 0.5, ends + 3.0, 25, 32)  # straddling the point where it stops
    # wholly after it: the time selection is on the picture the file states (it was told to
    # move onto the picture, as if past its end)
    with pytest.raises(VideoError, match=rf"cut\.mp4 stops at {ends:.1f} s, though the file says it lasts 10\.0 s"):
        read_region(cut, ends + 1.0, ends + 3.0, 25, 32)
    # what is there is still read
    assert decoded_index(read_region(cut, 0.0, 1.0, 25, 32)) == expected(cfr_pts(250), 0.0, 1.0)


class _CountingContainer:
    """A container that counts the frames decoded from it."""

    decoded = 0

    def __init__(self, container):
        self._container = container

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            _CountingContainer.decoded += 1
            yield frame


def test_a_region_far_past_where_a_long_file_is_cut_short_is_refused_decoding_little(tmp_path, monkeypatch):
    # seeking 1, 2, 4 ... s back from the region, all past the cut, then decoding the file from
    # its start: a minute for a long 1080p file, here every frame up to the cut
    whole = write_video(tmp_path / "whole.mp4", cfr_pts(1500), gop=25)
    cut = faststart_cut_short(whole, tmp_path)
    opened = av.open
    monkeypatch.setattr(video.av, "open", lambda *args, **kwargs: _CountingContainer(opened(*args, **kwargs)))
    _CountingContainer.decoded = 0
    with pytest.raises(VideoError, match=r"cut\.mp4 stops at \d+\.\d s, though the file says it lasts 60\.0 s"):
        read_region(cut, 55.0, 57.0, 25, 32)
    assert _CountingContainer.decoded < 150, _CountingContainer.decoded  # the cut is near 18 s: 440 frames before it
    assert decoded_index(read_region(cut, 10.0, 11.0, 25, 32)) == expected(cfr_pts(1500), 10.0, 11.0)


def test_a_picture_only_flv_cut_short_is_refused_by_its_containers_length(tmp_path):
    """FLV states no length per stream; with no sound the container's length is the picture's."""
    whole = write_video(tmp_path / "whole.flv", cfr_pts(250), gop=25)
    cut = tmp_path / "cut.flv"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    with pytest.raises(VideoError, match=r"cut\.flv stops at \d\.\d s, though the file says it lasts 10\.\d s"):
        read_region(cut, 4.0, 8.0, 25, 32)


@pytest.mark.skipif(not has_encoder("libx264"), reason="needs libx264")
def test_h264_with_b_frames_in_avi_is_shown_in_order(tmp_path):
    """AVI stores decode-order numbers as timestamps; with B-frames they come out of the
    decoder shuffled (1, 3, 4, 2, ...). Frames are taken in their order, never repeated or
    skipped (FFmpeg's best-effort timestamps)."""
    path = tmp_path / "bframes.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"bf": "2", "g": "30"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        mux_frames(container, stream, (av.VideoFrame.from_ndarray(frame_image(i, 64, 48), format="rgb24")
                                       for i in range(150)))
    with av.open(str(path)) as container:  # the file is the kind this is about
        stamps = [frame.pts for _, frame in zip(range(10), container.decode(video=0))]
    assert stamps != sorted(stamps)
    for start in (0.0, 3.0):
        shown = decoded_index(read_region(path, start, start + 1.0, 25, 32))
        steps = [(b - a) % 16 for a, b in zip(shown, shown[1:])]  # frame codes cycle every 16
        assert steps[3:] == [1] * len(steps[3:]), shown


def test_sound_primed_before_zero_does_not_move_the_picture(tmp_path):
    """Matroska with its sound starting 28 ms before 0 (AAC priming, as FFmpeg writes Opus and
    AAC into WebM/MKV): the picture's frame k is still at k/25 s."""
    path = tmp_path / "primed.mkv"
    with av.open(str(path), "w", format="matroska", options={"avoid_negative_ts": "disabled"}) as container:
        picture = container.add_stream("libx264" if has_encoder("libx264") else "mpeg4", rate=25)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        picture.time_base = picture.codec_context.time_base = Fraction(1, TICKS)
        sound = container.add_stream("aac", rate=16000)
        mux_frames(container, picture, (picture_frame(i, pts) for i, pts in enumerate(cfr_pts(75))))
        for first in range(0, 3 * 16000, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, first
            for packet in sound.encode(frame):
                packet.pts, packet.dts = packet.pts - 448, packet.dts - 448  # 28 ms at 16 kHz
                container.mux(packet)
    with av.open(str(path)) as container:
        assert container.start_time < 0
    assert decoded_index(read_region(path, 1.0, 1.4, 25, 32)) == expected(cfr_pts(75), 1.0, 1.4)


def test_a_tag_in_another_encoding_does_not_make_a_picture_unreadable(tmp_path):
    path = tmp_path / "latin1.mkv"
    with av.open(str(path), "w") as container:
        container.metadata["title"] = "Caf\xe9 scene"
        stream = container.add_stream("libx264" if has_encoder("libx264") else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        mux_frames(container, stream, (av.VideoFrame.from_ndarray(frame_image(i, 64, 48), format="rgb24")
                                       for i in range(50)))
    data = path.read_bytes()
    assert data.count("Caf\xe9".encode("utf-8")) == 1
    path.write_bytes(data.replace("Caf\xe9".encode("utf-8"), b"Caf\xe9 "))  # Latin-1, same length
    assert probe(path).duration == pytest.approx(2.0, abs=0.05)
    assert len(read_region(path, 0.0, 1.0, 25, 32)) == 25


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_video_swapped_for_a_pipe_after_the_check_is_refused_not_waited_on(tmp_path, monkeypatch):
    # Another local user swaps the checked file for a pipe between the check and the open;
    # is_file answering True stands for the file that was there at the check.
    fifo = tmp_path / "film.mp4"
    os.mkfifo(fifo)
    monkeypatch.setattr(Path, "is_file", lambda self: True)
    outcome = []

    def probe_it():
        try:
            probe(fifo)
        except VideoError as e:
            outcome.append(str(e))

    reader = threading.Thread(target=probe_it, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # release the open that waits for a writer, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("opening the video waited for a writer on the pipe: the engine's worker would hang")
    assert outcome == [f"The video {fifo} is not a regular file (a pipe or a device). Point to the film's file."]


def test_a_file_ffmpeg_cannot_read_is_named_by_its_path(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"x" * 1000)
    with pytest.raises(VideoError, match=f"Could not read broken.mp4 as a video .*'{re.escape(str(broken))}'"):
        probe(broken)


# --- files from the review of 2026-12-04 ------------------------------------------------------


def write_one_size(path: Path, width: int, height: int, frames: int = 3) -> Path:
    """A flat H.264 picture of any size: a few kilobytes on disk whatever its width and height."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        planes = np.full((height * 3 // 2, width), 100, np.uint8)  # yuv420p: no RGB conversion to write
        mux_frames(container, stream, (av.VideoFrame.from_ndarray(planes, format="yuv420p") for _ in range(frames)))
    return path


@pytest.mark.skipif(not has_encoder("libx264"), reason="needs libx264")
@pytest.mark.parametrize("name,width,height,words", [
    ("wide.mp4", 9000, 16, r"is 9000x16 pixels, larger than this engine reads \(8K: at most 8192 pixels a "
                           r"side, 8192x4320 in all\)\. Re-export the video at 4K or less"),
    ("tall.mkv", 64, 2000, r"is 64x2000 pixels, more than 10 times as tall as it is wide: .* at 4K or less"),
])
def test_a_picture_past_8k_or_a_thin_strip_is_refused_before_a_frame_is_decoded(tmp_path, monkeypatch, name,
                                                                               width, height, words):
    """A few kilobytes on disk can state a picture whose every frame, turned to RGB and float32
    at full size, costs gigabytes (16000x16000: 5 s and 6 GiB a frame)."""
    path = write_one_size(tmp_path / name, width, height)
    decoded = [0]
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda p: CountingDecodes(real_open(p), decoded))
    for check in (lambda: check_video_region(path, 0.0, 0.1), lambda: read_region(path, 0.0, 0.1, 25, 224, "crop")):
        with pytest.raises(VideoError, match=rf"The picture of {re.escape(name)} {words}"):
            check()
    assert decoded[0] == 0


@pytest.mark.skipif(not has_encoder("libx264"), reason="needs libx264")
def test_8k_is_the_largest_picture_read(tmp_path):
    path = write_one_size(tmp_path / "dci8k.mp4", 8192, 4320, frames=2)
    info = check_video_region(path, 0.0, 0.04)
    assert (info.width, info.height) == (8192, 4320)
    assert read_region(path, 0.0, 0.04, 25, 16).shape == (1, 3, 16, 16)
    for width, height in ((7680, 4320), (4320, 8192), (1000, 100), (100, 1000)):
        video._check_picture_size(Path("ok.mov"), width, height)
    for width, height, words in ((8193, 1000, "larger than"), (1000, 8193, "larger than"),
                                 (8000, 4500, "larger than"), (1001, 100, "10 times as wide"),
                                 (100, 1001, "10 times as tall")):
        with pytest.raises(VideoError, match=rf"big\.mov is {width}x{height} pixels, .*{words}"):
            video._check_picture_size(Path("big.mov"), width, height)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 30000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
], ids=["torch", "numpy"])
def test_running_out_of_memory_while_frames_are_read_is_said_in_words(tmp_path, monkeypatch, error):
    path = write_video(tmp_path / "clip.mp4", cfr_pts(25))
    raised = [error]

    def fails(*args):
        raise raised[0]

    monkeypatch.setattr(video, "fit_frames", fails)
    with pytest.raises(OutOfMemory, match=r"^Reading the picture of clip\.mp4 \(64x48 pixels\) ran out of memory\. "
                                         r"Close other programs, or re-export the video at 4K or less"):
        read_region(path, 0.2, 0.6, 25, 16)
    raised[0] = RuntimeError("shape mismatch")  # a fault in this code is not the user's memory
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        read_region(path, 0.2, 0.6, 25, 16)


def test_a_frame_ffmpeg_cannot_allocate_is_said_as_damage_first(tmp_path):
    """A damaged sample table says the first frame is 620 MB: FFmpeg refuses the allocation
    (ENOMEM), and a 64x48 picture was told to close other programs, as if memory were full,
    where re-exporting is what helps; memory that is full stays the second cause named."""
    path = write_video(tmp_path / "damaged.mp4", cfr_pts(25))
    data = bytearray(path.read_bytes())
    data[data.index(b"stsz") + 16] = 0x25  # the first sample's size, big-endian: 0x25 << 24 bytes
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"^damaged\.mp4 could not be read near 0\.2 s: FFmpeg could not allocate "
                                         r"the memory one of its frames claims, which most often means the file is "
                                         r"damaged .* Re-export the video; if it plays elsewhere, close other"):
        read_region(path, 0.2, 0.6, 25, 16)


@pytest.mark.skipif(not has_encoder("libx264"), reason="needs libx264")
def test_a_video_codec_ffmpeg_has_no_decoder_for_is_refused_in_words(tmp_path):
    path = write_video(tmp_path / "future.mov", cfr_pts(25))
    data = path.read_bytes()
    assert data.count(b"avc1") == 1
    path.write_bytes(data.replace(b"avc1", b"evc1"))  # a codec tag FFmpeg knows no decoder for
    words = r"future\.mov uses a video codec this engine cannot decode\. Export an H\.264 or ProRes proxy"
    for check in (lambda: probe(path), lambda: check_video_region(path, 0.0, 0.5),
                  lambda: read_region(path, 0.0, 0.5, 25, 16)):
        with pytest.raises(VideoError, match=words):
            check()


class DecoderNotFound(CountingDecodes):
    """A container whose decoder FFmpeg reports missing once decoding begins."""

    def decode(self, *streams):
        raise av.error.DecoderNotFoundError(-1128613112, "Decoder not found")
        yield


def test_a_decoder_missing_while_decoding_is_not_called_damage(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.mp4", cfr_pts(25))
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda p: DecoderNotFound(real_open(p), [0]))
    with pytest.raises(VideoError, match=r"^clip\.mp4 uses a video codec this engine cannot decode \((h264|mpeg4)\)\."):
        read_region(path, 0.2, 0.6, 25, 16)


def test_a_region_past_the_picture_of_a_file_that_does_not_state_its_length_is_refused(tmp_path):
    """Found out once decoding reaches the last frame; a few tenths of a second of it held stay
    allowed (1.9-2.3 s of this 2 s recording)."""
    path = write_unsized_webm(tmp_path / "recording.webm", cfr_pts(50))
    check_video_region(path, 0.5, 300.0)  # nothing to check the end against before decoding
    with pytest.raises(VideoError, match=r"^The region 0\.500-300\.000 s runs past the end of the picture of "
                                         r"recording\.webm \(its last frame ends at 2\.000 s\)\. Shorten the time "
                                         r"selection or use a longer video\.$"):
        read_region(path, 0.5, 300.0, fps=8, size=16)
    with pytest.raises(VideoError, match=r"1\.000-2\.600 s runs past the end of the picture"):
        read_region(path, 1.0, 2.6, fps=25, size=16)
    assert decoded_index(read_region(path, 1.9, 2.4, fps=25, size=16)) == expected(cfr_pts(50), 1.9, 2.4)
    raw = write_raw_h264(tmp_path / "camera.h264", 50)
    with pytest.raises(VideoError, match=r"1\.000-3\.000 s runs past the end of the picture of camera\.h264 "
                                         r"\(its last frame ends at 2\.000 s\)"):
        read_region(raw, 1.0, 3.0, fps=25, size=16)


def test_a_region_before_a_picture_that_starts_late_is_refused(tmp_path, monkeypatch):
    pts = [3000 + t for t in cfr_pts(25)]  # the picture from 3 s to 4 s, the sound from 0 to 5 s
    path = write_with_sound(tmp_path / "late.mp4", pts, sound_s=5.0)
    for start, end in ((0.5, 2.0), (1.0, 3.5)):  # no picture under it; 2 s of the first frame held
        words = rf"^The region {start:.3f}-{end:.3f} s starts before the picture of late\.mp4 \(the picture " \
                r"starts at 3\.000 s\)\. Move the time selection onto the picture\.$"
        for check in (lambda: check_video_region(path, start, end), lambda: read_region(path, start, end, 25, 16)):
            with pytest.raises(VideoError, match=words):
                check()
    assert decoded_index(read_region(path, 2.6, 3.5, 25, 16)) == expected(pts, 2.6, 3.5)  # 0.4 s held: allowed


def test_a_stream_cut_before_a_keyframe_holds_its_first_decodable_frame(tmp_path):
    """A transport stream cut mid-GOP (a broadcast recording, a trimmed .ts): it says its picture
    starts at 0.3 s, and the decoder drops frames until the keyframe at 1 s. Where the file says
    the picture starts is what is checked; the first frame the decoder can show is held before
    it, as it was, not refused as a picture starting at 1.064 s."""
    whole = tmp_path / "whole.ts"
    with av.open(str(whole), "w") as container:
        picture = container.add_stream("libx264", rate=25)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        picture.codec_context.gop_size = 25
        picture.time_base = picture.codec_context.time_base = Fraction(1, TICKS)
        sound = container.add_stream("aac", rate=16000)
        mux_frames(container, picture, (picture_frame(i, pts) for i, pts in enumerate(cfr_pts(75))))
        add_silence(container, sound, 3.0)
    cut = tmp_path / "cut.ts"
    with av.open(str(whole)) as source, av.open(str(cut), "w", format="mpegts") as out:
        streams = {s: out.add_stream_from_template(s) for s in source.streams}
        first = source.streams.video[0].start_time
        for packet in source.demux():
            video_packet = packet.stream.type == "video"
            if packet.dts is None or video_packet and (packet.pts - first) * packet.time_base < 0.3:
                continue
            packet.stream = streams[packet.stream]
            out.mux(packet)
    check_video_region(cut, 0.0, 2.9)
    shown = decoded_index(read_region(cut, 0.0, 2.9, 8, 16))
    assert shown[:9] == [25] * 9 and 25 < shown[9] < shown[10]  # the keyframe at 1 s held before it
    # a region that ends before the first frame the decoder can show holds no picture of its own
    with pytest.raises(VideoError, match=r"starts before the picture of cut\.ts"):
        read_region(cut, 0.0, 0.9, 8, 16)


@pytest.mark.parametrize("suffix", ["png", "jpg", "webp"])
def test_a_still_image_given_as_the_video_is_refused_before_the_model_loads(tmp_path, suffix):
    # REAPER takes a PNG or JPEG as a video item: the check passed it (no length), the model
    # loaded, and reading then said the region "runs past the end of the picture ... (0.040 s)"
    from PIL import Image

    still = tmp_path / f"still.{suffix}"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(still)
    for read in (lambda: video.check_video_region(still, 0.0, 4.0), lambda: read_region(still, 0.0, 4.0, 25, 32)):
        with pytest.raises(VideoError, match=rf"still\.{suffix} is a still image, not a video"):
            read()


@pytest.mark.parametrize("matrix, corner", [
    ((-1, 0, 0, 1), "top right"),    # QuickTime's Flip Horizontal
    ((1, 0, 0, -1), "bottom left"),  # Flip Vertical
    ((0, 1, 1, 0), "top left"),      # a transpose: a quarter turn and a flip
], ids=["hflip", "vflip", "transpose"])
def test_a_picture_mirrored_by_its_display_matrix_is_read_as_a_player_shows_it(tmp_path, matrix, corner):
    # the flip is saved in the track's matrix, without re-encoding; read by its angle alone, a
    # horizontal flip came out upside down and a vertical one unflipped
    import struct

    def marker(i, width, height):
        image = np.full((height, width, 3), 20, np.uint8)
        image[: height // 3, : width // 3] = 235  # top left, as stored
        return image

    source = write_video(tmp_path / "source.mov", cfr_pts(10), width=64, height=48, image=marker)
    data = bytearray(source.read_bytes())
    box = data.find(b"tkhd") - 4
    at = box + 8 + (40 if data[box + 8] == 0 else 52)
    a, b, c, d = (v * 0x10000 for v in matrix)
    width, height = (48, 64) if matrix[0] == 0 else (64, 48)
    struct.pack_into(">9i", data, at, a, b, 0, c, d, 0, (64 * 0x10000 if a < 0 else 0),
                     (48 * 0x10000 if d < 0 else 0), 0x40000000)
    flipped = tmp_path / "flipped.mov"
    flipped.write_bytes(bytes(data))
    frame = read_region(flipped, 0.0, 0.2, 5, 32, "stretch")[0].float().mean(0)   # (32, 32)
    corners = {"top left": frame[:8, :8], "top right": frame[:8, -8:], "bottom left": frame[-8:, :8],
               "bottom right": frame[-8:, -8:]}
    assert max(corners, key=lambda k: float(corners[k].mean())) == corner
    info = video.probe(flipped)
    assert (info.width, info.height) == (width, height)


def write_rgba_video(path, image, frames, codec, pix_fmt):
    """`frames` frames of one (H, W, 4) RGBA image at 25 fps, with its transparency."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], pix_fmt
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgba")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("codec, pix_fmt", [("png", "rgba"), ("qtrle", "argb")])
def test_a_transparent_picture_is_read_over_black_as_a_player_shows_it(tmp_path, codec, pix_fmt):
    # transparent pixels keep a colour underneath (white here) that no player shows: it was read
    # as the picture
    image = np.zeros((48, 64, 4), np.uint8)
    image[..., :3] = 255                               # transparent, white underneath
    image[12:36, 16:48] = (40, 40, 40, 255)            # an opaque dark square
    image[0:8, 56:64] = (200, 100, 50, 128)            # half transparent
    path = write_rgba_video(tmp_path / f"alpha_{codec}.mov", image, 10, codec, pix_fmt)
    frame = read_region(path, 0.0, 0.2, 5, 64, "stretch")[0].float()     # (3, 64, 64)
    assert float(frame[:, 40:, :8].max()) == 0                            # transparent: black
    assert float(frame[:, 24:40, 24:40].mean()) == pytest.approx(40, abs=1)
    assert frame[:, :6, 58:].mean(dim=(1, 2)).tolist() == pytest.approx([100, 50, 25], abs=2)


@pytest.mark.skipif(not has_encoder("libx265"), reason="needs libx265")
@pytest.mark.parametrize("transfer", ["hlg", "pq"])
def test_an_hdr_picture_is_read_as_an_sdr_display_shows_it(tmp_path, transfer):
    # a phone's HLG video (HEVC 10-bit, BT.2020) came back as its code values read as SDR BT.709:
    # white at 187 of 255, red (200, 30, 30) as (131, 46, 26)
    from fractions import Fraction

    sdr = np.array([[255, 255, 255], [200, 30, 30], [30, 160, 40], [40, 60, 200], [128, 128, 128], [20, 20, 20]])
    to_2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
    light = ((sdr / 255) ** 2.4) @ to_2020.T                     # linear BT.2020, SDR white 1.0
    if transfer == "hlg":  # BT.2100's OETF of scene light, SDR white at the reference 75 %
        a, b, c = 0.17883277, 0.28466892, 0.55991073
        scene = light * (np.exp((0.75 - c) / a) + b) / 12
        code = np.where(scene <= 1 / 12, np.sqrt(3 * scene), a * np.log(np.maximum(12 * scene - b, 1e-9)) + c)
    else:  # BT.2100's inverse PQ EOTF, SDR white at 203 nits
        m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
        y = (light * 203 / 10000) ** m1
        code = ((c1 + c2 * y) / (1 + c3 * y)) ** m2
    image = np.zeros((32, 16 * len(sdr), 3), np.uint8)
    for k, colour in enumerate(np.round(code * 255).astype(np.uint8)):
        image[:, 16 * k:16 * (k + 1)] = colour
    trc = 18 if transfer == "hlg" else 16
    path = tmp_path / f"{transfer}.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], 32, "yuv420p10le"
        stream.options = {"x265-params": "log-level=error"}
        context = stream.codec_context
        context.colorspace, context.color_primaries, context.color_trc, context.color_range = 9, 9, trc, 1
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format="yuv420p10le", dst_colorspace="BT2020", dst_color_range="MPEG")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frame = read_region(path, 0.0, 0.2, 5, image.shape[1], "stretch")[0]      # (3, 96, 96)
    read = np.array([frame[:, 48, 16 * k + 8].numpy() for k in range(len(sdr))], float)
    assert np.abs(read - sdr).mean() < 5, read.astype(int).tolist()


def test_a_large_transparent_picture_is_not_scaled_before_it_is_put_over_black(tmp_path):
    # scaled down first, the colour under transparent pixels was averaged into the opaque ones
    # beside them (a mean of 64 of 255 where a player shows black)
    image = np.zeros((720, 1280, 4), np.uint8)
    image[:, 1::2] = (255, 255, 255, 0)                       # transparent white between
    image[:, 0::2] = (0, 0, 0, 255)                           # opaque black columns
    path = write_rgba_video(tmp_path / "columns.mov", image, 3, "png", "rgba")
    assert float(read_region(path, 0.0, 0.08, 25, 64, "stretch").float().max()) == 0


# --- non-square pixels: the Synchformer crop ("crop" fit) takes the centre of the picture as
# displayed (stored width x SAR); CLIP's stretch is unchanged ---------------------------------


def sar_gradient(path, width, height, sar, rotation=None):
    """R = stored column / (width - 1), G = stored row / (height - 1); lossless."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        if sar:
            stream.codec_context.sample_aspect_ratio = Fraction(*sar)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        img = np.zeros((height, width, 3), np.uint8)
        img[..., 0] = np.round(np.linspace(0, 255, width))[None]
        img[..., 1] = np.round(np.linspace(0, 255, height))[:, None]
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def stored_x_span(frames):
    r = frames[0, 0].float() / 255
    return r.min().item(), r.max().item()


@pytest.mark.parametrize("width, height, sar", [(720, 576, (64, 45)), (1440, 1080, (4, 3))])
def test_crop_takes_the_centre_of_the_displayed_16_9_picture(tmp_path, width, height, sar):
    path = sar_gradient(tmp_path / "anamorphic.mp4", width, height, sar)
    with av.open(str(path)) as c:
        assert c.streams.video[0].sample_aspect_ratio == Fraction(*sar)  # what the fix reads
    left, right = stored_x_span(video.read_region(path, 0, 0.2, 25, 224, "crop"))
    # 16:9 displayed: the square crop keeps 9/16 of the width; storage pixels kept 80 % / 75 %
    assert left == pytest.approx(0.5 - 9 / 32, abs=0.01) and right == pytest.approx(0.5 + 9 / 32, abs=0.01)


def test_a_turned_anamorphic_picture_is_widened_then_turned(tmp_path):
    path = sar_gradient(tmp_path / "turned.mp4", 720, 576, (64, 45), rotation=90)
    low, high = stored_x_span(video.read_region(path, 0, 0.2, 25, 224, "crop"))  # stored x runs down the picture
    assert low == pytest.approx(0.5 - 9 / 32, abs=0.01) and high == pytest.approx(0.5 + 9 / 32, abs=0.01)


def test_a_focus_is_seen_whole_in_its_displayed_shape(tmp_path):
    """A centre-cropping request (Synchformer's) sees all of a focus, on black, in the shape it is
    displayed: centre-cropped to a square, a wide one lost its sides (here 44 % of it)."""
    path = sar_gradient(tmp_path / "anamorphic.mp4", 720, 576, (64, 45))
    focus = PictureFocus((0.25, 0.25, 0.75, 0.75))  # 512x288 displayed, 360x288 stored
    frames = video.read_region(path, 0, 0.2, 25, 224, "crop", focus=focus)
    rows = (frames[0].int().sum(dim=(0, 2)) > 0).nonzero()[:, 0]
    assert (rows.min().item(), rows.max().item()) == (49, 49 + 126 - 1)  # 224 x 126: 512 x 288 as displayed
    assert stored_x_span(frames[:, :, 49:175]) == pytest.approx((0.25, 0.75), abs=0.01)
    assert frames[:, :, :49].max() == 0 and frames[:, :, 175:].max() == 0


def test_stretch_ignores_the_pixel_shape(tmp_path):
    path = sar_gradient(tmp_path / "anamorphic.mp4", 720, 576, (64, 45))
    assert stored_x_span(video.read_region(path, 0, 0.2, 8, 384, "stretch")) == pytest.approx((0, 1), abs=0.01)
