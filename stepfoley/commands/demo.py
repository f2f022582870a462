"""`stepfoley demo`: build a three-track soundtrack for a mini-world clip with NAG and, from the
same seeds, with independent generation; print what each track holds and how it differs."""

from __future__ import annotations

import argparse

from stepfoley.commands.runtime import add_runtime_arguments, say
from stepfoley.request import MAX_STEPS


# stepfoley.lab.demo.MAX_TRACKS, repeated so that `--help` needs no torch import (tests/test_demo.py
# checks they agree).
MAX_TRACKS = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="stepfoley-demo",
                   help="folder for the runs (made if missing; each run becomes a new run_NNN inside once complete)")
    p.add_argument("--seed", type=int, default=None,
                   help="scene seed, 0 or more; track k uses seed + k - 1 (default: one the model never saw)")
    p.add_argument("--tracks", type=int, default=3, help=f"tracks, 1 to {MAX_TRACKS} (default 3)")
    p.add_argument("--steps", type=int, default=25, help=f"sampling steps per track, 1 to {MAX_STEPS} (default 25)")
    p.add_argument("--model", default=None, help="'embedded' (default) or 'tiny-random' (tests)")
    p.add_argument("--weights", default=None, metavar="DIR|FILE",
                   help="an MMAudio weights directory, or embedded weights retrained by "
                        "`stepfoley train embedded` (default: the packaged embedded model)")
    add_runtime_arguments(p, feature_cache=False)  # the clip is new every run: its features are kept in memory


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from tqdm import tqdm

    from stepfoley.commands.runtime import check_runtime_arguments
    from stepfoley.lab.demo import DEMO_SEED, check_demo_arguments, run_demo
    from stepfoley.engine.devices import share_cpu
    from stepfoley.engine.errors import InvalidInputError, StepFoleyError
    from stepfoley.engine.service import load_runtime_model

    seed = args.seed if args.seed is not None else DEMO_SEED
    try:  # every argument, before anything loads
        check_demo_arguments(args.out, seed, args.tracks, args.steps)
        check_runtime_arguments(args)
        _check_controlnet(args.weights, args.model)
    except StepFoleyError as e:
        print(f"stepfoley demo: {e}", file=sys.stderr)
        return 2
    try:
        share_cpu(args.threads)
        t0 = time.perf_counter()
        model = load_runtime_model(args.weights, args.model, args.device, args.precision, args.compile)
        load_s = time.perf_counter() - t0
        if model.note:
            print(f"note: {model.note}", file=sys.stderr)
        if model.controlnet is None:  # the variant chosen for the folder has none (the note says where)
            raise InvalidInputError(f"The model '{model.model_id}' has no NAG ControlNet. {NEEDS_CONTROLNET}")
        with tqdm(total=1, desc="generating", unit="step", file=sys.stderr) as bar:
            def progress(step, total):
                bar.total = total
                bar.n = step
                bar.refresh()

            result = run_demo(model, Path(args.out), seed, args.tracks, args.steps, progress)
    except StepFoleyError as e:
        print(f"stepfoley demo: {e}", file=sys.stderr)
        return 1
    say("\n".join([f"wrote {len(result.files)} files into {result.folder}:",
                   *(f"  {path.name}" for path in result.files), track_table(result.tracks)]))
    t = result.timings
    say(f"time: load {load_s:.1f} s, video features {t['video_features']:.1f} s, sampling "
        f"{t['sampling']:.1f} s, decoding {t['decoding']:.1f} s, finishing {t['finishing']:.1f} s, "
        f"scoring {t['scoring']:.1f} s, demo total {t['total']:.1f} s")
    return 0


NEEDS_CONTROLNET = ("The demo sets NAG beside independent generation, and NAG needs a ControlNet; none is "
                    "published for MMAudio: train one with `stepfoley train controlnet` (docs/weights.md).")


def _check_controlnet(weights: str | None, variant: str | None) -> None:
    """With official weights, a NAG ControlNet file is there (for the variant, when given), after
    a flow network and every other file the variant needs: the wrong folder given, or one with a
    file missing, was told to train a ControlNet."""
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.engine.loading import chosen_variant, unusable_problem
    from stepfoley.engine.weights import check_weights_dir, is_weights_file

    if weights is None or is_weights_file(weights):  # the embedded model's: said once loaded
        return
    report = check_weights_dir(weights, verify=False)
    chosen = chosen_variant(report, variant)  # the variant the loader will load, and its ControlNet file
    problem = unusable_problem(report, chosen, report.misplaced)
    if problem:
        raise InvalidInputError(problem)
    folder = report.root / "controlnets"
    if not (folder / f"{chosen}.safetensors").is_file():
        raise InvalidInputError(f"No NAG ControlNet in {folder} for {chosen}. " + NEEDS_CONTROLNET)


def track_table(tracks: list[dict]) -> str:
    """Per track: text fidelity (the true stem's in brackets) and similarity to the earlier
    tracks, NAG beside independent generation."""
    def similarity(value) -> str:
        return "   -  " if value is None else f"{value:6.3f}"

    lines = ["track  text fidelity: NAG  indep. (true stem)   similarity to earlier: NAG  indep.  caption"]
    for t in tracks:
        nag, independent = t["nag"], t["independent"]
        lines.append(f"{t['track']:5d}  {nag['text_fidelity']:18.3f} {independent['text_fidelity']:7.3f} "
                     f"({t['true_stem_text_fidelity']:.3f}) {similarity(nag['similarity_to_earlier']):>29} "
                     f"{similarity(independent['similarity_to_earlier'])}  {t['caption']}")
    return "\n".join(lines)
