"""FoleyService: the engine as the bridge sees it.

A protocol request (a plain dict, docs/osc-protocol.md) goes in; a new WAV stem is written
into the request's output directory and its path and metadata come out. Video features are
cached across requests, so the 2nd..Nth track of a region skips the video encoders.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from stepfoley.engine import audio_io, mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.session import METHODS, StepSession, TrackSettings

FORMATS = {"wav24": "PCM_24", "wav32f": "FLOAT"}
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
STEM_CEILING_DBTP = -1.0


@dataclass(frozen=True)
class StemRequest:
    video: Path
    file_in: float
    file_out: float
    playrate: float
    settings: TrackSettings
    existing_mix: Path | None
    reference_audio: Path | None
    output_dir: Path
    sample_rate: int
    format: str
    name_hint: str

    @property
    def project_duration(self) -> float:
        return (self.file_out - self.file_in) / self.playrate


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"'{name}' must be a number, got {value!r}.")
    return float(value)


def parse_request(request: dict) -> StemRequest:
    """Validate a protocol request. Paths are only checked here, never written to."""
    if not isinstance(request, dict):
        raise InvalidInputError("The request must be a JSON object.")
    region = request.get("region")
    if not isinstance(region, dict) or not isinstance(region.get("video"), str):
        raise InvalidInputError("The request has no region with a video path.")
    video = Path(region["video"])
    if not video.is_file():
        raise InvalidInputError(f"The video '{video}' does not exist or is not a file.")
    playrate = _number(region.get("playrate", 1.0), "playrate")
    if playrate <= 0:
        raise InvalidInputError(f"The playrate must be above 0, got {playrate}.")
    output_dir = Path(str(request.get("output_dir", "")))
    if not request.get("output_dir") or not output_dir.is_dir():
        raise InvalidInputError(f"The output folder '{output_dir}' does not exist; create it first.")
    existing = request.get("existing_mix")
    if existing is not None:
        existing = Path(str(existing))
        if not existing.is_file():
            raise InvalidInputError(f"The bounced mix '{existing}' does not exist.")
    reference = request.get("reference_audio")
    if reference is not None:
        reference = Path(str(reference))
        if not reference.is_file():
            raise InvalidInputError(f"The reference sound '{reference}' does not exist.")
    sample_rate = int(_number(request.get("sample_rate", 48000), "sample_rate"))
    if sample_rate not in SAMPLE_RATES:
        raise InvalidInputError(f"Sample rate {sample_rate} Hz is not supported; use one of {SAMPLE_RATES}.")
    fmt = request.get("format", "wav24")
    if fmt not in FORMATS:
        raise InvalidInputError(f"Unknown format '{fmt}': use wav24 or wav32f.")
    method = request.get("method", "nag")
    if method not in METHODS:
        raise InvalidInputError(f"Unknown method '{method}': use one of {', '.join(METHODS)}.")
    seed = request.get("seed", 0)
    steps = request.get("steps", 25)
    if isinstance(seed, bool) or not isinstance(seed, int) or isinstance(steps, bool) or not isinstance(steps, int):
        raise InvalidInputError("'seed' and 'steps' must be whole numbers.")
    if not 1 <= steps <= 200:
        raise InvalidInputError(f"'steps' must be between 1 and 200, got {steps}.")
    caption = request.get("caption")
    negative = request.get("negative_caption") or None
    previous = request.get("previous_captions") or []
    if negative is None and previous:
        negative = ", ".join(str(c) for c in previous if c)
    settings = TrackSettings(
        caption=caption if isinstance(caption, str) else "",
        method=method,
        alpha=_number(request.get("alpha", 4.5), "alpha"),
        beta=_number(request.get("beta", 1.5), "beta"),
        seed=seed, steps=steps, negative_caption=negative)
    return StemRequest(
        video=video,
        file_in=_number(region.get("file_in", 0.0), "file_in"),
        file_out=_number(region.get("file_out"), "file_out"),
        playrate=playrate, settings=settings, existing_mix=existing, reference_audio=reference,
        output_dir=output_dir,
        sample_rate=sample_rate, format=fmt,
        name_hint=str(request.get("name_hint") or settings.caption))


class FoleyService:
    """A runner for bridge.server: `service(request, on_progress, is_cancelled) -> result`."""

    def __init__(self, model: FoleyModel, feature_cache=None):
        self.model = model
        self.feature_cache = feature_cache

    def describe(self) -> dict:
        return {"model": self.model.model_id, "device": str(self.model.device), "note": self.model.note}

    def __call__(self, request: dict, on_progress: Callable[[int, int], None] | None = None,
                 is_cancelled: Callable[[], bool] | None = None) -> dict:
        req = parse_request(request)
        session = StepSession(self.model, Region(req.video, req.file_in, req.file_out), self.feature_cache)
        if req.existing_mix is not None and req.reference_audio is None:
            samples, sr = audio_io.read_audio(req.existing_mix)
            session.add_track(samples, sr)
        reference = audio_io.read_audio(req.reference_audio) if req.reference_audio is not None else None
        track = session.next_track(req.settings, on_step=on_progress, is_cancelled=is_cancelled,
                                   reference=reference)

        # The picture plays at `playrate`, so the stem is varispeeded to the project-time length.
        length = int(round(req.project_duration * req.sample_rate))
        stem = mixing.resample(track.samples[None], track.sample_rate, req.sample_rate)
        if stem.shape[-1] != length:
            stem = _varispeed(stem, length)
        stem = mixing.limit_true_peak(stem, req.sample_rate, STEM_CEILING_DBTP)
        path = audio_io.unique_path(req.output_dir, req.name_hint)
        audio_io.write_wav_atomic(path, stem, req.sample_rate, subtype=FORMATS[req.format])

        metadata = {
            **track.metadata,
            "sample_rate": req.sample_rate,
            "duration": length / req.sample_rate,
            "lufs": _finite_or_none(mixing.integrated_loudness(stem, req.sample_rate)),
            "playrate": req.playrate,
            "format": req.format,
            "reference_audio": os.fspath(req.reference_audio) if req.reference_audio else None,
        }
        return {"stem_path": os.fspath(path), "metadata": metadata}


def _varispeed(samples: np.ndarray, length: int) -> np.ndarray:
    # samples: (C, S) -> (C, length) by linear interpolation (tape-style speed change)
    src = np.linspace(0, samples.shape[-1] - 1, length)
    return np.stack([np.interp(src, np.arange(samples.shape[-1]), ch) for ch in samples]).astype(np.float32)


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
                  model: str | None = None, precision: str = "auto", compile: bool = False) -> FoleyService:
    """Load a model once (see load_runtime_model) and wrap it with a feature cache."""
    foley = load_runtime_model(weights_dir, model, device, precision, compile)
    cache = None
    try:
        from stepfoley.engine.features.cache import FeatureCache
        cache = FeatureCache()
    except ImportError:
        pass
    return FoleyService(foley, feature_cache=cache)
