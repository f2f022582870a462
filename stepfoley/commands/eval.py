"""`stepfoley eval`: compare NAG with the baselines on mini-world scenes (the paper's Tables 1
and 2, in miniature) and write the figures as JSON."""

from __future__ import annotations

import argparse

FIGURES = (  # (key, column title, which way is better)
    ("separability", "A-A sim", "lower"),
    ("text_fidelity", "T-A sim", "higher"),
    ("leakage", "leakage", "lower"),
    ("temporal_alignment", "timing", "higher"),
    ("composite_distance", "mix dB", "lower"),
    ("composite_fd", "mix FD", "lower"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes", type=int, default=20, help="number of mini-world scenes (default 20)")
    p.add_argument("--seed", type=int, default=0, help="picks the scenes: 10000000 + seed*1000 + i")
    p.add_argument("--json", metavar="PATH", help="where to write the figures (JSON); required to evaluate")
    p.add_argument("--force", action="store_true", help="replace PATH if it already exists")
    p.add_argument("--tracks", type=int, default=3, help="tracks per scene, step by step (at most its sources)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps per track")
    p.add_argument("--alpha", type=float, default=4.5, help="text/video guidance strength (CFG)")
    p.add_argument("--beta", type=float, default=1.5, help="negative audio guidance strength (NAG)")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="a directory of official MMAudio weights (default: the embedded mini-world model)")
    p.add_argument("--model", default=None, help="model variant ('tiny-random' = random weights, for tests)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--embedding", default=None, metavar="FILE",
                   help="evaluation embedding (default: the shipped one, else one trained once into the cache)")
    p.add_argument("--train-embedding", default=None, metavar="FILE",
                   help="only train the evaluation embedding (seed --seed, CPU, a few minutes) into FILE and exit")


def format_table(report: dict) -> str:
    """The per-method figures as aligned text: mean ± std, one row per method."""
    methods = report["methods"]
    rows = list(methods.items()) + [("ground truth", report["reference"]["ground_truth_stems"])]
    columns = [(key, title, better) for key, title, better in FIGURES
               if any(key in figures for _, figures in rows)]
    header = ["method"] + [f"{title} ({'↓' if better == 'lower' else '↑'})" for _, title, better in columns]
    lines = [header]
    for name, figures in rows:
        cells = [name]
        for key, _, _ in columns:
            value = figures.get(key)
            if isinstance(value, dict) and value.get("mean") is not None:
                cells.append(f"{value['mean']:.3f} ± {value['std']:.3f}")
            elif isinstance(value, (int, float)):
                cells.append(f"{value:.3f}")
            else:
                cells.append("-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([text[0], "  ".join("-" * w for w in widths)] + text[1:])


def write_json_atomic(path, report: dict, force: bool) -> None:
    import json
    import os
    import tempfile
    from pathlib import Path

    from stepfoley.engine.errors import InvalidInputError

    path = Path(path)
    if path.exists() and not force:
        raise InvalidInputError(f"{path} already exists; choose another --json path or add --force to replace it.")
    if not path.parent.is_dir():
        raise InvalidInputError(f"The folder {path.parent} does not exist; create it or choose another --json path.")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, allow_nan=False)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        if force:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # fails if PATH appeared meanwhile: nothing of the user's is replaced
            except FileExistsError:
                raise InvalidInputError(f"{path} appeared while evaluating; choose another --json path "
                                        "or add --force to replace it.") from None
            except OSError:  # a filesystem without hard links: check, then rename
                if path.exists():
                    raise InvalidInputError(f"{path} already exists; choose another --json path or add --force.")
                os.replace(temp, path)
            else:
                os.unlink(temp)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from tqdm import tqdm

    from stepfoley.engine.errors import StepFoleyError

    if args.train_embedding:
        return _train_embedding(args)
    if not args.json:
        print("stepfoley: say where to write the figures with --json PATH (e.g. --json eval.json).",
              file=sys.stderr)
        return 2
    try:
        from stepfoley.engine.devices import choose_device
        from stepfoley.engine.evaluation.embedding import default_audio_embedding, load_audio_embedding
        from stepfoley.engine.evaluation.runner import evaluate
        from stepfoley.engine.loading import load_foley_model

        if os.path.exists(args.json) and not args.force:  # fail before minutes of work, not after
            write_json_atomic(args.json, {}, force=False)
        model = load_foley_model(weights_dir=args.weights, variant=args.model, device=choose_device(args.device))
        if model.note:
            print(f"note: {model.note}", file=sys.stderr)
        if args.embedding:
            embedding = load_audio_embedding(args.embedding, model.text_encoder)
        else:
            training_bar = []  # made on the first training step: usually the embedding is loaded, not trained

            def training_progress(done, total):
                if not training_bar:
                    training_bar.append(tqdm(total=total, desc="training the evaluation embedding", unit="step",
                                             file=sys.stderr))
                training_bar[0].n = done
                training_bar[0].refresh()
            try:
                embedding = default_audio_embedding(
                    model.text_encoder, on_message=lambda m: print(f"note: {m}", file=sys.stderr),
                    on_progress=training_progress)
            finally:
                for bar in training_bar:
                    bar.close()
        with tqdm(desc="evaluating", unit="step", file=sys.stderr) as bar:
            def progress(done, total):
                bar.total, bar.n = total, done
                bar.refresh()
            report = evaluate(model, args.scenes, args.seed, k=args.tracks, steps=args.steps, alpha=args.alpha,
                              beta=args.beta, on_progress=progress, embedding=embedding)
        write_json_atomic(args.json, report, args.force)
    except StepFoleyError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 1
    config = report["config"]
    print(f"model {config['model']}, {config['scenes']} scene(s), {config['tracks']} tracks, "
          f"{config['steps']} steps, alpha {config['alpha']}, beta {config['beta']}")
    print(format_table(report))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {args.json}")
    return 0


def _train_embedding(args: argparse.Namespace) -> int:
    import os
    import sys

    from tqdm import tqdm

    from stepfoley.engine.errors import StepFoleyError
    from stepfoley.engine.evaluation.embedding import train_audio_embedding

    if os.path.exists(args.train_embedding) and not args.force:
        print(f"stepfoley: {args.train_embedding} already exists; choose another file or add --force.",
              file=sys.stderr)
        return 1
    with tqdm(desc="training the evaluation embedding", unit="step", file=sys.stderr) as bar:
        def progress(done, total):
            bar.total, bar.n = total, done
            bar.refresh()
        try:
            report = train_audio_embedding(args.train_embedding, seed=args.seed, minutes=60.0, on_progress=progress)
        except StepFoleyError as e:
            print(f"stepfoley: {e}", file=sys.stderr)
            return 1
    checks = ", ".join(f"{k} {v:.3f}" for k, v in report["validation"].items())
    print(f"wrote {args.train_embedding} ({report['steps_done']} steps, seed {args.seed}); held-out clips: {checks}")
    return 0
