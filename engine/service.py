"""FoleyService: the engine as the bridge sees it.

A checked request (stepfoley.request.GenerationRequest) goes in; a new WAV stem is written
into the request's output directory and its path and metadata come out. Video features are
cached across requests, so the 2nd..Nth track of a region skips the video encoders.

Inputs are read only for the region they cover, mono, within the limits of stepfoley.request;
the stem is checked against the byte cap before it is written, and everything that can fail
runs before the write, so a failed job leaves no stem.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stepfoley.engine import audio_io, mixing, output_folders
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.session import ProgressFn, StepSession, TrackSettings
from stepfoley.request import (MAX_INPUT_AUDIO_BYTES, MAX_INPUT_SAMPLE_RATE, MAX_STEM_BYTES, Capabilities,
                               GenerationRequest)

FORMATS = {"wav24": "PCM_24", "wav32f": "FLOAT"}
STEM_CEILING_DBTP = mixing.STEM_CEILING_DBTP  # the session finished the track; kept after resampling


def _existing_file(path: str, what: str) -> Path:
    # The request was checked when it arrived; the file may have gone since.
    if not os.path.isfile(path):
        raise InvalidInputError(f"{what} '{path}' does not exist or is not a file.")
    return Path(path)


def _read_input(path: str, what: str, seconds: float) -> tuple[np.ndarray, int]:
    """The first `seconds` of an input recording, mono, within the request's input limits."""
    return audio_io.read_audio(_existing_file(path, what), max_seconds=seconds, mono=True,
                               max_bytes=MAX_INPUT_AUDIO_BYTES, max_rate=MAX_INPUT_SAMPLE_RATE)


class FoleyService:
    """A runner for bridge.server: `service(request, on_progress, is_cancelled) -> result`."""

    def __init__(self, model: FoleyModel, feature_cache=None):
        self.model = model
        self.feature_cache = feature_cache

    def describe(self) -> dict:
        return {"model": self.model.model_id, "device": str(self.model.device), "note": self.model.note}

    def capabilities(self) -> Capabilities:
        return self.model.capabilities()

    def __call__(self, request: GenerationRequest, on_progress: ProgressFn | None = None,
                 is_cancelled: Callable[[], bool] | None = None,
                 existing_tracks: Sequence[tuple[np.ndarray, int]] = ()) -> dict:
        """`existing_tracks`: (samples, sample_rate) of stems already in memory, heard like the
        request's existing_mix (stepfoley generate --existing: no bounce file)."""
        region = request.region
        video = _existing_file(region.video, "The video")
        if not os.path.isdir(request.output_dir):
            raise InvalidInputError(f"The output folder '{request.output_dir}' does not exist; create it first.")
        session = StepSession(self.model, Region(video, region.file_in, region.file_out), self.feature_cache)
        for samples, sample_rate in existing_tracks:
            session.add_track(samples, sample_rate)
        reference = None
        if request.reference_audio is not None:
            # looped or trimmed to the region's picture: more than that is never heard
            reference = _read_input(request.reference_audio, "The reference sound", region.duration)
        elif request.existing_mix is not None:
            # the DAW's bounce of the region, from project_start: it covers the stem's length
            seconds = max(region.duration, region.project_duration)
            session.add_track(*_read_input(request.existing_mix, "The bounced mix", seconds), request.previous_captions)
        track = session.next_track(TrackSettings.from_request(request), on_progress=on_progress,
                                   is_cancelled=is_cancelled, reference=reference)

        # The picture plays at `playrate`, so the stem is varispeeded to its length on the timeline
        # (one resampling to the request's rate and that length).
        length = int(round(region.project_duration * request.sample_rate))
        stem = mixing.resample_to_length(track.samples[None], track.sample_rate, request.sample_rate, length)
        stem = mixing.limit_true_peak(stem, request.sample_rate, STEM_CEILING_DBTP)
        metadata = {
            **track.metadata,
            "sample_rate": request.sample_rate,
            "duration": length / request.sample_rate,
            "lufs": _finite_or_none(mixing.integrated_loudness(stem, request.sample_rate)),
            "playrate": region.playrate,
            "project_start": region.project_start,
            "format": request.format,
            "reference_audio": request.reference_audio,
        }
        output_folders.remember(request.output_dir)
        path = audio_io.write_new_wav(request.output_dir, request.name_hint or request.caption, stem,
                                      request.sample_rate, FORMATS[request.format], max_bytes=MAX_STEM_BYTES)
        return {"stem_path": os.fspath(path), "metadata": metadata}


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def load_runtime_model(weights_dir: str | os.PathLike | None = None, model: str | None = None,
                       device: str = "auto", precision: str = "auto", compile: bool = False):
    """The FoleyModel on the chosen device and precision. weights_dir None: the embedded
    mini-world model; model "tiny-random": random weights through the same code path, for tests
    only. compile: torch.compile the per-step network path (CUDA only; the first job is slower)."""
    from stepfoley.engine.devices import check_precision, choose_device, maybe_compile
    from stepfoley.engine.loading import load_foley_model

    precision = check_precision(precision)
    foley = load_foley_model(weights_dir=weights_dir, variant=model, device=choose_device(device))
    foley.precision = precision
    if compile:
        foley.net.predict_flow = maybe_compile(foley.net.predict_flow, True, foley.device)
    return foley


def build_service(weights_dir: str | os.PathLike | None = None, device: str = "auto",
                  model: str | None = None, precision: str = "auto", compile: bool = False,
                  feature_cache=None) -> FoleyService:
    """Load a model once (see load_runtime_model) and wrap it with a feature cache: the one
    given, else the persistent one under the user's cache folder (opened first: a folder that
    cannot be used is refused before the model loads)."""
    from stepfoley.engine.features.cache import open_feature_cache

    cache = feature_cache if feature_cache is not None else open_feature_cache()
    foley = load_runtime_model(weights_dir, model, device, precision, compile)
    return FoleyService(foley, feature_cache=cache)
