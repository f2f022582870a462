"""Reading and writing audio files without ever losing or half-writing one.

Samples are numpy float32 arrays shaped (channels, samples), as everywhere in the mixing
code (soundfile itself uses (samples, channels); the transpose happens only here).

Writes go to a hidden temporary file in the destination folder and are then published
under the final name with an exclusive hard link, so an existing file is never replaced,
two writers racing for one name cannot clobber each other, and a crash mid-write leaves
nothing under the final name.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import soundfile

from stepfoley.engine.errors import AudioError, InvalidInputError

WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
MAX_STEM_NAME_CHARS = 48
FALLBACK_STEM_NAME = "stem"
# Names Windows refuses for files whatever their extension; a REAPER project folder may
# well be shared with a Windows machine.
WINDOWS_RESERVED_NAMES = {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10)}


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any file libsndfile understands. Returns (samples (C, S) float32, sample_rate)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"Audio file not found: '{path}'. Check that it was not moved or renamed.")
    if not path.is_file():
        raise AudioError(f"'{path}' is a folder, not an audio file. Point to a WAV or FLAC file inside it.")
    try:
        frames, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(
            f"Cannot read audio file '{path}': {error}. "
            "It may be damaged or in an unsupported format; export it again as WAV."
        ) from error
    # frames: (S, C)
    if frames.shape[0] == 0:
        raise AudioError(f"Audio file '{path}' is empty (it has no samples). Export it again or remove it.")
    if not np.all(np.isfinite(frames)):
        raise AudioError(
            f"Audio file '{path}' contains NaN or infinite samples. Re-render it from your DAW."
        )
    return np.ascontiguousarray(frames.T), int(sample_rate)


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


def _publish_exclusively(temp_path: Path, final_path: Path) -> None:
    """Give the finished temp file its final name, failing if that name already exists."""
    try:
        # A hard link is created atomically and never replaces an existing entry.
        os.link(temp_path, final_path)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # Filesystems without hard links (exFAT, some network shares): reserve the name
        # with an exclusive create, then move the finished file over our own placeholder.
        placeholder = os.open(final_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(placeholder)
        try:
            os.replace(temp_path, final_path)
        except BaseException:
            os.unlink(final_path)
            raise
        return
    os.unlink(temp_path)


def rename_file(source: str | os.PathLike, target: str | os.PathLike, replace: bool = False) -> Path:
    """Give a finished file another name in the same folder, atomically: an existing `target` is
    replaced only when `replace` is true, else refused (AudioError) and `source` is kept."""
    source, target = Path(source), Path(target)
    try:
        if replace:
            os.replace(source, target)
        else:
            _publish_exclusively(source, target)
    except FileExistsError:
        raise AudioError(f"'{target}' already exists and was left untouched; the new file is "
                         f"'{source}'.") from None
    except OSError as error:
        raise AudioError(f"Could not rename '{source}' to '{target}': {error}. Check the folder's "
                         "permissions.") from None
    return target


def write_wav_atomic(
    path: str | os.PathLike,
    samples: np.ndarray,
    sample_rate: int,
    subtype: str = "PCM_24",
) -> Path:
    """Write `samples` (C, S) as a WAV at `path`, which must not exist yet. Returns the path.

    PCM subtypes clip to [-1, 1]; "FLOAT" keeps overs. The folder must already exist.
    """
    path = Path(path)
    if subtype not in WAV_SUBTYPES:
        raise InvalidInputError(f"Unknown WAV format {subtype!r}; use one of {', '.join(WAV_SUBTYPES)}.")
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise InvalidInputError(f"Cannot write '{path}': sample rate must be a positive whole number, got {sample_rate!r}.")
    array = _validated_samples(samples, path)
    if not path.parent.is_dir():
        raise AudioError(f"Cannot write '{path}': the folder '{path.parent}' does not exist. Create it first.")
    if os.path.lexists(path):
        raise AudioError(f"'{path}' already exists and will not be overwritten. Choose another name.")
    if subtype != "FLOAT":
        array = np.clip(array, -1.0, 1.0)
    frames = np.ascontiguousarray(array.T, dtype=np.float32)
    # frames: (S, C)

    # The temp name is hidden and does not end in .wav, so a DAW scanning the folder
    # never picks up an unfinished file.
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as temp_file:
            soundfile.write(temp_file, frames, int(sample_rate), subtype=subtype, format="WAV")
            temp_file.flush()
            os.fsync(temp_file.fileno())
        _publish_exclusively(temp_path, path)
    except FileExistsError as error:
        raise AudioError(
            f"'{path}' was created by someone else while this file was being written; "
            "it was left untouched. Choose another name."
        ) from error
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"Could not write '{path}': {error}. Check free disk space and folder permissions.") from error
    finally:
        # Whatever happened, the temp name must not survive: after a successful publish
        # it is already gone, after a failure it is the only copy of a useless half file.
        if temp_path.exists():
            temp_path.unlink()
    return path


def sanitize_stem_name(name_hint: str | None) -> str:
    """A filesystem-safe base name from a human hint: 'Footsteps on gravel!' -> 'Footsteps_on_gravel'."""
    decomposed = unicodedata.normalize("NFKD", name_hint or "")
    # Accented letters keep their base letter (café -> cafe); other scripts are dropped
    # because some DAWs and file shares still mangle non-ASCII names.
    ascii_text = decomposed.encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"\s+", "_", ascii_text.strip())
    safe = re.sub(r"[^A-Za-z0-9_-]+", "", words)
    safe = re.sub(r"_+", "_", safe)[:MAX_STEM_NAME_CHARS].strip("_-")
    if not safe:
        return FALLBACK_STEM_NAME
    if safe.upper() in WINDOWS_RESERVED_NAMES:
        safe = f"{safe}_{FALLBACK_STEM_NAME}"
    return safe


def unique_path(directory: str | os.PathLike, stem_name: str | None, ext: str = ".wav") -> Path:
    """The first `<name>_NNN<ext>` in `directory` that does not exist yet (NNN from 001).

    Every take is numbered, so takes of one sound sort together in the DAW's file browser.
    Another process could still take the name before it is written: write_wav_atomic
    refuses to overwrite, so call this again if that happens.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AudioError(f"The output folder '{directory}' does not exist. Create it or choose another folder.")
    if not re.fullmatch(r"\.?[A-Za-z0-9]+", ext):
        raise InvalidInputError(f"File extension {ext!r} is not valid; use something like '.wav'.")
    ext = ext if ext.startswith(".") else f".{ext}"
    base = sanitize_stem_name(stem_name)
    number = 1
    while True:
        candidate = directory / f"{base}_{number:03d}{ext}"
        if not os.path.lexists(candidate):
            return candidate
        number += 1
