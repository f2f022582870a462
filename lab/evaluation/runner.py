"""The evaluation protocol of the paper (Sec. 5.1, Tables 2 and A2) on mini-world scenes.

For each scene, k tracks are made step by step, one per source in the scene's order, each
captioned with a paraphrase of its kind, in K takes (seeds). Track 1 is plain CFG, made once
per take and shared by every row (the paper's setup: with nothing before it every method is
CFG); track j of take t has the same seed in every row, so rows differ only in how they steer
away from the earlier tracks. The rows (`MAIN_ROWS`):

  independent      plain CFG (β = 0): the paper's baseline
  negative_prompt  the paper's text baseline: u(∅, ∅) + α (u(V, C) − u(∅, C_neg)), C_neg the
                   earlier tracks' captions (at α 1 too the negative text is weighted −α)
  text_boost       Eq. A6 with w1 = α, w2 = α + β, w3 = 0: NAG's extra text weight, no audio
                   term (the control that tells negation from more text guidance)
  nag              Negative Audio Guidance against the -20 LUFS mix of this row's earlier tracks
  oracle           NAG against the -20 LUFS mix of the true earlier stems, finished as tracks are (an upper bound)

`--beta-sweep` runs NAG at several β instead (Table A2's analogue), β = 0 being independent.

Figures are taken on tracks 2..k (track 1 is reported apart), per track then averaged within
the scene, and every comparison is a paired bootstrap over scenes (evaluation.stats). What
each figure is: `DEFINITIONS`, also written into every report. Separability uses the
evaluation embedding (the mini-world's CLAP: A-A similarity is the paper's independence
measure); text fidelity and leakage use the source-presence classifier, which is trained on
mixtures at random gains and so reads mixtures, which the embedding was never trained on.

Tracks are scored as they leave the engine (finished: STEM_LUFS, limited); the true stems are
finished the same way for the reference rows.

Scenes are written as real mp4 files and read back through StepSession, the path a user's
video takes. Scene seeds are SCENE_SEED_BASE + seed * SCENES_PER_SEED + i, below
DEVELOPMENT_SCENE_BASE (the scenes α is chosen on, evaluation.calibration) and disjoint from
the base model's training seeds [0, 100000) and the evaluation networks' clips. The README
reports --seed 0 as the test scenes; the design choices it describes were measured on --seed 1
(its "development scenes"; the exceptions it names were judged on the test scenes), so a claim
should never be checked there.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from stepfoley.engine import mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.lab.evaluation import metrics, stats
from stepfoley.lab.evaluation.spectra import SAMPLE_RATE, to_eval_rate
from stepfoley.engine.guidance import GUIDANCE_METHODS
from stepfoley.lab.miniworld import make_scene, write_scene
from stepfoley.lab.miniworld.scene import MAX_SOURCES
from stepfoley.engine.pipeline import FoleyModel, Region
from stepfoley.request import MAX_GUIDANCE, MAX_STEPS
from stepfoley.engine.session import StepSession, Track, TrackSettings, conditioning_mix, windows_for

SCENE_SEED_BASE = 10_000_000
SCENES_PER_SEED = 1000  # scene seeds of consecutive --seed values must not overlap
DEVELOPMENT_SCENE_BASE = 90_000_000  # evaluation.calibration's scenes; evaluation seeds stay below
MAX_SEED = (DEVELOPMENT_SCENE_BASE - SCENE_SEED_BASE) // SCENES_PER_SEED - 1
MAX_TAKES = 10  # take_seed keeps takes of different tracks apart up to here
SCENE_SECONDS = 8.0
DEFAULT_TAKES = 2
TRACK_FIGURES = ("separability", "text_fidelity", "leakage", "temporal_alignment", "lufs", "decoded_peak_dbfs",
                 "pre_limiter_clipped_fraction", "silence_fraction")
SCENE_FIGURES = ("composite_distance",)
TRACK1_FIGURES = ("text_fidelity", "lufs", "decoded_peak_dbfs", "pre_limiter_clipped_fraction", "silence_fraction")
DEFINITIONS = {
    "separability": "mean cosine similarity of the track's audio embedding to each earlier track's (CLAP A-A "
                    "analogue, evaluation embedding); lower is better",
    "text_fidelity": "source-presence classifier's probability that the track holds its caption's kind; higher "
                     "is better",
    "leakage": "source-presence classifier's mean probability of the earlier tracks' kinds in the track; lower "
               "is better",
    "temporal_alignment": "correlation of the track's loudness envelope with its true stem's, in the stem's band",
    "lufs": "integrated loudness (BS.1770) of the track as decoded, before the finishing gain and limiter",
    "decoded_peak_dbfs": "sample peak of the track as decoded, dBFS",
    "pre_limiter_clipped_fraction": "fraction of the decoded track's samples beyond full scale (|x| > 1), before "
                                    "any limiter or clamp",
    "silence_fraction": "fraction of the finished track's 50 ms blocks under -60 dBFS RMS",
    "composite_distance": "log-mel distance (dB) of the -20 LUFS composite of tracks 1..k, each as finished "
                          "(at -23 LUFS), true-peak limited as a composite is made, to the sum of the true stems "
                          "1..k, which is not (the true stems through the same path score the reference row's)",
}


@dataclass(frozen=True)
class Row:
    """One way of making tracks 2..k. `hears`: what x̃ is for a method whose audio branch hears
    the existing tracks: "generated" (this row's own earlier tracks) or "truth" (the true
    earlier stems). `beta` None: the model's default."""

    name: str
    method: str
    beta: float | None = None
    hears: str | None = None


MAIN_ROWS = (
    Row("independent", "independent"),
    Row("negative_prompt", "negative_prompt"),
    Row("text_boost", "text_boost"),
    Row("nag", "nag", hears="generated"),
    Row("oracle", "nag", hears="truth"),
)


def check_grid(values: Sequence[float], option: str, what: str) -> list[str]:
    """The names in the report (to 6 digits) of a grid option's values (--beta-sweep, --alphas,
    --anchors), each a guidance weight and each name its own: two values the same to 6 digits
    were one row, the other's figures lost. InvalidInputError otherwise."""
    for value in values:
        check_number(option, value)
    names = [f"{value:g}" for value in values]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidInputError(f"--{option} lists {what} {', '.join(twice)} more than once (each is named to 6 "
                                "digits); give each once.")
    return names


def beta_sweep_rows(betas: Sequence[float]) -> tuple[Row, ...]:
    """NAG at each β against its own earlier tracks (β = 0 is independent generation), each row
    named by its β (check_grid)."""
    names = check_grid(betas, "beta-sweep", "β")
    return tuple(Row(f"beta_{name}", "nag", beta=float(b), hears="generated") for name, b in zip(names, betas))


def scene_seed(seed: int, index: int) -> int:
    return SCENE_SEED_BASE + seed * SCENES_PER_SEED + index


def take_seed(scene: int, track_index: int, take: int) -> int:
    """The sampling seed of take `take` of track `track_index` (both 0-based) of a scene: the
    same in every row."""
    return (scene * 10 + track_index) * MAX_TAKES + take


def choose_captions(scene, k: int) -> list[str]:
    """One paraphrase per requested source, drawn from the scene seed (so a rerun asks for the
    same sounds, and different scenes use different wordings)."""
    rng = np.random.default_rng([scene.seed, 31337])
    return [paraphrases[int(rng.integers(len(paraphrases)))] for paraphrases in scene.captions[:k]]


def check_number(name: str, value, low: float = 0.0, high: float = MAX_GUIDANCE) -> None:
    """A guidance weight within what a request may ask (stepfoley.request): α 1e30 ran to a report
    of clipped noise."""
    if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)
                              or not low <= value <= high):
        raise InvalidInputError(f"--{name} must be a number from {low:g} to {high:g}, got {value!r}.")


def check_steps(steps) -> None:
    """Sampling steps within what a request may ask: 10^8 steps started a run of 27,630 hours."""
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
        raise InvalidInputError(f"--steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}.")


def check_run(scenes, seed, takes, steps) -> None:
    """What every run over the test scenes takes (InvalidInputError): the evaluation's and the
    controls'; `stepfoley eval` checks them before the model loads."""
    if not isinstance(scenes, int) or not 1 <= scenes <= SCENES_PER_SEED:
        raise InvalidInputError(f"--scenes must be a whole number from 1 to {SCENES_PER_SEED}, got {scenes!r}.")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"--seed must be a whole number from 0 to {MAX_SEED} (higher scene seeds are kept "
                                f"for choosing α), got {seed!r}.")
    if not isinstance(takes, int) or not 1 <= takes <= MAX_TAKES:
        raise InvalidInputError(f"--takes must be a whole number from 1 to {MAX_TAKES}, got {takes!r}.")
    check_steps(steps)


def check_evaluation(scenes, seed, k, takes, steps, alpha, rows) -> None:
    """evaluate's arguments (InvalidInputError); `stepfoley eval` checks them before the model loads."""
    check_run(scenes, seed, takes, steps)
    if not isinstance(k, int) or not 2 <= k <= MAX_SOURCES:
        raise InvalidInputError(f"--tracks must be from 2 (separability and leakage compare tracks) to {MAX_SOURCES} "
                                f"(a scene holds at most {MAX_SOURCES} sources), got {k!r}.")
    check_number("alpha", alpha)
    if not rows or len({r.name for r in rows}) != len(rows):
        raise InvalidInputError("Give at least one row, each with its own name.")
    for row in rows:
        method = GUIDANCE_METHODS.get(row.method)
        if method is None or not method.public:
            raise InvalidInputError(f"Unknown method '{row.method}' in row '{row.name}'.")
        if (method.audio == "existing") != (row.hears in ("generated", "truth")):
            raise InvalidInputError(f"Row '{row.name}': a method that hears the existing tracks needs hears= "
                                    "'generated' or 'truth', and only such a method takes one.")
        check_number("beta", row.beta)


def stems_at(scene, k: int, sample_rate: int, length: int) -> np.ndarray:
    """The scene's first k true stems at `sample_rate`, fitted to `length` samples: (k, S)."""
    return mixing.fit_length(mixing.resample(scene.stems[:k], scene.sample_rate, sample_rate), length)


class SceneRun:
    """One scene as the evaluation sees it: its picture written as an mp4 and opened in a
    StepSession, the first k captions, and the true stems at the model's rate."""

    def __init__(self, model: FoleyModel, seed: int, k: int, folder: Path, duration: float = SCENE_SECONDS,
                 **scene_args):
        """`scene_args`: make_scene's other arguments (n_sources, options), for the controls."""
        self.scene = make_scene(seed, duration=duration, **scene_args)
        video = write_scene(self.scene, folder, mux_audio=False)["video"]
        self.session = StepSession(model, Region(video, 0.0, self.scene.duration))
        self.k = min(k, len(self.scene.kinds))
        self.captions = choose_captions(self.scene, self.k)
        self.kinds = self.scene.kinds[: self.k]
        self.sample_rate = model.sample_rate
        self.stems = stems_at(self.scene, self.k, model.sample_rate, self.session.length)   # (k, S)

    def settings(self, track: int, take: int, method: str, alpha: float | None, beta: float | None,
                 steps: int | None) -> TrackSettings:
        """Track `track` (0-based) of take `take`; a method that steers away from the earlier
        captions gets them as its negative caption, as the session gives them."""
        negative = ", ".join(self.captions[:track]) if GUIDANCE_METHODS[method].negative_from_previous else ""
        return TrackSettings(self.captions[track], method=method, alpha=alpha, beta=beta,
                             seed=take_seed(self.scene.seed, track, take), steps=steps, negative_caption=negative)

    def truth_tracks(self) -> list[Track]:
        """The true stems, finished as generated tracks are."""
        out = []
        for stem in self.stems:
            finished, levels = mixing.finish_stem(stem, self.sample_rate)
            out.append(Track(finished[0], self.sample_rate, asdict(levels)))
        return out

    def truth_mix(self, before: int) -> np.ndarray:
        """x̃ as `nag` would hear it had its earlier tracks been the true stems: those stems finished
        as generated tracks are (each at stem loudness), then mixed. The raw stems' balance would
        make the oracle hear another mix than the one a generated track ever reaches the engine in."""
        finished = [track.samples for track in self.truth_tracks()[:before]]
        return conditioning_mix(finished, self.sample_rate, self.session.length)


class PhaseClock:
    """Seconds per phase, summed over the run."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def add_takes(self, tracks: Sequence[Track]) -> None:
        for phase, seconds in tracks[0].metadata["timings"].items():  # one batch: every take holds its timings
            self.add(phase, seconds)


class StepProgress:
    """Counts take-steps (a batch of B takes at step s has done B * s) over the whole run."""

    def __init__(self, total: int, on_progress: Callable[[int, int], None] | None):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def batch(self, takes: int):
        start = self.done

        def on_progress(phase, step, _total):
            if phase != "sampling":
                return
            self.done = start + takes * step
            if self.on_progress is not None:
                self.on_progress(self.done, self.total)
        return on_progress


def generate_batch(run: SceneRun, settings: list[TrackSettings], conditions: list, clock: PhaseClock,
                   progress: StepProgress) -> list[Track]:
    """One batch of takes through the scene's session, its time and steps counted."""
    tracks = run.session.generate_takes(settings, conditions, on_progress=progress.batch(len(settings)))
    clock.add_takes(tracks)
    return tracks


def row_tracks(run: SceneRun, row: Row, first: list[Track], alpha, steps, clock, progress) -> list[list[Track]]:
    """Tracks 1..k of every take of one row: (takes, k). Rows that hear their own earlier tracks
    go track by track (the K takes of a track in one batch); the others make all their tracks
    in one batch."""
    takes = len(first)
    sequences = [[track] for track in first]
    later = range(1, run.k)
    if row.hears == "generated":
        for j in later:
            conditions = [conditioning_mix([t.samples for t in seq], run.sample_rate, run.session.length)
                          for seq in sequences]
            made = generate_batch(run, [run.settings(j, t, row.method, alpha, row.beta, steps) for t in range(takes)],
                                  conditions, clock, progress)
            for seq, track in zip(sequences, made):
                seq.append(track)
        return sequences
    pairs = [(j, t) for j in later for t in range(takes)]
    truth = {j: run.truth_mix(j) for j in later} if row.hears == "truth" else {}
    made = generate_batch(run, [run.settings(j, t, row.method, alpha, row.beta, steps) for j, t in pairs],
                          [truth.get(j) for j, _ in pairs], clock, progress)
    for (j, t), track in zip(pairs, made):
        sequences[t].append(track)
    return sequences


def sequence_figures(tracks: Sequence[Track], embeddings: np.ndarray, probabilities: np.ndarray,
                      kind_columns: Sequence[int], stems_eval: np.ndarray, sample_rate: int) -> dict:
    """Figures of one take's tracks 1..k: {"track1": {...}, "later": {figure: [per track 2..k]},
    "scene": {...}}. embeddings (k, D), probabilities (k, n_kinds), stems_eval (k, S) at 16 kHz."""
    waves = [to_eval_rate(t.samples, sample_rate) for t in tracks]

    def levels(j: int) -> dict:  # what finish_stem recorded, under the figures' names
        meta = tracks[j].metadata
        return {"lufs": meta["decoded_lufs"], **{name: meta[name] for name in (
            "decoded_peak_dbfs", "pre_limiter_clipped_fraction", "silence_fraction")}}

    later: dict[str, list] = {name: [] for name in TRACK_FIGURES}
    for j in range(1, len(tracks)):
        figures = {"separability": metrics.similarity_to_earlier(embeddings, j),
                   "text_fidelity": float(probabilities[j, kind_columns[j]]),
                   "leakage": metrics.presence_leakage(probabilities[j], kind_columns[:j]),
                   "temporal_alignment": metrics.temporal_alignment(waves[j], stems_eval[j]), **levels(j)}
        for name, value in figures.items():
            later[name].append(value)
    track1 = {"text_fidelity": float(probabilities[0, kind_columns[0]]), **levels(0)}
    composite = mixing.mix_tracks([(w[None], SAMPLE_RATE) for w in waves], SAMPLE_RATE, len(waves[0]),
                                  target_lufs=metrics.COMPOSITE_LUFS)[0]
    return {"track1": track1, "later": later,
            "scene": {"composite_distance": metrics.composite_distance(composite, stems_eval.sum(0))}}


def _score_scene(run: SceneRun, sequences: dict[str, list[list[Track]]], embedding, presence) -> dict:
    """Per-scene means over takes (and tracks 2..k): {name: {figure: value, "_track1": {figure:
    value}}} for every row and "ground_truth"."""
    flat = [track for takes in sequences.values() for seq in takes for track in seq]
    samples = [t.samples for t in flat]
    embeddings = embedding.embed_audio(samples, run.sample_rate)
    probabilities = presence.probabilities(samples, run.sample_rate)
    columns = [presence.kind_index(kind) for kind in run.kinds]
    stems_eval = np.stack([to_eval_rate(s, run.sample_rate) for s in run.stems])
    out, position = {}, 0
    for name, takes in sequences.items():
        figures = []
        for seq in takes:
            rows = slice(position, position + len(seq))
            figures.append(sequence_figures(seq, embeddings[rows], probabilities[rows], columns, stems_eval,
                                             run.sample_rate))
            position += len(seq)
        out[name] = {figure: stats.finite_mean([v for f in figures for v in f["later"][figure]])
                     for figure in TRACK_FIGURES}
        out[name].update({figure: stats.finite_mean([f["scene"][figure] for f in figures])
                          for figure in SCENE_FIGURES})
        out[name]["_track1"] = {figure: stats.finite_mean([f["track1"][figure] for f in figures])
                                for figure in TRACK1_FIGURES}
    return out


def _summaries(per_scene: dict[str, list]) -> dict:
    return {figure: metrics.summarize(values) for figure, values in per_scene.items()}


def evaluate(model: FoleyModel, scenes: int, seed: int, k: int = 3, takes: int = DEFAULT_TAKES,
             steps: int | None = None, alpha: float | None = None, rows: Sequence[Row] = MAIN_ROWS,
             embedding=None, presence=None, on_progress: Callable[[int, int], None] | None = None,
             duration: float = SCENE_SECONDS, work_dir: str | Path | None = None) -> dict:
    """Run the protocol on `scenes` scenes with `takes` seeds each and return the report
    (JSON-ready; README "Evaluation" documents it): `config`, `classifier`, `embedding`,
    `track1`, `methods` (row -> figure -> {mean, std, n} over scenes), `reference`
    (ground_truth_stems: the same figures for the true stems; ground_truth_track1),
    `comparisons` ("<a>_vs_<b>" -> figure -> {mean_diff, ci95, n}) for every pair of rows,
    `per_scene`, `definitions`, `timings`, `notes`. α, β and steps default to the model's own
    (its capabilities). `embedding` / `presence`: loaded evaluation networks (default: the
    shipped ones). `on_progress(done, total)` counts take-steps over the whole run."""
    rows = tuple(rows)
    check_evaluation(scenes, seed, k, takes, steps, alpha, rows)
    notes = []
    if not model.supports_nag:
        skipped = [r.name for r in rows if GUIDANCE_METHODS[r.method].needs_controlnet]
        rows = tuple(r for r in rows if r.name not in skipped)
        if skipped:
            notes.append(f"model '{model.model_id}' has no NAG ControlNet: rows {skipped} were skipped")
        if not rows:
            raise InvalidInputError(f"The model '{model.model_id}' has no NAG ControlNet, so none of these rows runs.")
    embedding = default_embedding(model) if embedding is None else embedding
    presence = default_presence() if presence is None else presence
    defaults = model.defaults
    alpha = defaults.alpha if alpha is None else float(alpha)
    steps = defaults.steps if steps is None else steps
    seeds = [scene_seed(seed, i) for i in range(scenes)]
    clock = PhaseClock()
    windows = len(windows_for(model, duration))
    progress = StepProgress(sum(takes * (1 + len(rows) * (n - 1)) for n in tracks_per_scene(seeds, k, duration))
                            * steps * windows, on_progress)
    per_scene = {name: {} for name in [r.name for r in rows] + ["ground_truth", "track1", "ground_truth_track1"]}

    def record(name: str, figures: dict) -> None:
        for figure, value in figures.items():
            per_scene[name].setdefault(figure, []).append(value)

    with tempfile.TemporaryDirectory(prefix="stepfoley-eval-", dir=work_dir) as temp:
        for index, s in enumerate(seeds):
            t0 = time.perf_counter()
            run = SceneRun(model, s, k, Path(temp) / f"scene_{index:04d}", duration)
            clock.add("scenes", time.perf_counter() - t0)
            first = generate_batch(run, [run.settings(0, t, "independent", alpha, 0.0, steps) for t in range(takes)],
                                   [None] * takes, clock, progress)
            sequences = {row.name: row_tracks(run, row, first, alpha, steps, clock, progress) for row in rows}
            t0 = time.perf_counter()
            sequences["ground_truth"] = [run.truth_tracks()]
            scored = _score_scene(run, sequences, embedding, presence)
            clock.add("scoring", time.perf_counter() - t0)
            for name in [r.name for r in rows] + ["ground_truth"]:
                record(name, {f: v for f, v in scored[name].items() if f != "_track1"})
            record("track1", scored[rows[0].name]["_track1"])
            record("ground_truth_track1", scored["ground_truth"]["_track1"])

    t0 = time.perf_counter()
    names = [r.name for r in rows]
    comparisons = {f"{a}_vs_{b}": {figure: stats.paired_bootstrap(per_scene[a][figure], per_scene[b][figure])
                                   for figure in TRACK_FIGURES + SCENE_FIGURES}
                   for b, a in itertools.combinations(names, 2)}
    clock.add("statistics", time.perf_counter() - t0)
    return {
        "config": {
            "model": model.model_id, "steps": steps, "alpha": alpha, "beta_default": defaults.beta,
            "level_anchor": defaults.level_anchor if model.level_anchor() else 0.0,
            "scenes": scenes, "seed": seed, "takes": takes, "tracks": k, "duration_s": duration,
            "rows": {r.name: {"method": r.method, "hears": r.hears,
                              "beta": (defaults.beta if r.beta is None else r.beta)
                              if "beta" in GUIDANCE_METHODS[r.method].params else None} for r in rows},
            "scene_seeds": seeds, "first_track_shared": True, "sample_rate": model.sample_rate,
            "stem_lufs": mixing.STEM_LUFS, "threads": torch.get_num_threads(),
            "bootstrap": {"resamples": stats.BOOTSTRAP_RESAMPLES, "seed": stats.BOOTSTRAP_SEED,
                          "confidence": stats.CONFIDENCE, "unit": "scene"},
        },
        "classifier": presence.description(),
        "embedding": embedding.description(),
        "track1": _summaries(per_scene["track1"]),
        "methods": {name: _summaries(per_scene[name]) for name in names},
        "reference": {"ground_truth_stems": _summaries(per_scene["ground_truth"]),
                      "ground_truth_track1": _summaries(per_scene["ground_truth_track1"])},
        "comparisons": comparisons,
        "per_scene": per_scene,
        "definitions": DEFINITIONS,
        "timings": {phase: round(seconds, 2) for phase, seconds in clock.seconds.items()},
        "notes": notes,
    }


def tracks_per_scene(seeds: Sequence[int], k: int, duration: float = SCENE_SECONDS) -> list[int]:
    """How many tracks each scene gets: k, or fewer when it has fewer sources."""
    return [min(k, len(make_scene(s, duration=duration).kinds)) for s in seeds]


def default_embedding(model: FoleyModel):
    """The shipped evaluation embedding (trained once into the cache if absent)."""
    from stepfoley.lab.evaluation.embedding import default_audio_embedding

    return default_audio_embedding(text_encoder=model.text_encoder)


def default_presence():
    """The shipped source-presence classifier (trained once into the cache if absent)."""
    from stepfoley.lab.evaluation.presence import default_source_presence

    return default_source_presence()
