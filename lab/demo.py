"""The demo: a mini-world clip the model never saw, a soundtrack built step by step twice,
with NAG and with independent generation from the same seeds, so a listener hears what NAG
changes and run.json says it in figures.

Writes into a new numbered run folder (nothing existing is touched; the run is made in a hidden
folder beside it and renamed run_NNN once complete, and a run that fails leaves nothing): the
silent picture; track 1 (plain CFG, shared by both soundtracks); tracks 2..k of each method;
each method's -20 LUFS composite, alone and muxed with the picture; a spectrogram PNG per file
of audio; run.json with every track's metadata and, per track and method, its text fidelity
(the evaluation's source-presence classifier: the probability that the track holds its
caption's kind) and its similarity to the tracks before it (the evaluation's audio embedding,
lower is more distinct).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stepfoley.atomic import (can_make_file_in, make_temp_folder, nearest_existing, release_temp_folder,
                              sweep_stale_parts)
from stepfoley.engine import audio_io, mixing
from stepfoley.lab.evaluation import metrics
from stepfoley.engine.features.cache import FeatureCache
from stepfoley.lab.miniworld import make_scene
from stepfoley.lab.miniworld.writer import write_atomically, encode_mp4
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.session import StepSession, TrackSettings
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.spectrogram import spectrogram_image
from stepfoley.request import MAX_SEED, MAX_STEPS, is_whole

DEMO_SEED = 20261122  # outside the training scene seeds [0, 100000)
MAX_TRACKS = 4  # a mini-world scene holds at most 4 sources, one track each


METHODS = ("nag", "independent")


@dataclass
class DemoResult:
    folder: Path
    files: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tracks: list[dict] = field(default_factory=list)  # run.json's "tracks"


def check_demo_arguments(out_dir: str | os.PathLike, seed: int, tracks: int, steps: int) -> None:
    """Everything run_demo needs that no model does, checked before one loads; raises
    InvalidInputError with the option to change."""
    if not is_whole(tracks) or not 1 <= tracks <= MAX_TRACKS:
        raise InvalidInputError(f"--tracks {tracks}: give 1 to {MAX_TRACKS} (a mini-world scene holds at most "
                                f"{MAX_TRACKS} sources).")
    if not is_whole(steps) or not 1 <= steps <= MAX_STEPS:
        raise InvalidInputError(f"--steps {steps}: give 1 to {MAX_STEPS} sampling steps.")
    highest = MAX_SEED - (tracks - 1)  # track k is made with seed + k - 1
    if not is_whole(seed) or not 0 <= seed <= highest:
        raise InvalidInputError(f"--seed {seed}: give 0 to {highest} (track k uses the seed plus k - 1).")
    if not os.fspath(out_dir).strip():
        raise InvalidInputError("--out is empty; give the folder the demo runs go into.")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise InvalidInputError(f"--out {out_dir} is a file, not a folder; give a folder for the demo runs "
                                "(a new run_NNN is made inside it).")
    there = nearest_existing(out_dir)  # the folder itself, or where it would be made
    if not os.path.isdir(there) or not can_make_file_in(there):
        raise InvalidInputError(f"--out {out_dir}: {there} is not a folder you can write to.")


def new_work_folder(out_dir: Path) -> Path:
    """A new hidden folder in out_dir where a run is made before it gets its run_NNN name (the
    work folders of demos killed before they finished are removed first)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        sweep_stale_parts(out_dir)
        return make_temp_folder(out_dir / "run")
    except OSError as e:  # changed since check_demo_arguments looked, or a full disk
        raise InvalidInputError(f"Cannot make a folder for the demo run in {out_dir}: {e.strerror or e}.") from None


def publish_run(work: Path, out_dir: Path, manifest: dict) -> Path:
    """Write run.json and give the finished run `work` its name out_dir/run_NNN, the first number
    not yet taken (reserved with an exclusive mkdir, then replaced by the run in one rename)."""
    for n in range(1, 10_000):
        folder = out_dir / f"run_{n:03d}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        try:
            # the run's paths (its picture, in each track's metadata) as they will be
            text = json.dumps(_moved(manifest, str(work), str(folder)), indent=1, default=str)
            write_atomically(work / "run.json", True, lambda p: p.write_text(text))
            try:
                os.rename(work, folder)  # POSIX: replaces the empty folder just reserved
            except OSError:
                os.rmdir(folder)  # Windows renames onto no existing name: free ours, then rename
                os.rename(work, folder)
        except BaseException:
            if folder.is_dir() and not any(folder.iterdir()):
                os.rmdir(folder)
            raise
        return folder
    raise InvalidInputError(f"{out_dir} already holds 9999 demo runs; choose another folder with --out.")


def _moved(value, old: str, new: str):
    """`value` with every string that starts with the folder `old` starting with `new` instead."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_moved(v, old, new) for v in value]
    return value


def demo_captions(scene, tracks: int) -> list[str]:
    """One paraphrase per source, in the scene's order, for the first `tracks` sources."""
    return [paraphrases[i % len(paraphrases)] for i, paraphrases in enumerate(scene.captions[:tracks])]


def run_demo(model: FoleyModel, out_dir: Path, seed: int = DEMO_SEED, tracks: int = 3, steps: int = 25,
             on_step: Callable[[int, int], None] | None = None) -> DemoResult:
    """Raises InvalidInputError for arguments check_demo_arguments refuses, before any work."""
    check_demo_arguments(out_dir, seed, tracks, steps)
    t_start = time.perf_counter()
    scene = make_scene(seed, n_sources=max(tracks, 2))
    out_dir = Path(out_dir)
    work = new_work_folder(out_dir)
    try:
        result, manifest = _make_run(model, scene, work, seed, tracks, steps, on_step, t_start)
        folder = publish_run(work, out_dir, manifest)
    except BaseException as error:
        shutil.rmtree(work, ignore_errors=True)  # a failed run leaves nothing
        if isinstance(error, OSError):  # a full disk, or the folder changed under the run
            raise InvalidInputError(f"Could not write the demo run in {out_dir}: {error.strerror or error}. Check "
                                    "free disk space and the folder's permissions.") from error
        raise
    finally:
        release_temp_folder(work)
    result.folder = folder
    result.files = [folder / path.name for path in result.files]
    result.tracks = _moved(result.tracks, str(work), str(folder))
    return result


def _make_run(model: FoleyModel, scene, folder: Path, seed: int, tracks: int, steps: int,
              on_step: Callable[[int, int], None] | None, t_start: float) -> tuple[DemoResult, dict]:
    """Every file of the run but run.json, in `folder`; returns the result and run.json's content."""
    from stepfoley.lab.evaluation.runner import default_embedding, default_presence, stems_at

    result = DemoResult(folder)
    video = write_atomically(folder / "picture.mp4", False,
                              lambda p: encode_mp4(p, scene.frames, scene.fps, None, scene.sample_rate))
    result.files.append(video)

    # in memory only: the clip is rendered anew into a temporary folder on every run, so an entry
    # on disk, keyed by that path, could never be read again
    cache = FeatureCache()
    sessions = {method: StepSession(model, Region(video, 0.0, scene.duration), cache) for method in METHODS}
    captions = demo_captions(scene, tracks)
    per_track = steps * len(sessions["nag"].windows)
    total = per_track * (2 * len(captions) - 1)
    timings = {"video_features": 0.0, "sampling": 0.0, "decoding": 0.0, "finishing": 0.0}
    made: dict[str, list] = {method: [] for method in METHODS}
    done = 0
    for k, caption in enumerate(captions):
        # Track 1 is plain CFG under either method: made once, then shared.
        for method in METHODS if k else METHODS[:1]:
            track = sessions[method].next_track(
                TrackSettings(caption, method=method, seed=seed + k, steps=steps),
                on_progress=(lambda phase, s, _t, d=done: phase == "sampling" and on_step(d + s, total))
                if on_step else None)
            done += per_track
            for key in timings:
                timings[key] += track.metadata["timings"][key]
            made[method].append(track)
        if k == 0:
            sessions["independent"].add_track(track.samples, track.sample_rate, [caption])
            made["independent"].append(track)

    t_scoring = time.perf_counter()
    stems = stems_at(scene, len(captions), model.sample_rate, sessions["nag"].length)  # (k, S)
    true_stems = [mixing.finish_stem(stem, model.sample_rate)[0][0] for stem in stems]  # scored as tracks are
    scores = score_tracks(made, true_stems, scene.kinds, model.sample_rate, default_embedding(model),
                          default_presence())
    timings["scoring"] = time.perf_counter() - t_scoring

    for k, caption in enumerate(captions):
        entry = {"track": k + 1, "caption": caption, "kind": scene.kinds[k],
                 "true_stem_text_fidelity": scores["true_stems"][k]}
        for method in METHODS:
            track = made[method][k]
            name = "track_1" if k == 0 else f"track_{k + 1}_{method}"
            if k == 0 and method != METHODS[0]:
                entry[method] = {**entry[METHODS[0]], "shared_with": METHODS[0]}
                continue
            stem = audio_io.write_wav_atomic(folder / f"{name}.wav", track.samples[None], track.sample_rate)
            png = _save_png(spectrogram_image(track.samples, track.sample_rate,
                                              f"track {k + 1} ({method if k else 'plain CFG'}): {caption}"),
                            folder / f"{name}.png")
            result.files += [stem, png]
            entry[method] = {"file": stem.name, **scores[method][k], **track.metadata}
        result.tracks.append(entry)

    sr = model.sample_rate
    for method in METHODS:
        composite = mixing.mix_tracks([(t.samples[None], sr) for t in made[method]], sr,
                                      sessions[method].length)[0]
        result.files.append(audio_io.write_wav_atomic(folder / f"composite_{method}.wav", composite[None], sr))
        result.files.append(_save_png(spectrogram_image(composite, sr, f"composite, {method} (-20 LUFS)"),
                                      folder / f"composite_{method}.png"))
        result.files.append(write_atomically(folder / f"picture_with_foley_{method}.mp4", False,
                                              lambda p, c=composite: encode_mp4(p, scene.frames, scene.fps, c, sr)))
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    manifest = {"model": model.model_id, "scene_seed": seed, "sources": list(scene.kinds), "captions": captions,
                "methods": list(METHODS), "tracks": result.tracks, "definitions": DEFINITIONS, "timings": timings}
    result.files.append(folder / "run.json")  # written by publish_run
    return result, manifest


DEFINITIONS = {
    "text_fidelity": "the source-presence classifier's probability that the track holds its caption's kind "
                     "(higher is better; true_stem_text_fidelity is the same for the scene's true stem)",
    "similarity_to_earlier": "mean cosine similarity of the track's audio embedding to those of the tracks before "
                             "it in the same soundtrack (lower: more distinct; none for track 1)",
}


def score_tracks(made: dict[str, list], stems: list, kinds, sample_rate: int, embedding, presence) -> dict:
    """Per method, per track: {"text_fidelity", "similarity_to_earlier"}; "true_stems": the
    text fidelity of each true stem (at the tracks' rate). Tracks all have one length."""
    columns = [presence.kind_index(kind) for kind in kinds[:len(stems)]]
    out: dict = {"true_stems": [float(p[c]) for p, c in zip(presence.probabilities(stems, sample_rate), columns)]}
    for method, tracks in made.items():
        samples = [t.samples for t in tracks]
        probabilities = presence.probabilities(samples, sample_rate)
        embeddings = embedding.embed_audio(samples, sample_rate)
        out[method] = [{"text_fidelity": float(probabilities[j, columns[j]]),
                        "similarity_to_earlier": metrics.similarity_to_earlier(embeddings, j) if j else None}
                       for j in range(len(tracks))]
    return out


def _save_png(image, path: Path) -> Path:
    return write_atomically(path, False, lambda p: image.save(p, format="PNG"))
