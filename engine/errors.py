"""Typed errors. Every message is written for the person at the DAW, not for a programmer:
say what was wrong, with which file or value, and what to do about it."""


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


class GenerationError(StepFoleyError):
    """Sampling went wrong (for example the latent became NaN)."""

    code = "generation_failed"


class GenerationCancelled(StepFoleyError):
    """The user cancelled the job; raised between sampling steps."""

    code = "cancelled"
