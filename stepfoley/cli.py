"""The `stepfoley` command. Each subcommand lives in stepfoley/commands/<name>.py with
`add_arguments(parser)` and `run(args) -> int`; those modules import torch and the models
only inside `run`, so `stepfoley send` starts fast inside a DAW."""

from __future__ import annotations

import argparse
import importlib
import sys

from stepfoley import DOCS_URL, __version__

# name -> one-line help; the module stepfoley.commands.<name> implements it.
SUBCOMMANDS = {
    "generate": "generate one Foley track for a video region from the command line",
    "serve": "run the engine: keep the model loaded and answer OSC requests",
    "send": "send one request to a running engine and follow it to the end",
    "demo": "make a mini-world video and build its soundtrack in three steps",
    "train": "train the embedded model (base, NAG and loudness ControlNets) or a NAG ControlNet for MMAudio",
    "eval": "compare NAG with the baselines on mini-world scenes",
    "weights": "check or convert a directory of MMAudio weights",
    "bench": "run a benchmark that prints speed and memory figures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepfoley", description="Step-by-step video-to-Foley with Negative Audio Guidance.",
        epilog=f"The docs named in messages (docs/...): {DOCS_URL}",
    )
    parser.add_argument("--version", action="version", version=f"stepfoley {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"stepfoley.commands.{name}")
        p = sub.add_parser(name, help=SUBCOMMANDS[name], description=SUBCOMMANDS[name])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A path or caption the console's code page cannot show (Windows' ANSI code page when the
    # output is piped, as a DAW reads it) is written escaped instead of ending the command.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    command = "stepfoley"
    try:  # from the start: Ctrl-C while the commands are imported is as clean as during a run
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        command = f"stepfoley {args.command}"
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: the user knows why it stopped; no traceback
        print(f"{command}: stopped (Ctrl-C); no unfinished file is left under its final name.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
