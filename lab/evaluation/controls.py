"""`stepfoley eval --controls`: the controls of issue 15 on mini-world scenes the model never
saw (the main evaluation's scenes and seeds), with the same statistics: per-scene values (the
mean over takes), then a bootstrap over scenes (evaluation.stats).

extend    The scene's first source, its true stem finished like a generated track, is the
          take; its first EXTEND_FROM_S seconds are kept and the rest is made new through the
          engine's own extend path (FoleyService, a protocol-2 request with `take` and
          `regenerate`, at the take's rate, 32-bit float files so nothing is rounded). Figures:
          the largest difference between a kept sample and the take's; the spectral flux
          across the seam over the ground truth's flux at random points; text fidelity and
          timing of the continued part against the same part of a full generation with the
          same seeds.
region    Two-source scenes, both drawn throughout (miniworld PLAIN); the first source's caption
          with its box as the picture region (whole clip) and without: the other source's
          presence in the track (leakage), and the caption's own (text fidelity).
loudness  The scene's first source with a loudness curve drawn from the scene's seed (points
          every 2 s spanning -45 to -15 LUFS) and without: how closely the track's loudness follows the
          curve (correlation, and the level error in dB), and text fidelity. For a model with a
          loudness ControlNet, also the curve by gain automation alone (the ControlNet left out):
          what the learned condition adds.

Track settings are the first track's of the main evaluation: plain CFG (method
"independent"), the model's α and steps unless given, seeds `take_seed(scene, 0, take)`.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stepfoley.engine import audio_io
from stepfoley.lab.evaluation import metrics, stats
from stepfoley.lab.evaluation.runner import (SCENE_SECONDS, PhaseClock, SceneRun, check_run, default_presence,
                                                scene_seed, take_seed)
from stepfoley.lab.evaluation.spectra import FRAMES_PER_SECOND, mel_power, power_to_db, to_eval_rate
from stepfoley.engine.loudness_curve import FLOOR_LUFS, curve_at, loudness_over_time
from stepfoley.lab.miniworld.scene import PLAIN
from stepfoley.engine.pipeline import FoleyModel, PictureFocus
from stepfoley.engine.session import SEAM_S, StepSession, TrackSettings

EXTEND_FROM_S = 4.0  # half of a scene: as much kept as made new
# Spectral flux is taken on a log-mel floored here (dB, the evaluation's mel scale where a
# full-scale sine reads about 0 dB): far under any source, so a sparse sound's silences all
# read the floor and add no flux, and log(0) never enters.
FLUX_FLOOR_DB = -80.0
# A seam's flux: the frame pairs whose midpoint lies within this of the seam (the crossfade).
SEAM_REACH_S = SEAM_S
# Below this mean flux (dB per 16 ms frame) the ground truth is as good as silent: a ratio to
# it would say nothing, so the scene has no defined value (counted, never divided by).
MIN_REFERENCE_FLUX_DB = 0.05

DEFINITIONS = {
    "extend.kept_max_abs_diff": "largest |stem - take| over the samples the request keeps, every scene and take, "
                                "at the take's rate (0: the kept audio comes back untouched)",
    "extend.seam_flux_ratio": "spectral flux across the seam (mean absolute change of the log-mel, floored at "
                              f"{FLUX_FLOOR_DB:g} dB, between 16 ms frames, over the frame pairs whose midpoints lie within "
                              f"{SEAM_REACH_S * 1000 + 500 / FRAMES_PER_SECOND:g} ms of it: {SEAM_REACH_S * 1000:g} ms and "
                              "half a frame) over "
                              "the ground truth's flux at random points (its mean over every frame pair); 1 = a seam "
                              "as smooth as the sound itself",
    "extend.seam_flux_ratio_to_own": "flux across the seam over the extended stem's own flux at random points: "
                                     "the seam against the texture the model makes (1 = no seam to hear)",
    "extend.full_generation_flux_ratio": "a full generation's flux at random points over the ground truth's: how "
                                         "much of seam_flux_ratio is the model's texture rather than the seam",
    "extend.codec_round_trip_flux_ratio": "the take itself encoded and decoded by the model's audio codec, its flux "
                                          "at random points over the take's: what the codec adds before any "
                                          "sampling (a full generation's texture includes it)",
    "extend.text_fidelity": "source-presence probability of the caption's kind in the continued part (from "
                            f"{EXTEND_FROM_S:g} s), extended vs the same part of a full generation",
    "region.leakage_other": "source-presence probability of the other source's kind in a track captioned for the "
                            "first source, with its box as the picture region vs without (lower: the region "
                            "keeps the other source out)",
    "region.text_fidelity": "source-presence probability of the caption's own kind, with vs without the region",
    "loudness.curve_correlation": "Pearson correlation between the track's loudness over time (engine."
                                  "loudness_curve: K-weighted, 400 ms windows every 50 ms) and the requested curve, "
                                  "over the instants above the absolute gate (-70 LUFS), with the curve vs without",
    "loudness.level_error_db": "median |track's loudness - curve| in dB over the same instants: the absolute level",
    "loudness.text_fidelity": "source-presence probability of the caption's kind, with the curve vs without",
    "loudness.*.gain_only": "each figure with the curve applied by gain automation alone (the model's loudness "
                            "ControlNet left out); with_vs_gain_only: what the learned condition adds. Only for a "
                            "model with a loudness ControlNet",
    "extend.temporal_alignment": "timing (evaluation.metrics.temporal_alignment) of the continued part against "
                                 "the true stem's same part, extended vs full generation",
}


# -- figures --------------------------------------------------------------------------------------


def log_mel_flux(samples: np.ndarray) -> np.ndarray:
    """Spectral flux of 16 kHz mono audio (S,): per pair of consecutive 16 ms frames, the mean
    absolute change over mel bands of the log-mel floored at FLUX_FLOOR_DB, (frames - 1,) dB."""
    db = np.maximum(power_to_db(mel_power(np.asarray(samples, np.float32))), FLUX_FLOOR_DB)   # (M, F)
    return np.abs(np.diff(db, axis=1)).mean(axis=0)


def flux_near(flux: np.ndarray, seconds: float, reach_s: float = SEAM_REACH_S) -> float:
    """Mean flux of the frame pairs whose midpoint is within `reach_s` of `seconds`."""
    midpoints = (np.arange(len(flux)) + 0.5) / FRAMES_PER_SECOND
    near = np.abs(midpoints - seconds) <= reach_s + 0.5 / FRAMES_PER_SECOND
    return float(flux[near].mean())


def mean_flux(samples: np.ndarray, sample_rate: int) -> float:
    """The flux of mono (S,) audio at a random point: its mean over every frame pair."""
    return float(log_mel_flux(to_eval_rate(samples, sample_rate)).mean())


@torch.inference_mode()
def codec_round_trip(model: FoleyModel, samples: np.ndarray) -> np.ndarray:
    """Mono (S,) audio at the model's rate, encoded and decoded by its audio codec, (S,)."""
    wave = torch.from_numpy(np.ascontiguousarray(samples, np.float32))[None].to(model.device)
    return model.codec.decode(model.codec.encode(wave))[0, :len(samples)].float().cpu().numpy()


def flux_ratio(numerator: float, reference: float) -> float | None:
    """numerator / reference, None where the reference is as good as silent (MIN_REFERENCE_FLUX_DB)."""
    return numerator / reference if reference >= MIN_REFERENCE_FLUX_DB else None


def seam_flux(track: np.ndarray, seams: list[float], sample_rate: int) -> float:
    """The mean flux of mono (S,) audio across the given seams (seconds)."""
    flux = log_mel_flux(to_eval_rate(track, sample_rate))
    return float(np.mean([flux_near(flux, s) for s in seams]))


def seam_flux_ratio(track: np.ndarray, truth: np.ndarray, seams: list[float], sample_rate: int) -> float | None:
    """Flux across the seams of `track` over the flux of `truth` at random points; None when the
    truth is as good as silent (MIN_REFERENCE_FLUX_DB). Both mono (S,) at `sample_rate`."""
    return flux_ratio(seam_flux(track, seams, sample_rate), mean_flux(truth, sample_rate))


def _mean(values) -> float | None:
    return stats.finite_mean(values)


def _with_and_without(a: list, b: list, names: tuple[str, str]) -> dict:
    """Two figures over scenes and their paired difference a - b."""
    return {names[0]: metrics.summarize(a), names[1]: metrics.summarize(b),
            f"{names[0]}_vs_{names[1]}": stats.paired_bootstrap(a, b)}


# -- extend ---------------------------------------------------------------------------------------


def _extend_scene(run: SceneRun, service, settings: list[TrackSettings], folder: Path, presence) -> dict:
    """One scene's extend figures: {"kept_max_abs_diff", "seam_flux_ratio" (None: undefined),
    "text_fidelity": (extended, full), "temporal_alignment": (extended, full)}, means over takes."""
    from stepfoley.engine.input_files import check_request_paths
    from stepfoley.request import PROTOCOL_VERSION, parse_request

    rate, length = run.sample_rate, run.session.length
    take = run.truth_tracks()[0].samples                                   # (S,) the take, finished
    take_path = folder / "take.wav"
    audio_io.write_wav_atomic(take_path, take[None], rate, "FLOAT")
    out = folder / "extended"
    out.mkdir()
    first = settings[0]
    request = check_request_paths(parse_request({
        "protocol": PROTOCOL_VERSION, "caption": first.caption, "method": first.method, "alpha": first.alpha,
        "steps": first.steps, "seed": first.seed, "variations": len(settings),
        "region": {"video": str(run.session.region.video), "file_in": 0.0, "file_out": run.scene.duration},
        "output_dir": str(out), "sample_rate": rate, "format": "wav32f",
        "take": str(take_path), "regenerate": [EXTEND_FROM_S, run.scene.duration],
    }, service.capabilities()))
    result = service(request)
    by_seed = {stem["metadata"]["seed"]: audio_io.read_audio(stem["stem_path"])[0][0] for stem in result["stems"]}
    extended = [by_seed[s.seed] for s in settings]                          # (S,) each, at the take's rate
    full = [t.samples for t in run.session.generate_takes(settings, [None] * len(settings))]

    keep = np.arange(length) < round(EXTEND_FROM_S * rate)
    kept_diff = max(float(np.max(np.abs(stem[keep] - take[keep]))) for stem in extended)
    ratios = [seam_flux_ratio(stem, take, [EXTEND_FROM_S], rate) for stem in extended]
    # what the ratio holds besides the seam: the stem's own texture at random points, and how
    # much more flux the model's audio has than the true stem wherever it is
    own = [flux_ratio(seam_flux(stem, [EXTEND_FROM_S], rate), mean_flux(stem, rate)) for stem in extended]
    texture = [flux_ratio(mean_flux(wave, rate), mean_flux(take, rate)) for wave in full]
    codec_texture = flux_ratio(mean_flux(codec_round_trip(service.model, take), rate), mean_flux(take, rate))
    part = slice(int(round(EXTEND_FROM_S * rate)), length)
    truth_part = to_eval_rate(run.stems[0][part], rate)
    probabilities = presence.probabilities([w[part] for w in extended + full], rate)
    column = presence.kind_index(run.kinds[0])
    fidelity = probabilities[:, column]
    timing = [metrics.temporal_alignment(to_eval_rate(w[part], rate), truth_part) for w in extended + full]
    n = len(settings)
    return {"kept_max_abs_diff": kept_diff,
            "seam_flux_ratio": None if any(r is None for r in ratios) else float(np.mean(ratios)),
            "seam_flux_ratio_to_own": None if any(r is None for r in own) else float(np.mean(own)),
            "full_generation_flux_ratio": None if any(r is None for r in texture) else float(np.mean(texture)),
            "codec_round_trip_flux_ratio": codec_texture,
            "text_fidelity": (float(np.mean(fidelity[:n])), float(np.mean(fidelity[n:]))),
            "temporal_alignment": (_mean(timing[:n]), _mean(timing[n:]))}


def _extend_summary(scenes: list[dict], rate: int) -> dict:
    ratios = [s["seam_flux_ratio"] for s in scenes]
    summary = {
        "kept_max_abs_diff": max(s["kept_max_abs_diff"] for s in scenes),
        "kept_sample_rate": rate,
        "extend_from_s": EXTEND_FROM_S,
        "seam_flux_ratio": {**stats.bootstrap_mean(ratios),
                            "undefined_scenes": sum(r is None for r in ratios)},
    }
    for figure in ("seam_flux_ratio_to_own", "full_generation_flux_ratio", "codec_round_trip_flux_ratio"):
        values = [s[figure] for s in scenes]
        summary[figure] = {**stats.bootstrap_mean(values), "undefined_scenes": sum(v is None for v in values)}
    for figure in ("text_fidelity", "temporal_alignment"):
        summary[figure] = _with_and_without([s[figure][0] for s in scenes], [s[figure][1] for s in scenes],
                                            ("extended", "full"))
    return summary


# -- picture region -------------------------------------------------------------------------------


def box_rectangle(box: tuple, size: int) -> tuple[float, float, float, float]:
    """A mini-world box (x0, y0, width, height) in pixels of a size x size frame as a picture
    region (x0, y0, x1, y1) in fractions."""
    x0, y0, width, height = box
    return x0 / size, y0 / size, (x0 + width) / size, (y0 + height) / size


def _region_scene(run: SceneRun, settings: list[TrackSettings], presence) -> dict:
    """One two-source scene: {"leakage_other": (with, without), "text_fidelity": (with, without)},
    means over takes."""
    focus = PictureFocus(box_rectangle(run.scene.boxes[0], run.scene.frames.shape[1]))
    focused = StepSession(run.session.model, replace(run.session.region, focus=focus))
    made = (focused.generate_takes(settings, [None] * len(settings))
            + run.session.generate_takes(settings, [None] * len(settings)))
    probabilities = presence.probabilities([t.samples for t in made], run.sample_rate)
    own, other = presence.kind_index(run.kinds[0]), presence.kind_index(run.kinds[1])
    n = len(settings)
    return {"leakage_other": (float(probabilities[:n, other].mean()), float(probabilities[n:, other].mean())),
            "text_fidelity": (float(probabilities[:n, own].mean()), float(probabilities[n:, own].mean()))}


def _region_summary(scenes: list[dict]) -> dict:
    return {figure: _with_and_without([s[figure][0] for s in scenes], [s[figure][1] for s in scenes],
                                      ("with", "without"))
            for figure in ("leakage_other", "text_fidelity")}


# -- loudness curve -------------------------------------------------------------------------------

CURVE_EVERY_S = 2.0
CURVE_RANGE_LUFS = (-45.0, -15.0)


def scene_curve(seed: int, duration: float) -> tuple[tuple[float, float], ...]:
    """A loudness curve for a scene, drawn from its seed: a point every CURVE_EVERY_S seconds,
    stretched to span all of CURVE_RANGE_LUFS (a nearly flat curve would leave a correlation
    with it to chance)."""
    rng = np.random.default_rng([seed, 5417])
    times = np.arange(0.0, duration + 1e-9, CURVE_EVERY_S)
    drawn = rng.uniform(0.0, 1.0, len(times))
    low, high = CURVE_RANGE_LUFS
    levels = low + (high - low) * (drawn - drawn.min()) / max(drawn.max() - drawn.min(), 1e-9)
    return tuple((float(t), float(db)) for t, db in zip(times, levels))


def follows_curve(samples: np.ndarray, sample_rate: int, curve) -> tuple[float | None, float | None]:
    """(correlation, median level error in dB) of a track's loudness with `curve`, over the
    instants above the absolute gate; None, None when fewer than 3 are."""
    times, loudness = loudness_over_time(samples, sample_rate)
    heard = loudness > FLOOR_LUFS
    if heard.sum() < 3:
        return None, None
    target = curve_at(curve, times[heard])
    measured = loudness[heard]
    spread = measured.std() * target.std()
    correlation = float(np.mean((measured - measured.mean()) * (target - target.mean())) / spread) if spread else None
    return correlation, float(np.median(np.abs(measured - target)))


def _loudness_scene(run: SceneRun, settings: list[TrackSettings], presence) -> dict:
    """One scene: {"curve_correlation", "level_error_db", "text_fidelity"}: (with, without,
    gain only or None), means over takes. "gain only": the curve by gain automation alone, for a
    model with a loudness ControlNet (None for one without: "with" is gain only already)."""
    model = run.session.model
    curve = scene_curve(run.scene.seed, run.scene.duration)
    shaped = [replace(s, loudness_curve=curve) for s in settings]
    made = run.session.generate_takes(shaped, [None] * len(settings))
    made += run.session.generate_takes(settings, [None] * len(settings))
    learned = model.loudness_control
    if learned is not None:
        model.loudness_control = None
        try:
            made += run.session.generate_takes(shaped, [None] * len(settings))
        finally:
            model.loudness_control = learned
    follow = [follows_curve(t.samples, run.sample_rate, curve) for t in made]
    fidelity = presence.probabilities([t.samples for t in made], run.sample_rate)[:, presence.kind_index(run.kinds[0])]
    n = len(settings)

    def triple(values):
        return _mean(values[:n]), _mean(values[n:2 * n]), _mean(values[2 * n:]) if len(values) > 2 * n else None

    return {"curve_correlation": triple([f[0] for f in follow]), "level_error_db": triple([f[1] for f in follow]),
            "text_fidelity": triple(list(fidelity))}


def _loudness_summary(scenes: list[dict]) -> dict:
    out = {}
    for figure in ("curve_correlation", "level_error_db", "text_fidelity"):
        out[figure] = _with_and_without([s[figure][0] for s in scenes], [s[figure][1] for s in scenes],
                                        ("with", "without"))
        if all(s[figure][2] is not None for s in scenes):
            gain_only = [s[figure][2] for s in scenes]
            out[figure]["gain_only"] = metrics.summarize(gain_only)
            out[figure]["with_vs_gain_only"] = stats.paired_bootstrap([s[figure][0] for s in scenes], gain_only)
    return out


# -- the run --------------------------------------------------------------------------------------


def evaluate_controls(model: FoleyModel, scenes: int, seed: int, takes: int = 1, steps: int | None = None,
                      alpha: float | None = None, presence=None,
                      on_progress: Callable[[int, int], None] | None = None,
                      work_dir: str | Path | None = None) -> dict:
    """The controls report (JSON-ready): `config`, `classifier`, `controls` (extend, region,
    loudness: see the module's docstring and DEFINITIONS), `per_scene`, `definitions`,
    `timings`, `notes`. `on_progress(done, total)` counts scenes."""
    from stepfoley.engine.service import FoleyService

    check_run(scenes, seed, takes, steps)
    presence = default_presence() if presence is None else presence
    alpha = model.defaults.alpha if alpha is None else float(alpha)
    steps = model.defaults.steps if steps is None else steps
    service = FoleyService(model, remember_folders=False)  # its folders are temporary
    clock = PhaseClock()
    seeds = [scene_seed(seed, i) for i in range(scenes)]
    per_scene: dict[str, list] = {"extend": [], "region": [], "loudness": []}
    with tempfile.TemporaryDirectory(prefix="stepfoley-controls-", dir=work_dir) as temp:
        for index, s in enumerate(seeds):
            folder = Path(temp) / f"scene_{index:04d}"
            t0 = time.perf_counter()
            run = SceneRun(model, s, 1, folder)
            settings = [TrackSettings(run.captions[0], method="independent", alpha=alpha, seed=take_seed(s, 0, t),
                                      steps=steps) for t in range(takes)]
            clock.add("scenes", time.perf_counter() - t0)
            t0 = time.perf_counter()
            per_scene["extend"].append(_extend_scene(run, service, settings, folder, presence))
            clock.add("extend", time.perf_counter() - t0)
            t0 = time.perf_counter()
            per_scene["loudness"].append(_loudness_scene(run, settings, presence))
            clock.add("loudness", time.perf_counter() - t0)

            t0 = time.perf_counter()
            pair = SceneRun(model, s, 2, folder / "two_sources", n_sources=2, options=PLAIN)
            settings = [TrackSettings(pair.captions[0], method="independent", alpha=alpha,
                                      seed=take_seed(s, 0, t), steps=steps) for t in range(takes)]
            per_scene["region"].append(_region_scene(pair, settings, presence))
            clock.add("region", time.perf_counter() - t0)
            if on_progress is not None:
                on_progress(index + 1, scenes)
    controls = {"extend": _extend_summary(per_scene["extend"], model.sample_rate),
                "region": _region_summary(per_scene["region"]),
                "loudness": _loudness_summary(per_scene["loudness"])}
    controls["region"]["leakage_other_vs_without"] = controls["region"]["leakage_other"]["with_vs_without"]
    return {
        "config": {"model": model.model_id, "steps": steps, "alpha": alpha, "scenes": scenes, "seed": seed,
                   "takes": takes, "tracks": 1, "duration_s": SCENE_SECONDS, "scene_seeds": seeds,
                   "sample_rate": model.sample_rate, "threads": torch.get_num_threads(), "method": "independent",
                   "bootstrap": {"resamples": stats.BOOTSTRAP_RESAMPLES, "seed": stats.BOOTSTRAP_SEED,
                                 "confidence": stats.CONFIDENCE, "unit": "scene"}},
        "classifier": presence.description(),
        "controls": controls,
        "per_scene": json.loads(json.dumps(per_scene)),  # tuples as lists
        "definitions": DEFINITIONS,
        "timings": {phase: round(seconds, 2) for phase, seconds in clock.seconds.items()},
        "notes": [],
    }


def _shown(summary: dict) -> str:
    return "-" if summary.get("mean") is None else f"{summary['mean']:.3f} (n {summary['n']})"


def format_controls(report: dict) -> str:
    """The controls' figures as lines of text: means [95 % interval] over scenes."""
    def interval(figure: dict, key: str = "mean") -> str:
        return stats.shown_interval(figure[key], figure["ci95"], figure["n"])

    lines = []
    extend = report["controls"].get("extend")
    if extend:
        ratio = extend["seam_flux_ratio"]
        lines += [f"extend: kept samples differ by at most {extend['kept_max_abs_diff']:g} at "
                  f"{extend['kept_sample_rate']} Hz",
                  f"  seam flux ratio {interval(ratio)} ({ratio['n']} scenes, {ratio['undefined_scenes']} undefined)",
                  f"  seam flux over the stem's own {interval(extend['seam_flux_ratio_to_own'])}, a full "
                  f"generation's flux over the truth's {interval(extend['full_generation_flux_ratio'])}, the "
                  f"codec's round trip of the truth over the truth's {interval(extend['codec_round_trip_flux_ratio'])}"]
        for figure in ("text_fidelity", "temporal_alignment"):
            lines.append(f"  {figure} extended - full {interval(extend[figure]['extended_vs_full'], 'mean_diff')}")
    loudness = report["controls"].get("loudness")
    if loudness:
        for figure in ("curve_correlation", "level_error_db"):
            pair = loudness[figure]
            lines.append(f"loudness: {figure} with {_shown(pair['with'])}, without {_shown(pair['without'])}")
        lines.append(f"  text_fidelity with - without {interval(loudness['text_fidelity']['with_vs_without'], 'mean_diff')}")
        for figure in ("curve_correlation", "level_error_db", "text_fidelity"):
            if "with_vs_gain_only" in loudness[figure]:
                lines.append(f"  {figure} learned condition + gain - gain only "
                             f"{interval(loudness[figure]['with_vs_gain_only'], 'mean_diff')}")
    region = report["controls"].get("region")
    if region:
        lines.append(f"region: leakage of the other source with - without {interval(region['leakage_other_vs_without'], 'mean_diff')}")
        lines.append(f"  text_fidelity with - without {interval(region['text_fidelity']['with_vs_without'], 'mean_diff')}")
    return "\n".join(lines)
