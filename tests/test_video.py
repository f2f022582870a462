"""engine.video on real files written with PyAV. Each frame carries its index as a brightness
level (LEVEL0 + STEP*i over the whole picture), so a test can tell which source frame was
picked for which instant."""

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stepfoley.engine.errors import VideoError
from stepfoley.engine.mmaudio.config import SequenceLengths
from stepfoley.engine.video import (
    CLIP_REQUEST,
    SYNC_REQUEST,
    FrameRequest,
    probe,
    read_region,
    read_regions,
    region_frame_count,
)

LEVEL0, STEP, CYCLE = 12, 7, 32  # levels 12..229; frame i shows code i % CYCLE
TICKS = 1000  # time base 1/1000 s for every file made here


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), LEVEL0 + STEP * (index % CYCLE), dtype=np.uint8)


def write_video(path: Path, pts_ms: list[int], width=64, height=48, codec="libx264",
                pix_fmt="yuv420p", rotation=None, gop=None, image=frame_image) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, TICKS)
        stream.codec_context.time_base = Fraction(1, TICKS)
        if gop:
            stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(image(i, width, height), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, TICKS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cfr_pts(n: int, fps: int = 25) -> list[int]:
    return [round(i * TICKS / fps) for i in range(n)]


def decoded_index(frames) -> list[int]:
    # frames: (T, 3, H, W) uint8; the centre level names the source frame
    t, _, h, w = frames.shape
    centre = frames[:, :, h // 4: 3 * h // 4, w // 4: 3 * w // 4].float().mean(dim=(1, 2, 3))
    return [round((float(v) - LEVEL0) / STEP) for v in centre]


def shown_at(pts_ms: list[int], instant_s: float) -> int:
    """The code of the latest frame whose pts <= instant (first frame before the picture)."""
    shown = 0
    for i, pts in enumerate(pts_ms):
        if pts / TICKS <= instant_s + 1e-9:
            shown = i
    return shown % CYCLE


CODECS = [  # (container suffix, encoder, pixel format)
    ("mp4", "libx264" if has_encoder("libx264") else "mpeg4", "yuv420p"),
    ("mov", "prores_ks", "yuv422p10le"),
    ("mkv", "libvpx-vp9", "yuv420p"),
]


@pytest.mark.parametrize("suffix,codec,pix_fmt", CODECS)
def test_frames_sampled_at_fps_pick_the_frame_on_screen(tmp_path, suffix, codec, pix_fmt):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV wheel has no {codec} encoder")
    pts = cfr_pts(30)  # 1.2 s at 25 fps
    path = write_video(tmp_path / f"picture.{suffix}", pts, codec=codec, pix_fmt=pix_fmt)
    start, end, fps = 0.2, 1.0, 10
    frames = read_region(path, start, end, fps=fps, size=32)
    assert frames.shape == (8, 3, 32, 32) and frames.dtype.is_floating_point is False
    expected = [shown_at(pts, start + k / fps) for k in range(8)]
    assert decoded_index(frames) == expected


def test_seeking_into_a_long_gop_file_gives_the_same_frames_as_decoding_from_zero(tmp_path):
    pts = cfr_pts(100)  # 4 s, keyframe every 12 frames
    path = write_video(tmp_path / "long.mp4", pts, gop=12)
    start, end, fps = 2.3, 3.1, 25
    frames = read_region(path, start, end, fps=fps, size=16)
    expected = [shown_at(pts, start + k / fps) for k in range(20)]
    assert decoded_index(frames) == expected


def test_variable_frame_rate_uses_timestamps_not_frame_indices(tmp_path):
    pts = [0, 40, 80, 200, 210, 500, 520, 760, 800, 1000, 1040, 1240]
    path = write_video(tmp_path / "vfr.mkv", pts, codec="libx264")
    start, end, fps = 0.05, 1.05, 20
    frames = read_region(path, start, end, fps=fps, size=16)
    expected = [shown_at(pts, start + k / fps) for k in range(20)]
    assert decoded_index(frames) == expected
    # an index-based reader would have walked frames 1, 2, 3...; the held frames prove pts use
    assert expected.count(2) >= 2 and 4 in expected


def test_clip_and_sync_streams_from_one_decode_have_mmaudio_lengths(tmp_path):
    pts = cfr_pts(40)  # 1.6 s
    path = write_video(tmp_path / "both.mp4", pts, width=80, height=60)
    clip, sync = read_regions(path, 0.0, 1.28, [CLIP_REQUEST, SYNC_REQUEST])
    assert clip.shape == (10, 3, 384, 384)  # 1.28 s at 8 fps
    assert sync.shape == (32, 3, 224, 224)  # at 25 fps
    assert decoded_index(clip) == [shown_at(pts, k / 8) for k in range(10)]
    assert decoded_index(sync) == [shown_at(pts, k / 25) for k in range(32)]


def test_sequence_lengths_follow_mmaudio_sequence_config():
    # README §14 of the golden fixtures: 64 / 192 / 250 at 16 kHz, 345 latents at 44.1 kHz
    assert SequenceLengths.for_duration(8.0, 16000, 256) == SequenceLengths(250, 64, 192)
    assert SequenceLengths.for_duration(8.0, 44100, 512) == SequenceLengths(345, 64, 192)
    segments = (125 - 16) // 8 + 1
    assert SequenceLengths.for_duration(5.0, 16000, 256) == SequenceLengths(math.ceil(5 * 16000 / 256 / 2), 40,
                                                                            segments * 8)


def test_sequence_lengths_count_the_frames_the_reader_takes():
    """A selection's length carries subtraction noise (1.16 - 0.16 = 0.9999999999999999 s): the
    announced CLIP and Synchformer counts are those of the frames engine.video reads."""
    for start, end in [(0.16, 1.16), (0.1, 0.7), (2.03, 10.03), (0.0, 1.28), (0.0, 1.16), (0.0, 9.28)]:
        lengths = SequenceLengths.for_duration(end - start, 16000, 256)
        assert lengths.clip == region_frame_count(start, end, 8)
        assert lengths.sync == ((region_frame_count(start, end, 25) - 16) // 8 + 1) * 8


def test_a_length_whose_frame_count_is_a_floats_hair_under_a_whole_number_has_every_frame():
    """1.16 x 25 is 28.999999999999996 in floats: the 29th frame (at 1.12 s) was not read, and
    925 of the lengths k / 25 up to 600 s lost one so."""
    assert region_frame_count(0.0, 1.16, 25) == 29 and region_frame_count(0.0, 2.32, 25) == 58
    assert region_frame_count(3.0, 12.28, 25) == 232 and region_frame_count(0.0, 1.1599, 25) == 28
    assert all(region_frame_count(0.0, k / 25, 25) == k for k in range(15_000))
    assert all(region_frame_count(0.0, k / 8, 8) == k for k in range(4_800))
    assert SequenceLengths.for_duration(1.16, 16000, 256).sync == 16 and SequenceLengths.for_duration(9.28, 16000, 256).sync == 224


def corner_marker(index: int, width: int, height: int) -> np.ndarray:
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    image[: height // 3, : width // 3] = 235  # bright block in the stored top-left corner
    return image


def test_rotation_side_data_is_applied_like_a_player(tmp_path):
    # a phone-style portrait clip: stored landscape 64x48, display matrix "rotate 90 clockwise"
    path = write_video(tmp_path / "phone.mp4", cfr_pts(10), width=64, height=48,
                       rotation=-90, image=corner_marker)
    info = probe(path)
    assert info.rotation == 270 and (info.width, info.height) == (48, 64)
    frame = read_region(path, 0.0, 0.2, fps=5, size=48)[0].float().mean(dim=0)  # (48, 48)
    # turning the picture clockwise carries the stored top-left corner to the top-right
    assert frame[:8, -8:].mean() > 200 and frame[:8, :8].mean() < 60
    assert frame[-8:, -8:].mean() < 60


def band_in_middle_third(index: int, width: int, height: int) -> np.ndarray:
    image = np.full((height, width, 3), 16, dtype=np.uint8)
    image[:, width // 3: 2 * width // 3] = 240
    return image


def test_odd_size_stretch_and_centre_crop(tmp_path):
    path = write_video(tmp_path / "odd.mkv", cfr_pts(5), width=161, height=97,
                       pix_fmt="yuv444p", image=band_in_middle_third)
    info = probe(path)
    assert (info.width, info.height, info.rotation, info.has_video) == (161, 97, 0, True)
    stretched = read_region(path, 0.0, 0.2, fps=5, size=32, fit="stretch")[0, 0].float()
    cropped = read_region(path, 0.0, 0.2, fps=5, size=32, fit="crop")[0, 0].float()
    # stretch keeps the band on the middle third of the output
    assert stretched[:, 13:19].mean() > 200 and stretched[:, :8].mean() < 60
    # crop: 161x97 -> 53x32, centre 32 columns start at 10, so the band (cols 17.7-35.3 of 53)
    # spans output columns ~8-25, wider than in the stretched picture
    assert cropped[:, 10:24].mean() > 200
    assert cropped[:, :5].mean() < 60 and cropped[:, 28:].mean() < 60
    assert (cropped > 128).float().mean() > (stretched > 128).float().mean() + 0.15


def test_region_past_the_end_names_file_and_duration(tmp_path):
    path = write_video(tmp_path / "short.mkv", cfr_pts(30))  # 1.2 s
    with pytest.raises(VideoError, match=r"0\.500-2\.000 s runs past the end of short\.mkv \(1\.200 s\)"):
        read_region(path, 0.5, 2.0, fps=25, size=16)
    # a few hundredths past the end reads as past it, not as "1.2-1.2 s past 1.2 s"
    with pytest.raises(VideoError, match=r"0\.500-1\.240 s runs past the end of short\.mkv \(1\.200 s\)"):
        read_region(path, 0.5, 1.24, fps=25, size=16)


def test_empty_or_reversed_region_is_refused(tmp_path):
    path = write_video(tmp_path / "clip.mkv", cfr_pts(30))
    with pytest.raises(VideoError, match="clip.mkv is empty"):
        read_region(path, 0.8, 0.8, fps=25, size=16)
    with pytest.raises(VideoError, match="clip.mkv"):
        read_region(path, 1.0, 0.2, fps=25, size=16)


def test_audio_only_file_is_refused_and_probed_as_such(tmp_path):
    path = tmp_path / "dialogue.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    info = probe(path)
    assert info.has_video is False and abs(info.duration - 1.0) < 0.01
    with pytest.raises(VideoError, match="dialogue.wav has no picture"):
        read_region(path, 0.0, 0.5, fps=8, size=16)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoError, match="broken.mp4"):
        probe(junk)
    with pytest.raises(VideoError, match="missing.mov"):
        read_region(tmp_path / "missing.mov", 0, 1, fps=8, size=16)


def test_frame_request_constants_match_mmaudio():
    assert CLIP_REQUEST == FrameRequest(8, 384, "stretch")
    assert SYNC_REQUEST == FrameRequest(25, 224, "crop")


@pytest.mark.parametrize("script, name", [
    ("ffconcat version 1.0\nfile 'film.ts'\n", "scene.mp4"),
    ("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nfilm.ts\n#EXT-X-ENDLIST\n", "scene.m3u8"),
], ids=["concat", "hls"])
def test_a_playlist_given_as_the_video_opens_nothing_it_lists(tmp_path, script, name):
    """FFmpeg picks the demuxer by content: a concat script or playlist, whatever its name, made
    it open the files listed by name, past the check that the video is a regular file (a pipe
    listed there blocked the engine's worker for good). A real film is listed, which was read
    as if it were the video."""
    write_video(tmp_path / "film.ts", cfr_pts(50))
    (tmp_path / name).write_text(script)
    with pytest.raises(VideoError, match=name):
        probe(tmp_path / name)
    with pytest.raises(VideoError, match=name):
        read_region(tmp_path / name, 0, 1, fps=8, size=16)


def test_a_large_picture_is_scaled_down_while_converted_and_reads_as_it_did_whole(tmp_path, monkeypatch):
    # 4K: converting each frame whole to RGB and resizing it in float cost ten times the
    # decoding; swscale now takes it near the size asked first, and the fit keeps the whole
    # picture's geometry (a crop's width truncated from the scaled size moved it a pixel)
    import stepfoley.engine.video as video
    from scipy.ndimage import gaussian_filter

    from stepfoley.engine.pipeline import PictureFocus

    picture = gaussian_filter(np.random.default_rng(0).uniform(0, 255, (720, 1000, 3)), (6, 6, 0))
    picture = ((picture - picture.min()) / np.ptp(picture) * 255).astype(np.uint8)  # texture of a natural scale
    # 1000 x 720: its crop's width, truncated, is 88 px of the whole picture and 89 of the
    # 267 x 192 it is scaled down to
    path = write_video(tmp_path / "big.mp4", cfr_pts(10), width=1000, height=720,
                       image=lambda i, width, height: np.roll(picture, 3 * i, axis=1))
    converted = []
    real = video._frame_rgb
    monkeypatch.setattr(video, "_frame_rgb", lambda frame, short: converted.append(real(frame, short).shape) or
                        real(frame, short))
    focus = PictureFocus((0.5, 0.25, 0.75, 0.75))  # cut in whole pixels of the picture: not scaled
    for fit, focus_or_none, rows in (("stretch", None, 192), ("crop", None, 192), ("crop", focus, 720)):
        converted.clear()
        scaled = read_region(path, 0.0, 0.2, 25, 64, fit, focus_or_none)
        assert {shape[0] for shape in converted} == {rows}
        monkeypatch.setattr(video, "PRESCALE_FACTOR", 10_000)
        whole = read_region(path, 0.0, 0.2, 25, 64, fit, focus_or_none)
        monkeypatch.setattr(video, "PRESCALE_FACTOR", 3)
        # of 255: swscale converts a scaled frame with roundings of its own
        assert (scaled.float() - whole.float()).abs().mean() < 2.0, (fit, focus_or_none)
