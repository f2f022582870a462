"""`stepfoley bench NAME [options]`: run one of the benchmarks in `benchmarks/`, which print
figures (speed targets are checked there, never in timed unit tests)."""

from __future__ import annotations

import argparse

# name -> (module in benchmarks/, what it measures)
BENCHMARKS = {
    "sampler": ("bench_sampler", "batched CFG vs the MMAudio-style loop, NAG vs CFG step time, peak memory"),
    "bridge": ("bench_bridge", "OSC ping round trip, request overhead, queued throughput, pings during a /status flood"),
    "features": ("bench_features", "per-track time split (decode, CLIP, Synchformer) with the feature cache"),
    "weights-load": ("bench_weights_load", ".pth vs .safetensors load time"),
    "variations": ("bench_variations", "N variations in one job vs N serial jobs: time ratio, stems equal"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Run a benchmark. " + "; ".join(f"{k}: {v[1]}" for k, v in BENCHMARKS.items()) + "."
    p.add_argument("name", choices=BENCHMARKS, help="which benchmark")
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="the benchmark's own options (see stepfoley bench NAME --help)")


def run(args: argparse.Namespace) -> int:
    import importlib
    import sys

    from stepfoley.bridge.client import EngineNotRunning
    from stepfoley.engine.errors import InvalidInputError, StepFoleyError, is_out_of_memory, memory_that_ran_out
    from stepfoley.request import RequestError

    module = importlib.import_module(f"stepfoley.bench.{BENCHMARKS[args.name][0]}")
    try:
        return int(module.main(args.options) or 0)
    except BrokenPipeError:  # the reader of the figures has gone (a pipe into head): nothing more to say
        from stepfoley.commands.runtime import reader_gone

        reader_gone(sys.stdout)
        return 0
    except (InvalidInputError, RequestError) as e:  # an option the benchmark cannot run with
        print(f"stepfoley bench {args.name}: {e}", file=sys.stderr)
        return 2
    except (StepFoleyError, EngineNotRunning) as e:
        print(f"stepfoley bench {args.name}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # torch's allocators say so in words of their own
        if not is_out_of_memory(e):
            raise
        print(f"stepfoley bench {args.name}: the {memory_that_ran_out(e)}'s memory ran out; give smaller sizes "
              "(--batch, --seconds, --mb ...).", file=sys.stderr)
        return 1
