"""Typed errors. Every message is written for the person at the DAW, not for a programmer:
say what was wrong, with which file or value, and what to do about it."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StepFoleyError(Exception):
    """Base class. `code` is a short stable identifier carried over the OSC protocol."""

    code = "engine_error"


class InvalidInputError(StepFoleyError, ValueError):
    """A request, tensor or parameter that cannot be used as given."""

    code = "invalid_input"


class CheckpointError(StepFoleyError):
    """A weights file that is missing, corrupt, or made for another model."""

    code = "bad_checkpoint"


class VideoError(StepFoleyError):
    """A video that cannot be read, or does not cover the requested region."""

    code = "bad_video"


class AudioError(StepFoleyError):
    """An audio file (an existing stem or mix) that cannot be read or used."""

    code = "bad_audio"


class OutputError(StepFoleyError):
    """A file StepFoley makes (a stem, a report) could not be written: a full disk, a folder
    whose rights changed while the job ran."""

    code = "cannot_write"


class GenerationError(StepFoleyError):
    """Sampling went wrong (for example the latent became NaN)."""

    code = "generation_failed"


class OutOfMemory(StepFoleyError):
    """The computer's or the GPU's memory ran out: not a damaged file nor a bug, and the same
    request may succeed with more memory free or asking less."""

    code = "out_of_memory"


# How the allocators say it in words of their own: torch's CPU allocator ("DefaultCPUAllocator:
# can't allocate memory"), CUDA's and MPS's ("... out of memory ..."), as RuntimeErrors.
_OUT_OF_MEMORY_WORDS = ("can't allocate memory", "out of memory", "DefaultCPUAllocator")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error`, or the error it was raised from, is memory running out (a MemoryError,
    torch's OutOfMemoryError, or an allocator's RuntimeError)."""
    for e in (error, error.__cause__):
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return True
        if isinstance(e, RuntimeError) and any(words in str(e) for words in _OUT_OF_MEMORY_WORDS):
            return True
    return False


def memory_that_ran_out(error: BaseException) -> str:
    """"GPU" or "computer": whose memory an out-of-memory `error` says ran out (a GPU engine
    also runs out of the computer's, mixing or writing a stem)."""
    for e in (error, error.__cause__):
        if e is not None and any(backend in str(e) for backend in ("CUDA", "MPS", "HIP", "XPU")):  # torch's words
            return "GPU"
    return "computer"


@contextmanager
def out_of_memory_said(message: Callable[[str], str]) -> Iterator[None]:
    """Memory running out in the block is raised as OutOfMemory(message(whose)), `whose` being
    "GPU" or "computer": said as what it is and what to do, not as an internal error. An
    OutOfMemory already said, and every other error, pass unchanged."""
    try:
        yield
    except Exception as e:
        if isinstance(e, OutOfMemory) or not is_out_of_memory(e):
            raise
        raise OutOfMemory(message(memory_that_ran_out(e))) from e


class GenerationCancelled(StepFoleyError):
    """The user cancelled the job (or the engine is stopping); raised between sampling steps,
    picture windows, decoded windows and written stems."""

    code = "cancelled"


def not_finite(where: str, what: str = "the audio latent") -> GenerationError:
    """The error of a generation whose numbers overflowed; `where` finishes "Generation failed
    ...", e.g. "at step 3 of 25"."""
    return GenerationError(
        f"Generation failed {where}: {what} became NaN or infinite, so there is no sound to write. This "
        "usually comes from guidance strengths far above the usual range (CFG around 4.5, NAG around 1.5) or "
        "from running in reduced precision; lower the guidance, or run in float32, and try again. If it "
        "persists, the model weights may be damaged.")


def stop_if_cancelled(is_cancelled, where: str) -> None:
    """Raise GenerationCancelled when `is_cancelled` (a callable, or None) says so; `where`
    finishes the sentence "Generation was cancelled ...", e.g. "at step 3 of 25"."""
    if is_cancelled is not None and is_cancelled():
        raise GenerationCancelled(f"Generation was cancelled {where}; nothing was written.")
