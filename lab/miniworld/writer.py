"""Saving a scene: an mp4 (H.264, or MPEG-4 Part 2 where the PyAV build lacks an H.264
encoder, with the mixture as an AAC track when asked), one WAV per stem, the mixture WAV and a
JSON with captions and the event timeline. Each file is written under a temporary name and
renamed into place; existing files are never overwritten unless the caller says so.

x264 writes lossless H.264 (qp 0): the picture decodes to exactly the frames drawn (after the
yuv420p conversion) on every run. Lossy x264 is not bit-reproducible here: the same frames gave
different pictures from one run to the next, so figures measured on them would drift."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from stepfoley import atomic

from stepfoley.engine.errors import InvalidInputError
from .scene import Scene


def _video_codec() -> str:
    import av
    available = av.codecs_available
    for name in ("libx264", "h264", "libopenh264", "mpeg4"):
        if name in available:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:       # listed but no encoder in this build
                continue
    raise InvalidInputError("This PyAV build has neither an H.264 nor an MPEG-4 encoder; reinstall `av`.")


# Per encoder: what makes its output the same on every run.
_REPRODUCIBLE_OPTIONS = {"libx264": {"qp": "0"}}


def write_atomically(path: Path, overwrite: bool, write) -> Path:
    """Call write(temp) on a hidden temporary name beside `path`, then rename it into place
    (stepfoley.atomic); nothing is left behind on failure, and an existing `path` is kept unless
    `overwrite`."""
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} already exists; choose an empty folder or pass overwrite=True.")
    try:
        return atomic.write_atomically(path, write, replace=overwrite)
    except FileExistsError:
        raise InvalidInputError(f"{path} appeared while it was being written; choose an empty folder.") from None


def encode_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, sample_rate: int) -> None:
    """frames (T, H, W, 3) uint8 with even H and W; audio (S,) float32 or None."""
    import av
    with av.open(str(path), mode="w", format="mp4") as container:
        codec = _video_codec()
        video = container.add_stream(codec, rate=fps, options=_REPRODUCIBLE_OPTIONS.get(codec, {}))
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, fps)
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            chunk = sound.codec_context.frame_size or 1024
            samples = np.asarray(audio, np.float32)
            for start in range(0, len(samples), chunk):
                block = samples[start:start + chunk]
                frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())


def scene_metadata(scene: Scene) -> dict:
    return {
        "seed": scene.seed, "duration_s": scene.duration, "fps": scene.fps, "sample_rate": scene.sample_rate,
        "caption": scene.caption,
        "sources": [
            {"index": i, "kind": kind, "box_xywh": list(box), "captions": list(captions),
             "params": {k: float(v) for k, v in params.items()}, "stem": f"stem_{i}_{kind}.wav"}
            for i, (kind, box, captions, params) in enumerate(zip(scene.kinds, scene.boxes, scene.captions, scene.params))
        ],
        "events": [
            {"source": e.source, "kind": e.kind, "name": e.name, "start_frame": e.start_frame,
             "end_frame": e.end_frame, "start_s": e.start_s, "end_s": e.end_s}
            for e in scene.events
        ],
    }


def write_scene(scene: Scene, directory, mux_audio: bool = True, overwrite: bool = False) -> dict[str, Path]:
    """Write video.mp4, mixture.wav, stem_<i>_<kind>.wav and scene.json into `directory`
    (created if needed). Returns the written paths by role."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    written["video"] = write_atomically(
        directory / "video.mp4", overwrite,
        lambda p: encode_mp4(p, scene.frames, scene.fps, scene.mixture if mux_audio else None, scene.sample_rate))

    def wav_writer(wave):
        return lambda p: sf.write(str(p), wave, scene.sample_rate, subtype="FLOAT", format="WAV")

    written["mixture"] = write_atomically(directory / "mixture.wav", overwrite, wav_writer(scene.mixture))
    for i, (kind, stem) in enumerate(zip(scene.kinds, scene.stems)):
        written[f"stem_{i}"] = write_atomically(directory / f"stem_{i}_{kind}.wav", overwrite, wav_writer(stem))
    text = json.dumps(scene_metadata(scene), indent=1)
    written["metadata"] = write_atomically(directory / "scene.json", overwrite,
                                            lambda p: p.write_text(text, encoding="utf-8"))
    return written
