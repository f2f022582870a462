"""Which audio files libsndfile is let open, judged from their first bytes and header structure.

libsndfile guesses a format from a file's content, and some of its readers cost far more
than their file's size or never return on crafted headers: an Amiga 8SVX file of 8,200 empty
chunks kept it looping forever, MIDI sample dumps print to the process's output for every
packet, a CAF `info` or `pakt` chunk is decoded whole (5 MiB of memory per MiB), millions of
empty FLAC metadata blocks cost 20 ms a MiB, and bytes between Ogg pages made its length
search crawl (0.3 s a MiB); it skips an ID3 tag in front of any format by its own reckoning.
Inputs reach it on the thread that answers every client (the request's header check) and in
jobs that cannot be cancelled while it reads. So only the
containers a DAW writes are let through (WAV, RF64, Wave64, AIFF, FLAC, Ogg, CAF; MP3 goes to
FFmpeg, engine.mpeg_audio), and those with chunks or blocks libsndfile reads whole are walked
here first, reading headers only (Ogg: every page, at checksum speed, in the job).
"""

from __future__ import annotations

import os
import zlib
from typing import BinaryIO

import soundfile

from stepfoley.engine.mpeg_audio import ID3_TAG

OGG_PAGE = b"OggS"  # an Ogg page's capture pattern, the first bytes of an Ogg file (Vorbis, Opus, FLAC in Ogg)
_WAVE64 = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"  # Sony Wave64's first GUID
FORMATS_READ = "WAV, AIFF, FLAC, Ogg Vorbis or Opus, CAF or MP3"

# FLAC: real files hold a handful of metadata blocks (stream info, seek table, tags, pictures,
# padding) and tags of kilobytes.
MAX_FLAC_BLOCKS = 128
MAX_FLAC_TAG_BYTES = 1 << 20
# CAF: a `pakt` table of 600 s of 192 kHz ALAC is about 85 KB; `info` holds a few text tags.
MAX_CAF_CHUNKS = 256
MAX_CAF_INFO_BYTES = 1 << 16
MAX_CAF_PACKET_TABLE_BYTES = 1 << 20

# An Ogg page: a 27-byte header, up to 255 lacing values, up to 255 x 255 bytes of data.
OGG_HEADER_BYTES = 27
OGG_MAX_PAGE_BYTES = OGG_HEADER_BYTES + 255 + 255 * 255
# Encoders fill pages to kilobytes (Opus at 6 kbit/s still to about 750 bytes a second); past
# its first pages (small headers), a file of smaller ones on average is refused: checking a
# page costs microseconds, and a GiB of empty 27-byte pages took minutes.
OGG_MIN_MEAN_PAGE_BYTES = 256
OGG_PAGES_BEFORE_MEAN = 4096


def open_sound(file: BinaryIO) -> soundfile.SoundFile:
    """libsndfile reading seekable binary `file` (one container_problem let through) from its
    start, by its descriptor. Through a file object libsndfile reads by Python callbacks: a
    crafted header's seek to an impossible offset raised in one, which Python printed to the
    engine's output with a traceback at every open ("Exception ignored from cffi callback").
    libsndfile takes the descriptor's offset for the file's start, so it is set to 0 first; on
    Windows, where each C runtime has descriptors of its own, the file object is given."""
    if os.name == "nt":
        file.seek(0)
        return soundfile.SoundFile(file)
    os.lseek(file.fileno(), 0, os.SEEK_SET)
    return soundfile.SoundFile(file.fileno(), closefd=False)


def is_ogg(file: BinaryIO) -> bool:
    """Whether seekable binary `file`, at its start, is an Ogg file; `file` is left at its start."""
    head = file.read(16)
    file.seek(0)
    return _container(head) == "ogg"


def _container(head: bytes) -> str | None:
    """The container whose first bytes are `head` (16 or more), if libsndfile is let read it."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:16] == _WAVE64:
        return "wave64"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == OGG_PAGE:
        return "ogg"
    if head[:4] == b"caff":
        return "caf"
    return None


def container_problem(file: BinaryIO) -> str | None:
    """Why libsndfile must not open seekable binary `file` (not MPEG audio: engine.mpeg_audio
    asks first), as the rest of a sentence that begins "Audio file 'NAME' ", or None. Reads
    its first bytes, and the block or chunk headers of FLAC and CAF; `file` is left at its start."""
    try:
        head = file.read(16)
        if head[:len(ID3_TAG)] == ID3_TAG:
            flac_at = _flac_behind_tag(file, head)
            if flac_at is None:
                return ("has an ID3 tag in front of its audio, which only MP3 and FLAC files carry. Export it again "
                        "without tags (WAV is safest).")
            return _flac_problem(file, flac_at + 4)
        kind = _container(head)
        if kind is None:
            return (f"is not in a format StepFoley reads ({FORMATS_READ}): it does not begin as any of them do "
                    "(damaged, or another format). Export it again as WAV.")
        if kind == "flac":
            return _flac_problem(file, 4)
        if kind == "caf":
            return _caf_problem(file)
        return None
    finally:
        file.seek(0)


def _flac_behind_tag(file: BinaryIO, head: bytes) -> int | None:
    """Where FLAC begins behind the one ID3 tag that starts `head` (a file's first 16 bytes),
    None for anything else. libsndfile skips a tag by its own reckoning (versions 2-4, sizes
    masked to 7 bits, no footer), and a file crafted where that differs from a careful walk
    showed this check a WAV header and libsndfile an 8SVX file that made it loop for ever; so
    only a tag both read alike, followed by FLAC, is let through. (A WAV behind a tag is not:
    libsndfile drops the tag's length of audio from its end.)"""
    version, flags, size = head[3], head[5], head[6:10]
    if version not in (2, 3, 4) or flags & 0x10 or any(b & 0x80 for b in size):
        return None
    offset = 10 + ((size[0] << 21) | (size[1] << 14) | (size[2] << 7) | size[3])
    file.seek(offset)
    return offset if file.read(4) == b"fLaC" else None


def _flac_problem(file: BinaryIO, position: int) -> str | None:
    # metadata blocks: a byte (last-block flag, type), a 24-bit length, the block
    tag_bytes = 0
    for _ in range(MAX_FLAC_BLOCKS):
        file.seek(position)
        header = file.read(4)
        if len(header) < 4:
            return None  # cut short: libsndfile says so
        length = int.from_bytes(header[1:4], "big")
        if header[0] & 0x7F == 4:  # VORBIS_COMMENT
            tag_bytes += length
            if tag_bytes > MAX_FLAC_TAG_BYTES:
                return (f"holds over {MAX_FLAC_TAG_BYTES >> 20} MiB of tags, far more than any tagger writes (a damaged "
                        "or crafted file). Export it again (WAV is safest).")
        if header[0] & 0x80:
            return None
        position += 4 + length
    return (f"holds over {MAX_FLAC_BLOCKS} metadata blocks, far more than any encoder writes (a damaged or crafted "
            "file). Export it again (WAV is safest).")


def _caf_problem(file: BinaryIO) -> str | None:
    # after the 8-byte file header, chunks: a 4-byte type, a signed 64-bit big-endian size;
    # libsndfile reads on past a sized `data` chunk, so the walk does too
    size = os.fstat(file.fileno()).st_size
    position = 8
    for _ in range(MAX_CAF_CHUNKS):
        file.seek(position)
        header = file.read(12)
        if len(header) < 12:
            return None  # the file's end
        length = int.from_bytes(header[4:12], "big", signed=True)
        if header[:4] == b"data" and length == -1:
            return None  # the audio, to the end of the file
        bound = {b"info": MAX_CAF_INFO_BYTES, b"pakt": MAX_CAF_PACKET_TABLE_BYTES}.get(header[:4])
        if bound is not None and length > bound:
            return (f"holds a {header[:4].decode()} chunk of {length:,} bytes, far more than any encoder writes "
                    f"(at most {bound:,} are read; a damaged or crafted file). Export it again (WAV is safest).")
        if length < 0 or position + 12 + length > size:
            return None  # libsndfile says what is wrong
        position += 12 + length
    return (f"holds over {MAX_CAF_CHUNKS} chunks, far more than any encoder writes (a damaged or crafted file). "
            "Export it again (WAV is safest).")


def ogg_pages_problem(file: BinaryIO) -> str | None:
    """Why an Ogg file is not whole pages end to end, each with its checksum (the rest of a
    sentence as container_problem's), or None. libsndfile finds an Ogg file's length by
    searching for its last page, and bytes between pages that only look like pages made it
    search every one (0.3 s a MiB: minutes for an input's 1 GiB, in a job that cannot be
    cancelled meanwhile). This reads the file once at checksum speed (a fifth of a second for
    64 MiB), and refuses pages smaller on average than any encoder writes
    (OGG_MIN_MEAN_PAGE_BYTES). A last page cut short, or less than a page of other bytes after
    the last one, is left to libsndfile, which reads the pages before it. `file` is left at its start."""
    size = os.fstat(file.fileno()).st_size
    position = pages = 0
    try:
        file.seek(0)
        while size - position >= OGG_HEADER_BYTES:
            if pages > OGG_PAGES_BEFORE_MEAN and position < pages * OGG_MIN_MEAN_PAGE_BYTES:
                return (f"holds Ogg pages of {position // pages} bytes on average, far smaller than any encoder "
                        "writes (a damaged or crafted file). Export it again (WAV is safest).")
            page = file.read(OGG_HEADER_BYTES)
            whole = page[:4] == OGG_PAGE and page[4] == 0  # capture pattern, stream structure version 0
            if whole:
                lacing = file.read(page[26])
                body = file.read(sum(lacing))
                if len(lacing) < page[26] or len(body) < sum(lacing):
                    return None  # the last page, cut short
                page += lacing + body
                whole = ogg_checksum(page) == int.from_bytes(page[22:26], "little")
            if not whole:
                if size - position < OGG_MAX_PAGE_BYTES:
                    return None
                return (f"is damaged: at byte {position:,} of its {size:,} there is no whole Ogg page where the one "
                        "before it ends. Export it again (WAV is safest).")
            position += len(page)
            pages += 1
        return None
    finally:
        file.seek(0)


_BITS_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_checksum(page: bytes) -> int:
    """The CRC an Ogg page carries (polynomial 0x04C11DB7, most significant bit first, no
    initial value or final xor), over the page with its own CRC field as zeros; computed
    through zlib's CRC-32, the same polynomial bit-reversed, at C speed. zlib starts and ends
    with all ones: the CRC of as many zero bytes cancels both."""
    data = page[:22] + bytes(4) + page[26:]
    reflected = zlib.crc32(data.translate(_BITS_REVERSED)) ^ zlib.crc32(bytes(len(data)))
    return int(f"{reflected:032b}"[::-1], 2)
