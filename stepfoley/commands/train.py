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
    e.add_argument("--out", default=None, help="weights file to write (default: the packaged one; a run shorter "
                                               "than the recipe, or an installed package's, replaced only with "
                                               "--force)")
    e.add_argument("--scenes", type=int, default=None, help="long mini-world scenes to render (default 480)")
    e.add_argument("--held-out-scenes", type=int, default=None,
                   help="of those, kept out of training to measure held-out losses (default 24)")
    e.add_argument("--workers", type=int, default=None, help="processes rendering scenes (default 2)")
    e.add_argument("--base-steps", type=int, default=None, help="default 8000")
    e.add_argument("--controlnet-steps", type=int, default=None, help="default 3500")
    e.add_argument("--base-lr", type=float, default=None, help="default 4e-4")
    e.add_argument("--controlnet-lr", type=float, default=None, help="default 1e-3")
    e.add_argument("--loudness-steps", type=int, default=None, help="default 1500")
    e.add_argument("--loudness-lr", type=float, default=None, help="default 1e-3")
    e.add_argument("--batch-size", type=int, default=None, help="per process (default 8)")
    e.add_argument("--warmup-steps", type=int, default=None, help="default 200")
    e.add_argument("--data-seed", type=int, default=None, help="default 0")
    e.add_argument("--background-db", default=None, metavar="LO,HI",
                   help="how far under the captioned source the other sources play in the training mixtures, in "
                        "dB, each mixture's drawn between LO and HI (default 6,18; `train loudness` reads it from "
                        "the weights)")
    e.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints a killed run resumes from (default 500; each phase's last step too)")
    e.add_argument("--device", default="auto")
    e.add_argument("--force", action="store_true",
                   help="replace an existing --out file, or the packaged weights by a run shorter than the recipe")

    lo = sub.add_parser("loudness", help="add the loudness ControlNet to embedded weights trained without one "
                                         "(their base and NAG ControlNet are kept as they are)")
    lo.add_argument("--work", required=True, help="folder for the features, checkpoints and log")
    lo.add_argument("--weights", default=None, help="embedded weights to extend (default: the packaged ones)")
    lo.add_argument("--out", default=None, help="weights file to write (default: the --weights file)")
    lo.add_argument("--steps", type=int, default=None, help="default 1500")
    lo.add_argument("--lr", type=float, default=None, help="default 1e-3")
    lo.add_argument("--workers", type=int, default=None, help="processes rendering scenes (default 2)")
    lo.add_argument("--batch-size", type=int, default=None,
                    help="per process (default 8; a --work folder's loudness checkpoint resumes only with its own)")
    lo.add_argument("--warmup-steps", type=int, default=None, help="default 200")
    lo.add_argument("--checkpoint-every", type=int, default=None,
                    help="steps between checkpoints a killed run resumes from (default 500; the last step too)")
    lo.add_argument("--device", default="auto")
    lo.add_argument("--force", action="store_true",
                    help="replace an existing --out file, or the --weights file by a run shorter than the recipe")

    c = sub.add_parser("controlnet", help="train a NAG ControlNet on top of official MMAudio weights")
    c.add_argument("--weights", required=True, help="the MMAudio weights directory (docs/weights.md)")
    c.add_argument("--model", default=None, help="variant: small_16k, small_44k, medium_44k, large_44k, ...")
    c.add_argument("--data", required=True, help="dataset list, JSON Lines (lab/training/features.py)")
    c.add_argument("--work", required=True, help="folder for the features and checkpoints (not one `train embedded` uses)")
    c.add_argument("--out", default=None,
                   help="ControlNet file to write (default: WEIGHTS/controlnets/<variant>.safetensors)")
    c.add_argument("--depth", type=int, default=4, help="ControlNet blocks")
    c.add_argument("--steps", type=int, default=200_000)
    c.add_argument("--batch-size", type=int, default=64, help="per process")
    c.add_argument("--warmup-steps", type=int, default=1000)
    c.add_argument("--checkpoint-every", type=int, default=2000)
    c.add_argument("--device", default="auto")
    c.add_argument("--force", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    import sys
    from contextlib import ExitStack
    from pathlib import Path

    from stepfoley.engine.devices import choose_device
    from stepfoley.engine.errors import StepFoleyError
    from stepfoley.lab.training.trainer import (distributed_context, every_rank_ends_as_rank_zero, process_device,
                                                training_alone_in)

    held = ExitStack()
    try:
        _check_numbers(args)
        device = process_device(choose_device(args.device))  # before _check_folders makes --work
        _check_folders(args)
        rank, world = distributed_context()
        # the processes of one torchrun share it; a refusal is said by every one (the others were
        # stopped by torchrun half a minute later, without a word)
        with every_rank_ends_as_rank_zero(rank, world):
            if rank == 0:
                held.enter_context(training_alone_in(Path(args.work)))
    except StepFoleyError as e:
        print(f"stepfoley train: {e}", file=sys.stderr)
        return 2
    with held:
        return _train(args, device)


def _train(args: argparse.Namespace, device) -> int:
    import os
    import sys
    from dataclasses import replace
    from pathlib import Path

    from stepfoley.engine.errors import StepFoleyError, is_out_of_memory, memory_that_ran_out

    try:
        if args.what == "embedded":
            from stepfoley.engine.embedded.model import WEIGHTS_PATH
            from stepfoley.lab.training.embedded import EmbeddedRecipe, train_embedded

            recipe = EmbeddedRecipe()
            given = lambda overrides: {k: v for k, v in overrides.items() if v is not None}  # noqa: E731
            data = replace(recipe.data, **given({"scenes": args.scenes, "held_out_scenes": args.held_out_scenes,
                                                 "seed": args.data_seed,
                                                 "dominance_db": background_db(args.background_db)}))
            recipe = replace(recipe, data=data, **given({
                "base_steps": args.base_steps, "controlnet_steps": args.controlnet_steps,
                "base_lr": args.base_lr, "controlnet_lr": args.controlnet_lr,
                "loudness_steps": args.loudness_steps, "loudness_lr": args.loudness_lr,
                "batch_size": args.batch_size, "warmup_steps": args.warmup_steps, "data_workers": args.workers,
                "checkpoint_every": args.checkpoint_every}))
            figures = train_embedded(Path(args.work), Path(args.out or WEIGHTS_PATH), recipe, device,
                                     replace=_may_replace_out(args))
            if os.environ.get("RANK", "0") == "0":
                print(_summary(figures))
            return 0
        if args.what == "loudness":
            from stepfoley.engine.embedded.model import WEIGHTS_PATH
            from stepfoley.lab.training.embedded import EmbeddedRecipe, extend_with_loudness, recorded_data_recipe

            given = {k: v for k, v in {"loudness_steps": args.steps, "loudness_lr": args.lr,
                                       "data_workers": args.workers, "batch_size": args.batch_size,
                                       "warmup_steps": args.warmup_steps,
                                       "checkpoint_every": args.checkpoint_every}.items() if v is not None}
            weights = Path(args.weights or WEIGHTS_PATH)
            recipe = replace(EmbeddedRecipe(), **given)
            trained_on = recorded_data_recipe(weights)  # the mixtures the base learned from, --background-db's
            if trained_on is not None:
                recipe = replace(recipe, data=trained_on)
            figures = extend_with_loudness(weights, Path(args.work), Path(args.out or weights), recipe, device,
                                           replace=_may_replace_out(args))
            if os.environ.get("RANK", "0") == "0":
                print(_summary(figures))
            return 0
        from stepfoley.lab.training.controlnet import train_controlnet_on_mmaudio

        out = train_controlnet_on_mmaudio(
            weights_dir=Path(args.weights), variant=args.model, data_list=Path(args.data),
            work_dir=Path(args.work), out_path=Path(args.out) if args.out else None, depth=args.depth,
            steps=args.steps, batch_size=args.batch_size, warmup_steps=args.warmup_steps,
            checkpoint_every=args.checkpoint_every, device=device, replace=args.force)
        if os.environ.get("RANK", "0") == "0":  # rank 0 alone writes it
            print(f"wrote {out}")
        return 0
    except StepFoleyError as e:
        print(f"stepfoley train: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # torch's allocators say so in words of their own
        if not is_out_of_memory(e):
            raise
        print(f"stepfoley train: the {memory_that_ran_out(e)}'s memory ran out; give a smaller --batch-size.",
              file=sys.stderr)
        return 1


# The largest batch a run takes: far past what any machine here holds of 8 s clips (a typo of a
# few more digits trained through minutes of data, then failed in the allocator).
MAX_BATCH_SIZE = 4096
# option -> (smallest allowed, what it counts); None values keep the recipe's default
_AT_LEAST = {
    "scenes": (2, "scenes"), "held_out_scenes": (2, "held-out scenes: their losses pair clips of two scenes"),
    "workers": (1, "processes"),
    "base_steps": (1, "steps"), "controlnet_steps": (1, "steps"), "loudness_steps": (1, "steps"),
    "steps": (1, "steps"), "batch_size": (1, "examples per batch"), "warmup_steps": (0, "steps"),
    "data_seed": (0, "a seed"), "depth": (1, "blocks"), "checkpoint_every": (1, "steps"),
}
_RATES = ("base_lr", "controlnet_lr", "loudness_lr", "lr")


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts, steps and learning rates that could train: refused before any work (a negative
    step count would write untrained weights, a zero batch fail after minutes of data)."""
    import math
    import os

    from stepfoley.engine.errors import InvalidInputError

    def option(name: str) -> str:
        return "--" + name.replace("_", "-")

    for name, (least, what) in _AT_LEAST.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise InvalidInputError(f"{option(name)} {value}: give at least {least} ({what}).")
    if getattr(args, "batch_size", None) is not None and args.batch_size > MAX_BATCH_SIZE:
        raise InvalidInputError(f"--batch-size {args.batch_size}: give at most {MAX_BATCH_SIZE} (examples per batch).")
    for name in _RATES:
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and 0 < value <= 1):
            raise InvalidInputError(f"{option(name)} {value}: a learning rate is above 0 and at most 1 (e.g. 1e-3).")
    background_db(getattr(args, "background_db", None))
    cores = os.cpu_count() or 1
    if getattr(args, "workers", None) is not None and args.workers > cores:  # each renders scenes with its own models
        raise InvalidInputError(f"--workers {args.workers}: this machine has {cores} cores; give at most {cores}.")
    if args.what == "embedded":
        from stepfoley.lab.training.embedded import DATA_SEED_STRIDE, TRAINING_SEED_RANGE, first_training_seed
        from stepfoley.lab.training.miniworld_data import DataRecipe

        scenes = DataRecipe.scenes if args.scenes is None else args.scenes
        held_out = DataRecipe.held_out_scenes if args.held_out_scenes is None else args.held_out_scenes
        seeds = TRAINING_SEED_RANGE[1] - TRAINING_SEED_RANGE[0]
        if scenes > seeds:
            raise InvalidInputError(f"--scenes {scenes}: at most {seeds}, the training scenes' seeds.")
        if held_out >= scenes:
            raise InvalidInputError(f"--held-out-scenes {held_out} of {scenes} scenes would leave none to train on; "
                                    "keep fewer out, or render more with --scenes.")
        seed = DataRecipe.seed if args.data_seed is None else args.data_seed
        if first_training_seed(seed) + scenes > TRAINING_SEED_RANGE[1]:  # beyond: scenes the evaluation keeps unseen
            most = (seeds - scenes) // DATA_SEED_STRIDE
            raise InvalidInputError(
                f"--data-seed {seed} with {scenes} scenes reaches past the training scenes' seeds "
                f"({TRAINING_SEED_RANGE[0]}-{TRAINING_SEED_RANGE[1] - 1}) into those the evaluation keeps unseen; "
                f"give at most {most}.")


def background_db(text: str | None) -> tuple[float, float] | None:
    """--background-db "LO,HI" as (LO, HI) in dB; None when not given. Raises InvalidInputError
    unless it is two numbers with 0 <= LO <= HI <= DOMINANCE_DB_MOST."""
    import math

    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.training.miniworld_data import DOMINANCE_DB_MOST

    if text is None:
        return None
    shown = text if len(text) <= 40 else text[:40] + "..."
    parts = text.split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        hint = (" If you wrote decimals with a comma, write them with a point (e.g. 18.5,30)."
                if len(parts) > 2 else "")
        raise InvalidInputError(
            f"--background-db {shown!r}: give two numbers of dB, LO,HI (e.g. 18,30).{hint}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high <= DOMINANCE_DB_MOST):
        raise InvalidInputError(f"--background-db {shown!r}: give 0 <= LO <= HI <= {DOMINANCE_DB_MOST:g} dB "
                                "(how far under the captioned source the others play, e.g. 18,30).")
    return low, high


def _check_folders(args: argparse.Namespace) -> None:
    """--work made (or there), the folder of --out there and --out not a file already (unless
    --force), before hours of training and not after."""
    import os

    from stepfoley.atomic import can_make_file_in, name_too_long, nearest_existing
    from stepfoley.commands.runtime import check_input_file, is_special_file, same_file
    from stepfoley.engine.errors import InvalidInputError

    if args.what == "loudness":
        check_input_file(args.weights, "--weights", "the embedded model's .safetensors file")
    # each passed the checks below and was found after the training: "" (an unset shell variable)
    # wrote the default file, and failed there; "results/" named a file "results"
    if args.out is not None and not args.out.strip():
        raise InvalidInputError("--out is empty; give the weights file to write (or leave --out out for the "
                                "default one).")
    if args.out is not None and args.out.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise InvalidInputError(f"--out '{args.out}' names a folder; give the weights file to write in it (e.g. "
                                f"{os.path.join(args.out, 'mine.safetensors')}).")
    above = os.path.dirname(os.path.abspath(args.out)) if args.out is not None else None
    if above is not None and not os.path.isdir(above):
        if os.path.lexists(above):  # a file named as if it were a folder
            raise InvalidInputError(f"--out '{args.out}' is inside '{above}', which is a file, not a folder; name "
                                    "the weights file to write in a folder.")
        raise InvalidInputError(f"The folder of --out '{args.out}' does not exist; create it first.")
    if args.out is not None and os.path.isdir(args.out):
        raise InvalidInputError(f"--out '{args.out}' is a folder; name the weights file to write.")
    too_long = name_too_long(args.out) if args.out is not None else None
    if too_long:
        raise InvalidInputError(f"--out: {too_long}")
    if args.out is not None and same_file(args.out, args.work):
        # not yet a folder now: --work is made below, and the weights found it there after hours of training
        raise InvalidInputError(f"--out '{args.out}' is the --work folder; name the weights file to write (for "
                                f"example {os.path.join(args.work, 'stepfoley_mini.safetensors')}).")
    if args.out is not None and is_special_file(args.out):
        raise InvalidInputError(f"--out '{args.out}' is not a regular file (a device or a pipe); name the weights "
                                "file to write.")
    if args.out is not None and os.path.lexists(args.out) and not args.force and not _is_default_out(args):
        raise InvalidInputError(f"--out '{args.out}' already exists; choose another file, or add --force to "
                                "replace it.")
    # the packaged weights by default: a read-only install refused them only after the training
    target = args.out or _default_out(args)
    folder = os.path.dirname(os.path.abspath(target)) if target else None
    if folder is not None and os.path.isdir(folder) and not can_make_file_in(folder):
        raise InvalidInputError(f"The weights would be written to '{target}', in a folder where no file can be "
                                "made (read-only, or another user's); give --out FILE in a folder you can write to.")
    _check_weights_kept(args)
    if args.what == "controlnet":
        from pathlib import Path

        from stepfoley.engine.loading import check_variant
        from stepfoley.engine.weights import CONTROLNET_DIR, controlnet_path, weights_folder
        from stepfoley.lab.training.controlnet import refuse_to_replace
        from stepfoley.lab.training.features import (entries_digest, features_metadata, read_dataset_list,
                                                     require_video_clips)

        # a folder, a model or a list given wrong is a usage error, and leaves no --work behind
        root = weights_folder(args.weights)
        if args.out is None:
            # made in WEIGHTS/controlnets/ when written: weights on a read-only share, or another
            # user's, refused it after the whole training (200,000 steps by default)
            folder = root / CONTROLNET_DIR
            there = nearest_existing(folder)
            if not there.is_dir() or not can_make_file_in(there):
                raise InvalidInputError(f"The ControlNet would be written in {folder}, where no file can be made "
                                        "(read-only, another user's, or a file by that name); give --out FILE in a "
                                        "folder you can write to.")
        variant = check_variant(args.model) if args.model is not None else _variant_found(root)
        if variant is not None and args.out is None:  # the variant's own file: refused once the model had loaded
            refuse_to_replace(controlnet_path(root, variant), args.force)
        entries = read_dataset_list(args.data)
        # each clip's start within its file (its header read: minutes for a list of 100,000s of
        # clips): one past the end was trained on as silence. Not again on a resume whose
        # features were made from this very list: they are what is trained on.
        made_from = features_metadata(Path(args.work) / "features.safetensors").get("entries_sha256")
        if made_from != entries_digest(entries):
            entries = read_dataset_list(args.data, check_starts=True)
        require_video_clips(entries, args.data)
        _check_out_is_no_input(args, root, entries)
    try:
        os.makedirs(args.work, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"The work folder '{args.work}' cannot be made ({e.strerror or e}); "
                                "choose a folder, or a place where one can be made.") from None
    if not can_make_file_in(args.work):  # its log, checkpoints and data: a traceback at the first line of the log
        raise InvalidInputError(f"No file can be made in the work folder '{args.work}' (read-only, or another "
                                "user's); choose a folder you can write to.")


def _check_out_is_no_input(args: argparse.Namespace, root, entries: list[dict]) -> None:
    """`train controlnet --out FILE --force` must not name a file the run reads: the ControlNet
    replaced it once trained (hours later), be it the --data list, a clip of it, or an official
    weights file (or a file in an official folder) of the weights folder `root`; `eval --json` is
    refused likewise. Compared as files on disk, through links. Raises InvalidInputError."""
    import os

    from stepfoley.commands.runtime import same_file
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.engine.weights import FILES, clip_folder, safetensors_copy

    if args.out is None or not os.path.exists(args.out):  # a file not there yet replaces nothing
        return

    def refuse(what: str) -> None:
        raise InvalidInputError(f"--out {args.out} is {what}, which this training reads; write the ControlNet to "
                                "another file (nothing was trained).")

    if same_file(args.out, args.data):
        refuse("the --data list")
    for spec in FILES.values():
        official = root / spec.checkpoint_relpath()
        for path in (official, safetensors_copy(official)):
            if os.path.exists(path) and same_file(args.out, path):
                refuse(f"the {spec.what} in the weights folder ({path})")
    real_out = os.path.realpath(args.out)
    for folder in [root / spec.relpath for spec in FILES.values() if spec.directory_file] + [clip_folder(root)]:
        if folder is not None and folder.is_dir():
            real = os.path.realpath(folder)
            if os.path.commonpath([real_out, real]) == real:
                refuse(f"in {folder}, an official folder of the weights")
    out = os.stat(args.out)  # the clips are files there (read_dataset_list): one stat each, for a list of thousands
    for entry in entries:
        for key in ("audio", "video"):
            try:
                clip = os.stat(entry[key]) if entry.get(key) else None
            except OSError:  # gone since the list was read: the training says so
                continue
            if clip is not None and os.path.samestat(out, clip):
                refuse(f"the {key} file of a clip in --data ({entry[key]})")


def _variant_found(root) -> str | None:
    """The MMAudio variant the loader picks in the weights folder `root` without --model (from
    which files are there: seconds), None where it finds none (the loader says why)."""
    from stepfoley.engine.errors import CheckpointError
    from stepfoley.engine.loading import chosen_variant
    from stepfoley.engine.weights import check_weights_dir

    try:
        return chosen_variant(check_weights_dir(root, verify=False), None)
    except CheckpointError:
        return None


def _check_weights_kept(args: argparse.Namespace) -> None:
    """Weights retrained in place are replaced only with --force by a run shorter than the recipe
    (a trial of a few steps): the packaged ones, which every `stepfoley demo`, `generate` and
    `serve` uses by default (and by any run where they lie in an installed package), and the
    --weights file `train loudness` extends, a user's own hours of training."""
    import os

    from stepfoley.commands.runtime import in_an_installed_package, same_file
    from stepfoley.engine.embedded.model import WEIGHTS_PATH
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.training.embedded import EmbeddedRecipe
    from stepfoley.lab.training.miniworld_data import DataRecipe

    target = args.out or _default_out(args)
    if args.force or target is None:
        return
    packaged = same_file(target, WEIGHTS_PATH)
    if not packaged and not (args.what == "loudness" and os.path.lexists(target)
                             and (args.out is None or _is_default_out(args))):
        return
    if packaged and in_an_installed_package(WEIGHTS_PATH):
        raise InvalidInputError(
            f"Without --out this would replace the weights inside the installed stepfoley package ({WEIGHTS_PATH}), "
            "which every user of this Python runs and a reinstall puts back. Give --out FILE (`stepfoley eval "
            "--embedded-weights FILE` measures it), or add --force to replace them there.")
    recipe = EmbeddedRecipe()
    # option -> the recipe's own number; fewer is a trial
    full = ({"scenes": DataRecipe.scenes, "base_steps": recipe.base_steps, "controlnet_steps": recipe.controlnet_steps,
             "loudness_steps": recipe.loudness_steps} if args.what == "embedded"
            else {"steps": recipe.loudness_steps})
    shorter = [f"--{name.replace('_', '-')} {getattr(args, name)} of the recipe's {least}"
               for name, least in full.items() if getattr(args, name, None) is not None and getattr(args, name) < least]
    if shorter:
        replaced = (f"the packaged weights that the engine uses by default ({WEIGHTS_PATH})" if packaged
                    else f"the weights it extends ({target})")
        raise InvalidInputError(f"This run is shorter than the recipe ({', '.join(shorter)}), and would replace "
                                f"{replaced}. Give --out FILE for a trial, or add --force to replace them.")


def _may_replace_out(args: argparse.Namespace) -> bool:
    """Whether the weights may replace a file at --out when they are written: checked again
    then, since a file (another run's) may have appeared there during hours of training."""
    return args.out is None or args.force or _is_default_out(args)


def _default_out(args: argparse.Namespace) -> str | None:
    """The file the command writes without --out: the packaged weights, or `train loudness`'s
    --weights (the packaged ones when not given); None for `train controlnet`, whose default
    folder is made only when it writes."""
    if args.what == "controlnet":
        return None
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    return str((args.weights if args.what == "loudness" else None) or WEIGHTS_PATH)


def _is_default_out(args: argparse.Namespace) -> bool:
    """Whether --out names the file the command writes without it: retraining in place is what
    that file is for."""
    import os

    default = _default_out(args)
    return default is not None and os.path.realpath(args.out) == os.path.realpath(default)


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
