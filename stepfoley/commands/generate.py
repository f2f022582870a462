"""`stepfoley generate`: one step of the step-by-step workflow, on files."""

from __future__ import annotations

import argparse

from stepfoley.commands.runtime import add_runtime_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    from stepfoley.engine.guidance import public_methods
    from stepfoley.request import field_rule

    methods = public_methods()
    p.add_argument("video", help="the picture (mp4, mov, mkv, ...)")
    p.add_argument("start", type=float, help="region start in the video file, seconds")
    p.add_argument("end", type=float, help="region end in the video file, seconds")
    p.add_argument("caption", help='the sound to make, e.g. "footsteps on gravel"')
    p.add_argument("--existing", nargs="*", default=[], metavar="WAV",
                   help="stems already made for this region (or one bounce of them); NAG steers away from them")
    p.add_argument("--reference", default=None, metavar="WAV",
                   help="a recording the new track should sound like (method 'reference'; beta is the pull)")
    p.add_argument("--method", choices=[m.name for m in methods], default=None,
                   help="default: reference with --reference, else the model's. "
                        + "; ".join(f"{m.name}: {m.summary}" for m in methods))
    for name in ("alpha", "beta", "w1", "w2", "w3"):
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"{field_rule(name)} (default: the model's)" if name in ("alpha", "beta")
                       else field_rule(name))
    p.add_argument("--seed", type=int, default=0, help=field_rule("seed"))
    p.add_argument("--steps", type=int, default=None, help=f"{field_rule('steps')} (default: the model's)")
    p.add_argument("--negative-caption", default="", help=field_rule("negative_caption"))
    p.add_argument("--weights", default=None, metavar="DIR",
                   help="a directory of official MMAudio weights (default: the embedded mini-world model)")
    p.add_argument("--model", default=None,
                   help="model variant (small_16k, small_44k, ...; 'tiny-random' = random weights, for tests)")
    add_runtime_arguments(p)
    p.add_argument("--sample-rate", type=int, default=None, help="output rate (default: the model's)")
    p.add_argument("--format", choices=("wav24", "wav32f"), default="wav24", help=field_rule("format"))
    p.add_argument("--out", default=".", help="folder for the new stem (a new unique name is chosen)")


def request_from_arguments(args: argparse.Namespace, sample_rate: int, existing_mix: str | None = None) -> dict:
    """The protocol request these arguments describe (parsed by stepfoley.request like any other)."""
    import os

    method = args.method or ("reference" if args.reference else None)
    request = {
        "region": {"video": os.path.abspath(args.video), "file_in": args.start, "file_out": args.end},
        "caption": args.caption, "method": method, "seed": args.seed,
        "negative_caption": args.negative_caption, "existing_mix": existing_mix,
        "reference_audio": os.path.abspath(args.reference) if args.reference else None,
        "output_dir": os.path.abspath(args.out), "sample_rate": sample_rate, "format": args.format,
    }
    for name in ("alpha", "beta", "w1", "w2", "w3", "steps"):
        request[name] = getattr(args, name)
    return {k: v for k, v in request.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from tqdm import tqdm

    from stepfoley.engine.devices import share_cpu
    from stepfoley.engine.errors import StepFoleyError
    from stepfoley.engine.service import build_service
    from stepfoley.request import RequestError, parse_request

    if args.reference and args.existing:
        print("stepfoley: --reference makes a track like a recording and ignores earlier stems; "
              "leave out --existing.", file=sys.stderr)
        return 2
    try:
        # Every argument is checked before the model loads (the sample rate is the model's when
        # not given: any supported rate stands in until then).
        parse_request(request_from_arguments(args, args.sample_rate or 48000))
    except RequestError as e:
        print(f"stepfoley: {e.message}", file=sys.stderr)
        return 2
    try:
        share_cpu(args.threads)
        service = build_service(args.weights, device=args.device, model=args.model,
                                precision=args.precision, compile=args.compile)
        if service.model.note:
            print(f"note: {service.model.note}", file=sys.stderr)
        existing = None
        if args.existing:
            existing = _bounce(args.existing, service.model.sample_rate, args.out)
        try:
            request = parse_request(request_from_arguments(args, args.sample_rate or service.model.sample_rate,
                                                           existing), service.capabilities(), check_paths=True)
            bar = tqdm(total=0, desc=args.caption[:40], unit="step", file=sys.stderr)

            def progress(phase, step, total):
                bar.set_description(f"{args.caption[:32]} [{phase}]")
                bar.total = total
                bar.n = step
                bar.refresh()

            try:
                result = service(request, progress, lambda: False)
            finally:
                bar.close()
        finally:
            if existing:
                os.unlink(existing)
    except RequestError as e:
        print(f"stepfoley: {e.message}", file=sys.stderr)
        return 2
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
