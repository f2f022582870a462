"""`stepfoley train`: the embedded mini-world model, or a NAG ControlNet on top of real MMAudio.

    stepfoley train embedded --work DIR [--out engine/embedded/stepfoley_mini.safetensors]
    stepfoley train loudness --work DIR [--weights W] [--out W]   (the loudness ControlNet alone)
    stepfoley train controlnet --weights DIR --data LIST.jsonl --work DIR [--model small_16k]

Several GPUs or processes: `torchrun --nproc_per_node N -m stepfoley train ...`.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    e = sub.add_parser("embedded", help="train the embedded default model on the mini-world")
    e.add_argument("--work", required=True, help="folder for the data, features, checkpoints and log")
    e.add_argument("--out", default=None, help="weights file to write (default: the packaged one)")
    e.add_argument("--scenes", type=int, default=None, help="long mini-world scenes to render (default 480)")
    e.add_argument("--held-out-scenes", type=int, default=None,
                   help="of those, kept out of training to measure held-out losses (default 24)")
    e.add_argument("--workers", type=int, default=None, help="processes rendering scenes (default 2)")
    e.add_argument("--base-steps", type=int, default=None)
    e.add_argument("--controlnet-steps", type=int, default=None)
    e.add_argument("--base-lr", type=float, default=None, help="default 4e-4")
    e.add_argument("--controlnet-lr", type=float, default=None, help="default 1e-3")
    e.add_argument("--loudness-steps", type=int, default=None, help="default 1500")
    e.add_argument("--loudness-lr", type=float, default=None, help="default 1e-3")
    e.add_argument("--batch-size", type=int, default=None, help="per process (default 8)")
    e.add_argument("--warmup-steps", type=int, default=None)
    e.add_argument("--data-seed", type=int, default=None)
    e.add_argument("--device", default="auto")

    lo = sub.add_parser("loudness", help="add the loudness ControlNet to embedded weights trained without one "
                                         "(their base and NAG ControlNet are kept as they are)")
    lo.add_argument("--work", required=True, help="folder for the features, checkpoints and log")
    lo.add_argument("--weights", default=None, help="embedded weights to extend (default: the packaged ones)")
    lo.add_argument("--out", default=None, help="weights file to write (default: the --weights file)")
    lo.add_argument("--steps", type=int, default=None, help="default 1500")
    lo.add_argument("--lr", type=float, default=None, help="default 1e-3")
    lo.add_argument("--workers", type=int, default=None, help="processes rendering scenes (default 2)")
    lo.add_argument("--device", default="auto")

    c = sub.add_parser("controlnet", help="train a NAG ControlNet on top of official MMAudio weights")
    c.add_argument("--weights", required=True, help="the MMAudio weights directory (docs/weights.md)")
    c.add_argument("--model", default=None, help="variant: small_16k, small_44k, medium_44k, large_44k, ...")
    c.add_argument("--data", required=True, help="dataset list, JSON Lines (lab/training/features.py)")
    c.add_argument("--work", required=True, help="folder for features, checkpoints and the log")
    c.add_argument("--out", default=None,
                   help="ControlNet file to write (default: WEIGHTS/controlnets/<variant>.safetensors)")
    c.add_argument("--depth", type=int, default=4, help="ControlNet blocks")
    c.add_argument("--steps", type=int, default=200_000)
    c.add_argument("--batch-size", type=int, default=64, help="per process")
    c.add_argument("--warmup-steps", type=int, default=1000)
    c.add_argument("--checkpoint-every", type=int, default=2000)
    c.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from dataclasses import replace
    from pathlib import Path

    from stepfoley.engine.devices import choose_device
    from stepfoley.engine.errors import StepFoleyError

    try:
        _check_folders(args)
    except StepFoleyError as e:
        print(f"stepfoley train: {e}", file=sys.stderr)
        return 2
    try:
        device = choose_device(args.device)
        if args.what == "embedded":
            from stepfoley.engine.embedded.model import WEIGHTS_PATH
            from stepfoley.lab.training.embedded import EmbeddedRecipe, train_embedded

            recipe = EmbeddedRecipe()
            given = lambda overrides: {k: v for k, v in overrides.items() if v is not None}  # noqa: E731
            data = replace(recipe.data, **given({"scenes": args.scenes, "held_out_scenes": args.held_out_scenes,
                                                 "seed": args.data_seed}))
            recipe = replace(recipe, data=data, **given({
                "base_steps": args.base_steps, "controlnet_steps": args.controlnet_steps,
                "base_lr": args.base_lr, "controlnet_lr": args.controlnet_lr,
                "loudness_steps": args.loudness_steps, "loudness_lr": args.loudness_lr,
                "batch_size": args.batch_size, "warmup_steps": args.warmup_steps, "data_workers": args.workers}))
            figures = train_embedded(Path(args.work), Path(args.out or WEIGHTS_PATH), recipe, device)
            if os.environ.get("RANK", "0") == "0":
                print(_summary(figures))
            return 0
        if args.what == "loudness":
            from stepfoley.engine.embedded.model import WEIGHTS_PATH
            from stepfoley.lab.training.embedded import EmbeddedRecipe, extend_with_loudness

            given = {k: v for k, v in {"loudness_steps": args.steps, "loudness_lr": args.lr,
                                       "data_workers": args.workers}.items() if v is not None}
            weights = Path(args.weights or WEIGHTS_PATH)
            figures = extend_with_loudness(weights, Path(args.work), Path(args.out or weights),
                                           replace(EmbeddedRecipe(), **given), device)
            if os.environ.get("RANK", "0") == "0":
                print(_summary(figures))
            return 0
        from stepfoley.lab.training.controlnet import train_controlnet_on_mmaudio

        out = train_controlnet_on_mmaudio(
            weights_dir=Path(args.weights), variant=args.model, data_list=Path(args.data),
            work_dir=Path(args.work), out_path=Path(args.out) if args.out else None, depth=args.depth,
            steps=args.steps, batch_size=args.batch_size, warmup_steps=args.warmup_steps,
            checkpoint_every=args.checkpoint_every, device=device)
        print(f"wrote {out}")
        return 0
    except StepFoleyError as e:
        print(f"stepfoley train: {e}", file=sys.stderr)
        return 1


def _check_folders(args: argparse.Namespace) -> None:
    """--work made (or there) and the folder of --out there, before hours of training and not after."""
    import os

    from stepfoley.engine.errors import InvalidInputError

    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise InvalidInputError(f"The folder of --out '{args.out}' does not exist; create it first.")
    if args.out is not None and os.path.isdir(args.out):
        raise InvalidInputError(f"--out '{args.out}' is a folder; name the weights file to write.")
    try:
        os.makedirs(args.work, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"The work folder '{args.work}' cannot be made ({e.strerror or e}); "
                                "choose a folder, or a place where one can be made.") from None


def _summary(figures: dict) -> str:
    lines = [f"data: {figures['data_seconds']:.0f} s"]
    for phase in ("base", "controlnet", "loudness"):
        if phase not in figures:  # `train loudness` runs the last phase alone
            continue
        f = figures[phase]
        lines.append(f"{phase}: {f['steps']} steps in {f['seconds']:.0f} s, {f['samples_per_second']} samples/s, "
                     f"final loss {f['final_loss']}")
        held = f.get("held_out_loss")
        if held:
            lines.append(f"{phase} held-out loss: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in held.items()))
    lines.append(f"total: {figures['total_seconds']:.0f} s ({figures['processes']} process(es) x {figures['threads']} thread(s))")
    return "\n".join(lines)
