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


class _Parser(argparse.ArgumentParser):
    def parse_known_args(self, args=None, namespace=None):
        self._words = list(sys.argv[1:] if args is None else args)  # what error() may point at
        return super().parse_known_args(args, namespace)

    def _swallowed_hint(self, missing: int) -> str:
        """A list option (--existing a.wav b.wav) takes every word after it: given before the
        positional arguments, it takes them too. Said when one took at least as many words as
        are missing (an abbreviation counts; argparse takes those)."""
        words = getattr(self, "_words", [])
        for action in self._actions:
            if action.nargs not in ("*", "+"):
                continue
            for i, word in enumerate(words):
                if len(word) > 2 and any(option.startswith(word.split("=")[0]) for option in action.option_strings):
                    taken = 0
                    while i + 1 + taken < len(words) and not words[i + 1 + taken].startswith("-"):
                        taken += 1
                    if taken >= missing:
                        option = action.option_strings[-1]
                        positionals = " ".join(a.dest.upper() for a in self._actions if not a.option_strings)
                        return (f" (if those were given after {option}, it took them as its own: it takes every "
                                f"word after it, so give it after them, e.g. {positionals} {option} …)")
        return ""

    def _dash_value_hint(self, message: str) -> str:
        """argparse takes a value such as "-1,2" for an option and says only that the value is
        missing: said when the word after the option starts with '-', with that option's name."""
        names = message.removeprefix("argument ").split(":", 1)[0].split("/")
        words = getattr(self, "_words", [])
        for i, word in enumerate(words[:-1]):
            # an abbreviation counts: argparse takes those
            given = word in names or (len(word) > 2 and word.startswith("--") and names[-1].startswith(word))
            if given and words[i + 1].startswith("-"):
                return (f" (a value that starts with '-' reads as an option: join it with '=', e.g. "
                        f"{names[-1]}={words[i + 1]})")
        return ""

    def error(self, message: str):
        if message.endswith("expected one argument"):
            message += self._dash_value_hint(message)
        if message.startswith("the following arguments are required"):
            message += self._swallowed_hint(len(message.split(":", 1)[1].split(",")))
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stepfoley", description="Step-by-step video-to-Foley with Negative Audio Guidance.",
        epilog=f"The docs named in messages (docs/...): {DOCS_URL}",
    )
    parser.add_argument("--version", action="version", version=f"stepfoley {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
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
    command, terminated = "stepfoley", []
    try:  # from the start: Ctrl-C while the commands are imported is as clean as during a run
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        command = f"stepfoley {args.command}"
        sigterm_stops = args.command in STOPPED_BY_SIGTERM_AS_BY_CTRL_C
        restore = _stop_on_sigterm_as_on_ctrl_c(terminated) if sigterm_stops else None
        try:
            return int(args._run(args) or 0)
        finally:
            if restore is not None:
                restore()
    except KeyboardInterrupt:  # Ctrl-C: the user knows why it stopped; no traceback
        how = "SIGTERM" if terminated else "Ctrl-C"
        print(f"{command}: stopped ({how}); no unfinished file is left under its final name.", file=sys.stderr)
        return 143 if terminated else 130


# Commands that work for minutes to hours: SIGTERM (timeout, docker stop, a batch scheduler)
# stops them as Ctrl-C does, removing their temporary files and worker processes, where it used
# to kill them outright; `send` then cancels its job. `serve` has its own handling.
STOPPED_BY_SIGTERM_AS_BY_CTRL_C = ("generate", "demo", "train", "eval", "bench", "send")


def _stop_on_sigterm_as_on_ctrl_c(terminated: list):
    """Install the handler; returns what puts the previous one back (None where a handler cannot
    be installed: main() called outside the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
