"""MPEG audio inputs (MP3: a reference sound, a bounce from another tool) read with FFmpeg.

libsndfile reads MP3 through mpg123, which writes a line to the process's standard error for
every damaged frame header it meets and cannot be told not to: one broken or hostile file
wrote thousands, outside the bounds the engine's log keeps. FFmpeg (through PyAV, already the
engine's video reader) keeps its messages to itself unless asked. Every other format stays
with libsndfile (engine.audio_io); this module is asked only for files `is_mpeg_audio` names.
"""

from __future__ import annotations

import io
import math
from typing import BinaryIO

import numpy as np

ID3_TAG = b"ID3"
ID3_HEADER_BYTES = 10
MAX_ID3_TAGS = 16  # tags in a row before the audio; more is not a file any tool writes
# how the formats that are not MP3 behind an ID3 tag begin (WAV, RF64, Wave64, FLAC, Ogg, AIFF,
# CAF): engine.audio_formats refuses them with the tag named
LIBSNDFILE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"riff", b"fLaC", b"OggS", b"FORM", b"caff")
# How far past its ID3 tags a file is searched for the first frame when only its header is asked
# for: FFmpeg would search all of it, 11 s a GiB of garbage behind a frame sync, on the thread
# that answers every client before a job is accepted.
HEADER_SEARCH_BYTES = 1 << 20
# Without a length asked for, a file longer than this is refused: a damaged stream's refused
# frames come back as silence, and a small crafted file can claim days of them.
MAX_DECODED_SECONDS = 2 * 3600.0


class MpegAudioError(RuntimeError):
    """FFmpeg could not read the file as MPEG audio (its words, for engine.audio_io's message)."""


class RateTooHigh(Exception):
    """The file's rate (`rate`) is over the reader's limit; nothing was decoded."""

    def __init__(self, rate: int):
        super().__init__(rate)
        self.rate = rate


def _id3_tag_bytes(header: bytes) -> int | None:
    """The length of the ID3v2 tag whose 10-byte header is `header` (header and footer
    included), or None when it is not one."""
    if len(header) < ID3_HEADER_BYTES or header[:3] != ID3_TAG or any(b & 0x80 for b in header[6:10]):
        return None
    size = header[6] << 21 | header[7] << 14 | header[8] << 7 | header[9]  # "syncsafe": 7 bits a byte
    footer = ID3_HEADER_BYTES if header[5] & 0x10 else 0
    return ID3_HEADER_BYTES + size + footer


def _audio_start(file: BinaryIO, start: int) -> tuple[int, bytes]:
    """(offset from `start` past the ID3v2 tags there, the 10 bytes found at that offset)."""
    file.seek(start)
    head, offset = file.read(ID3_HEADER_BYTES), 0
    for _ in range(MAX_ID3_TAGS):
        tag = _id3_tag_bytes(head)
        if tag is None:
            break
        offset += tag
        file.seek(start + offset)
        head = file.read(ID3_HEADER_BYTES)
    return offset, head


def is_mpeg_audio(file: BinaryIO) -> bool:
    """Whether seekable binary `file`, at its start, is MPEG audio: an MPEG frame sync (11 set
    bits: MPEG 1, 2 and 2.5) at its start, or an ID3v2 tag there and behind its tags anything
    but the start of a format libsndfile reads itself (a WAV or FLAC file behind a tag; a
    malformed tag or padding after it is MP3's, where mpg123 would talk). `file` is left
    where it was."""
    start = file.tell()
    try:
        head = file.read(ID3_HEADER_BYTES)
        if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
            return True
        if head[:3] != ID3_TAG:
            return False
        return _audio_start(file, start)[1][:4] not in LIBSNDFILE_MAGIC
    finally:
        file.seek(start)


class Window(io.RawIOBase):
    """`length` bytes of seekable binary `file` from `start`, read-only, as a file of their own."""

    def __init__(self, file: BinaryIO, start: int, length: int):
        super().__init__()
        self._file, self._start, self._length, self._position = file, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._length - self._position)
        if wanted <= 0:
            return 0
        self._file.seek(self._start + self._position)
        data = self._file.read(wanted)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position


def _words(error: Exception) -> str:
    # FFmpeg's own words, without PyAV's errno number and the path the caller names anyway
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _open(file: BinaryIO):
    import av

    try:
        container = av.open(file, mode="r", format="mp3")
    except (av.FFmpegError, ValueError, OSError) as error:
        raise MpegAudioError(_words(error)) from error
    if not container.streams.audio:
        container.close()
        raise MpegAudioError("no audio stream")
    return container


def _too_long() -> MpegAudioError:
    return MpegAudioError(f"it holds more than {MAX_DECODED_SECONDS / 3600:g} hours of audio")


def _float_channels(frame) -> np.ndarray:
    """A decoded audio frame's samples as float32 (C, n) in [-1, 1], whatever its sample format."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # (1, n * C), interleaved
        data = data.reshape(-1, frame.layout.nb_channels).T
    if np.issubdtype(data.dtype, np.integer):
        return (data / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    return data.astype(np.float32, copy=False)


def header(file: BinaryIO) -> tuple[int, int]:
    """(sample rate, channels) from the first frame header of MPEG audio `file`, an open binary
    file at its start, searched for within HEADER_SEARCH_BYTES past its ID3 tags (MpegAudioError
    when none is there); nothing is decoded."""
    start = file.tell()
    offset, _ = _audio_start(file, start)
    container = _open(Window(file, start + offset, HEADER_SEARCH_BYTES))
    try:
        context = container.streams.audio[0].codec_context
        return int(context.sample_rate or 0), int(context.channels or 0)
    finally:
        container.close()


def read(file: BinaryIO, max_seconds: float | None, mono: bool, max_rate: int | None) -> tuple[np.ndarray, int]:
    """The first `max_seconds` of MPEG audio `file` (an open binary file at its start; None:
    all of it, refused beyond MAX_DECODED_SECONDS), float32 (C, S) or (1, S) averaged when
    `mono`, and its rate.
    A frame the decoder refuses comes back as silence as long as it, so what follows keeps its
    time (at the file's end, up to the length its header states), as libsndfile's decoder does;
    one the demuxer skips while finding the next header leaves no trace in the times and is
    lost, as it mostly is there too (measured: a header destroyed in frame 50 loses the same
    frame in both; in frame 1, libsndfile keeps its time and this comes one frame early from
    there on). The rate and channels are the first frame's: frames with another channel count (files joined end to end) are brought to
    it, another rate is refused. A rate over `max_rate` raises RateTooHigh before anything is
    decoded."""
    import av

    container = _open(file)
    try:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        if max_rate is not None and rate > max_rate:
            raise RateTooHigh(rate)
        # a length asked for is read whole, past the bound too: the caller bounds it (a take read
        # up to an offset 2 h 10 min into a long recording came back ending at 2 h, "before take_offset")
        seconds = MAX_DECODED_SECONDS if max_seconds is None else max_seconds
        # times from the stream's start, where its first sample plays after the encoder's delay
        # is skipped: a refused first frame is then silence too, not a shift of all that follows
        origin = stream.start_time or 0
        # the stream's length as its header states it (an encoder's padding at the end taken out),
        # else FFmpeg's estimate from the file's size, which a damaged header can put short
        stated_end = (round(float(stream.duration * stream.time_base) * rate)
                      if stream.duration and stream.time_base is not None and rate > 0 else None)
        blocks, held, channels = [], 0, 0
        refused_end = 0  # where the last frame the decoder refused ends, in samples
        wanted = math.ceil(seconds * rate) if rate > 0 else None  # the first frame's rate sets it again
        try:
            for packet in container.demux(stream):
                if (wanted is not None and packet.pts is not None and packet.time_base is not None
                        and float((packet.pts - origin) * packet.time_base) * rate >= wanted):
                    # decodable or not, nothing from here on is wanted; refused frames before it
                    # are silence up to there
                    if max_seconds is None:
                        raise _too_long()
                    if channels and held < wanted:
                        blocks.append(np.zeros((1 if mono else channels, wanted - held), np.float32))
                        held = wanted
                    break
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:  # its time is kept by the next frame that decodes, or below
                    if packet.pts is not None and packet.duration and packet.time_base is not None:
                        refused_end = max(refused_end, round(
                            float((packet.pts - origin + packet.duration) * packet.time_base) * rate))
                    continue
                for frame in decoded:
                    if not channels:
                        rate, channels = frame.sample_rate, frame.layout.nb_channels
                        if max_rate is not None and rate > max_rate:
                            raise RateTooHigh(rate)
                        wanted = math.ceil(seconds * rate)
                    elif frame.sample_rate != rate:
                        raise MpegAudioError(f"its sample rate changes midway, from {rate} Hz to {frame.sample_rate} Hz")
                    if frame.pts is not None and frame.time_base is not None:
                        gap = min(round(float((frame.pts - origin) * frame.time_base) * rate), wanted) - held
                        if gap > 0:
                            blocks.append(np.zeros((1 if mono else channels, gap), np.float32))
                            held += gap
                    block = _float_channels(frame)                                      # (C_frame, n)
                    if mono:
                        block = block.mean(axis=0, dtype=np.float64, keepdims=True).astype(np.float32)
                    elif block.shape[0] != channels:  # a stream that switches mono/stereo keeps its first count
                        block = np.repeat(block.mean(axis=0, keepdims=True), channels, axis=0)
                    blocks.append(block[:, :max(0, wanted - held)])
                    held += blocks[-1].shape[1]
                if wanted is not None and held >= wanted:
                    if max_seconds is None:
                        raise _too_long()
                    break
            else:
                # frames refused at the end are silence too, up to the stated length where it
                # is not evidently short (the decoded audio already past it)
                end = refused_end if stated_end is None or stated_end < held else min(refused_end, stated_end)
                if channels and min(end, wanted) > held:
                    blocks.append(np.zeros((1 if mono else channels, min(end, wanted) - held), np.float32))
                    held = min(end, wanted)
        except (av.FFmpegError, ValueError, OSError) as error:
            raise MpegAudioError(_words(error)) from error
        except MemoryError:
            raise MpegAudioError("it decodes to more audio than this computer's memory holds") from None
    finally:
        container.close()
    if not blocks:
        return np.zeros((1, 0), np.float32), max(rate, 1)
    try:
        return np.concatenate(blocks, axis=1), rate
    except MemoryError:
        raise MpegAudioError("it decodes to more audio than this computer's memory holds") from None
