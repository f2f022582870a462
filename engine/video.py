"""PyAV decoding of a region of a video at given frame rates and sizes, the way MMAudio
feeds its encoders: CLIP frames at 8 fps squashed to 384x384, Synchformer frames at 25 fps
resized (short side) and centre-cropped to 224x224, both with antialiased bicubic resampling.

Times are seconds on the file's timeline, as a player or a DAW shows it: 0 is the container's
start (its start_time is subtracted, so MPEG-TS offsets do not shift the region), and a picture
that starts after the sound (a video stream that starts later than the container) starts that
much after 0. The picture is the video stream FFmpeg would play, never cover art (attached_pic).
Frame k of a region is the frame on screen at `start + k/fps`: the latest decoded frame whose
presentation time is <= that instant (variable frame rate is handled through pts, never
through frame indices). MMAudio's own reader instead takes the first frame at or after each
instant; the two agree whenever source and target frames share timestamps and otherwise
differ by at most one source frame. A region may show the picture's first or last frame held
for a few tenths of a second beyond the picture (_HOLD_TOLERANCE_S), never a region with no
picture under it; pictures up to 8K (8192x4320) are read.
"""

from __future__ import annotations

import functools
import math
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F

from stepfoley.engine.errors import VideoError, out_of_memory_said
from stepfoley.engine.input_files import open_regular_input
from stepfoley.engine.pipeline import PictureFocus

CLIP_FPS = 8
CLIP_SIZE = 384
SYNC_FPS = 25
SYNC_SIZE = 224
SYNC_SEGMENT_FRAMES = 16
SYNC_SEGMENT_STEP = 8

# A picture that stops this long before both the region's end and its stated length is a file
# cut short, not a rounded duration.
_TRUNCATED_TOLERANCE_S = 0.5
# Containers round their durations; a region may overshoot the stated end by this much.
_END_TOLERANCE_S = 1e-3
# Timestamps are exact rationals turned into floats; treat instants this close as equal.
_TIME_EPS_S = 1e-6
# Frames resized per interpolate call: bounds the float32 working memory for 4K sources.
_RESIZE_CHUNK = 8
# A picture whose short side is past this many times the largest request's size is scaled down
# to it by swscale while converted to RGB (not where a focus rectangle is cut from it), and the
# antialiased bicubic resize does the rest: on a 4K file converting and resizing every frame
# whole cost ten times the decoding.
PRESCALE_FACTOR = 3
# The largest picture read: 8K (DCI 8192x4320, UHD 7680x4320). Each frame is decoded at full size
# (and converted to RGB and float32 at full size where a focus rectangle is cut from it, or its
# short side is small), and the Synchformer crop scales the short side to 224: past these bounds
# one frame costs gigabytes (a strip 100000x2 asks for 30 GB), whatever the file's size on disk.
_MAX_SIDE = 8192
_MAX_PIXELS = _MAX_SIDE * 4320
_MAX_ASPECT = 10
# A region may run past the picture's last frame, or start before its first, by this much (or
# by this many frames of a slow picture) and see the nearest frame held: a selection snapped to
# the sound's end, not a region with no picture under it.
_HOLD_TOLERANCE_S = 0.5
_HOLD_TOLERANCE_FRAMES = 2

Fit = Literal["stretch", "crop", "pad"]


@dataclass(frozen=True)
class VideoInfo:
    """What a file holds. width/height are as displayed (after rotation)."""

    duration: float | None  # seconds on the file's timeline; None when the file does not say
    fps: float
    width: int
    height: int
    rotation: int  # degrees counter-clockwise the picture is turned for display (0/90/180/270)
    has_video: bool
    start: float = 0.0  # seconds on the file's timeline where the picture's first frame is due


@dataclass(frozen=True)
class FrameRequest:
    """One frame stream to cut from a region: rate, square output size, and how to fit."""

    fps: float
    size: int
    fit: Fit


CLIP_REQUEST = FrameRequest(CLIP_FPS, CLIP_SIZE, "stretch")
SYNC_REQUEST = FrameRequest(SYNC_FPS, SYNC_SIZE, "crop")


def region_frame_count(start_s: float, end_s: float, fps: float) -> int:
    # Rounding the length to the microsecond removes subtraction noise (0.7 - 0.1 = 0.5999...),
    # and the count's own rounding the product's (1.16 x 25 = 28.999...: 29 frames, not 28).
    return math.floor(round(round(end_s - start_s, 6) * fps, 6))


# ---------------------------------------------------------------------------------------------
# probing


NESTED_OPEN_OPTIONS = {"protocol_whitelist": "data"}


@contextmanager
def _open(path: Path):
    """The container of the video at `path`, read through a descriptor opened without waiting
    and checked to be a regular file: opened by name, a path swapped for a pipe after the
    request's check would hold FFmpeg's open, and the engine's only worker, until a writer came."""
    if not path.is_file():
        raise VideoError(f"The video {path} does not exist. Check the path of the video item.")
    try:
        file = open_regular_input(path)
    except OSError as exc:
        raise VideoError(f"Could not open the video {path} ({exc.strerror or exc}).") from None
    if file is None:
        raise VideoError(f"The video {path} is not a regular file (a pipe or a device). Point to the film's file.")
    with file:
        try:
            # a tag in another encoding (Latin-1 titles in old AVI and MOV files) is no reason to
            # refuse a picture that decodes. FFmpeg picks the demuxer by content, and a playlist
            # or concat script (whatever its name) opens the files it lists by name, past the
            # check above: a pipe listed there blocked the worker for good. Only inline data
            # may be opened from inside the file.
            container = av.open(file, metadata_errors="replace", options=NESTED_OPEN_OPTIONS)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(
                f"Could not read {path.name} as a video ({exc}). Re-export it as MP4 (H.264) or MOV."
            ) from None
        with container:
            yield container


def _video_stream(container):
    """The picture: a video stream that is not cover art (an audio file's attached picture is a
    one-frame video stream); of several, the one FFmpeg would play (av_find_best_stream: one
    marked default first, then one that decodes more than a frame, so an unmarked still image
    loses to the film). None: the file has no picture."""
    pictures = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if len(pictures) <= 1:
        return pictures[0] if pictures else None
    best = container.streams.best("video")
    return best if best in pictures else pictures[0]


def _is_still_image(container) -> bool:
    """Whether FFmpeg read the file as a single picture (PNG, JPEG, WebP...: its image demuxers),
    not a film: REAPER takes a still as a video item, and it has no motion to follow."""
    names = (container.format.name or "").split(",")
    return any(name.endswith("_pipe") or name == "image2" for name in names)


def _still_image(path: Path) -> VideoError:
    return VideoError(f"{path.name} is a still image, not a video: StepFoley follows what moves in the picture. "
                      "Put the film's video file under the time selection.")


def _stream_start_s(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _origin_s(container, stream) -> float:
    """Where 0 s of the file's timeline is, in seconds of the streams' clock: the container's
    start (the earliest of its streams), else the video stream's. A container that starts
    before 0 does so for the sound's priming samples (Opus or AAC in Matroska/WebM start a few
    ms early, and players drop them): 0 stays 0 unless the picture itself starts earlier."""
    if container.start_time is not None:
        start = container.start_time / av.time_base
        return min(0.0, _stream_start_s(stream)) if start < 0 else start
    return _stream_start_s(stream)


def _picture_start_s(container, stream) -> float:
    """When the picture's first frame is due, on the file's timeline."""
    if stream.start_time is None:
        return 0.0
    return _stream_start_s(stream) - _origin_s(container, stream)


def _matroska_duration_s(stream) -> float | None:
    """Matroska/WebM keep no per-stream duration in the header but FFmpeg's muxer writes a
    DURATION tag ("HH:MM:SS.nnnnnnnnn"): the end of the track on the file's clock."""
    tag = stream.metadata.get("DURATION")
    if not tag:
        return None
    try:
        hours, minutes, seconds = tag.strip().split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _picture_stated_end_s(container, stream) -> float | None:
    """Where the file says the video stream itself ends on its timeline (its duration,
    Matroska's per-track tag, or the container's duration when it holds no sound), or None when
    it says nothing of the picture alone."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return _picture_start_s(container, stream) + float(stream.duration * stream.time_base)
    tagged_end = _matroska_duration_s(stream) if "matroska" in container.format.name else None
    if tagged_end is not None:
        return tagged_end - _origin_s(container, stream)
    if not container.streams.audio and container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _duration_s(container, stream) -> float | None:
    """Where the picture ends on the file's timeline: the video stream's own end when the file
    states it (the container's duration also counts the sound, which may run longer), else the
    container's; None when the file says neither (a WebM recorded without a final duration, a
    raw .h264 stream)."""
    stated = _picture_stated_end_s(container, stream)
    if stated is not None:
        return stated
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _stream_rotation(container, stream) -> int:
    """Display rotation from the first decoded frame's display-matrix side data."""
    try:
        for frame in container.decode(stream):
            return _normalize_rotation(frame.rotation)
    except av.error.FFmpegError:
        return 0
    return 0


def _frame_rate(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _frame_period_s(fps: float) -> float:
    return 1.0 / fps if fps > 0 else 0.0


def _normalize_rotation(degrees: float) -> int:
    return int(round(degrees / 90.0)) % 4 * 90


def _cannot_decode(path: Path, codec: str | None) -> VideoError:
    named = f" ({codec})" if codec else ""
    return VideoError(
        f"{path.name} uses a video codec this engine cannot decode{named}. Export an H.264 or ProRes "
        "proxy of the video and use that.")


def _readable_size(path: Path, stream) -> tuple[int, int]:
    """The picture's stored (width, height), after refusing a stream this engine cannot read:
    one FFmpeg has no decoder for (PyAV then gives it no codec context, so its codec's name and
    size are unreadable too), or one past the size bounds (_check_picture_size)."""
    if stream.codec_context is None:
        raise _cannot_decode(path, None)
    width, height = stream.codec_context.width, stream.codec_context.height
    _check_picture_size(path, width, height)
    return width, height


def _check_picture_size(path: Path, width: int, height: int) -> None:
    """Refuses a picture past _MAX_SIDE, _MAX_PIXELS or _MAX_ASPECT. A side of 0 is a size the
    file does not state: the decoded frames are checked instead."""
    if width <= 0 or height <= 0:
        return
    if max(width, height) > _MAX_SIDE or width * height > _MAX_PIXELS:
        raise VideoError(
            f"The picture of {path.name} is {width}x{height} pixels, larger than this engine reads (8K: at "
            f"most {_MAX_SIDE} pixels a side, {_MAX_SIDE}x4320 in all). Re-export the video at 4K or less, "
            "for example as a 1920x1080 H.264 proxy.")
    if max(width, height) > _MAX_ASPECT * min(width, height):
        long_side, short_side = ("wide", "tall") if width > height else ("tall", "wide")
        raise VideoError(
            f"The picture of {path.name} is {width}x{height} pixels, more than {_MAX_ASPECT} times as "
            f"{long_side} as it is {short_side}: no film frame this engine can read. Re-export the video at "
            "its real picture size, at 4K or less.")


def _could_not_allocate(path: Path, at_s: float) -> VideoError:
    """FFmpeg refusing an allocation (ENOMEM) while reading: what a damaged sample table does,
    a frame said to be hundreds of MB in a small file (a 64x64 picture was told to close other
    programs); only rarely memory that is full, as numpy's MemoryError is."""
    return VideoError(
        f"{path.name} could not be read near {at_s:.1f} s: FFmpeg could not allocate the memory one of its "
        "frames claims, which most often means the file is damaged (a frame said to be larger than it can be). "
        "Re-export the video; if it plays elsewhere, close other programs and try again.")


def _out_of_memory_is_a_video_error(path: Path, width: int, height: int):
    """Memory running out while frames are read (numpy's MemoryError, torch's allocator failing
    with a RuntimeError; FFmpeg refusing one is _could_not_allocate's) says what to do, not where
    in the code it happened."""
    return out_of_memory_said(lambda whose: (
        f"Reading the picture of {path.name} ({width}x{height} pixels) ran out of memory. Close other "
        "programs, or re-export the video at 4K or less (for example as a 1920x1080 H.264 proxy), and "
        "try again."))


def probe(path: str | Path) -> VideoInfo:
    """What a file holds. Raises VideoError for a picture this engine cannot read: a codec it has
    no decoder for, or a size past its bounds (checked before any frame is decoded)."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            duration = container.duration / av.time_base if container.duration else 0.0
            return VideoInfo(duration, 0.0, 0, 0, 0, has_video=False)
        if _is_still_image(container):
            raise _still_image(path)
        width, height = _readable_size(path, stream)
        fps = _frame_rate(stream)
        duration = _duration_s(container, stream)
        start = _picture_start_s(container, stream)
        rotation = _stream_rotation(container, stream)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(duration, fps, width, height, rotation, has_video=True, start=start)


# ---------------------------------------------------------------------------------------------
# geometry


# (transpose, flip rows, flip columns) of a turn counter-clockwise by 0, 90, 180, 270 degrees, as np.rot90 turns
_QUARTER_TURNS = ((False, False, False), (True, True, False), (False, True, True), (True, False, True))


def _display_orientation(av_frame) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip columns) that turn a frame as stored into the picture as
    displayed: from its display matrix where that is a quarter turn or a mirror (QuickTime's
    Flip Horizontal and Vertical are saved there without re-encoding, and the angle alone
    cannot hold a flip), else from its rotation angle, to the nearest quarter turn."""
    for side in getattr(av_frame, "side_data", ()):
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and len(bytes(side)) == 36:
            a, b, _, c, d, *_ = struct.unpack("<9i", bytes(side))  # 16.16 fixed point: x' = a x + c y, y' = b x + d y
            a, b, c, d = (0 if abs(v) < 0x8000 else (1 if v > 0 else -1) for v in (a, b, c, d))
            if b == c == 0 and a and d:
                return False, d < 0, a < 0
            if a == d == 0 and b and c:
                return True, b < 0, c < 0
    return _QUARTER_TURNS[_normalize_rotation(av_frame.rotation) // 90]


def _orient_for_display(rgb: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
    # rgb: (H, W, 3) as stored -> as displayed
    transpose, flip_rows, flip_columns = orientation
    if transpose:
        rgb = rgb.transpose(1, 0, 2)
    if flip_rows:
        rgb = rgb[::-1]
    if flip_columns:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb) if any(orientation) else rgb


def _displayed_width(width: int, height: int, pixel_aspect: Fraction | None) -> int | Fraction:
    """A stored picture's width as displayed, in its own rows: `width` times the stream's sample
    aspect ratio (SAR, how much wider than tall one stored pixel is shown: 64:45 for 16:9 PAL DV,
    4:3 for HDV). `width` itself, the same int, for square pixels, an unstated SAR, or one that
    would show the picture past _MAX_ASPECT (a damaged header, not a film frame)."""
    if not pixel_aspect or pixel_aspect == 1 or pixel_aspect < 0:
        return width
    shown = width * pixel_aspect
    if max(shown, height) > _MAX_ASPECT * min(shown, height):
        return width
    return shown


def _resized_shape(height: int | Fraction, width: int | Fraction, size: int, fit: Fit) -> tuple[int, int]:
    if fit == "stretch":
        return size, size
    if fit == "pad":  # the long side becomes `size`
        if height <= width:
            return max(1, int(round(size * height / width))), size
        return size, max(1, int(round(size * width / height)))
    # torchvision Resize(int): the short side becomes `size`, the long side is truncated
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def fit_frames(frames: np.ndarray, size: int, fit: Fit, shape: tuple | None = None) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> uint8 (T, 3, size, size), antialiased bicubic.

    "stretch" squashes to size x size (MMAudio's CLIP transform); "crop" scales the short
    side to `size` and centre-crops (its Synchformer transform); "pad" scales the long side to
    `size` and centres the frame on black (all of it seen, in its shape). `shape`: (height, width) of
    the picture the frames show, as displayed, whose geometry the fit follows: where the frames
    are scaled down (PRESCALE_FACTOR) or their pixels are not square (a sample aspect ratio: one
    side is then a Fraction), "crop" resizes them straight to the displayed picture's shape."""
    # frames: (T, H, W, 3) uint8
    t, h, w, _ = frames.shape
    out_h, out_w = _resized_shape(*(shape or (h, w)), size, fit)
    top = int(round((out_h - size) / 2.0))
    left = int(round((out_w - size) / 2.0))
    # "pad": the frame goes inside the square, at (-top, -left)
    out = (torch.zeros if fit == "pad" else torch.empty)(t, 3, size, size, dtype=torch.uint8)
    src = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
    for i in range(0, t, _RESIZE_CHUNK):
        chunk = src[i:i + _RESIZE_CHUNK].float()
        if (out_h, out_w) != (h, w):
            chunk = F.interpolate(chunk, size=(out_h, out_w), mode="bicubic",
                                  align_corners=False, antialias=True)
        chunk = chunk.round_().clamp_(0, 255).to(torch.uint8)
        if fit == "pad":
            out[i:i + _RESIZE_CHUNK, :, -top:-top + out_h, -left:-left + out_w] = chunk
        else:
            out[i:i + _RESIZE_CHUNK] = chunk[:, :, top:top + size, left:left + size]
    return out


# ---------------------------------------------------------------------------------------------
# decoding


def _hold_tolerance_s(frame_s: float) -> float:
    """How far a region may reach past the picture's last frame or before its first, for frames
    of frame_s seconds (0: unknown)."""
    return max(_HOLD_TOLERANCE_S, _HOLD_TOLERANCE_FRAMES * frame_s)


def _before_the_picture(path: Path, start_s: float, end_s: float, picture_start: float) -> VideoError:
    return VideoError(
        f"The region {start_s:.3f}-{end_s:.3f} s starts before the picture of {path.name} (the picture "
        f"starts at {picture_start:.3f} s). Move the time selection onto the picture.")


def _past_the_picture(path: Path, start_s: float, end_s: float, picture_end: float) -> VideoError:
    return VideoError(
        f"The region {start_s:.3f}-{end_s:.3f} s runs past the end of the picture of {path.name} (its "
        f"last frame ends at {picture_end:.3f} s). Shorten the time selection or use a longer video.")


def _starts_before_the_picture(start_s: float, end_s: float, picture_start: float, frame_s: float) -> bool:
    """The region holds no picture (it ends before the first frame), or would show the first
    frame held for longer than _hold_tolerance_s."""
    return end_s <= picture_start + _TIME_EPS_S or \
        start_s < picture_start - _hold_tolerance_s(frame_s) - _TIME_EPS_S


def _check_region(path: Path, start_s: float, end_s: float, duration: float | None,
                  picture_start: float = 0.0, frame_s: float = 0.0) -> None:
    """duration None (the file does not say): the end is checked while decoding. picture_start:
    where the file says the picture's first frame is; frame_s: how long a frame lasts (0:
    unknown)."""
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise VideoError(f"The region {start_s}-{end_s} s of {path.name} is not a valid time range.")
    if start_s < 0:
        raise VideoError(
            f"The region {start_s:.1f}-{end_s:.1f} s starts before the beginning of {path.name}. "
            "Move the time selection to start at 0 s or later.")
    if start_s >= end_s:
        raise VideoError(
            f"The region {start_s:.1f}-{end_s:.1f} s of {path.name} is empty: its start must be "
            "before its end. Make a time selection over the picture.")
    if _starts_before_the_picture(start_s, end_s, picture_start, frame_s):
        raise _before_the_picture(path, start_s, end_s, picture_start)
    if duration is not None and end_s > duration + _END_TOLERANCE_S:
        raise VideoError(
            f"The region {start_s:.3f}-{end_s:.3f} s runs past the end of {path.name} "
            f"({duration:.3f} s). Shorten the time selection or use a longer video.")


def _no_picture(path: Path) -> VideoError:
    return VideoError(f"{path.name} has no picture (it is an audio-only file). Pick the video item, not an audio file.")


def check_video_region(path: str | Path, start_s: float, end_s: float) -> VideoInfo:
    """What read_regions checks before decoding (a readable video with a picture that covers
    [start_s, end_s)), without decoding the region: for checking a command line before any
    model loads. Raises VideoError. A file that does not state its duration passes the end
    check here; read_regions finds out while decoding."""
    path = Path(path)
    info = probe(path)
    if not info.has_video:
        raise _no_picture(path)
    _check_region(path, start_s, end_s, info.duration, info.start, _frame_period_s(info.fps))
    return info


def _sample_times(start_s: float, end_s: float, fps: float) -> np.ndarray:
    n = region_frame_count(start_s, end_s, fps)
    return start_s + np.arange(n, dtype=np.float64) / fps


class _SeekedTooFar(Exception):
    pass


class _NothingAfterSeek(_SeekedTooFar):
    """No frame at all came after the seek: the picture stops before it (a file cut short), or
    (MPEG-TS/PS) no keyframe follows it."""


class _CannotSeek(Exception):
    """The demuxer refused the seek (a raw stream), or no seek landed before the region: nothing
    has been shown."""


def _decode_shown(container, stream, path: Path, times: np.ndarray, end_s: float,
                  on_shown: Callable[[np.ndarray, np.ndarray], None], seek_s: float | None,
                  short_side: int | None = None) -> None:
    """Decode the picture from near `seek_s` (None: from where the container stands, its
    beginning); for each frame on screen at some of the sorted `times` (samples of a region that
    ends at `end_s`), call on_shown(rgb (H, W, 3) uint8 turned as displayed, indices into times,
    (height, width) of the picture as displayed before it was scaled down to `short_side` (see
    _frame_rgb), one side a Fraction where the stream's pixels are not square: rgb keeps the
    stored pixels, the fits follow the displayed shape). Frames that no sample shows are never
    converted to RGB.

    With a seek_s (> 0), raises _SeekedTooFar before showing anything when the first decoded frame
    comes after times[0] (or none comes at all): the demuxer landed past the start, or on a
    frame the decoder had to drop, with everything up to the next keyframe (MPEG-TS/PS); raises
    _CannotSeek when the demuxer refuses the seek. Raises VideoError when the region starts
    after the last frame has left the screen, or reaches further than _hold_tolerance_s past
    the last frame (a file that does not state where its picture ends is only found out here)."""
    origin = _origin_s(container, stream)
    picture_start = _picture_start_s(container, stream)
    pixel_aspect = stream.sample_aspect_ratio  # av_guess_sample_aspect_ratio: the container's, else the codec's
    region_start = float(times[0])
    next_i = 0  # first sample time not yet assigned
    prev = None  # the latest decoded frame at or before times[next_i]
    prev_t = 0.0

    def show_until(limit_s: float, av_frame) -> None:
        nonlocal next_i
        stop = next_i
        while stop < len(times) and times[stop] < limit_s - _TIME_EPS_S:
            stop += 1
        if stop > next_i:
            # a stream may change size after its header (a new sequence header mid-file)
            _check_picture_size(path, av_frame.width, av_frame.height)
            rgb = _frame_rgb(av_frame, short_side)
            orientation = _display_orientation(av_frame)
            rgb = _orient_for_display(rgb, orientation)
            # the stored pixels take their displayed shape before the picture is turned
            width = _displayed_width(av_frame.width, av_frame.height, pixel_aspect)
            shown = (width, av_frame.height) if orientation[0] else (av_frame.height, width)
            on_shown(rgb, np.arange(next_i, stop), shown)
            next_i = stop

    checked_seek = seek_s is not None
    try:
        try:
            if checked_seek:
                # backward=True lands on the keyframe at or before the target (in MPEG-TS/PS, on
                # whatever packet is there: the caller seeks further back when that misses)
                container.seek(int((seek_s + origin) / stream.time_base), stream=stream, backward=True)
        except av.error.FFmpegError:
            raise _CannotSeek from None
        first = True
        clock = _BestEffortClock()
        for av_frame in container.decode(stream):
            stamp = clock.timestamp(av_frame)
            if stamp is not None:
                t = float(stamp * av_frame.time_base) - origin
            elif prev is not None and _frame_duration_s(prev, stream) > 0:
                # no timestamp (a raw .h264 stream): the frame after the one before
                t = prev_t + _frame_duration_s(prev, stream)
            elif prev is None and not checked_seek:
                t = picture_start  # decoding from the beginning: the first frame
            else:
                continue
            if first:
                first = False
                if checked_seek and t > max(region_start, picture_start) + _TIME_EPS_S:
                    raise _SeekedTooFar
            if prev is not None:
                show_until(t, prev)
            elif t > times[0] + _TIME_EPS_S:
                # the picture starts after the region start: hold the first frame until then.
                # Where the file says its picture starts was checked before decoding; a first
                # frame later than that is one the decoder could not show (a stream cut before
                # a keyframe), not a region without picture, unless the region ends before it
                if end_s <= t + _TIME_EPS_S:
                    raise _before_the_picture(path, region_start, end_s, t)
                show_until(t, av_frame)
            prev, prev_t = av_frame, t
            if next_i >= len(times):
                return
    except av.error.MemoryError:
        raise _could_not_allocate(path, region_start) from None
    except MemoryError:
        raise  # numpy's: memory running out, said as such by the caller
    except av.error.DecoderNotFoundError:
        raise _cannot_decode(path, stream.codec_context.name if stream.codec_context else None) from None
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"{path.name} is damaged near {region_start:.1f} s and could not be decoded ({exc}). "
            "Re-export the video.") from None
    if prev is None:
        if checked_seek:
            raise _NothingAfterSeek
        raise VideoError(f"{path.name} has a video stream but no picture could be decoded from it.")
    last_frame_s = _frame_duration_s(prev, stream)
    picture_end = prev_t + last_frame_s
    # a file cut short (a copy or download that stopped) still states its picture's whole
    # length: its last frame would be held over the missing picture (a container's length alone
    # may count sound that runs past the picture: that is no sign of damage). Checked first: a
    # region past the cut lies within the picture the file states, so it is the file to fix,
    # not the time selection.
    stated = _picture_stated_end_s(container, stream)
    if stated is not None and last_frame_s > 0 and \
            picture_end < min(stated, float(times[-1])) - _TRUNCATED_TOLERANCE_S:
        raise VideoError(
            f"The picture of {path.name} stops at {picture_end:.1f} s, though the file says it lasts "
            f"{stated:.1f} s: the file is cut short or damaged. Copy or export the video again.")
    # a file that does not state its duration is checked here: the region must start while the
    # last frame is still on screen (at its instant, when how long it lasts is unknown)
    if last_frame_s > 0:
        past_the_end = region_start >= picture_end - _TIME_EPS_S
    else:
        past_the_end = region_start > prev_t + _TIME_EPS_S
    if past_the_end:
        raise VideoError(
            f"The region starting at {region_start:.1f} s is past the end of the picture of "
            f"{path.name} (its last frame ends at {picture_end:.1f} s). Move the time selection "
            "onto the picture.")
    if end_s > picture_end + _hold_tolerance_s(last_frame_s) + _TIME_EPS_S:
        raise _past_the_picture(path, region_start, end_s, picture_end)
    show_until(math.inf, prev)  # the last frame stays on screen until the end of picture


class _BestEffortClock:
    """A decoded frame's timestamp as FFmpeg's best_effort_timestamp picks it: its pts, unless
    pts have gone backwards more often than dts (an AVI with B-frames carries decode-order
    numbers as pts, which come out of the decoder shuffled), then its dts."""

    def __init__(self):
        self.last_pts = self.last_dts = None
        self.faulty_pts = self.faulty_dts = 0

    def timestamp(self, av_frame) -> int | None:
        pts, dts = av_frame.pts, av_frame.dts
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts


def _frame_duration_s(av_frame, stream) -> float:
    """How long a frame stays on screen: its own duration where the file gives one, else one
    frame at the stream's rate (0 when neither is known)."""
    ticks = av_frame.duration
    if ticks and av_frame.time_base is not None:
        return float(ticks * av_frame.time_base)
    return _frame_period_s(_frame_rate(stream))


def _decode_region(container, stream, path: Path, times: np.ndarray, end_s: float,
                   on_shown: Callable[[np.ndarray, np.ndarray], None], short_side: int | None = None) -> None:
    """_decode_shown from the keyframe before times[0]. When a seek misses (it lands past the
    start, or on a frame the decoder drops up to a keyframe after the start), seek 1, 2, 4, 8...
    s further back. Raises _CannotSeek, having shown nothing, when the demuxer refuses to seek or
    no seek landed before the region: the caller then decodes the file from its beginning."""
    start_s = float(times[0])
    if start_s <= 0 or stream.time_base is None:
        _decode_shown(container, stream, path, times, end_s, on_shown, None, short_side)
        return
    back = 0.0
    while start_s - back > 0:
        try:
            _decode_shown(container, stream, path, times, end_s, on_shown, start_s - back, short_side)
            return
        except _NothingAfterSeek:
            # far past where a long file was cut short, seeking 1, 2, 4 ... s back and then
            # decoding from its start took a minute: find where its frames stop by seeking alone
            seek_s = _last_seek_with_frames(container, stream, start_s - back)
            if seek_s is not None:
                try:
                    _decode_shown(container, stream, path, times, end_s, on_shown, seek_s, short_side)
                    return
                except _SeekedTooFar:
                    pass
            break
        except _SeekedTooFar:
            back = back * 2 if back else 1.0
    # not a seek to 0: where an MPEG-TS clock wraps, the file starts before 0 on the unwrapped clock
    raise _CannotSeek


# How close the search for where a picture stops comes to it before decoding from there.
_STOP_SEARCH_PRECISION_S = 2.0


def _has_frame_after(container, stream, seek_s: float) -> bool:
    """Whether a frame comes out of a seek to seek_s (decoding up to the first one)."""
    try:
        container.seek(int((seek_s + _origin_s(container, stream)) / stream.time_base), stream=stream,
                       backward=True)
        for _ in container.decode(stream):
            return True
    except av.error.MemoryError:
        raise _could_not_allocate(Path(container.name), seek_s) from None
    except MemoryError:
        raise
    except av.error.FFmpegError:
        pass
    return False


def _last_seek_with_frames(container, stream, nothing_after_s: float) -> float | None:
    """A seek point within _STOP_SEARCH_PRECISION_S before the last one that yields a frame,
    below `nothing_after_s`, which yields none; by bisection, each step decoding one frame at
    most. None when none does after 0 (decode from the beginning). Decoding on from it finds
    every frame that is there, whatever the search assumed."""
    has, has_not = 0.0, nothing_after_s
    while has_not - has > _STOP_SEARCH_PRECISION_S:
        middle = (has + has_not) / 2
        if _has_frame_after(container, stream, middle):
            has = middle
        else:
            has_not = middle
    return has if has > 0 else None


def _prescaled_short_side(requests: Sequence[FrameRequest], focus: PictureFocus | None) -> int | None:
    """The short side a larger frame is scaled down to as it is converted to RGB: PRESCALE_FACTOR
    times the largest request's size. None with a focus, whose rectangle is cut in whole pixels
    of the picture."""
    if not requests or focus is not None:
        return None
    return PRESCALE_FACTOR * max(r.size for r in requests)


# HDR pictures (a phone's HLG video, PQ masters), as AVColorTransferCharacteristic and
# AVColorPrimaries number them: read as SDR code values they came out dim and washed out.
_HLG, _PQ, _BT2020 = 18, 16, 9
# The HLG scene light of its reference white (a 75 % signal, BT.2408), and the PQ luminance of
# graphics white in nits (BT.2408): SDR white, 1.0 in linear light.
_HLG_WHITE = (math.exp((0.75 - 0.55991073) / 0.17883277) + 0.28466892) / 12
_PQ_WHITE_NITS = 203.0
# BT.2020 linear RGB to BT.709 (the inverse of BT.2087's BT.709 to BT.2020)
_BT2020_TO_709 = np.linalg.inv(np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114],
                                         [0.0164, 0.0880, 0.8956]])).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _hdr_linear(trc: int) -> np.ndarray:
    """(65536,) float32: a 16-bit HLG or PQ code value's linear light, SDR white 1.0."""
    v = np.arange(65536, dtype=np.float64) / 65535
    if trc == _HLG:  # the inverse of BT.2100's HLG OETF: scene light
        a, b, c = 0.17883277, 0.28466892, 0.55991073
        light = np.where(v <= 0.5, v * v / 3, (np.exp((v - c) / a) + b) / 12) / _HLG_WHITE
    else:  # BT.2100's PQ EOTF: nits
        m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
        p = v ** (1 / m2)
        light = 10000 * (np.maximum(p - c1, 0) / (c2 - c3 * p)) ** (1 / m1) / _PQ_WHITE_NITS
    return light.astype(np.float32)


_SDR_CODES = np.round(255 * (np.arange(4096) / 4095) ** (1 / 2.4)).astype(np.uint8)  # BT.1886's display


def _hdr_to_sdr(rgb16: np.ndarray, trc: int, bt2020: bool) -> np.ndarray:
    """(H, W, 3) uint16 R'G'B' of an HLG or PQ picture -> (H, W, 3) uint8 SDR BT.709 as a
    display shows SDR: its reference white at SDR white, highlights above clipped."""
    light = _hdr_linear(trc)[rgb16]                                            # (H, W, 3) linear
    if bt2020:
        light = light @ _BT2020_TO_709.T
    return _SDR_CODES[np.round(np.clip(light, 0.0, 1.0) * 4095).astype(np.int32)]


def _frame_rgb(av_frame, short_side: int | None) -> np.ndarray:
    # -> (H, W, 3) uint8 as stored (before rotation); a frame whose short side is past
    # `short_side` scaled down to it with swscale's area filter (the factor taken per frame: a
    # stream may change size after its header)
    scale = short_side / min(av_frame.width, av_frame.height) if short_side else 1.0
    size = {} if scale >= 1.0 else {"width": max(1, round(av_frame.width * scale)),
                                    "height": max(1, round(av_frame.height * scale)), "interpolation": "AREA"}
    if getattr(av_frame, "color_trc", None) in (_HLG, _PQ):
        return _hdr_to_sdr(av_frame.to_ndarray(format="rgb48le", **size), av_frame.color_trc,
                           av_frame.color_primaries == _BT2020)
    if not any(component.is_alpha for component in av_frame.format.components):
        return av_frame.to_ndarray(format="rgb24", **size)
    # a picture with transparency (PNG, QuickTime Animation, ProRes 4444 ...) over black, as a
    # player shows it: what a transparent pixel keeps underneath is never seen (so never scaled
    # first: averaged with its neighbours, it would be)
    rgba = av_frame.to_ndarray(format="rgba").astype(np.uint16)
    return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)


def focus_frame(rgb: np.ndarray, focus: PictureFocus) -> np.ndarray:
    """A decoded frame (H, W, 3) cropped to a picture focus's rectangle; each request's fit then
    scales it to its encoder's size, as it would a whole frame."""
    top, bottom, left, right = focus.pixels(*rgb.shape[:2])
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def _focus_shape(picture: np.ndarray, rgb: np.ndarray, whole: tuple) -> tuple | None:
    """(height, width) as displayed of a focus rectangle `picture` cut from the full-size frame
    `rgb` (a focus turns prescaling off) whose displayed shape is `whole`: None (its own) where
    the pixels are square, else its sides stretched as the frame's are. The rectangle's fractions
    are the same of the displayed picture as of the stored one: only its pixels' shape differs."""
    if tuple(whole) == rgb.shape[:2]:
        return None
    return (picture.shape[0] * whole[0] / rgb.shape[0], picture.shape[1] * whole[1] / rgb.shape[1])


def read_regions(path: str | Path, start_s: float, end_s: float,
                 requests: Sequence[FrameRequest], focus: PictureFocus | None = None) -> list[torch.Tensor]:
    """Decode [start_s, end_s) once and cut one uint8 (T, 3, size, size) tensor per request.

    Each source frame is converted and resized once per request that shows it, as it is
    decoded, so memory stays at the output size whatever the source resolution. `focus`: the
    frames at the times it applies are cropped to it first (focus_frame)."""
    path = Path(path)
    all_times = [_sample_times(start_s, end_s, r.fps) for r in requests]
    merged = np.concatenate(all_times) if all_times else np.empty(0)
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(all_times)]) if all_times \
        else np.empty(0, dtype=np.int64)
    slot = np.concatenate([np.arange(len(t)) for t in all_times]) if all_times \
        else np.empty(0, dtype=np.int64)
    order = np.argsort(merged, kind="stable")
    sorted_times = merged[order]
    outputs = [torch.empty(len(t), 3, r.size, r.size, dtype=torch.uint8)
               for r, t in zip(requests, all_times)]

    def on_shown(rgb: np.ndarray, sorted_indices: np.ndarray, whole: tuple[int, int]) -> None:
        shown = order[sorted_indices]
        # one decoded frame may stay on screen across the start or end of the focus's time
        inside = focus.applies(merged[shown]) if focus is not None else np.zeros(len(shown), bool)
        for picture, samples in ((rgb, shown[~inside]), (None, shown[inside])):
            if len(samples) == 0:
                continue
            picture = focus_frame(rgb, focus) if picture is None else picture
            shape = whole if picture is rgb else _focus_shape(picture, rgb, whole)
            for request_index in np.unique(owner[samples]):
                request = requests[request_index]
                # a focus is seen whole: centre-cropped to a square (Synchformer's transform), a
                # strip along the bottom lost three quarters of itself, and its motion with them
                fit = "pad" if picture is not rgb and request.fit == "crop" else request.fit
                resized = fit_frames(picture[None], request.size, fit, shape)[0]
                mine = slot[samples[owner[samples] == request_index]]
                outputs[request_index][torch.from_numpy(mine)] = resized

    with _open(path) as container:
        stream = _video_stream(container)
        if stream is None:
            raise _no_picture(path)
        if _is_still_image(container):
            raise _still_image(path)
        width, height = _readable_size(path, stream)
        short_side = _prescaled_short_side(requests, focus)
        stream.thread_type = "AUTO"
        _check_region(path, start_s, end_s, _duration_s(container, stream), _picture_start_s(container, stream),
                      _frame_period_s(_frame_rate(stream)))
        if len(sorted_times) == 0:
            return outputs
        try:
            with _out_of_memory_is_a_video_error(path, width, height):
                _decode_region(container, stream, path, sorted_times, end_s, on_shown, short_side)
            return outputs
        except _CannotSeek:
            pass
    # the file cannot seek (a raw .h264 stream; a refused seek leaves the demuxer unable to read
    # on), or no seek landed before the region: open it again and decode from the beginning
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        with _out_of_memory_is_a_video_error(path, width, height):
            _decode_shown(container, stream, path, sorted_times, end_s, on_shown, None, short_side)
    return outputs


def read_region(path: str | Path, start_s: float, end_s: float, fps: float, size: int,
                fit: Fit = "stretch", focus: PictureFocus | None = None) -> torch.Tensor:
    """uint8 (T, 3, size, size): the frames on screen at start + k/fps, k < int(len*fps)."""
    return read_regions(path, start_s, end_s, [FrameRequest(fps, size, fit)], focus)[0]
