"""`stepfoley weights check DIR` and `stepfoley weights convert DIR`."""

from __future__ import annotations

import argparse
import shlex


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="say which official files are present, which are missing for each model, and whether each has the right tensors",
    )
    check.add_argument("dir", help="the weights folder (layout: docs/weights.md)")
    check.add_argument("--quick", action="store_true", help="only check which files are present (no weights are read)")
    check.add_argument("--hash", action="store_true",
                       help="also compare each file's MD5 with the one MMAudio publishes (reads every byte: as long as "
                            "copying the files); finds a download cut short or changed that still has the right tensors")
    check.add_argument("--manifests", default=None, help="folder of key/shape manifests to check against (default: the packaged ones)")
    check.add_argument("--model", default=None, help="exit with 1 unless this model is ready (small_16k, small_44k, medium_44k, large_44k, large_44k_v2)")
    convert = sub.add_parser("convert", help="write a .safetensors copy beside every official .pth/.pt (read without unpickling)")
    convert.add_argument("dir", help="the weights folder (layout: docs/weights.md)")
    convert.add_argument("--manifests", default=None,
                         help="folder of key/shape manifests a file must match to be copied (default: the packaged ones)")


def run(args: argparse.Namespace) -> int:
    import sys

    from stepfoley.engine.errors import CheckpointError, StepFoleyError
    from stepfoley.engine.weights import VARIANTS, check_weights_dir, convert_weights_dir, weights_folder

    model = getattr(args, "model", None)  # check's option
    if model is not None and model not in VARIANTS:
        print(f"Unknown model {model!r}: use one of {', '.join(VARIANTS)}.", file=sys.stderr)
        return 2
    try:
        weights_folder(args.dir)  # a folder given wrong is a usage error, not a failed check
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.manifests is not None and not args.manifests.strip():
        # an unset shell variable: it was checked against the packaged manifests, the user's own
        # never read; refused here as a usage error, with --quick too (which reads no manifest)
        print("--manifests is empty; give the folder of the weight manifests to check against, or leave --manifests "
              "out for the packaged ones.", file=sys.stderr)
        return 2
    if getattr(args, "hash", False) and args.quick:
        print("--hash reads every byte and --quick reads none: give one of them.", file=sys.stderr)
        return 2
    try:
        if args.weights_command == "check":
            if args.hash:
                print("Comparing MD5s: every official file is read to its end, which takes a while for large "
                      "models.", file=sys.stderr, flush=True)
            report = check_weights_dir(args.dir, manifests_dir=args.manifests, verify=not args.quick, md5=args.hash)
            print(report.text())
            wrong = [r for r in report.files.values() if r.present and r.problems]
            if wrong:
                return 1
            if model is not None and not report.ready(model):
                return 1
            return 0
        results = convert_weights_dir(args.dir, manifests_dir=args.manifests)
        if any(r.written for r in results):
            print("How much faster the copies load depends on the disk and the file: "
                  f"`stepfoley bench weights-load --dir {shlex.quote(str(args.dir))}` measures it.")
        return 1 if any(r.refused for r in results) else 0
    except StepFoleyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
