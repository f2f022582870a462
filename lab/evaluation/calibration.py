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

Development scenes have seeds DEVELOPMENT_SCENE_BASE + i, which no reported evaluation uses
(evaluation.runner keeps its scene seeds below that base). `write_guidance_defaults` (the
embedded model) records the choice in the weights' metadata, from where the engine publishes
it in its capabilities.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from stepfoley.lab.evaluation import metrics, stats
from stepfoley.lab.evaluation.runner import (DEFAULT_TAKES, DEVELOPMENT_SCENE_BASE, SCENE_SECONDS, PhaseClock,
                                                SceneRun, StepProgress, check_number, default_presence,
                                                generate_batch, tracks_per_scene)
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.pipeline import FoleyModel
from stepfoley.engine.session import plan_windows

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


def choose_alpha(model: FoleyModel, scenes: int = DEVELOPMENT_SCENES, takes: int = DEFAULT_TAKES, k: int = 3,
                 alphas: Sequence[float] = ALPHA_GRID, steps: int | None = None, presence=None,
                 on_progress: Callable[[int, int], None] | None = None, duration: float = SCENE_SECONDS,
                 work_dir: str | Path | None = None) -> dict:
    """Plain CFG at every α of `alphas` on `scenes` development scenes (tracks 1..k, `takes`
    seeds each) and the α the rule picks. Returns a JSON-ready report: `alphas` (α -> figure ->
    {mean, std, n} over scenes), `comparisons` (each α against the chosen one: paired bootstrap
    over scenes), `chosen`, `rule`, `config`, `classifier`, `timings`."""
    alphas = sorted({float(a) for a in alphas})
    if not alphas:
        raise InvalidInputError("Give at least one α to choose from.")
    for a in alphas:
        check_number("alpha", a)
    if not isinstance(scenes, int) or scenes < 1 or not isinstance(takes, int) or takes < 1:
        raise InvalidInputError(f"Choosing α needs at least one scene and one take, got {scenes!r} and {takes!r}.")
    presence = default_presence() if presence is None else presence
    steps = model.defaults.steps if steps is None else steps
    seeds = [development_scene_seed(i) for i in range(scenes)]
    clock = PhaseClock()
    windows = len(plan_windows(duration, model.max_duration))
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
                t0 = time.perf_counter()
                probabilities = presence.probabilities([t.samples for t in tracks], run.sample_rate)
                columns = [presence.kind_index(run.kinds[j]) for j, _ in pairs]
                values = {"text_fidelity": [float(p[c]) for p, c in zip(probabilities, columns)],
                          "lufs": [t.metadata["decoded_lufs"] for t in tracks]}
                for figure in ("pre_limiter_clipped_fraction", "decoded_peak_dbfs", "silence_fraction"):
                    values[figure] = [t.metadata[figure] for t in tracks]
                for figure, v in values.items():
                    per_scene[a][figure].append(stats.finite_mean(v))
                clock.add("scoring", time.perf_counter() - t0)
    summaries = {a: {f: metrics.summarize(v) for f, v in per_scene[a].items()} for a in alphas}
    chosen, why = pick_alpha(summaries)
    return {
        "config": {"model": model.model_id, "scenes": scenes, "takes": takes, "tracks": k, "steps": steps,
                   "method": "independent", "scene_seeds": seeds, "clipping_limit": CLIPPING_LIMIT,
                   "threads": torch.get_num_threads()},
        "classifier": presence.description(),
        "alphas": {f"{a:g}": summaries[a] for a in alphas},
        "comparisons": {f"alpha_{a:g}_vs_alpha_{chosen:g}": {
            f: stats.paired_bootstrap(per_scene[a][f], per_scene[chosen][f]) for f in FIGURES}
            for a in alphas if a != chosen},
        "chosen": chosen,
        "rule": why,
        "per_scene": {f"{a:g}": per_scene[a] for a in alphas},
        "timings": {phase: round(seconds, 2) for phase, seconds in clock.seconds.items()},
    }

