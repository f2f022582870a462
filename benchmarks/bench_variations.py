"""Variations in one job against the same takes as serial jobs, through the engine's service
(the path `stepfoley serve` runs), on a generated mini-world clip.

For each N of --counts: a second layer over a first one (NAG, as in real use), made once as one
protocol-2 job with `variations` N and once as N protocol-1 jobs with the seeds seed .. seed+N-1.
The picture features are cached before the clock starts, so both sides time sampling, decoding,
finishing, ranking and writing; the two sides run --repeats times, in turns that alternate which
goes first (run once each in a fixed order, the second ran warmer: at N = 1, where both do the same
work, the ratio read 1.4-1.5x one way round and 0.8-1.1x the other), and each time is the median
of its side's. Printed: both times, their ratio (serial / batched: batching the
sampling is close to free on a GPU, so the ratio grows with N there, short of N by the work done
per stem; on a CPU it gains little), the largest difference between a batched stem and the serial
stem of its seed (32-bit float files), and their log-mel distance beside that of two seeds'
serial stems (the distance between two takes); then where each side's time went: picture
features (cached), sampling, decoding and finishing as the jobs' metadata times them, and the
rest (reading inputs, ranking, writing).

Each row must pass (exit 1 otherwise). For N = 1 the stem must be its seed's own within
--tolerance. For more, the batch's matrix products round otherwise than a lone job's (measured in
fp32 on a CPU: latents 5e-6 apart after one step) and Griffin-Lim's phase reconstruction turns
that into about 5e-4 in the waveform, more after 25 guided steps (on a GPU, and in bf16, more
still), so no sample tolerance holds; each stem must still be its seed's take: a log-mel distance
from it under a tenth of two seeds'.

    stepfoley bench variations [--counts 1,4,8] [--steps 25] [--seconds 8] [--repeats 3] [--model tiny-random]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stepfoley.request import MAX_REGION_SECONDS, MAX_SEED, MAX_STEPS, MIN_REGION_SECONDS


def _mono_16k(path) -> np.ndarray:
    from stepfoley.engine.mixing import resample
    from stepfoley.lab.evaluation.spectra import SAMPLE_RATE

    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    return resample(samples.mean(axis=1), rate, SAMPLE_RATE)[0]


def spectral_distances(batched: dict, serial: dict) -> tuple[float, float | None]:
    """Mean log-mel distance (dB) of each seed's batched stem from its serial one, and of each
    serial stem from the next seed's (None with one seed). seed -> stem path, both."""
    from stepfoley.lab.evaluation.metrics import log_mel_distance

    seeds = sorted(serial)
    audio = {seed: _mono_16k(serial[seed]) for seed in seeds}
    same = [log_mel_distance(_mono_16k(batched[seed]), audio[seed]) for seed in seeds]
    other = [log_mel_distance(audio[a], audio[b]) for a, b in zip(seeds, seeds[1:])]
    return float(np.mean(same)), (float(np.mean(other)) if other else None)


SAME_TAKE_FRACTION = 0.1  # of two seeds' log-mel distance: under it, a batched stem is its seed's take
PHASES = ("video_features", "sampling", "decoding", "finishing")  # as a job's metadata times them


def phase_seconds(metadata: list[dict], wall_s: float) -> dict:
    """Seconds per phase summed over jobs (one metadata per job: a batch's stems share theirs),
    and "rest": the wall time they leave (reading inputs, ranking, writing the stems)."""
    out = {phase: sum(m["timings"][phase] for m in metadata) for phase in PHASES}
    out["rest"] = wall_s - sum(out.values())
    return out


def median_run(runs: list[tuple[float, dict]]) -> dict:
    """Of one side's repeats, (wall seconds, phase_seconds), the phases of the run whose wall
    time is the median (the lower middle one of an even count): its parts add up to its wall
    time, where each part's median need not add up to the median wall time."""
    return sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2][1]


def _phases_text(seconds: dict) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


def _counts(text: str) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:  # left to argparse, it said "invalid _counts value", this function's name
        counts = []
    if not counts or any(not 1 <= c <= 8 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError("give counts from 1 to 8, each once, separated by commas (e.g. 1,4,8)")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stepfoley bench variations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=_counts, default=[1, 4, 8], help="numbers of variations (1-8)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the region")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--model", default=None, help="default: the embedded model; 'tiny-random' for a quick run")
    parser.add_argument("--weights", default=None, metavar="DIR", help="official MMAudio weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="default: every core but one")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed sample difference")
    parser.add_argument("--repeats", type=int, default=3, help="turns of both sides, alternating which goes first")
    args = parser.parse_args(argv)
    # refused before the model loads: these fail only after a long wait otherwise
    if not 1 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps must be from 1 to {MAX_STEPS}")
    if not MIN_REGION_SECONDS <= args.seconds <= MAX_REGION_SECONDS:
        parser.error(f"--seconds must be from {MIN_REGION_SECONDS:g} to {MAX_REGION_SECONDS:g}")
    if not 0 <= args.seed <= MAX_SEED - 8:
        parser.error(f"--seed must be from 0 to {MAX_SEED - 8}")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):  # nan failed every stem, blaming them
        parser.error(f"--tolerance must be a number of 0 or more, got {args.tolerance:g}")
    if not 1 <= args.repeats <= 100:
        parser.error("--repeats must be from 1 to 100")

    from stepfoley.engine.devices import resolve_precision, share_cpu
    from stepfoley.engine.features.cache import FeatureCache
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.engine.input_files import check_request_paths
    from stepfoley.engine.service import FoleyService, load_runtime_model
    from stepfoley.request import parse_request

    cpu = share_cpu(args.threads)
    model = load_runtime_model(args.weights, args.model, args.device, args.precision)
    service = FoleyService(model, feature_cache=FeatureCache(), remember_folders=False)  # its folders are temporary
    precision = resolve_precision(model.device, model.precision)
    failed = []
    with tempfile.TemporaryDirectory(prefix="stepfoley-bench-variations-") as tmp:
        folder = Path(tmp)
        video = write_scene(make_scene(30_000_001, duration=args.seconds + 1.0), folder / "scene")["video"]

        def job(caption, seed, out, **extra):
            request = {"region": {"video": str(video), "file_in": 0.5, "file_out": 0.5 + args.seconds},
                       "caption": caption, "seed": seed, "steps": args.steps, "output_dir": str(out),
                       "sample_rate": model.sample_rate, "format": "wav32f", **extra}
            return service(check_request_paths(parse_request(request, service.capabilities())))

        first = job("a bell rings", 1, folder)  # also fills the feature cache
        layer = {"existing_mix": first["stem_path"], "previous_captions": ["a bell rings"]}
        warm = folder / "warm-up"
        warm.mkdir()
        job("rain falling", args.seed, warm, **layer)  # the second layer's path (NAG, ControlNet) before the clock
        print(f"model {model.model_id} on {model.device}, {args.seconds:g} s region, {args.steps} steps, "
              f"second layer (method {model.defaults.method}), {precision}, {cpu['threads']} of {cpu['cores']} cores")
        for n in args.counts:
            turns: dict[str, list] = {"batched": [], "serial": []}  # (seconds, result) per repeat

            def run_side(side: str, turn: int) -> None:
                out = folder / f"{side}{n}-{turn}"
                out.mkdir()
                start = time.perf_counter()
                if side == "batched":
                    done = job("rain falling", args.seed, out, protocol=2, variations=n, **layer)
                else:
                    done = [job("rain falling", args.seed + i, out, **layer) for i in range(n)]
                turns[side].append((time.perf_counter() - start, done))

            for turn in range(args.repeats):
                for side in (("batched", "serial") if turn % 2 == 0 else ("serial", "batched")):
                    run_side(side, turn)
            batched_s = float(np.median([seconds for seconds, _ in turns["batched"]]))
            serial_s = float(np.median([seconds for seconds, _ in turns["serial"]]))
            batched, serial_jobs = turns["batched"][0][1], turns["serial"][0][1]
            serial = {args.seed + i: done["stem_path"] for i, done in enumerate(serial_jobs)}
            by_seed = {s["metadata"]["seed"]: s["stem_path"] for s in batched["stems"]}
            diff = max(float(np.abs(sf.read(by_seed[seed])[0] - sf.read(path)[0]).max()) for seed, path in serial.items())
            same, other = spectral_distances(by_seed, serial)
            if n == 1 or other is None:
                passed = diff <= args.tolerance
                verdict = f"{'within' if passed else 'BEYOND'} {args.tolerance:g}"
            else:
                passed = same < SAME_TAKE_FRACTION * other
                verdict = f"{'the same take' if passed else 'NOT the same take'} by log-mel distance"
            if not passed:
                failed.append(n)
            print(f"N={n}: one job {batched_s:.2f} s, {n} serial jobs {serial_s:.2f} s, "
                  f"ratio {serial_s / batched_s:.2f}x; largest stem difference {diff:.2e}; "
                  f"log-mel distance from the serial take {same:.2f} dB"
                  + ("" if other is None else f" (two seeds' takes: {other:.2f} dB)")
                  + f" ({verdict}); ranked by {batched['ranking']['ranked_by']}")
            one_job = median_run([(seconds, phase_seconds([done["stems"][0]["metadata"]], seconds))
                                  for seconds, done in turns["batched"]])
            n_jobs = median_run([(seconds, phase_seconds([d["metadata"] for d in done], seconds))
                                 for seconds, done in turns["serial"]])
            print(f"  one job: {_phases_text(one_job)}; {n} jobs: {_phases_text(n_jobs)} "
                  f"(the median run of {args.repeats})")
    if failed:
        rule = (f"stems equal within {args.tolerance:g} for N = 1, else a log-mel distance from the serial take "
                f"under {SAME_TAKE_FRACTION:g} of two seeds'")
        print(f"batched stems are not their seeds' own takes for N = {', '.join(map(str, failed))} ({rule})",
              file=sys.stderr)
        return 1
    return 0
