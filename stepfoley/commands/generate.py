"""`stepfoley generate`: one step of the step-by-step workflow, on files."""

from __future__ import annotations

import argparse

from stepfoley.commands.runtime import add_runtime_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="the picture (mp4, mov, mkv, ...)")
    p.add_argument("start", type=float, help="region start in the video file, seconds")
    p.add_argument("end", type=float, help="region end in the video file, seconds")
    p.add_argument("caption", help='the sound to make, e.g. "footsteps on gravel"')
    p.add_argument("--existing", nargs="*", default=[], metavar="WAV",
                   help="stems already made for this region (or one bounce of them); NAG steers away from them")
    p.add_argument("--reference", default=None, metavar="WAV",
                   help="a recording the new track should sound like (method 'reference'; beta is the pull)")
    p.add_argument("--method", choices=("nag", "independent", "negative_prompt", "reference"), default=None,
                   help="default: reference with --reference, else nag")
    p.add_argument("--alpha", type=float, default=4.5, help="text/video guidance strength (CFG)")
    p.add_argument("--beta", type=float, default=1.5, help="negative audio guidance strength (or pull toward --reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--negative-caption", default=None, help="for --method negative_prompt")
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="a directory of official MMAudio weights (default: the embedded mini-world model)")
    p.add_argument("--model", default=None,
                   help="model variant (small_16k, small_44k, ...; 'tiny-random' = random weights, for tests)")
    add_runtime_arguments(p)
    p.add_argument("--sample-rate", type=int, default=None, help="output rate (default: the model's)")
    p.add_argument("--format", choices=("wav24", "wav32f"), default="wav24")
    p.add_argument("--out", default=".", help="folder for the new stem (a new unique name is chosen)")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from tqdm import tqdm

    from stepfoley.engine.errors import StepFoleyError
    from stepfoley.engine.service import build_service

    method = args.method or ("reference" if args.reference else "nag")
    if (method == "reference") != bool(args.reference):
        print("stepfoley: --method reference and --reference WAV go together.", file=sys.stderr)
        return 2
    if args.reference and args.existing:
        print("stepfoley: --reference makes a track like a recording and ignores earlier stems; "
              "leave out --existing.", file=sys.stderr)
        return 2
    try:
        service = build_service(args.weights, device=args.device, model=args.model,
                                precision=args.precision, compile=args.compile)
        if service.model.note:
            print(f"note: {service.model.note}", file=sys.stderr)
        existing = None
        if args.existing:
            existing = _bounce(args.existing, service.model.sample_rate, args.out)
        request = {
            "region": {"video": os.path.abspath(args.video), "file_in": args.start, "file_out": args.end,
                       "playrate": 1.0},
            "caption": args.caption, "method": method, "alpha": args.alpha, "beta": args.beta,
            "seed": args.seed, "steps": args.steps, "negative_caption": args.negative_caption,
            "existing_mix": existing,
            "reference_audio": os.path.abspath(args.reference) if args.reference else None, "output_dir": os.path.abspath(args.out),
            "sample_rate": args.sample_rate or service.model.sample_rate, "format": args.format,
        }
        bar = tqdm(total=args.steps, desc=args.caption[:40], unit="step", file=sys.stderr)

        def progress(step, total):
            bar.total = total
            bar.n = step
            bar.refresh()

        try:
            result = service(request, progress, lambda: False)
        finally:
            bar.close()
            if existing:
                os.unlink(existing)
    except StepFoleyError as e:
        print(f"stepfoley: {e}", file=sys.stderr)
        return 1
    meta = result["metadata"]
    print(f"wrote {result['stem_path']}  ({meta['duration']:.2f} s, {meta['sample_rate']} Hz, "
          f"method {meta['method_used']}, seed {meta['seed']})")
    return 0


def _bounce(paths: list[str], sample_rate: int, folder: str) -> str:
    """Sum the given stems into one temporary WAV, as a DAW bounce would."""
    from stepfoley.engine import audio_io, mixing

    tracks = [audio_io.read_audio(p) for p in paths]
    length = max(int(round(s.shape[-1] * sample_rate / sr)) for s, sr in tracks)
    path = audio_io.unique_path(folder, ".stepfoley_existing_mix")
    audio_io.write_wav_atomic(path, mixing.mix_tracks(tracks, sample_rate, length), sample_rate, subtype="FLOAT")
    return str(path)
