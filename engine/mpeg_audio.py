"""MPEG audio inputs (MP3: a reference sound, a bounce from another tool) read with FFmpeg.

libsndfile reads MP3 through mpg123, which writes a line to the process's standard error for
every damaged frame header it meets and cannot be told not to: one broken or hostile file
wrote thousands, outside the bounds the engine's log keeps. FFmpeg (through PyAV, already the
engine's video reader) keeps its messages to itself unless asked. Every other format stays
with libsndfile (engine.audio_io); this module is asked only for files `is_mpeg_audio` names.
"""

from __future__ import annotations

import math
from typing import BinaryIO

import numpy as np

ID3_TAG = b"ID3"


class MpegAudioError(RuntimeError):
    """FFmpeg could not read the file as MPEG audio (its message, for engine.audio_io's words)."""


class RateTooHigh(Exception):
    """The file's rate (`rate`) is over the reader's limit; nothing was decoded."""

    def __init__(self, rate: int):
        super().__init__(rate)
        self.rate = rate


def is_mpeg_audio(head: bytes) -> bool:
    """Whether a file starting with `head` (its first bytes, at least 3) is MPEG audio as
    libsndfile would take it: an ID3v2 tag (most MP3 files) or a frame sync (11 set bits:
    MPEG 1, 2 and 2.5) at its very start."""
    return head[:3] == ID3_TAG or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _open(file: BinaryIO):
    import av

    try:
        container = av.open(file, mode="r", format="mp3")
    except (av.FFmpegError, ValueError, OSError) as error:
        raise MpegAudioError(str(error) or type(error).__name__) from error
    if not container.streams.audio:
        container.close()
        raise MpegAudioError("no audio stream")
    return container


def _float_channels(frame) -> np.ndarray:
    """A decoded audio frame's samples as float32 (C, n) in [-1, 1], whatever its sample format."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # (1, n * C), interleaved
        data = data.reshape(-1, frame.layout.nb_channels).T
    if np.issubdtype(data.dtype, np.integer):
        return (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    return data.astype(np.float32, copy=False)


def read(file: BinaryIO, max_seconds: float | None, mono: bool, max_rate: int | None) -> tuple[np.ndarray, int]:
    """The first `max_seconds` (all when None) of MPEG audio `file` (an open binary file at its
    start), float32 (C, S) or (1, S) averaged when `mono`, and its rate. The rate and channels
    are the first frame's: frames with another channel count (files joined end to end) are
    brought to it, another rate is refused. A rate over `max_rate` raises RateTooHigh before
    anything is decoded."""
    import av

    container = _open(file)
    try:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        if max_rate is not None and rate > max_rate:
            raise RateTooHigh(rate)
        blocks, held, wanted, first_pts, channels = [], 0, None, None, 0
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:
                    continue  # a damaged frame: left out, its time kept below
                for frame in decoded:
                    if not channels:
                        rate, first_pts, channels = frame.sample_rate, frame.pts, frame.layout.nb_channels
                        if max_rate is not None and rate > max_rate:
                            raise RateTooHigh(rate)
                        wanted = None if max_seconds is None else math.ceil(max_seconds * rate)
                    elif frame.sample_rate != rate:
                        raise MpegAudioError(f"its sample rate changes midway, from {rate} Hz to {frame.sample_rate} Hz")
                    if frame.pts is not None and first_pts is not None and frame.time_base is not None:
                        # a frame the decoder refused comes back as silence as long as it, so what
                        # follows keeps its time; one the demuxer skipped while finding the next
                        # header leaves no gap in the times and is lost, as it is with mpg123
                        gap = round(float((frame.pts - first_pts) * frame.time_base) * rate) - held
                        if gap > 0:
                            blocks.append(np.zeros((1 if mono else channels, gap), np.float32))
                            held += gap
                    block = _float_channels(frame)                                      # (C_frame, n)
                    if mono:
                        block = block.mean(axis=0, dtype=np.float64, keepdims=True).astype(np.float32)
                    elif block.shape[0] != channels:  # a stream that switches mono/stereo keeps its first count
                        block = np.repeat(block.mean(axis=0, keepdims=True), channels, axis=0)
                    blocks.append(block)
                    held += block.shape[1]
                if wanted is not None and held >= wanted:
                    break
        except (av.FFmpegError, ValueError, OSError) as error:
            raise MpegAudioError(str(error) or type(error).__name__) from error
    finally:
        container.close()
    if not blocks:
        return np.zeros((1, 0), np.float32), max(rate, 1)
    samples = np.concatenate(blocks, axis=1)
    return (samples if wanted is None else samples[:, :wanted]), rate
