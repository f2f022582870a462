"""The evaluation protocol of the paper (Sec. 5.1, Tables 1 and 2) on mini-world scenes.

For each scene, k tracks are made step by step, one per source (in the scene's source order,
each captioned with a paraphrase of its kind), with each method:
  independent      plain CFG for every track (beta = 0),
  negative_prompt  CFG with the earlier tracks' captions as the negative text,
  nag              Negative Audio Guidance against the mix of the earlier tracks.
Track 1 is made once with CFG and shared by all methods (the paper's setup: with nothing
before it, every method is CFG), and track j uses the same seed under every method, so the
methods differ only in how they steer away from earlier tracks.

Scenes are written as real mp4 files and read back through StepSession, the path a user's
video takes. Scene seeds are 10_000_000 + seed * 1000 + i: disjoint from the base model's
training seeds [0, 100000) and from the evaluation embedding's clips.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stepfoley.engine import mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.evaluation import metrics
from stepfoley.engine.evaluation.spectra import SAMPLE_RATE, to_eval_rate
from stepfoley.engine.miniworld import make_scene, write_scene
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.engine.session import StepSession, TrackSettings, plan_windows

METHODS = ("independent", "negative_prompt", "nag")
SCENE_SEED_BASE = 10_000_000
SCENES_PER_SEED = 1000  # scene seeds of consecutive --seed values must not overlap
SCENE_SECONDS = 8.0
FD_MIN_SCENES = 8  # below this the Fréchet distance of 128-d embeddings is noise
TRACK_FIGURES = ("separability", "text_fidelity", "leakage", "temporal_alignment", "composite_distance")


def scene_seed(seed: int, index: int) -> int:
    return SCENE_SEED_BASE + seed * SCENES_PER_SEED + index


def track_seed(scene: int, track_index: int) -> int:
    """The sampling seed of track `track_index` (0-based) of a scene: the same for every method."""
    return scene * 10 + track_index


def choose_captions(scene, k: int) -> list[str]:
    """One paraphrase per requested source, drawn from the scene seed (so a rerun asks for the
    same sounds, and different scenes use different wordings)."""
    rng = np.random.default_rng([scene.seed, 31337])
    return [paraphrases[int(rng.integers(len(paraphrases)))] for paraphrases in scene.captions[:k]]


def _validate(scenes, seed, k, steps, alpha, beta, methods) -> None:
    if not isinstance(scenes, int) or not 1 <= scenes <= SCENES_PER_SEED:
        raise InvalidInputError(f"--scenes must be a whole number from 1 to {SCENES_PER_SEED}, got {scenes!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"--seed must be a whole number of at least 0, got {seed!r}.")
    if not isinstance(k, int) or k < 2:
        raise InvalidInputError(f"--tracks must be at least 2 (separability and leakage compare tracks), got {k!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"--steps must be a whole number of at least 1, got {steps!r}.")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InvalidInputError(f"--{name} must be a number of at least 0, got {value!r}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidInputError(f"Unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")


def _feature_cache():
    try:
        from stepfoley.engine.features.cache import FeatureCache
    except ImportError:
        return None
    return FeatureCache()


class _Progress:
    """Global step counter over every track of the run."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None] | None):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def track(self):
        start = self.done

        def on_progress(phase, step, _total):
            if phase != "sampling":
                return
            self.done = start + step
            if self.on_progress is not None:
                self.on_progress(self.done, self.total)
        return on_progress


def _track_figures(embedding, tracks: Sequence[np.ndarray], sample_rate: int, captions: Sequence[str],
                   stems: np.ndarray) -> dict:
    """Per-scene figures of one method: tracks (k, S) vs the k requested ground-truth stems."""
    waves = [to_eval_rate(t, sample_rate) for t in tracks]
    audio = embedding.embed_audio(waves, SAMPLE_RATE)
    composite = mixing.mix_tracks([(w[None], SAMPLE_RATE) for w in waves], SAMPLE_RATE, len(waves[0]),
                                  target_lufs=metrics.COMPOSITE_LUFS)[0]
    return {
        "separability": [metrics.separability(audio)],
        "text_fidelity": list(metrics.text_similarities(audio, embedding.embed_text(captions))),
        "leakage": [metrics.leakage(w, stems[:j]) for j, w in enumerate(waves) if j > 0],
        "temporal_alignment": [metrics.temporal_alignment(w, stems[j]) for j, w in enumerate(waves)],
        "composite_distance": [metrics.composite_distance(composite, stems.sum(0))],
        "_composite": composite,
    }


def evaluate(model: FoleyModel, scenes: int, seed: int, k: int = 3, steps: int = 25, alpha: float = 4.5,
             beta: float = 1.5, on_progress: Callable[[int, int], None] | None = None,
             embedding=None, methods: Sequence[str] = METHODS, duration: float = SCENE_SECONDS,
             work_dir: str | Path | None = None) -> dict:
    """Run the protocol on `scenes` scenes and return the report (JSON-ready dict):
    `config`, `embedding`, `methods` (figure -> {mean, std, n} per method, plus composite_fd
    when there are at least FD_MIN_SCENES scenes), `reference` (the same figures for the
    ground-truth stems themselves: the floor/ceiling each figure can reach), and `notes`.
    `embedding`: a loaded evaluation embedding (default: the shipped one, else trained once
    into the cache). `on_progress(done, total)` counts sampling steps over the whole run."""
    methods = tuple(methods)
    _validate(scenes, seed, k, steps, alpha, beta, methods)
    notes = []
    if "nag" in methods and not model.supports_nag:
        methods = tuple(m for m in methods if m != "nag")
        notes.append(f"model '{model.model_id}' has no NAG ControlNet: method 'nag' was skipped")
    if embedding is None:
        from stepfoley.engine.evaluation.embedding import default_audio_embedding

        embedding = default_audio_embedding(text_encoder=model.text_encoder)

    seeds = [scene_seed(seed, i) for i in range(scenes)]
    sources = [len(make_scene(s, duration=duration).kinds) for s in seeds]
    windows = len(plan_windows(duration, model.max_duration))
    progress = _Progress(sum(1 + len(methods) * (min(k, n) - 1) for n in sources) * steps * windows, on_progress)
    figures = {m: {name: [] for name in TRACK_FIGURES} for m in methods}
    figures["ground_truth"] = {name: [] for name in TRACK_FIGURES}
    composites = {m: [] for m in methods}
    references = []
    cache = _feature_cache()

    with tempfile.TemporaryDirectory(prefix="stepfoley-eval-", dir=work_dir) as temp:
        for index, s in enumerate(seeds):
            scene = make_scene(s, duration=duration)
            video = write_scene(scene, Path(temp) / f"scene_{index:04d}", mux_audio=False)["video"]
            region = Region(video, 0.0, scene.duration)
            k_scene = min(k, len(scene.kinds))
            captions = choose_captions(scene, k_scene)
            stems = np.stack([to_eval_rate(stem, scene.sample_rate) for stem in scene.stems[:k_scene]])

            first_session = StepSession(model, region, cache)
            first = first_session.next_track(
                TrackSettings(captions[0], method="independent", alpha=alpha, beta=0.0,
                              seed=track_seed(s, 0), steps=steps), on_progress=progress.track())
            for method in methods:
                session = StepSession(model, region, cache)
                session.add_track(first.samples, first.sample_rate, [captions[0]])
                for j in range(1, k_scene):
                    session.next_track(
                        TrackSettings(captions[j], method=method, alpha=alpha,
                                      beta=beta if method == "nag" else 0.0, seed=track_seed(s, j), steps=steps),
                        on_progress=progress.track())
                scene_figures = _track_figures(embedding, [t.samples for t in session.tracks],
                                               model.sample_rate, captions, stems)
                composites[method].append(scene_figures.pop("_composite"))
                for name, values in scene_figures.items():
                    figures[method][name].extend(values)
            truth = _track_figures(embedding, list(stems), SAMPLE_RATE, captions, stems)
            references.append(truth.pop("_composite"))
            for name, values in truth.items():
                figures["ground_truth"][name].extend(values)

    report_methods = {m: {name: metrics.summarize(figures[m][name]) for name in TRACK_FIGURES} for m in methods}
    if scenes >= FD_MIN_SCENES:
        reference_embeddings = embedding.embed_audio(references, SAMPLE_RATE)
        for m in methods:
            report_methods[m]["composite_fd"] = metrics.frechet_distance(
                embedding.embed_audio(composites[m], SAMPLE_RATE), reference_embeddings)
    else:
        notes.append(f"composite_fd needs at least {FD_MIN_SCENES} scenes; not computed")
    report_reference = {name: metrics.summarize(figures["ground_truth"][name])
                        for name in ("separability", "text_fidelity", "leakage")}
    return {
        "config": {
            "model": model.model_id, "steps": steps, "alpha": alpha, "beta": beta, "scenes": scenes,
            "seed": seed, "tracks": k, "duration_s": duration, "methods": list(methods),
            "scene_seeds": seeds, "first_track_shared": True, "sample_rate": model.sample_rate,
        },
        "embedding": embedding.description(),
        "methods": report_methods,
        "reference": {"ground_truth_stems": report_reference},
        "notes": notes,
    }
