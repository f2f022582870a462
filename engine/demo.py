"""The demo: a mini-world clip the model never saw, a soundtrack built in three NAG steps.

Writes into a new numbered run folder (nothing existing is touched): the silent picture, one
WAV per track, the -20 LUFS composite, the picture with the composite muxed in, a spectrogram
PNG per track and of the composite, and run.json with every track's metadata (its levels as
decoded and as finished included: every track leaves the engine at -23 LUFS, true-peak limited).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from stepfoley.engine import audio_io, mixing
from stepfoley.engine.features.cache import FeatureCache
from stepfoley.engine.miniworld import make_scene
from stepfoley.engine.miniworld.writer import write_atomically, encode_mp4
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.session import StepSession, TrackSettings
from stepfoley.engine.spectrogram import spectrogram_image

DEMO_SEED = 20261122  # outside the training scene seeds [0, 100000)


@dataclass
class DemoResult:
    folder: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def new_run_folder(out_dir: Path) -> Path:
    """out_dir/run_NNN, the first number not yet taken (created exclusively)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        folder = out_dir / f"run_{n:03d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{out_dir} already holds 9999 demo runs; choose another folder.")


def demo_captions(scene, tracks: int) -> list[str]:
    """One paraphrase per source, in the scene's order, for the first `tracks` sources."""
    return [paraphrases[i % len(paraphrases)] for i, paraphrases in enumerate(scene.captions[:tracks])]


def run_demo(model: FoleyModel, out_dir: Path, seed: int = DEMO_SEED, tracks: int = 3, steps: int = 25,
             on_step: Callable[[int, int], None] | None = None,
             feature_cache: FeatureCache | None = None) -> DemoResult:
    """`feature_cache` None: one in memory for this run."""
    t_start = time.perf_counter()
    scene = make_scene(seed, n_sources=max(tracks, 2) if tracks <= 4 else None)
    folder = new_run_folder(Path(out_dir))
    result = DemoResult(folder)
    video = write_atomically(folder / "picture.mp4", False,
                              lambda p: encode_mp4(p, scene.frames, scene.fps, None, scene.sample_rate))
    result.files.append(video)

    session = StepSession(model, Region(video, 0.0, scene.duration),
                          feature_cache if feature_cache is not None else FeatureCache())
    captions = demo_captions(scene, tracks)
    total = steps * len(captions) * len(session.windows)
    timings = {"video_features": 0.0, "sampling": 0.0, "decoding": 0.0, "finishing": 0.0}
    records = []
    for k, caption in enumerate(captions):
        done_before = k * steps * len(session.windows)
        track = session.next_track(
            TrackSettings(caption, method="nag", seed=seed + k, steps=steps),
            on_progress=(lambda phase, s, _t, d=done_before: phase == "sampling" and on_step(d + s, total))
            if on_step else None)
        for key in timings:
            timings[key] += track.metadata["timings"][key]
        stem = audio_io.write_wav_atomic(folder / f"track_{k + 1}.wav", track.samples[None], track.sample_rate)
        png = _save_png(spectrogram_image(
            track.samples, track.sample_rate,
            f"track {k + 1}: {caption} ({track.metadata['method_used']})"), folder / f"track_{k + 1}.png")
        result.files += [stem, png]
        records.append({"file": stem.name, **track.metadata})

    sr = model.sample_rate
    composite = mixing.mix_tracks([(t.samples[None], sr) for t in session.tracks], sr, session.length)[0]
    result.files.append(audio_io.write_wav_atomic(folder / "composite.wav", composite[None], sr))
    result.files.append(_save_png(spectrogram_image(composite, sr, "composite (-20 LUFS)"), folder / "composite.png"))
    result.files.append(write_atomically(folder / "picture_with_foley.mp4", False,
                                          lambda p: encode_mp4(p, scene.frames, scene.fps, composite, sr)))
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    manifest = {"model": model.model_id, "scene_seed": seed, "sources": list(scene.kinds),
                "captions": captions, "tracks": records, "timings": timings}
    result.files.append(write_atomically(folder / "run.json", False,
                                          lambda p: p.write_text(json.dumps(manifest, indent=1, default=str))))
    return result


def _save_png(image, path: Path) -> Path:
    return write_atomically(path, False, lambda p: image.save(p, format="PNG"))
