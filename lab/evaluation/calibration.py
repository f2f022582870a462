"""Choosing a model's CFG strength α from plain CFG alone, on development scenes.

α = 4.5 is MMAudio's value for its VAE latent. The embedded model's latent is a log-mel
spectrogram, where CFG extrapolates band levels directly: a large α makes tracks louder than
anything real and drives decoded samples far beyond full scale (what `finish_stem` records as
`pre_limiter_clipped_fraction`). So α is chosen from the trade-off of plain CFG (method
"independent", every track of a scene, K takes) between text fidelity (the source-presence
classifier's probability of the captioned kind) and overload:

    the α of the grid with the highest mean text fidelity among those whose mean
    pre_limiter_clipped_fraction is at most CLIPPING_LIMIT; when none is, the least
    overloaded α.

Then the level anchor (engine.sampler, `level_anchor`): guidance raises the level in this
latent too (NAG tracks decode several dB louder than unguided ones), so a guided step's level is
moved part of the way toward the conditional branch's. Its strength is chosen after α, from NAG
with the model's α and β on the same development scenes:

    the smallest strength of the grid whose NAG tracks' mean pre_limiter_clipped_fraction is at
    most CLIPPING_LIMIT (the least the guidance is held back); when none is, the least
    overloaded.

Development scenes have seeds DEVELOPMENT_SCENE_BASE + i, which no reported evaluation uses
(evaluation.runner keeps its scene seeds below that base). `write_guidance_defaults` (the
embedded model) records the choice in the weights' metadata, from where the engine publishes
it in its capabilities.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from stepfoley.lab.evaluation import metrics, stats
from stepfoley.lab.evaluation.runner import (DEFAULT_TAKES, DEVELOPMENT_SCENE_BASE, MAX_SOURCES, MAX_TAKES, SCENE_SECONDS,
                                                SCENES_PER_SEED, PhaseClock, Row, SceneRun, StepProgress, check_grid,
                                                check_steps, default_presence, generate_batch, row_tracks,
                                                tracks_per_scene)
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.guidance import GuidanceWeights, resolve_method
from stepfoley.engine.sampler import is_guided
from stepfoley.engine.pipeline import FoleyModel
from stepfoley.engine.session import windows_for

ALPHA_GRID = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.5)  # below 1, CFG is the conditional branch alone (MMAudio)
DEVELOPMENT_SCENES = 12
CLIPPING_LIMIT = 0.001  # 0.1 % of samples beyond full scale as decoded
FIGURES = ("text_fidelity", "pre_limiter_clipped_fraction", "lufs", "decoded_peak_dbfs", "silence_fraction")


def development_scene_seed(index: int) -> int:
    return DEVELOPMENT_SCENE_BASE + index


def pick_alpha(summaries: dict[float, dict], limit: float = CLIPPING_LIMIT) -> tuple[float, str]:
    """The rule above, on {α: {figure: {"mean": ...}}}. Returns (α, why)."""
    clipped = {a: s["pre_limiter_clipped_fraction"]["mean"] for a, s in summaries.items()}
    within = [a for a in summaries if clipped[a] is not None and clipped[a] <= limit]
    if within:
        best = max(within, key=lambda a: (summaries[a]["text_fidelity"]["mean"] or 0.0, -a))
        return best, (f"highest text fidelity among the α whose tracks clip at most {100 * limit:g} % of their "
                      "samples as decoded")
    best = min(summaries, key=lambda a: (clipped[a] if clipped[a] is not None else float("inf"), a))
    return best, f"no α keeps clipping within {100 * limit:g} %: the least overloaded one"


def check_calibration(what: str, grid: Sequence[float], scenes, takes, steps, k) -> list[float]:
    """choose_alpha's ("α") or choose_level_anchor's ("level anchor") arguments; the grid,
    sorted (a value given twice is refused). InvalidInputError; `stepfoley eval` checks them before the
    model loads."""
    values = [float(a) for a in grid]
    if not values:
        raise InvalidInputError(f"Give at least one {what} to choose from.")
    if what == "level anchor" and any(not 0.0 <= a <= 1.0 for a in values):
        raise InvalidInputError(f"Level anchors are numbers from 0 to 1; got {values!r}.")
    check_grid(values, "alphas" if what == "α" else "anchors", what)  # a repeat refused, as --beta-sweep's
    values = sorted(values)
    if not isinstance(scenes, int) or not 1 <= scenes <= SCENES_PER_SEED:
        raise InvalidInputError(f"Choosing the {what} takes 1 to {SCENES_PER_SEED} scenes (--scenes), got {scenes!r}.")
    if not isinstance(takes, int) or not 1 <= takes <= MAX_TAKES:
        raise InvalidInputError(f"--takes must be a whole number from 1 to {MAX_TAKES}, got {takes!r}.")
    least = 2 if what == "level anchor" else 1  # the level anchor is judged on the NAG tracks, 2 on
    if not isinstance(k, int) or not least <= k <= MAX_SOURCES:  # more would be recorded, never made
        raise InvalidInputError(f"--tracks must be from {least} to {MAX_SOURCES} (a scene holds at most "
                                f"{MAX_SOURCES} sources) to choose the {what}, got {k!r}.")
    check_steps(steps)
    return values


def choose_alpha(model: FoleyModel, scenes: int = DEVELOPMENT_SCENES, takes: int = DEFAULT_TAKES, k: int = 3,
                 alphas: Sequence[float] = ALPHA_GRID, steps: int | None = None, presence=None,
                 on_progress: Callable[[int, int], None] | None = None, duration: float = SCENE_SECONDS,
                 work_dir: str | Path | None = None) -> dict:
    """Plain CFG at every α of `alphas` on `scenes` development scenes (tracks 1..k, `takes`
    seeds each) and the α the rule picks. Returns a JSON-ready report: `alphas` (α -> figure ->
    {mean, std, n} over scenes), `comparisons` (each α against the chosen one: paired bootstrap
    over scenes), `chosen`, `rule`, `config`, `classifier`, `timings`."""
    alphas = check_calibration("α", alphas, scenes, takes, steps, k)
    presence = default_presence() if presence is None else presence
    steps = model.defaults.steps if steps is None else steps
    seeds = [development_scene_seed(i) for i in range(scenes)]
    # α is chosen from CFG as the network makes it; the level anchor is chosen after it, for it
    model = replace(model, defaults=replace(model.defaults, level_anchor=0.0))
    clock = PhaseClock()
    windows = len(windows_for(model, duration))
    progress = StepProgress(sum(tracks_per_scene(seeds, k, duration)) * len(alphas) * takes * steps * windows,
                            on_progress)
    per_scene: dict[float, dict[str, list]] = {a: {f: [] for f in FIGURES} for a in alphas}
    with tempfile.TemporaryDirectory(prefix="stepfoley-alpha-", dir=work_dir) as temp:
        for index, s in enumerate(seeds):
            t0 = time.perf_counter()
            run = SceneRun(model, s, k, Path(temp) / f"scene_{index:04d}", duration)
            clock.add("scenes", time.perf_counter() - t0)
            pairs = [(j, t) for j in range(run.k) for t in range(takes)]
            for a in alphas:
                tracks = generate_batch(run, [run.settings(j, t, "independent", a, 0.0, steps) for j, t in pairs],
                                        [None] * len(pairs), clock, progress)
                _record_tracks(per_scene[a], run, [(j, track) for (j, _), track in zip(pairs, tracks)], presence,
                               clock)
    config = {"model": model.model_id, "scenes": scenes, "takes": takes, "tracks": k, "steps": steps,
              "method": "independent", "scene_seeds": seeds}
    return _choice_report(config, presence, "alphas", "alpha", per_scene, pick_alpha, clock)


def _record_tracks(per_scene: dict[str, list], run: SceneRun, tracks: list, presence, clock: PhaseClock) -> None:
    """Appends one scene's figures (means over `tracks`, (track index, Track) pairs) to the
    lists of `per_scene` it names: text fidelity, and the levels each track's metadata holds."""
    t0 = time.perf_counter()
    probabilities = presence.probabilities([t.samples for _, t in tracks], run.sample_rate)
    values = {"text_fidelity": [float(p[presence.kind_index(run.kinds[j])])
                                for p, (j, _) in zip(probabilities, tracks)],
              "lufs": [t.metadata["decoded_lufs"] for _, t in tracks]}
    for figure in ("pre_limiter_clipped_fraction", "decoded_peak_dbfs", "silence_fraction"):
        values[figure] = [t.metadata[figure] for _, t in tracks]
    for figure, v in per_scene.items():
        v.append(stats.finite_mean(values[figure]))
    clock.add("scoring", time.perf_counter() - t0)


def _choice_report(config: dict, presence, grid: str, name: str, per_scene: dict[float, dict[str, list]], pick,
                   clock: PhaseClock) -> dict:
    """The JSON-ready report of a choice over a grid of values: `config`, `classifier`, `<grid>`
    (value -> figure -> {mean, std, n} over scenes), `comparisons` (each value against the chosen
    one: paired bootstrap over scenes), `chosen`, `rule`, `per_scene`, `timings`."""
    summaries = {a: {f: metrics.summarize(v) for f, v in figures.items()} for a, figures in per_scene.items()}
    chosen, why = pick(summaries)
    return {
        "config": {**config, "clipping_limit": CLIPPING_LIMIT, "threads": torch.get_num_threads()},
        "classifier": presence.description(),
        grid: {f"{a:g}": summaries[a] for a in per_scene},
        "comparisons": {f"{name}_{a:g}_vs_{name}_{chosen:g}": {
            f: stats.paired_bootstrap(per_scene[a][f], per_scene[chosen][f]) for f in per_scene[a]}
            for a in per_scene if a != chosen},
        "chosen": chosen,
        "rule": why,
        "per_scene": {f"{a:g}": per_scene[a] for a in per_scene},
        "timings": {phase: round(seconds, 2) for phase, seconds in clock.seconds.items()},
    }


# -- the level anchor -----------------------------------------------------------------------------

LEVEL_ANCHOR_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
LEVEL_FIGURES = ("pre_limiter_clipped_fraction", "text_fidelity", "lufs", "decoded_peak_dbfs")


def pick_level_anchor(summaries: dict[float, dict], limit: float = CLIPPING_LIMIT) -> tuple[float, str]:
    """On {strength: {figure: {"mean": ...}}}: the smallest strength whose guided tracks clip at
    most `limit` of their samples (the least the guidance is held back); when none does, the
    least overloaded. Returns (strength, why)."""
    clipped = {a: s["pre_limiter_clipped_fraction"]["mean"] for a, s in summaries.items()}
    within = sorted(a for a in summaries if clipped[a] is not None and clipped[a] <= limit)
    if within:
        return within[0], (f"the smallest level anchor whose NAG tracks clip at most {100 * limit:g} % of their "
                           "samples as decoded")
    best = min(summaries, key=lambda a: (clipped[a] if clipped[a] is not None else float("inf"), a))
    return best, f"no level anchor keeps clipping within {100 * limit:g} %: the least overloaded one"


def choose_level_anchor(model: FoleyModel, scenes: int = DEVELOPMENT_SCENES, takes: int = DEFAULT_TAKES,
                        k: int = 3, strengths: Sequence[float] = LEVEL_ANCHOR_GRID, steps: int | None = None,
                        presence=None, on_progress: Callable[[int, int], None] | None = None,
                        duration: float = SCENE_SECONDS, work_dir: str | Path | None = None) -> dict:
    """NAG with the model's α and β (tracks 2..k hearing their own earlier tracks, track 1 plain
    CFG) at every level-anchor strength of `strengths` on `scenes` development scenes, and the
    strength `pick_level_anchor` picks. Figures are over the NAG tracks (2..k). Returns a
    JSON-ready report like `choose_alpha`'s, with `strengths` in place of `alphas`."""
    strengths = check_calibration("level anchor", strengths, scenes, takes, steps, k)
    if not model.supports_nag or getattr(model.codec, "match_level", None) is None:
        raise InvalidInputError(f"The model '{model.model_id}' has no NAG ControlNet or no level to anchor "
                                "(its codec cannot read one), so there is no level anchor to choose.")
    presence = default_presence() if presence is None else presence
    steps = model.defaults.steps if steps is None else steps
    alpha = model.defaults.alpha
    seeds = [development_scene_seed(i) for i in range(scenes)]
    anchored = {a: replace(model, defaults=replace(model.defaults, level_anchor=a)) for a in strengths}
    # Track 1 is plain CFG: the anchor reaches it only where that combines branches (α > 1);
    # otherwise it is the same at every strength and made once per scene.
    first_per_strength = is_guided(resolve_method("independent", GuidanceWeights(alpha=alpha), has_audio=False))
    firsts = len(strengths) if first_per_strength else 1
    clock = PhaseClock()
    windows = len(windows_for(model, duration))
    progress = StepProgress(sum((n - 1) * len(strengths) + firsts for n in tracks_per_scene(seeds, k, duration))
                            * takes * steps * windows, on_progress)
    per_scene: dict[float, dict[str, list]] = {a: {f: [] for f in LEVEL_FIGURES} for a in strengths}
    nag = Row("nag", "nag", hears="generated")
    with tempfile.TemporaryDirectory(prefix="stepfoley-anchor-", dir=work_dir) as temp:
        for index, s in enumerate(seeds):
            t0 = time.perf_counter()
            run = SceneRun(model, s, k, Path(temp) / f"scene_{index:04d}", duration)
            clock.add("scenes", time.perf_counter() - t0)
            if run.k < 2:
                continue
            first = None
            for a in strengths:
                run.session.model = anchored[a]
                if first is None or first_per_strength:
                    first = generate_batch(run, [run.settings(0, t, "independent", alpha, 0.0, steps)
                                                 for t in range(takes)], [None] * takes, clock, progress)
                _record_tracks(per_scene[a], run, [(j, seq[j]) for seq in row_tracks(
                    run, nag, first, alpha, steps, clock, progress) for j in range(1, run.k)], presence, clock)
    config = {"model": model.model_id, "scenes": scenes, "takes": takes, "tracks": k, "steps": steps,
              "method": "nag", "alpha": alpha, "beta": model.defaults.beta, "scene_seeds": seeds}
    return _choice_report(config, presence, "strengths", "anchor", per_scene, pick_level_anchor, clock)
