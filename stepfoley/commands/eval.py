"""`stepfoley eval`: NAG against its baselines and controls on mini-world scenes (the paper's
Tables 2 and A2, in miniature), with paired bootstrap intervals over scenes, written as JSON.

    stepfoley eval --scenes 48 --seed 0 --takes 2 --json eval.json      the main table
    stepfoley eval --beta-sweep --scenes 24 --json sweep.json           NAG at several β
    stepfoley eval --choose-alpha --json alpha.json [--write]           α from plain CFG, development scenes
    stepfoley eval --controls --scenes 48 --takes 2 --json controls.json   extend, picture region, loudness curve
"""

from __future__ import annotations

import argparse

from stepfoley.commands.runtime import check_input_file, check_json_path, in_an_installed_package, same_file, say

FIGURES = (  # (key, column title, which way is better, scale for printing)
    ("separability", "A-A sim", "lower", 1.0),
    ("text_fidelity", "text fid.", "higher", 1.0),
    ("leakage", "leakage", "lower", 1.0),
    ("temporal_alignment", "timing", "higher", 1.0),
    ("lufs", "LUFS dec.", None, 1.0),
    ("pre_limiter_clipped_fraction", "clipped %", "lower", 100.0),
    ("silence_fraction", "silence", None, 1.0),
    ("composite_distance", "mix dB", "lower", 1.0),
)
COMPARED = ("separability", "text_fidelity", "leakage", "pre_limiter_clipped_fraction")
DEFAULT_TRACKS = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=None,
                   help="mini-world scenes (default 48; 12 with --choose-alpha or --choose-level-anchor)")
    p.add_argument("--seed", type=int, default=0, help="picks the scenes: 10000000 + seed*1000 + i")
    p.add_argument("--takes", type=int, default=2, help="seeds per scene (default 2), sampled in one batch")
    p.add_argument("--json", metavar="PATH", help="where to write the figures (JSON); required")
    p.add_argument("--force", action="store_true", help="replace PATH if it already exists")
    p.add_argument("--tracks", type=int, default=None,
                   help=f"tracks per scene, step by step (at most its sources; default {DEFAULT_TRACKS})")
    p.add_argument("--steps", type=int, default=None, help="sampling steps per track (default: the model's)")
    p.add_argument("--alpha", type=float, default=None, help="CFG strength α (default: the model's)")
    p.add_argument("--beta", type=float, default=None,
                   help="NAG strength β of nag and text_boost (default: the model's)")
    p.add_argument("--beta-sweep", nargs="?", const="0,0.5,1,1.5,2,3", default=None, metavar="B1,B2,...",
                   help="instead of the main rows, NAG at each β (default 0,0.5,1,1.5,2,3; 0 = independent)")
    p.add_argument("--choose-alpha", action="store_true",
                   help="choose α from plain CFG on development scenes (text fidelity against overload)")
    p.add_argument("--alphas", default=None, metavar="A1,A2,...",
                   help="the α grid of --choose-alpha (default 1,1.5,2,2.5,3,3.5,4.5)")
    p.add_argument("--choose-level-anchor", action="store_true",
                   help="choose how far guided steps are held to the unguided level, from NAG with the model's α and "
                        "β on development scenes (the smallest strength that keeps clipping within 0.1 %%)")
    p.add_argument("--anchors", default=None, metavar="A1,A2,...",
                   help="the grid of --choose-level-anchor (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--write", action="store_true",
                   help="with --choose-alpha or --choose-level-anchor: record the choice as the embedded model's "
                        "default in its weights file")
    p.add_argument("--controls", action="store_true",
                   help="instead of the main rows, the controls of a track: extend (kept samples, seam flux, "
                        "the continued part against a full generation), picture region and loudness curve")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (for the README)")
    p.add_argument("--weights", default=None, metavar="DIR|FILE",
                   help="a directory of official MMAudio weights, or embedded weights as --embedded-weights "
                        "(default: the embedded mini-world model)")
    p.add_argument("--embedded-weights", default=None, metavar="FILE",
                   help="the embedded model's weights file (default: the packaged one), e.g. freshly retrained")
    p.add_argument("--model", default=None, help="model variant ('tiny-random' = random weights, for tests)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: every core but one; on a shared CPU one thread per free core "
                        "is far faster than more); recorded in the report")
    p.add_argument("--embedding", default=None, metavar="FILE",
                   help="evaluation embedding (default: the shipped one, else one trained once into the cache)")
    p.add_argument("--classifier", default=None, metavar="FILE",
                   help="source-presence classifier (default: the shipped one, else one trained once into the cache)")
    p.add_argument("--train-embedding", default=None, metavar="FILE",
                   help="only train the evaluation embedding (seed --seed, CPU, a few minutes) into FILE and exit")
    p.add_argument("--train-classifier", default=None, metavar="FILE",
                   help="only train the source-presence classifier (seed --seed, CPU, a few minutes) into FILE "
                        "and exit")


def _cell(value: dict | None, scale: float = 1.0) -> str:
    if not isinstance(value, dict) or value.get("mean") is None:
        return "-"
    return f"{scale * value['mean']:.3f}"


def _interval(comparison: dict, scale: float = 1.0, markdown: bool = False) -> str:
    from stepfoley.lab.evaluation.stats import excludes_zero, shown_interval

    mean = None if comparison["mean_diff"] is None else scale * comparison["mean_diff"]
    text = shown_interval(mean, [None if v is None else scale * v for v in comparison["ci95"]], comparison["n"])
    mark = ("**" if markdown else "*") if excludes_zero(comparison) else ""
    return f"{mark}{text}{mark}" if markdown else f"{text}{mark}"


def _grid(header: list[str], lines: list[list[str]], markdown: bool) -> str:
    if markdown:
        rows = [header, ["---"] * len(header)] + lines
        return "\n".join("| " + " | ".join(row) + " |" for row in rows)
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header] + lines]
    return "\n".join([text[0], "  ".join("-" * w for w in widths)] + text[1:])


def format_tables(report: dict, markdown: bool = False) -> str:
    """The rows' figures (means over scenes) and every comparison with its 95 % interval; an
    interval that excludes 0 is starred (bold in Markdown)."""
    rows = list(report["methods"].items()) + [("ground truth", report["reference"]["ground_truth_stems"])]
    columns = [c for c in FIGURES if any(c[0] in figures for _, figures in rows)]
    arrows = {"lower": " ↓", "higher": " ↑", None: ""}
    header = ["row"] + [title + arrows[better] for _, title, better, _ in columns]
    lines = [[name] + [_cell(figures.get(key), scale) for key, _, _, scale in columns] for name, figures in rows]
    track1 = report["track1"]
    truth1 = report["reference"]["ground_truth_track1"]
    parts = [_grid(header, lines, markdown), "",
             f"track 1 (shared): text fidelity {_cell(track1['text_fidelity'])} (true stem "
             f"{_cell(truth1['text_fidelity'])}), LUFS as decoded {_cell(track1['lufs'])}, clipped "
             f"{_cell(track1['pre_limiter_clipped_fraction'], 100)} %", ""]
    titles = {key: title for key, title, _, _ in FIGURES}
    scales = {key: scale for key, _, _, scale in FIGURES}
    header = ["difference (a − b), mean [95 % CI]"] + [titles[key] for key in COMPARED]
    lines = [[name] + [_interval(figures[key], scales[key], markdown) for key in COMPARED]
             for name, figures in report["comparisons"].items()]
    parts.append(_grid(header, lines, markdown))
    return "\n".join(parts)


CHOICE_TITLES = {"text_fidelity": "text fid. ↑", "pre_limiter_clipped_fraction": "clipped % ↓", "lufs": "LUFS dec.",
                 "decoded_peak_dbfs": "peak dBFS dec.", "silence_fraction": "silence"}


def _choice_table(report: dict, grid: str, name: str, figures, markdown: bool, note: str = "") -> str:
    """A choice over a grid (--choose-alpha, --choose-level-anchor): one line per value of
    `report[grid]`, the chosen one marked, then the choice and its rule."""
    lines = []
    for value, by_figure in report[grid].items():
        mark = " (chosen)" if float(value) == report["chosen"] else ""
        lines.append([value + mark] + [_cell(by_figure[f], 100.0 if f == "pre_limiter_clipped_fraction" else 1.0)
                                       for f in figures])
    return (_grid([name] + [CHOICE_TITLES[f] for f in figures], lines, markdown)
            + f"\nchosen {name} = {report['chosen']:g}: {report['rule']}{note}")


def format_alpha_table(report: dict, markdown: bool = False) -> str:
    from stepfoley.lab.evaluation.calibration import FIGURES

    return _choice_table(report, "alphas", "α", FIGURES, markdown)


def format_level_anchor_table(report: dict, markdown: bool = False) -> str:
    from stepfoley.lab.evaluation.calibration import LEVEL_FIGURES

    return _choice_table(report, "strengths", "level anchor", LEVEL_FIGURES, markdown,
                         " (figures over the NAG tracks 2..k)")


def format_timings(report: dict) -> str:
    timings = report["timings"]
    split = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in timings.items())
    return f"time: {sum(timings.values()):.0f} s with {report['config']['threads']} thread(s) ({split})"


def write_json_atomic(path, report: dict, force: bool) -> None:
    import json
    from pathlib import Path

    from stepfoley.atomic import write_text_atomically
    from stepfoley.engine.errors import InvalidInputError

    # a figure that is not a number (a network's report may hold one) is null, as JSON has none:
    # the whole report was lost to the error, after hours of work
    text = json.dumps(_finite_or_null(report), indent=1, allow_nan=False) + "\n"
    try:
        check_json_path(path, force)  # again: the folder or the file may have changed during the run
        # without --force a file that appeared meanwhile is not replaced either
        write_text_atomically(Path(path), text, replace=force)
    except (InvalidInputError, FileExistsError) as e:
        problem = str(e) if isinstance(e, InvalidInputError) else f"{path} appeared while evaluating"
        saved = _saved_beside(Path(path), text)  # minutes to hours of figures are not thrown away
        raise InvalidInputError(problem + (f" The report was saved as {saved} instead." if saved else "")) from None


def _finite_or_null(value):
    """`value` (a JSON-ready report) with every float that is not finite as None."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _saved_beside(path, text: str):
    """The report written under the first free name beside `path` (eval.1.json, eval.2.json, ...),
    or None when that folder takes no file either."""
    from stepfoley.atomic import write_text_atomically

    for number in range(1, 1000):
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
        try:
            return write_text_atomically(candidate, text, replace=False)
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def _numbers(text: str, option: str) -> list[float]:
    from stepfoley.engine.errors import InvalidInputError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InvalidInputError(f"{option} takes numbers separated by commas, e.g. 0,1,1.5; got {text!r}.")
    return values


def _load_model(args: argparse.Namespace):
    from stepfoley.engine.devices import choose_device
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.engine.loading import load_foley_model

    device = choose_device(args.device)
    if args.embedded_weights:
        if args.weights or args.model:
            raise InvalidInputError("--embedded-weights is the embedded model's file; it goes without --weights "
                                    "and --model.")
        from stepfoley.engine.embedded.model import build_embedded_model

        return build_embedded_model(device=device, weights_path=args.embedded_weights)
    return load_foley_model(weights_dir=args.weights, variant=args.model, device=device)


class _Bar:
    """A tqdm bar made on first use (nothing is printed for work that never starts)."""

    def __init__(self, description: str):
        self.description, self.bar = description, None

    def __call__(self, done: int, total: int) -> None:
        import sys

        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.description, unit="step", file=sys.stderr)
        self.bar.total, self.bar.n = total, done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _embedding_unused(args: argparse.Namespace) -> bool:
    """The evaluation embedding measures the main run's separability; the controls and the
    calibrations judge by the source-presence classifier alone."""
    return bool(args.controls or args.choose_alpha or args.choose_level_anchor)


def _networks(args: argparse.Namespace, model):
    """The evaluation embedding and the source-presence classifier: given files, else the shipped
    ones (trained once into the cache if absent)."""
    import sys

    from stepfoley.lab.evaluation.embedding import default_audio_embedding, load_audio_embedding
    from stepfoley.lab.evaluation.presence import default_source_presence, load_source_presence

    def note(message: str) -> None:
        print(f"note: {message}", file=sys.stderr)

    bars = [_Bar("training the evaluation embedding"), _Bar("training the source-presence classifier")]
    try:
        embedding = (None if _embedding_unused(args) else
                     load_audio_embedding(args.embedding, model.text_encoder) if args.embedding else
                     default_audio_embedding(model.text_encoder, on_message=note, on_progress=bars[0]))
        presence = (load_source_presence(args.classifier) if args.classifier else
                    default_source_presence(on_message=note, on_progress=bars[1]))
    finally:
        for bar in bars:
            bar.close()
    return embedding, presence


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from stepfoley.atomic import can_make_file_in
    from stepfoley.commands.runtime import check_runtime_arguments
    from stepfoley.engine.devices import share_cpu
    from stepfoley.engine.errors import InvalidInputError, StepFoleyError

    try:
        share_cpu(args.threads)
    except StepFoleyError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 2
    if args.train_embedding is not None or args.train_classifier is not None:  # "" too: refused by name
        return _train(args)
    if not args.json:
        print("stepfoley: say where to write the figures with --json PATH (e.g. --json eval.json).",
              file=sys.stderr)
        return 2
    bar = _Bar("choosing α" if args.choose_alpha else "choosing the level anchor" if args.choose_level_anchor
               else "evaluating")
    if args.controls and (args.choose_alpha or args.choose_level_anchor or args.beta_sweep is not None or args.write):
        print("stepfoley: --controls is its own run; leave out --choose-alpha, --choose-level-anchor, --beta-sweep "
              "and --write.", file=sys.stderr)
        return 2
    if args.choose_alpha and args.choose_level_anchor:
        print("stepfoley: choose α first (--choose-alpha --write), then the level anchor (--choose-level-anchor).",
              file=sys.stderr)
        return 2
    try:  # the arguments: fail before minutes of work, not after
        check_runtime_arguments(args)
        check_json_path(args.json, args.force)
        _check_input_files(args)
        _check_json_is_no_input(args)
        if args.embedding is not None and _embedding_unused(args):  # read, or trained for minutes, for nothing
            raise InvalidInputError("--embedding is read by the main evaluation only; leave it out with --controls, "
                                    "--choose-alpha and --choose-level-anchor.")
        if args.write and not (args.choose_alpha or args.choose_level_anchor):
            raise InvalidInputError("--write goes with --choose-alpha or --choose-level-anchor.")
        from stepfoley.engine.weights import is_weights_file

        if args.write and ((args.weights and not is_weights_file(args.weights)) or args.model):
            raise InvalidInputError("--write records the choice in the embedded model's weights file; it goes "
                                    "without an MMAudio --weights folder and --model.")
        recorded_in = _embedded_weights_file(args) if args.write else None
        if recorded_in is not None and not args.embedded_weights and in_an_installed_package(recorded_in):
            raise InvalidInputError(
                f"--write would record the choice in the weights inside the installed stepfoley package "
                f"({recorded_in}), which every user of this Python runs and a reinstall puts back. "
                "Give --embedded-weights FILE (a copy of them), or name that very file with --embedded-weights to "
                "record it there.")
        if recorded_in is not None and not can_make_file_in(os.path.dirname(os.path.abspath(recorded_in))):
            # the choice is written next to the weights file: found after the whole run, the report kept
            raise InvalidInputError(f"--write records the choice in {recorded_in}, in a folder where "
                                    "no file can be made (read-only, or another user's); copy the weights somewhere "
                                    "you can write and give that file with --embedded-weights.")
        grid = _checked_grid(args)
    except InvalidInputError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 2
    try:
        model = _load_model(args)
        if model.note:
            print(f"note: {model.note}", file=sys.stderr)
        embedding, presence = _networks(args, model)
        try:
            if args.choose_alpha:
                report = _choose_alpha(args, model, presence, bar, grid)
            elif args.choose_level_anchor:
                report = _choose_level_anchor(args, model, presence, bar, grid)
            elif args.controls:
                report = _controls(args, model, presence, bar)
            else:
                report = _evaluate(args, model, embedding, presence, bar, grid)
        finally:
            bar.close()
        report["config"]["weights"] = _weights_measured(args)
        report["config"]["decoder"] = _decoder_measured(model)
        # The report first: a weights file is only changed once its figures are on disk.
        choice = _plan_choice(args, model, report) if args.write else None
        write_json_atomic(args.json, report, args.force)
        if choice is not None:
            _record_choice(args, report, *choice)
    except StepFoleyError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 1
    config = report["config"]
    validation = report["classifier"]["validation"]
    say(f"model {config['model']}, {config['scenes']} scene(s) x {config['takes']} take(s), "
        f"{config['tracks']} tracks, {config['steps']} steps"
        + (f", alpha {config['alpha']:g}" if "alpha" in config else ""))
    say(f"source-presence classifier: validation label accuracy {validation['label_accuracy']:.3f}, "
        f"balanced {validation['balanced_accuracy']:.3f}")
    if args.choose_alpha:
        say(format_alpha_table(report, args.markdown))
    elif args.choose_level_anchor:
        say(format_level_anchor_table(report, args.markdown))
    elif args.controls:
        from stepfoley.lab.evaluation.controls import format_controls

        say(format_controls(report))
    else:
        say(format_tables(report))
        if args.markdown:
            say("\n" + format_tables(report, markdown=True))
    for note in report.get("notes", []):
        say(f"note: {note}")
    say(format_timings(report))
    say(f"wrote {args.json}")
    return 0


def _weights_measured(args: argparse.Namespace) -> dict:
    """Which weights the figures are of: two reports of differently trained embedded weights
    both said only "stepfoley-mini". The embedded file's path, SHA-256 and training record; for
    MMAudio the folder and variant (its files are checked by `stepfoley weights check --hash`)."""
    from safetensors import safe_open

    from stepfoley.engine.weights import file_digest

    path = _embedded_weights_file(args)
    if path is None:  # MMAudio's, or tiny-random (no file: random weights for tests)
        return {"folder": args.weights and str(args.weights), "variant": args.model}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    record = {k: meta[k] for k in ("training_command", "loudness_training_command", "data_seed") if k in meta}
    return {"file": str(path), "sha256": file_digest(path, "sha256"), **record}


def _decoder_measured(model) -> dict | None:
    """How the figures' audio was decoded, for the embedded codec: its decoder settings are this
    version's, whatever the weights file recorded (engine.embedded.codec.DECODER_FIELDS), so the
    weights' digest alone no longer says it. None for MMAudio's codec (its vocoder is weights)."""
    from stepfoley.engine.embedded.codec import DECODER_FIELDS, MelCodec

    if not isinstance(model.codec, MelCodec):
        return None
    return {field: getattr(model.codec.config, field) for field in DECODER_FIELDS}


def _embedded_weights_file(args: argparse.Namespace):
    """The embedded model's weights file the run reads (the Path), or None when it runs MMAudio's
    weights (--weights) or a model variant (--model) instead (_load_model's choice)."""
    from pathlib import Path

    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    from stepfoley.engine.weights import is_weights_file

    if args.embedded_weights:
        return Path(args.embedded_weights)
    if args.weights and is_weights_file(args.weights):  # --weights FILE: the embedded model's, as everywhere
        return Path(args.weights)
    return None if args.weights or args.model else WEIGHTS_PATH


def _check_input_files(args: argparse.Namespace) -> None:
    """The files the run reads are files: a folder given as --embedded-weights was reported as
    "missing, reinstall StepFoley" once the run had started."""
    for option, path in (("--embedded-weights", args.embedded_weights), ("--embedding", args.embedding),
                         ("--classifier", args.classifier)):
        check_input_file(path, option, "the .safetensors file")


def _check_json_is_no_input(args: argparse.Namespace) -> None:
    """--json must not name a file the run reads: with --force the report replaced the weights it
    had just measured."""
    from stepfoley.engine.errors import InvalidInputError

    from stepfoley.lab.evaluation import embedding, presence

    inputs = {"--embedded-weights": _embedded_weights_file(args),
              "--embedding": args.embedding or embedding.SHIPPED_PATH,
              "--classifier": args.classifier or presence.SHIPPED_PATH}
    for option, path in inputs.items():
        if path is not None and same_file(args.json, path):
            raise InvalidInputError(f"--json {args.json} is the file the run reads ({option}); write the report "
                                    "to another file.")


def _tracks(args: argparse.Namespace) -> int:
    # None when not typed, so that --controls, which sets its own tracks, can refuse an explicit --tracks 3
    return DEFAULT_TRACKS if args.tracks is None else args.tracks


def _checked_grid(args: argparse.Namespace):
    """What the run goes over, from the options (the evaluation's rows, the α grid or the
    level-anchor grid; None for the controls), with every option the run takes checked as the
    run itself would check it: all before the model loads. Raises InvalidInputError."""
    from dataclasses import replace

    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.evaluation.calibration import (ALPHA_GRID, DEVELOPMENT_SCENES, LEVEL_ANCHOR_GRID,
                                                      check_calibration)
    from stepfoley.lab.evaluation.runner import MAIN_ROWS, beta_sweep_rows, check_evaluation, check_number, check_run

    if args.alphas and not args.choose_alpha:
        raise InvalidInputError("--alphas is the grid --choose-alpha goes over; add --choose-alpha, or leave it out.")
    if args.anchors and not args.choose_level_anchor:
        raise InvalidInputError("--anchors is the grid --choose-level-anchor goes over; add --choose-level-anchor, "
                                "or leave it out.")
    if (args.choose_alpha or args.choose_level_anchor) and args.seed != 0:
        raise InvalidInputError("--seed picks the test scenes; choosing α or the level anchor goes over its own "
                                "development scenes: leave --seed out.")
    if args.choose_alpha:
        if args.alpha is not None or args.beta is not None or args.beta_sweep is not None:
            raise InvalidInputError("--choose-alpha runs plain CFG over its own α grid (--alphas); leave --alpha, "
                                    "--beta and --beta-sweep out.")
        return check_calibration("α", _numbers(args.alphas, "--alphas") if args.alphas else ALPHA_GRID,
                                 DEVELOPMENT_SCENES if args.scenes is None else args.scenes, args.takes, args.steps,
                                 _tracks(args))
    if args.choose_level_anchor:
        if args.alpha is not None or args.beta is not None or args.beta_sweep is not None or args.alphas:
            raise InvalidInputError("--choose-level-anchor runs NAG with the model's own α and β over its own grid "
                                    "(--anchors); leave --alpha, --alphas, --beta and --beta-sweep out.")
        return check_calibration("level anchor", _numbers(args.anchors, "--anchors") if args.anchors
                                 else LEVEL_ANCHOR_GRID, DEVELOPMENT_SCENES if args.scenes is None else args.scenes,
                                 args.takes, args.steps, _tracks(args))
    if args.controls:
        if args.beta is not None or args.tracks is not None or args.markdown:
            raise InvalidInputError("--controls measures each control with its own tracks and guidance, and prints "
                                    "its table as text: leave --beta, --tracks and --markdown out.")
        check_run(48 if args.scenes is None else args.scenes, args.seed, args.takes, args.steps)
        check_number("alpha", args.alpha)  # 1e30 ended in a traceback after the model loaded
        return None
    if args.beta_sweep is not None:
        if args.beta is not None:
            raise InvalidInputError("--beta-sweep sets β itself; leave --beta out.")
        rows = beta_sweep_rows(_numbers(args.beta_sweep, "--beta-sweep"))
    else:
        rows = tuple(replace(r, beta=args.beta) if r.beta is None else r for r in MAIN_ROWS)
    check_evaluation(48 if args.scenes is None else args.scenes, args.seed, _tracks(args), args.takes, args.steps,
                     args.alpha, rows)
    return rows


def _evaluate(args, model, embedding, presence, bar, rows) -> dict:
    from stepfoley.lab.evaluation.runner import evaluate

    return evaluate(model, 48 if args.scenes is None else args.scenes, args.seed, k=_tracks(args), takes=args.takes,
                    steps=args.steps, alpha=args.alpha, rows=rows, embedding=embedding, presence=presence,
                    on_progress=bar)


def _controls(args, model, presence, bar) -> dict:
    from stepfoley.lab.evaluation.controls import evaluate_controls

    return evaluate_controls(model, 48 if args.scenes is None else args.scenes, args.seed, takes=args.takes,
                             steps=args.steps, alpha=args.alpha, presence=presence,
                             on_progress=bar)


def _choose_alpha(args, model, presence, bar, alphas) -> dict:
    from stepfoley.lab.evaluation.calibration import DEVELOPMENT_SCENES, choose_alpha

    return choose_alpha(model, DEVELOPMENT_SCENES if args.scenes is None else args.scenes, takes=args.takes,
                        k=_tracks(args), alphas=alphas, steps=args.steps, presence=presence, on_progress=bar)


def _choose_level_anchor(args, model, presence, bar, strengths) -> dict:
    from stepfoley.lab.evaluation.calibration import DEVELOPMENT_SCENES, choose_level_anchor

    return choose_level_anchor(model, DEVELOPMENT_SCENES if args.scenes is None else args.scenes,
                               takes=args.takes, k=_tracks(args), strengths=strengths, steps=args.steps,
                               presence=presence, on_progress=bar)


def _plan_choice(args, model, report: dict):
    """What --write records for the report's choice: the embedded model's `default` (a
    GuidanceDefaults field) in its weights file, with the rule, the config and each grid value's
    mean figures. Notes it in the report ("written") and returns (path, defaults, provenance,
    default) for _record_choice, called once the report is on disk."""
    from dataclasses import replace

    from stepfoley.lab.evaluation.calibration import FIGURES, LEVEL_FIGURES

    default, grid, figures, option = (("alpha", "alphas", FIGURES, "--choose-alpha") if args.choose_alpha else
                                      ("level_anchor", "strengths", LEVEL_FIGURES, "--choose-level-anchor"))
    path = _embedded_weights_file(args)  # --write goes without --weights and --model: never None
    defaults = replace(model.defaults, **{default: report["chosen"]})
    provenance = {"command": f"stepfoley eval {option}", "rule": report["rule"], "config": report["config"],
                  grid: {a: {f: s[f]["mean"] for f in figures} for a, s in report[grid].items()}}
    report["written"] = {"path": str(path), "guidance_defaults": vars(defaults)}
    return path, defaults, provenance, default


def _record_choice(args, report: dict, path, defaults, provenance: dict, default: str) -> None:
    """Rewrite the weights file with the planned defaults. If that fails, the report already
    written says so instead of "written" (it is our own file, replaced whole) and the error goes on."""
    from stepfoley.engine.embedded.model import write_guidance_defaults
    from stepfoley.engine.errors import StepFoleyError

    try:
        write_guidance_defaults(path, defaults, provenance, chosen=default)
    except StepFoleyError as e:
        report.pop("written", None)
        report["not_written"] = {"path": str(path), "error": str(e)}
        write_json_atomic(args.json, report, force=True)
        raise
    say(f"recorded {default.replace('_', ' ')} {report['chosen']:g} as the default of {path}")


# The networks' clip seeds (evaluation.store.first_clip_seed): the embedding's from 500,000,000 +
# seed x 100,000, the classifier's from 700,000,000: seeds up to this keep the two apart and clear
# of every scene seed below (a test derives it from those constants; here --help needs no torch).
MAX_NETWORK_SEED = 1999


def _train(args: argparse.Namespace) -> int:
    import sys

    from stepfoley.engine.errors import StepFoleyError

    embedding = args.train_embedding is not None
    path = args.train_embedding if embedding else args.train_classifier
    if embedding and args.train_classifier is not None:
        print("stepfoley: train one network at a time (--train-embedding or --train-classifier).", file=sys.stderr)
        return 2
    if not 0 <= args.seed <= MAX_NETWORK_SEED:
        # each seed draws its own clips: past this, the embedding's are the classifier's seed 0's,
        # and below 0 the classifier's are the base model's training scenes
        print(f"stepfoley: --seed must be from 0 to {MAX_NETWORK_SEED} for a network, got {args.seed}.",
              file=sys.stderr)
        return 2
    try:  # before minutes of training, not after
        check_json_path(path, args.force, "--train-embedding" if embedding else "--train-classifier",
                        "network.safetensors", folder_made=True)  # store.save_with_report makes the folder
    except StepFoleyError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 2
    run_options = [name for name, given in (("--json", args.json), ("--controls", args.controls),
                                            ("--choose-alpha", args.choose_alpha),
                                            ("--choose-level-anchor", args.choose_level_anchor),
                                            ("--beta-sweep", args.beta_sweep is not None), ("--write", args.write))
                   if given]
    if run_options:  # taken and ignored: minutes of training, then no evaluation
        print(f"stepfoley: --train-{'embedding' if embedding else 'classifier'} trains the network and runs nothing "
              f"else; leave out {', '.join(run_options)}, and evaluate with it afterwards.", file=sys.stderr)
        return 2
    what = "evaluation embedding" if embedding else "source-presence classifier"
    bar = _Bar(f"training the {what}")
    try:
        if embedding:
            from stepfoley.lab.evaluation.embedding import train_audio_embedding as train
        else:
            from stepfoley.lab.evaluation.presence import train_source_presence as train
        report = train(path, seed=args.seed, minutes=60.0, on_progress=bar)
    except StepFoleyError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    checks = ", ".join(f"{k} {v:.3f}" for k, v in report["validation"].items() if isinstance(v, float))
    say(f"wrote {path} ({report['steps_done']} steps, seed {args.seed}); held-out: {checks}")
    return 0
