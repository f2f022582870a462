"""The files a request names, as the engine looks at them: before /accepted (check_request_paths:
the output folder, each input's kind and size on disk, and an audio input's header: its rate,
and a take's channels and length), and as a job opens them (open_input, open_regular_input: a
pipe or a device is never waited on). What a field may hold is stepfoley.request's; this module
only reads the file system.

No torch, and soundfile only inside the header check: the bridge and `stepfoley send` (which
REAPER runs for every job and every status poll) import this module.
"""

from __future__ import annotations

import math
import os
import stat

from stepfoley.atomic import can_make_file_in, name_too_long
from stepfoley.request import (DECODED_BYTES_PER_SAMPLE, MAX_INPUT_AUDIO_BYTES, MAX_INPUT_SAMPLE_RATE,
                               MAX_STEM_FILE_NAME_BYTES, MAX_TAKE_DECODED_BYTES, GenerationRequest, RequestError,
                               check_stem_size, is_utf8, mib, printable, time_text)


def check_request_paths(request: GenerationRequest) -> GenerationRequest:
    """`request` (parse_request's), once the files it names pass what the engine checks before
    /accepted: output_dir an existing writable folder, every input that exists a regular file
    within its size, and the header of each audio input within the rate, and the take's within
    the stem's size (its channels) and MAX_TAKE_DECODED_BYTES; a missing or unreadable file is
    left to the job. The bridge looks a retransmission up first: its files were checked when it
    was accepted. Raises RequestError naming the field."""
    _check_output_dir(request.output_dir)
    _check_input_file(request.region.video, "region.video")
    for name in ("existing_mix", "reference_audio", "take"):
        if getattr(request, name) is not None:
            _check_input_file(getattr(request, name), name, MAX_INPUT_AUDIO_BYTES, request)
    return request


def _check_output_dir(folder: str) -> None:
    if not os.path.isdir(folder):
        raise RequestError(f"output_dir '{printable(folder)}' does not exist or is not a folder. "
                           "Create it (or save the project) first.")
    if not can_make_file_in(folder):
        raise RequestError(f"output_dir '{printable(folder)}' is not writable by the engine. Pick a folder you can "
                           "write to.")
    too_deep = name_too_long(os.path.join(folder, "s" * MAX_STEM_FILE_NAME_BYTES))  # the stems' and temp files' paths
    if too_deep:
        raise RequestError(f"output_dir '{printable(folder)}': {too_deep}")
    resolved = os.path.realpath(folder)
    if os.path.realpath(os.path.abspath(folder)) != resolved and not is_utf8(resolved):
        # the stems are named by the folder they are in where the text, read as text, does not lead
        # there (a `..` after a link goes up from its target): a name the client could not be told
        raise RequestError(f"output_dir '{printable(folder)}' leads to the folder '{printable(resolved)}', whose name "
                           "is not UTF-8 text, so the stems made there could not be named to the client. Pick a folder "
                           "whose path is plain text.")


def _check_input_file(path: str, name: str, max_bytes: int | None = None,
                      audio_of: GenerationRequest | None = None) -> None:
    # A missing file is the job's error (invalid_input, docs/osc-protocol.md), as when it vanishes later; a
    # pipe or a device would block or never end, and a giant file is refused before any work.
    try:
        info = os.stat(path)
    except OSError:
        return
    _check_regular(info, path, name, max_bytes)
    if audio_of is not None:
        _check_audio_header(path, name, max_bytes, audio_of)


def _check_regular(info: os.stat_result, path: str, name: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise RequestError(f"{name} '{printable(path)}' is not a regular file (a folder, a pipe or a device); "
                           "point it to a file.")
    if max_bytes is not None and info.st_size > max_bytes:
        raise RequestError(f"{name} '{printable(path)}' is {info.st_size / 2**20:.0f} MiB; at most {mib(max_bytes)} is "
                           "read. Bounce only the region, or at a lower rate or with fewer channels.")


def take_length_problem(request: GenerationRequest, frames_after_offset: int, rate: int) -> str | None:
    """Why the take cannot give the stem what it keeps, from its frames after take_offset at
    `rate` Hz (said from its header here, and by engine.service from what it reads), or None."""
    if frames_after_offset <= 0:
        return f"The take '{printable(request.take)}' ends before take_offset ({time_text(request.take_offset)} s)."
    length, (start, end) = request.region.project_duration, request.regenerate
    seconds = frames_after_offset / rate
    needed = length if end < length - 1e-6 else start  # the take must hold every kept sample
    if seconds < needed - 1e-3:
        held = (f"is {seconds:.3f} s long" if request.take_offset == 0 else
                f"holds {seconds:.3f} s after its take_offset of {time_text(request.take_offset)} s")
        return (f"The take '{printable(request.take)}' {held}, but the stem keeps it up to "
                f"{needed:.3f} s from project_start. Regenerate from {seconds:.3f} s on (extend), or choose a "
                "longer take.")
    return None


def input_rate_message(what: str, rate: int, limit: int = MAX_INPUT_SAMPLE_RATE) -> str:
    """Why an input recording at `rate` Hz is refused (over `limit`): said here from its header,
    and by engine.audio_io when it reads the file (which may have changed since)."""
    return f"{what} is at {rate} Hz; at most {limit} Hz is read. Export it at the project's rate."


def open_input(path: str | os.PathLike) -> int:
    """A read-only descriptor of an input file, opened without waiting (opening a pipe for
    reading waits for a writer: say what it is from fstat before reading) and in binary mode
    (Windows would translate a text-mode one). Raises OSError."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                   | getattr(os, "O_BINARY", 0))


def open_regular_input(path: str | os.PathLike):
    """The input file at `path` as a binary file object named by its path, opened without
    waiting (open_input); None, having closed it, when fstat says it is not a regular file (a
    folder, a pipe or a device: each caller says so in its own words). Raises OSError."""
    import io

    raw = io.FileIO(open_input(path), "rb")
    if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
        raw.close()
        return None
    raw.name = os.fspath(path)  # what a reader's messages name (the descriptor's number otherwise)
    return io.BufferedReader(raw)


def _check_audio_header(path: str, name: str, max_bytes: int | None, request: GenerationRequest) -> None:
    """What the header of an audio input says, checked before /accepted: its rate, and for the
    take the stem its channels make and the memory reading it takes. Only the header is read; a
    file soundfile cannot read stays the job's error (bad_audio), as when it is read later."""
    import soundfile  # here, not at the top: `send` imports this module and reads no header

    from stepfoley.engine import audio_formats, mpeg_audio

    try:  # checked again once open: the path may have become a pipe since it was looked at
        fd = open_input(path)
    except OSError:
        return
    with os.fdopen(fd, "rb") as file:
        _check_regular(os.fstat(fd), path, name, max_bytes)
        try:
            mpeg = mpeg_audio.is_mpeg_audio(file)
            if mpeg:  # not libsndfile's mpg123, which writes to stderr
                (rate, channels), frames = mpeg_audio.header(file), math.inf  # as far as the stem reads
            elif audio_formats.container_problem(file):
                # not to be opened by libsndfile, which could hold this thread for minutes or for
                # ever (engine.audio_formats); the job says why
                return
            elif audio_formats.is_ogg(file):
                # libsndfile finds an Ogg file's length by searching it from its end for the last
                # page: a tail of false page headers kept this thread, which answers every client,
                # 0.3 s a MiB (5 minutes for 1 GiB); its header pages are at its start
                info = soundfile.info(mpeg_audio.Window(file, 0, mpeg_audio.HEADER_SEARCH_BYTES))
                rate, channels, frames = int(info.samplerate), int(info.channels), math.inf
            else:
                with audio_formats.open_sound(file) as sound:
                    rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
        except Exception:  # soundfile raises several kinds (LibsndfileError, RuntimeError, TypeError, ...)
            return
    if rate > MAX_INPUT_SAMPLE_RATE:
        raise RequestError(input_rate_message(f"{name} '{printable(path)}'", rate))
    if name != "take" or rate <= 0 or channels <= 0:
        return
    check_stem_size(request, channels, path)
    # engine.service.TakeAudio.read: every channel, from take_offset for the stem's length (MPEG
    # audio decoded from its start)
    offset = round(request.take_offset * rate)
    length = math.ceil(request.region.project_duration * rate)
    read = min(max(frames, 0), offset + length) if mpeg else min(max(frames - offset, 0), length)
    decoded = read * channels * DECODED_BYTES_PER_SAMPLE
    if decoded > MAX_TAKE_DECODED_BYTES:
        how = "from its start to take_offset + the stem's length" if mpeg else "from take_offset for the stem's length"
        raise RequestError(f"take '{printable(path)}' would fill {decoded / 2**20:.0f} MiB of memory "
                           f"({read / rate:.1f} s of {channels} channels at {rate} Hz as 32-bit floats: the engine "
                           f"reads it {how}); at most {mib(MAX_TAKE_DECODED_BYTES)} is read. Bounce the take with "
                           "fewer channels or at a lower rate"
                           + (", or as WAV, whose audio is read from take_offset on." if mpeg else "."))
    problem = take_length_problem(request, frames - round(request.take_offset * rate), rate)
    if problem:
        raise RequestError(problem)
