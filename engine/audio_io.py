"""Reading and writing audio files without ever losing or half-writing one.

Samples are numpy float32 arrays shaped (channels, samples), as everywhere in the mixing
code (soundfile itself uses (samples, channels); the transpose happens only here).

Writes go through stepfoley.atomic (a hidden temporary file, then an exclusive publish under
the final name): an existing file is never replaced, two writers racing for one name cannot
clobber each other, and a crash mid-write leaves nothing under the final name. Each write into a
folder first removes the temporary files that killed writers left there
(atomic.sweep_stale_parts). Takes that belong together (a job's variations) are all staged
before any is named (stage_new_wav, publish_new_wav).

Reading is bounded: `read_audio` can stop after a number of seconds, refuse files over a size
or a sample rate, and downmix to mono block by block, so a long or wide file never sits whole
in memory.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import soundfile

from stepfoley import atomic
from stepfoley.engine import mpeg_audio
from stepfoley.engine.errors import AudioError, InvalidInputError, OutputError
from stepfoley.engine.audio_formats import container_problem, is_ogg, ogg_pages_problem, open_sound
from stepfoley.engine.input_files import input_rate_message, open_regular_input
from stepfoley.request import MAX_INPUT_AUDIO_BYTES, MAX_INPUT_SAMPLE_RATE, SHORT_INPUT_TOLERANCE_S

WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
MAX_STEM_NAME_CHARS = 48
FALLBACK_STEM_NAME = "stem"
# Names Windows refuses for files whatever their extension; a REAPER project folder may
# well be shared with a Windows machine.
WINDOWS_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10)}
BYTES_PER_SAMPLE = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}
# libsndfile's name for MP3's sample format, said the same whichever decoder read it
MPEG_SUBTYPE = "MPEG_LAYER_III"
# A float file may hold overs, and old editors wrote floats scaled to 24- or 32-bit integers
# (up to 2.1e9), but nothing beyond this (+200 dBFS), whose squares overflow float32 sums.
MAX_INPUT_PEAK = 1e10
# Samples (frames x channels) read at once; a block is downmixed before the next is read.
READ_BLOCK_SAMPLES = 1 << 20
# libsndfile's frame count for a stream whose header does not give its length (SF_COUNT_MAX)
UNKNOWN_FRAMES = 2 ** 63 - 1


def read_audio(path: str | os.PathLike, max_seconds: float | None = None, mono: bool = False,
               max_bytes: int | None = None, max_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a WAV, AIFF, FLAC, Ogg or CAF file with libsndfile (engine.audio_formats says which
    files it may open), or MPEG audio with FFmpeg (engine.mpeg_audio says why): its first
    `max_seconds` (all of it when None), averaged to one channel when `mono`. Files over
    `max_bytes` or `max_rate` Hz are refused before any sample is read. Returns (samples (C, S)
    float32, sample_rate)."""
    samples, sample_rate, _ = read_audio_and_subtype(path, max_seconds, mono, max_bytes, max_rate)
    return samples, sample_rate


def read_audio_and_subtype(path: str | os.PathLike, max_seconds: float | None = None, mono: bool = False,
                           max_bytes: int | None = None, max_rate: int | None = None,
                           start_seconds: float = 0.0) -> tuple[np.ndarray, int, str]:
    """read_audio, and the file's sample format ("PCM_24", "FLOAT", ...) from the same open:
    whether float32 samples hold the file's exactly is a fact of the file that was read. With
    `start_seconds`, the audio from that time on (its sample round(start * rate)) for
    `max_seconds`, none when the file ends before it (the caller says what it lacks):
    libsndfile's formats seek there, MPEG audio is decoded from its start."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"Audio file not found: '{path}'. Check that it was not moved or renamed.")
    if path.is_dir():
        raise AudioError(f"'{path}' is a folder, not an audio file. Point to a WAV or FLAC file inside it.")
    try:
        # given to libsndfile as a file object: it opens a path by name only up to 1023 bytes
        file = open_regular_input(path)
        if file is None:
            raise AudioError(f"'{path}' is not a regular file (a pipe or a device). Point to a WAV or FLAC file.")
        with file:
            size = os.fstat(file.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise AudioError(f"Audio file '{path}' is {size / 2**20:.0f} MiB; at most "
                                 f"{max_bytes / 2**20:g} MiB is read. Bounce only the region, or at a lower rate or "
                                 "with fewer channels.")
            if mpeg_audio.is_mpeg_audio(file):
                try:
                    samples, sample_rate = mpeg_audio.read(
                        file, None if max_seconds is None else start_seconds + max_seconds, mono, max_rate)
                except mpeg_audio.RateTooHigh as high:
                    raise AudioError(input_rate_message(f"Audio file '{path}'", high.rate, max_rate)) from None
                samples, subtype = samples[:, round(start_seconds * sample_rate):], MPEG_SUBTYPE
            else:
                problem = container_problem(file) or (ogg_pages_problem(file) if is_ogg(file) else None)
                if problem:
                    raise AudioError(f"Audio file '{path}' {problem}")
                with open_sound(file) as sound:
                    if max_rate is not None and sound.samplerate > max_rate:
                        raise AudioError(input_rate_message(f"Audio file '{path}'", sound.samplerate, max_rate))
                    samples = _read_blocks(sound, max_seconds, mono, path, round(start_seconds * sound.samplerate))
                    sample_rate, subtype = sound.samplerate, sound.subtype
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(
            f"Cannot read audio file '{path}': {_reason(error)}. "
            "It may be damaged or in an unsupported format; export it again as WAV."
        ) from error
    if samples.shape[1] == 0 and not start_seconds:
        raise AudioError(f"Audio file '{path}' is empty (it has no samples). Export it again or remove it.")
    if not np.all(np.isfinite(samples)):
        raise AudioError(
            f"Audio file '{path}' contains NaN or infinite samples. Re-render it from your DAW."
        )
    # no |samples| copy: a take may fill 1 GiB; none at all past start_seconds
    peak = float(max(samples.max(), -samples.min())) if samples.size else 0.0
    if peak > MAX_INPUT_PEAK:  # squared and summed, such samples overflow: the job failed blaming the guidance
        raise AudioError(f"Audio file '{path}' holds samples up to {peak:.3g} times full scale, far beyond any "
                         "recording (a damaged float file?). Re-render it from your DAW.")
    return samples, int(sample_rate), subtype


def read_input_audio(path: str | os.PathLike, seconds: float) -> tuple[np.ndarray, int]:
    """The first `seconds` of an input recording (a bounce, a reference, an existing stem),
    mono, within the limits of a request's input audio (stepfoley.request): a bounded file at a
    bounded rate, and only the stretch that is heard."""
    return read_audio(path, max_seconds=seconds, mono=True, max_bytes=MAX_INPUT_AUDIO_BYTES,
                      max_rate=MAX_INPUT_SAMPLE_RATE)


def seconds_short_of(samples: np.ndarray, sample_rate: int, seconds: float) -> float | None:
    """How long (C, S) audio is when it falls short of `seconds` (beyond SHORT_INPUT_TOLERANCE_S),
    else None."""
    held = samples.shape[-1] / sample_rate
    return held if held < seconds - SHORT_INPUT_TOLERANCE_S else None


def _read_blocks(sound: soundfile.SoundFile, max_seconds: float | None, mono: bool, path: Path,
                 start: int = 0) -> np.ndarray:
    # -> (C or 1, S) float32 from frame `start`; never more than `max_seconds` nor one block of
    # all channels at once
    # a length the header does not give (a FLAC written to a pipe says so with the largest
    # count there is) is found by reading: the buffer then grows as it fills
    unknown = sound.frames >= UNKNOWN_FRAMES
    if start >= sound.frames:
        return np.empty((1 if mono else sound.channels, 0), np.float32)
    block = max(1, READ_BLOCK_SAMPLES // sound.channels)
    try:
        _move_to(sound, start, block)
        left = sound.frames - start
        wanted = left if max_seconds is None else min(left, math.ceil(max_seconds * sound.samplerate))
        out = np.empty((1 if mono else sound.channels, block if unknown else max(wanted, 0)), np.float32)
        done = 0
        while done < wanted:
            frames = sound.read(min(block, wanted - done), dtype="float32", always_2d=True)  # (S, C)
            if len(frames) == 0:
                break
            if done + len(frames) > out.shape[1]:
                out = np.concatenate([out[:, :done], np.empty((out.shape[0], max(done, block)), np.float32)], axis=1)
            out[:, done:done + len(frames)] = frames.mean(axis=1, dtype=np.float64) if mono else frames.T
            done += len(frames)
    except MemoryError:
        raise AudioError(f"Audio file '{path}' holds more audio than this computer's memory, or its header "
                         "says it does. Bounce only the region, or export it again.") from None
    except (soundfile.SoundFileError, RuntimeError) as error:
        if not unknown:
            raise
        # libsndfile seeks within such a FLAC by its length and fails some way before its end
        # ("Internal psf_fseek() failed"): only a stretch well inside it can be read
        raise AudioError(f"Audio file '{path}' does not say how long it is in its header (as a FLAC file "
                         "written to a pipe does), and it cannot be read up to its end or from far into it. Export it again "
                         "from your DAW, or as WAV.") from error
    return out[:, :done]


def _move_to(sound: soundfile.SoundFile, start: int, block: int) -> None:
    """Put `sound` at frame `start` (read `block` frames at a time where it cannot seek)."""
    if start and sound.format == "OGG":
        # libsndfile seeks a Vorbis file's last page to the wrong sample (48 samples late at
        # 44.1 kHz): decoded from the start and dropped, block by block, as a full read has it
        skipped = 0
        while skipped < start:
            read = len(sound.read(min(block, start - skipped), dtype="float32"))
            if read == 0:
                break
            skipped += read
    elif start:
        sound.seek(start)


def _validated_samples(samples: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(samples)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] < 1:
        raise InvalidInputError(
            f"Cannot write '{path}': audio must be shaped (channels, samples), got {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(
            f"Cannot write '{path}': samples must be floating point in [-1, 1], got {array.dtype}."
        )
    if array.shape[1] == 0:
        raise AudioError(f"Refusing to write '{path}': the audio has no samples.")
    if not np.all(np.isfinite(array)):
        raise AudioError(f"Refusing to write '{path}': the audio contains NaN or infinite samples.")
    return array


def write_wav_atomic(
    path: str | os.PathLike,
    samples: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_24",
    max_bytes: int | None = None,
) -> Path:
    """Write `samples` (C, S) as a WAV at `path`, which must not exist yet. Returns the path.

    PCM subtypes clip to [-1, 1]; "FLOAT" keeps overs. The folder must already exist. A file
    larger than `max_bytes` is refused before anything is written. Temp files that killed
    writers left in the folder are removed first.
    """
    path = Path(path)
    frames = _wav_frames(path, samples, sample_rate, subtype, max_bytes)
    if os.path.lexists(path):
        raise AudioError(f"'{path}' already exists and will not be overwritten. Choose another name.")
    staged = _stage_wav(path, frames, int(sample_rate), subtype, f"'{path}'")
    try:
        staged.publish(path)
    except FileExistsError as error:
        raise AudioError(
            f"'{path}' was created by someone else while this file was being written; "
            "it was left untouched. Choose another name."
        ) from error
    except OSError as error:
        raise _naming_failed(path, error) from error
    finally:
        staged.discard()
    return path


def _wav_frames(path: Path, samples: np.ndarray, sample_rate: int, subtype: str, max_bytes: int | None) -> np.ndarray:
    """The frames (S, C) float32 to write at `path`, after every check that needs no writing."""
    if subtype not in WAV_SUBTYPES:
        raise InvalidInputError(f"Unknown WAV format {subtype!r}; use one of {', '.join(WAV_SUBTYPES)}.")
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise InvalidInputError(f"Cannot write '{path}': sample rate must be a positive whole number, got {sample_rate!r}.")
    array = _validated_samples(samples, path)
    if max_bytes is not None and array.size * BYTES_PER_SAMPLE[subtype] > max_bytes:
        raise AudioError(f"Refusing to write '{path}': {array.size * BYTES_PER_SAMPLE[subtype] / 2**20:.0f} MiB "
                         f"is more than the {max_bytes / 2**20:g} MiB a stem may have.")
    check_output_folder(path.parent)
    if subtype != "FLOAT":
        array = np.clip(array, -1.0, 1.0)
    with np.errstate(over="ignore"):  # found below, in words
        frames = np.ascontiguousarray(array.T, dtype=np.float32)
    if array.dtype != np.float32 and not np.all(np.isfinite(frames)):  # beyond float32's range: inf
        raise AudioError(f"Refusing to write '{path}': the audio holds samples beyond what a 32-bit float WAV "
                         "can store (over 3.4e38).")
    return frames


def _stage_wav(path: Path, frames: np.ndarray, sample_rate: int, subtype: str, what: str) -> atomic.StagedFile:
    # frames: (S, C); `what`: the file as a message names it (a stem's name is chosen only later)
    atomic.sweep_stale_parts(path.parent)
    # The temp name is hidden and does not end in .wav, so a DAW scanning the folder never picks
    # up an unfinished file; soundfile is told the format, since the name does not say it.
    try:
        # written into the file created, never reopened by name: the folder is the client's
        return atomic.stage_stream(path, lambda file: _write_wav(file, frames, sample_rate, subtype))
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise OutputError(f"Could not write {what}: {_reason(error)}. Check free disk space and folder "
                          "permissions.") from error


def _naming_failed(path: Path, error: OSError) -> OutputError:
    """Why a written stem could not be given its name `path`. Said in the OS's words alone: the
    error's own text named the hidden temporary file, which the user never sees."""
    if isinstance(error, FileNotFoundError):  # the temporary file went with its folder
        return OutputError(f"Could not write '{path}': the folder was moved, replaced or removed while the stem was "
                           "being written, and nothing was left in it. Choose the output folder again and make the "
                           "stem once more.")
    return OutputError(f"Could not write '{path}': {error.strerror or _reason(error)}. Check the folder's permissions.")


def _reason(error: Exception) -> str:
    # libsndfile's own words ("Format not recognised"): its message names the file object it was
    # given, not the file
    return str(getattr(error, "error_string", None) or error).rstrip(".")


def _write_wav(file, frames: np.ndarray, sample_rate: int, subtype: str) -> None:
    # into an open binary file (also spares libsndfile paths, which it opens only up to 1023 bytes),
    # by its descriptor where libsndfile takes one: through a file object it writes by Python
    # callbacks, and a Ctrl-C landing in one was swallowed ("Exception ignored from cffi
    # callback"): the write came out short, said as a full disk, or the stop was lost
    target = file if os.name == "nt" else file.fileno()  # Windows: the C runtimes' descriptors differ
    try:
        soundfile.write(target, frames, sample_rate, subtype=subtype, format="WAV", closefd=False)
    except (AssertionError, soundfile.SoundFileError, RuntimeError) as error:
        # libsndfile says only "System error" for a full disk (through callbacks, soundfile
        # asserted on a short count): the disk is asked
        if _disk_full(file.fileno(), frames.size * BYTES_PER_SAMPLE.get(subtype, 4)):
            raise OSError("the disk is full") from None
        if isinstance(error, AssertionError):
            raise OSError("the file came out shorter than its samples") from None
        raise


def _disk_full(fd: int, wanted_bytes: int) -> bool:
    """Whether the file system of `fd` has less room left than `wanted_bytes` (False where it does not say)."""
    try:
        room = os.fstatvfs(fd)
    except (AttributeError, OSError):  # Windows has no statvfs
        return False
    return room.f_bavail * room.f_frsize < wanted_bytes


# Letters that no Unicode decomposition takes to ASCII, spelled as their languages' own
# transliterations (German, Nordic, Polish, Croatian, Icelandic, French; Cyrillic: the
# Russian and Ukrainian letters, as passports spell them).
_LATIN = {"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D",
          "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "œ": "oe", "Œ": "OE", "ı": "i"}
_CYRILLIC = dict(zip("абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґ",
                     ["a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "y", "k", "l", "m", "n", "o", "p", "r", "s",
                      "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya", "i", "yi", "ye",
                      "g"]))
_TRANSLITERATION = str.maketrans({**_LATIN, **_CYRILLIC,
                                  **{k.upper(): v.capitalize() for k, v in _CYRILLIC.items()}})


def sanitize_stem_name(name_hint: str | None) -> str:
    """A filesystem-safe base name from a human hint: 'Footsteps on gravel!' -> 'Footsteps_on_gravel'."""
    spelled = unicodedata.normalize("NFC", name_hint or "").translate(_TRANSLITERATION)
    decomposed = unicodedata.normalize("NFKD", spelled)
    # Accented letters keep their base letter (café -> cafe), ß, ł, ø and Cyrillic are spelled
    # out; other scripts are dropped because some DAWs and file shares still mangle non-ASCII names.
    # punctuation parts words ("Kick 1/2" read "Kick_12", "door—slam" "doorslam"), and so do the
    # other scripts' words; an apostrophe is inside a word, and an accent belongs to its letter
    unspaced = decomposed.replace("'", "").replace("\u2019", "")
    ascii_text = "".join(c if c.isascii() or unicodedata.category(c).startswith("M") else " " for c in unspaced)
    ascii_text = ascii_text.encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text)
    safe = re.sub(r"_+", "_", safe.strip("_-"))[:MAX_STEM_NAME_CHARS].strip("_-")
    if not safe:
        return FALLBACK_STEM_NAME
    if safe.upper() in WINDOWS_RESERVED_NAMES:
        safe = f"{safe}_{FALLBACK_STEM_NAME}"
    return safe


def check_output_folder(directory: Path) -> None:
    """InvalidInputError unless `directory` is a folder: a request's field, as when it is checked
    before the job (the same code whether it went before or while the job ran)."""
    if not directory.is_dir():
        what = "is not a folder" if os.path.lexists(directory) else "does not exist"
        raise InvalidInputError(f"The output folder '{directory}' {what}. Create it or choose another folder.")


def unique_path(directory: str | os.PathLike, stem_name: str | None, ext: str = ".wav") -> Path:
    """The first `<name>_NNN<ext>` in `directory` that does not exist yet (NNN from 001).

    Every take is numbered, so takes of one sound sort together in the DAW's file browser.
    A name taken in another case counts as taken ("Rain_001.wav" and "rain_001.wav" are one
    file on macOS, Windows, exFAT and most shares, where a project folder may be copied).
    Another process could still take the name before it is written: publishing never
    overwrites, so publish_new_wav calls this again if that happens.
    """
    directory = Path(directory)
    check_output_folder(directory)
    if not re.fullmatch(r"\.?[A-Za-z0-9]+", ext):
        raise InvalidInputError(f"File extension {ext!r} is not valid; use something like '.wav'.")
    ext = ext if ext.startswith(".") else f".{ext}"
    base = sanitize_stem_name(stem_name)
    try:
        taken = {name.casefold() for name in os.listdir(directory)}
    except OSError:
        taken = set()  # a folder that cannot be listed: each name is still checked on its own
    number = 1
    while True:
        candidate = directory / f"{base}_{number:03d}{ext}"
        if candidate.name.casefold() not in taken and not os.path.lexists(candidate):
            return candidate
        number += 1


def write_new_wav(directory: str | os.PathLike, name_hint: str | None, samples: np.ndarray, sample_rate: int,
                  subtype: str = "PCM_24", max_bytes: int | None = None, stem_file: str | os.PathLike | None = None,
                  replace: bool = False) -> Path:
    """Write a new take under the first free `<name>_NNN.wav` (stage_new_wav, then
    publish_stem); a writer that takes the name first only moves this one on to the next number.
    `stem_file`, `replace`: publish_stem's."""
    staged = stage_new_wav(directory, name_hint, samples, sample_rate, subtype, max_bytes)
    try:
        return publish_stem(staged, directory, name_hint, stem_file, replace)
    finally:
        staged.discard()


def publish_stem(staged: atomic.StagedFile, directory: str | os.PathLike, name_hint: str | None,
                 stem_file: str | os.PathLike | None = None, replace: bool = False) -> Path:
    """Name a staged take: `stem_file` when given (a name in `directory` the user chose; an
    existing file there replaced only when `replace`), otherwise publish_new_wav's numbered name.
    Straight from the temporary file either way: no other name is ever seen. When `stem_file`
    cannot be taken (it exists and not `replace`, or it cannot be replaced: a folder now, or
    held open by another program on Windows) the take gets a numbered name all the same, never
    lost; the caller tells from the path returned."""
    if stem_file is not None:
        try:
            return staged.publish(Path(directory) / Path(stem_file).name, replace=replace)
        except OSError:
            pass
    return publish_new_wav(staged, directory, name_hint)


def stage_new_wav(directory: str | os.PathLike, name_hint: str | None, samples: np.ndarray, sample_rate: int,
                  subtype: str = "PCM_24", max_bytes: int | None = None) -> atomic.StagedFile:
    """Write a new take (C, S) to a hidden temporary file in `directory`, on the disk but not yet
    named: publish_new_wav names it, `discard()` drops it. A job of several takes stages every
    one before it names any, so a job stopped or killed part way leaves none of its takes."""
    directory = Path(directory)
    check_output_folder(directory)
    path = directory / f"{sanitize_stem_name(name_hint)}.wav"  # names only the temp file
    return _stage_wav(path, _wav_frames(path, samples, sample_rate, subtype, max_bytes), int(sample_rate), subtype,
                      f"a new stem in '{directory}'")


def publish_new_wav(staged: atomic.StagedFile, directory: str | os.PathLike, name_hint: str | None) -> Path:
    """Name a staged take `<name>_NNN.wav`, the first number free in `directory`; the name is
    taken exclusively, so a writer that took it first moves this take on to the next one."""
    for _ in range(100):
        path = unique_path(directory, name_hint)
        try:
            return staged.publish(path)
        except FileExistsError:
            continue
        except OSError as error:
            raise _naming_failed(path, error) from error
    raise OutputError(f"Could not find a free name for '{name_hint}' in '{directory}': other writers took 100 in a row.")
