"""`stepfoley generate`: one step of the step-by-step workflow, on files.

Every argument is checked before the model loads (a full MMAudio stack takes a while): the
video and the region in it, the method and the reference, the stems, where the new stem goes,
the threads, the feature cache. The --existing stems are read then (the region's length of each,
mono, within the limits of an OSC request's input audio) and handed to the service in memory, as
is the --take (its stretch, as the job uses it); the request is parsed then, once, and what only
the loaded model knows (its rate, its methods) is set and checked once it has loaded
(request.for_model).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepfoley.commands.runtime import add_runtime_arguments, same_file, say

if TYPE_CHECKING:
    import numpy as np

    from stepfoley.engine.features.cache import FeatureCache
    from stepfoley.engine.service import TakeAudio
    from stepfoley.request import GenerationRequest


TIME_FORMS = "seconds (12.5) or minutes:seconds (1:02.5)"  # every time option takes them


def seconds(text: str) -> float:
    """A time in the video file: seconds (12.5), or minutes:seconds (1:02.5) and
    hours:minutes:seconds (0:01:02.5) as a DAW or a player shows it."""
    import math

    words = text.strip().split(":")
    if "," in text:
        raise argparse.ArgumentTypeError(f"{text!r}: write seconds with a decimal point (1.5, not 1,5)")
    not_a_time = argparse.ArgumentTypeError(f"{text!r} is not a time: give {TIME_FORMS}")
    if len(words) > 3 or any(not w.strip() for w in words):
        raise not_a_time
    try:
        parts = [float(w) for w in words]
    except ValueError:
        raise not_a_time from None
    # only the seconds may have a fraction or reach 60; a minus sign only in front
    if any(not math.isfinite(v) for v in parts) or any(v < 0 for v in parts[1:]) or (
            len(parts) > 1 and (any(v != int(v) for v in parts[:-1]) or parts[-1] >= 60
                                or any(v >= 60 for v in parts[1:-1]))):
        raise not_a_time
    sign = -1.0 if words[0].strip().startswith("-") else 1.0
    total = 0.0
    for v in parts:
        total = total * 60.0 + abs(v)
    return sign * total


def add_arguments(p: argparse.ArgumentParser) -> None:
    from stepfoley.engine.guidance import public_methods
    from stepfoley.request import GUIDANCE_PARAMS, field_rule

    methods = public_methods()
    p.add_argument("video", help="the picture (mp4, mov, mkv, ...)")
    p.add_argument("start", type=seconds, help=f"region start in the video file: {TIME_FORMS}")
    p.add_argument("end", type=seconds, help="region end in the video file, as start")
    p.add_argument("caption", help='the sound to make, e.g. "footsteps on gravel"')
    p.add_argument("--existing", nargs="*", default=None, metavar="WAV",  # [] when given with no file: refused
                   help="stems already made for this region (or one bounce of them), each heard from its first "
                        "sample at START; NAG steers away from them")
    p.add_argument("--reference", default=None, metavar="WAV",
                   help="a recording the new track should sound like (method 'reference'; beta is the pull)")
    p.add_argument("--method", choices=[m.name for m in methods], default=None,
                   help="default: reference with --reference, else the model's. "
                        + "; ".join(f"{m.name}: {m.summary}" for m in methods))
    for name in GUIDANCE_PARAMS:
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"{field_rule(name)} (default: the model's)" if name in ("alpha", "beta")
                       else field_rule(name))
    p.add_argument("--seed", type=int, default=0,
                   help=field_rule("seed") + "; default 0, so the same command makes the same take again: give "
                   "another seed for another take")
    p.add_argument("--variations", type=int, default=1, metavar="N",
                   help=field_rule("variations") + "; --out must then be a folder")
    p.add_argument("--steps", type=int, default=None, help=f"{field_rule('steps')} (default: the model's)")
    p.add_argument("--take", default=None, metavar="WAV",
                   help="extend or repair this take (its first sample at START, or at --take-offset into it): "
                        "the span --regenerate is made new, the rest kept sample for sample")
    p.add_argument("--take-offset", type=seconds, default=0.0, metavar="S",
                   help=f"{field_rule('take_offset')}; given as {TIME_FORMS}")
    p.add_argument("--regenerate", default=None, metavar="A,B",
                   help=f"times from START, each {TIME_FORMS}: the span of --take made new (past the take's end: "
                        "extend; inside it: repair)")
    p.add_argument("--region", default=None, metavar="X0,Y0,X1,Y1",
                   help="picture region: " + field_rule("picture_region"))
    p.add_argument("--region-time", default=None, metavar="A,B",
                   help=f"times from START, each {TIME_FORMS}, when --region applies (default: throughout)")
    p.add_argument("--loudness-curve", default=None, metavar="T:DB,T:DB,...",
                   help="times from START and LUFS, e.g. 0:-40,4:-18,8:-30 (a time in minutes:seconds too: "
                        "1:02.5:-18): " + field_rule("loudness_curve"))
    p.add_argument("--negative-caption", default="", help=field_rule("negative_caption"))
    p.add_argument("--weights", default=None, metavar="DIR|FILE",
                   help="a directory of official MMAudio weights, or embedded weights retrained by "
                        "`stepfoley train embedded` (default: the packaged embedded mini-world model)")
    p.add_argument("--model", default=None,
                   help="model variant (small_16k, small_44k, ...; 'tiny-random' = random weights, for tests)")
    add_runtime_arguments(p)
    p.add_argument("--sample-rate", type=int, default=None,
                   help="output rate (default: the take's with --take, else the model's)")
    p.add_argument("--format", choices=("wav24", "wav32f"), default="wav24", help=field_rule("format"))
    p.add_argument("--out", default=".", metavar="FOLDER|FILE.wav",
                   help="an existing folder (the new stem gets a new unique name there) or a file name ending "
                        "in .wav (default: the current folder)")
    p.add_argument("--force", action="store_true", help="let --out FILE.wav (and --metadata) replace an existing file")
    p.add_argument("--metadata", default=None, metavar="FILE.json",
                   help="also write each stem's metadata (what the engine used: method, alpha, beta, seed, "
                        "precision, levels, ...; as the protocol's reply carries it) to this new JSON file")


@dataclass(frozen=True)
class Output:
    """Where the new stem goes: `file` in `folder` if given, else a new unique name there."""

    folder: str
    file: str | None = None


def resolve_output(out: str, force: bool) -> Output:
    """--out as a folder (an existing one) or a file (a name ending in .wav, in an existing
    folder, new unless `force`). Raises InvalidInputError."""
    import os

    from stepfoley.atomic import name_too_long
    from stepfoley.commands.runtime import is_special_file
    from stepfoley.engine.errors import InvalidInputError

    path = os.path.abspath(out)
    if os.path.isdir(path):
        return Output(path)
    if not path.lower().endswith(".wav"):
        if os.path.lexists(path):  # the video, /dev/null: it was said not to exist
            raise InvalidInputError(f"'{out}' is a file, not a folder. Give a folder, or a file name ending in .wav.")
        raise InvalidInputError(f"The output folder '{out}' does not exist. Create it, or give a file name "
                                "ending in .wav.")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise InvalidInputError(f"The folder of '{out}' ({folder}) does not exist. Create it first.")
    too_long = name_too_long(path)
    if too_long:
        raise InvalidInputError(f"--out: {too_long}")
    if is_special_file(path):
        raise InvalidInputError(f"'{out}' is not a regular file (a device or a pipe); name a .wav file to write.")
    if os.path.lexists(path) and not force:
        raise InvalidInputError(f"'{out}' already exists. Pass --force to replace it, or choose another name.")
    return Output(folder, path)


def request_from_arguments(args: argparse.Namespace, output: Output, sample_rate: int) -> dict:
    """The protocol request these arguments describe (parsed by stepfoley.request like any other)."""
    import os

    from stepfoley.request import GUIDANCE_PARAMS, MAX_NAME_HINT_CHARS

    method = args.method or ("reference" if args.reference else None)
    request = {
        "region": {"video": os.path.abspath(args.video), "file_in": args.start, "file_out": args.end},
        "caption": args.caption, "method": method, "seed": args.seed,
        "negative_caption": args.negative_caption,
        "reference_audio": os.path.abspath(args.reference) if args.reference else None,
        "output_dir": output.folder, "sample_rate": sample_rate, "format": args.format,
        # a file name: what the stem is called should it have to take a numbered name instead
        "name_hint": os.path.splitext(os.path.basename(output.file))[0][:MAX_NAME_HINT_CHARS] if output.file else None,
    }
    for name in (*GUIDANCE_PARAMS, "steps"):
        request[name] = getattr(args, name)
    controls = {
        "take": os.path.abspath(args.take) if args.take else None,
        "take_offset": args.take_offset if args.take_offset else None,
        "regenerate": _times(args.regenerate, "--regenerate", "the span's start and end, e.g. 4,8 or 1:04,1:08.5"),
        "picture_region": _numbers(args.region, "--region", 4, "x0,y0,x1,y1 as fractions of the picture, "
                                                                "e.g. 0,0,0.5,0.5 for its top left quarter"),
        "picture_region_time": _times(args.region_time, "--region-time", "the start and end, e.g. 1,3 or 1:01,1:03"),
        "loudness_curve": _curve(args.loudness_curve),
    }
    if args.variations != 1 or any(v is not None for v in controls.values()):
        # a protocol-2 request; a plain track stays a protocol-1 one, as before
        request.update(protocol=2, variations=args.variations, **controls)
    return {k: v for k, v in request.items() if v is not None}


# The request's fields (and the DAW's words) that a message about these arguments may name, as
# the command line calls them: the protocol's rules are checked once, for both.
_COMMAND_WORDS = (("region.video", "VIDEO"), ("region.file_in", "START"), ("region.file_out", "END"),
                  ("project_start", "START"),
                  ("project_end", "END"), ("picture_region_time", "--region-time"), ("picture_region", "--region"),
                  ("take_offset", "--take-offset"), ("regenerate", "--regenerate"),
                  ("loudness_curve", "--loudness-curve"), ("negative_caption", "--negative-caption"),
                  ("reference_audio", "--reference"), ("sample_rate", "--sample-rate"),
                  ("time selection", "START to END"), ("video item", "the VIDEO file"))


def in_command_words(message: str) -> str:
    """A request's message with the names it uses that the command line does not, translated
    after it: (here: region.file_in is START, ...)."""
    import re

    named = [f"{field} is {option}" for field, option in _COMMAND_WORDS
             if re.search(rf"(?<![\w.-]){re.escape(field)}(?![\w-])", message)]
    return f"{message} (here: {'; '.join(named)})" if named else message


def _numbers(text: str | None, option: str, count: int, example: str) -> list[float] | None:
    from stepfoley.request import RequestError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise RequestError(f"{option} takes {count} numbers separated by commas ({example}); got {text!r}.")
    return values


def _times(text: str | None, option: str, example: str) -> list[float] | None:
    """A start and an end separated by a comma, each a time as START is given."""
    from stepfoley.request import RequestError

    if text is None:
        return None
    words = text.split(",")
    if len(words) != 2:
        raise RequestError(f"{option} takes 2 times separated by a comma ({example}); got {text!r}.")
    try:
        return [seconds(word) for word in words]
    except argparse.ArgumentTypeError as e:  # in START's words
        raise RequestError(f"{option}: {e}") from None


def _curve(text: str | None) -> list[list[float]] | None:
    from stepfoley.request import RequestError

    if text is None:
        return None
    points = []
    for point in text.split(","):
        time, colon, level = point.rpartition(":")  # the level last: a time may hold colons (1:02.5:-18)
        try:
            lufs = float(level) if colon else None
        except ValueError:
            lufs = None
        if lufs is None:
            raise RequestError(f"--loudness-curve takes time:LUFS points separated by commas (e.g. "
                               f"0:-40,4:-18,8:-30); got {text!r}.")
        try:
            points.append([seconds(time), lufs])
        except argparse.ArgumentTypeError as e:  # in START's words
            raise RequestError(f"--loudness-curve: {e}") from None
    return points


@dataclass
class Checked:
    """The arguments, checked: what the run needs once the model is loaded."""

    output: Output
    # parsed at a stand-in rate where the model's is meant (request.for_model sets it once loaded)
    request: GenerationRequest
    existing: list[tuple[np.ndarray, int, int]]  # the --existing stems summed: (samples (1, S), rate, stems) a rate
    feature_cache: FeatureCache
    sample_rate: int | None = None  # the stem's rate when --sample-rate is not given: the take's, or the model's (None)
    take: TakeAudio | None = None  # --take as read, handed to the job: read once (600 s of stereo: 219 MiB, 1 s)


def check_arguments(args: argparse.Namespace) -> Checked:
    """Every check that needs no model, in the order a user would fix them. Raises RequestError
    or StepFoleyError with a message for the user."""
    import math
    import sys

    from stepfoley.commands.runtime import check_runtime_arguments, feature_cache_from_arguments
    from stepfoley.engine import audio_io
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.engine.input_files import check_request_paths
    from stepfoley.engine.video import check_video_region
    from stepfoley.request import MAX_VARIATIONS, SAMPLE_RATES, SHORT_INPUT_TOLERANCE_S, is_blank, parse_request

    _check_file_names(args)
    if args.method == "negative_prompt" and is_blank(args.negative_caption):
        raise InvalidInputError("--method negative_prompt steers away from the captions of the earlier layers, "
                                "which the command line is not told: give them with --negative-caption "
                                "(e.g. --negative-caption \"footsteps on gravel, rain\").")
    if args.existing == []:  # "--existing" with no file after it: a first track would be made without a word
        raise InvalidInputError("--existing names no stems: give the earlier layers' files after it (--existing "
                                "layer_1.wav layer_2.wav), or leave it out for a first track.")
    existing_stems = args.existing or []
    if args.reference and existing_stems:
        raise InvalidInputError("--reference makes a track like a recording and ignores earlier stems; "
                                "leave out --existing.")
    if len(existing_stems) > MAX_EXISTING:  # each is read whole, at its own rate, before the model loads
        raise InvalidInputError(f"--existing names {len(existing_stems)} stems; at most {MAX_EXISTING} are read. "
                                "Bounce them into fewer files (the new track hears their sum).")
    if args.method == "reference" and not args.reference:
        raise InvalidInputError("--method reference makes the track sound like a recording: give it with "
                                "--reference FILE.wav.")
    check_runtime_arguments(args)
    output = resolve_output(args.out, args.force)
    inputs = [("the video", args.video), ("--reference", args.reference), ("--take", args.take),
              *(("--existing", path) for path in existing_stems)]
    for what, path in inputs:
        if output.file and path and same_file(output.file, path):
            raise InvalidInputError(f"--out {args.out} is {what}, which the run reads: with --force the new stem "
                                    "would replace it, and an earlier layer or take is lost. Give the stem its own "
                                    "name (e.g. layer_2.wav).")
    if args.metadata is not None:
        from stepfoley.commands.runtime import check_json_path

        check_json_path(args.metadata, args.force, "--metadata", "take.json")
        if output.file and same_file(args.metadata, output.file):
            raise InvalidInputError(f"--metadata and --out name the same file, '{args.out}': the metadata would "
                                    "replace the stem. Give the metadata its own name (e.g. take.json).")
        for what, path in inputs:
            if path and same_file(args.metadata, path):
                raise InvalidInputError(f"--metadata {args.metadata} is {what}, which the run reads: with --force "
                                        "the metadata would replace it. Give the metadata its own name "
                                        "(e.g. take.json).")
    sample_rate = None
    if args.take:  # a take that cannot be read fails now, not after loading
        take_rate = audio_io.read_audio(args.take, max_seconds=0.1)[1]
    if args.take and args.sample_rate is None:
        # kept sample for sample: at the take's own rate, else the lowest stem rate above it (all
        # of the take is kept, resampled)
        sample_rate = min((r for r in SAMPLE_RATES if r >= take_rate), default=max(SAMPLE_RATES))
        if sample_rate != take_rate and take_rate <= max(SAMPLE_RATES):  # beyond: refused below
            print(f"note: the take is at {take_rate} Hz, which a stem is not written at; the stem is at "
                  f"{sample_rate} Hz, the take resampled to it (give --sample-rate to choose another)",
                  file=sys.stderr)
    if output.file and 1 < args.variations <= MAX_VARIATIONS:  # out of range: the request's own message
        raise InvalidInputError(f"--variations {args.variations} writes {args.variations} stems, each under a new "
                                f"name: give --out a folder, not the file '{args.out}'.")
    # The fields (times, guidance, rates) and the output folder; the sample rate is the
    # model's when not given: any supported rate stands in until the model is loaded.
    rate = args.sample_rate if args.sample_rate is not None else sample_rate or 48000
    request = check_request_paths(parse_request(request_from_arguments(args, output, rate)))
    region = request.region
    take = None
    if args.take:  # all of the stem's stretch, for the job (bounded by the check just made): a NaN
        # after the first 0.1 s, or an MP3 or Ogg take shorter than it keeps (their headers state
        # no length), failed only once the model had loaded
        from stepfoley.engine.service import TakeAudio

        take = TakeAudio.read(request, args.take)
    check_video_region(args.video, args.start, args.end)

    if args.reference:  # as an OSC request's input audio is read: looped or trimmed to the picture's region
        from stepfoley.engine.session import check_reference

        check_reference(*audio_io.read_input_audio(args.reference, region.duration), region.duration)
    # as on the timeline (the service varispeeds them to the picture's time): the stem's length.
    # The session hears their sum, so the stems of one rate are summed as they are read: sixteen
    # 600 s stems at 192 kHz held apart until the model loaded took 7 GiB.
    sums: dict[int, np.ndarray] = {}
    layers: dict[int, int] = {}
    for path in existing_stems:
        # a little past the region: a file that goes on is said (a bounce of the whole film, read
        # from its first sample, was heard at START and negated the wrong stretch without a word)
        samples, rate = audio_io.read_input_audio(path, region.project_duration + EXISTING_LONGER_S)
        held = audio_io.seconds_short_of(samples, rate, region.project_duration)
        if held is not None:  # heard as it lies: from START, silent after (a stem of part of the region)
            print(f"note: --existing {path} holds {held:.3f} s of the {region.project_duration:.3f} s region: it "
                  "is heard from START and is silent after (if the file was cut short, give the whole stem).",
                  file=sys.stderr)
        if samples.shape[-1] / rate > region.project_duration + SHORT_INPUT_TOLERANCE_S:
            print(f"note: --existing {path} is longer than the {region.project_duration:.3f} s region: it is heard "
                  "from its first sample at START, and what follows is left out (for a bounce of the whole "
                  "timeline, give its part from START to END).", file=sys.stderr)
        samples = samples[..., :math.ceil(region.project_duration * rate)]  # as much as read_input_audio reads
        sums[rate] = samples if rate not in sums else _summed(sums[rate], samples)
        layers[rate] = layers.get(rate, 0) + 1
    existing = [(samples, rate, layers[rate]) for rate, samples in sums.items()]
    return Checked(output, request, existing, feature_cache_from_arguments(args), sample_rate, take)


def _summed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two mono (1, S) stems played from the same start, the shorter silent after its end."""
    if a.shape[-1] < b.shape[-1]:
        a, b = b, a
    a[:, :b.shape[-1]] += b
    return a


MAX_EXISTING = 16  # --existing stems: a session's Foley layers, or a bounce of more
EXISTING_LONGER_S = 0.5  # read past the region, to say that an --existing file goes on after it


def _check_file_names(args: argparse.Namespace) -> None:
    """The paths a request carries are UTF-8 text on the wire: a name in another encoding
    (legal on Linux) is refused in the user's words, not as a protocol field."""
    import os

    from stepfoley.engine.errors import InvalidInputError

    for option, path in (("VIDEO", args.video), ("--out", os.path.abspath(args.out)), ("--reference", args.reference),
                         ("--take", args.take)):
        if not path:
            continue
        raw = os.fsencode(path)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"{option} '{raw.decode('utf-8', 'replace')}': the file or folder name is not "
                                    "UTF-8 text, which the engine needs; rename it (the characters shown as "
                                    "\ufffd).") from None


def run(args: argparse.Namespace) -> int:
    import sys

    from tqdm import tqdm

    from stepfoley.engine.devices import share_cpu
    from stepfoley.engine.errors import AudioError, StepFoleyError
    from stepfoley.engine.service import build_service
    from stepfoley.request import RequestError, for_model

    try:
        checked = check_arguments(args)
    except RequestError as e:
        print(f"stepfoley: {in_command_words(e.message)}", file=sys.stderr)
        return 2
    except StepFoleyError as e:  # the engine's words for a DAW too ("time selection", "video item")
        print(f"stepfoley: {in_command_words(str(e))}", file=sys.stderr)
        return 2
    try:
        share_cpu(args.threads)
        service = build_service(args.weights, device=args.device, model=args.model,
                                precision=args.precision, compile=args.compile, feature_cache=checked.feature_cache)
        if service.model.note:
            print(f"note: {service.model.note}", file=sys.stderr)
        # what only the model knows: its rate and the methods it offers
        rate = args.sample_rate if args.sample_rate is not None else checked.sample_rate or service.model.sample_rate
        capabilities = service.capabilities()
        request = for_model(checked.request, capabilities, rate)
        named = request.method or capabilities.defaults.method
        chosen = capabilities.method(named)
        # β counts where the method weighs it, or fills in a w2 or w3 it reads that was not given (dual)
        counts = chosen is None or "beta" in chosen.params or any(
            w in chosen.params and getattr(args, w) is None for w in ("w2", "w3"))
        if args.beta is not None and not counts:
            # taken, as a DAW's request with every weight is, but never as if it had counted
            weighing = ", ".join(m.name for m in capabilities.methods if "beta" in m.params)
            print(f"note: --beta has no effect with method {chosen.name}, which has no β (methods {weighing} "
                  "have; dual's w2 and w3 take it when not given)", file=sys.stderr)
        bar = tqdm(total=0, desc=args.caption[:40], unit="step", file=sys.stderr)

        def progress(phase, step, total):
            bar.set_description(f"{args.caption[:32]} [{phase}]")
            bar.total = total
            bar.n = step
            bar.refresh()

        try:
            # --out FILE.wav: one stem (several need a folder, checked before the model loaded),
            # named so straight from its temporary file
            result = service(request, progress, lambda: False, existing_tracks=checked.existing,
                             stem_file=checked.output.file, replace=args.force, take=checked.take)
        finally:
            bar.close()
        stems, ranking = _ranked_stems(result)
        if checked.output.file and not same_file(stems[0][0], checked.output.file):
            raise AudioError(f"'{checked.output.file}' was left untouched (it exists, or it could not be replaced); "
                             f"the new file is '{stems[0][0]}'.")
    except RequestError as e:
        print(f"stepfoley: {in_command_words(e.message)}", file=sys.stderr)
        return 2
    except StepFoleyError as e:
        print(f"stepfoley: {in_command_words(str(e))}", file=sys.stderr)
        return 1
    # the metadata first: what is said after it may meet a reader that has gone
    written = 0
    if args.metadata is not None:
        described = stems if request.loudness_curve is None else [  # a reply's datagram holds only a count
            (path, {**meta, "loudness_curve": [list(point) for point in request.loudness_curve]})
            for path, meta in stems]
        written = _write_metadata(args.metadata, described, ranking, args.force)
    for path, meta in stems:
        rank = f", rank {meta['rank']}" if len(stems) > 1 else ""  # one take: nothing ranked
        say(f"wrote {path}  ({meta['duration']:.2f} s, {meta['sample_rate']} Hz, "
            f"method {meta['method_used']}, seed {meta['seed']}{rank})")
        if meta.get("kept_untouched") is False:
            why = _why_kept_changed(meta, args, checked.take.subtype)
            say(f"note: the kept part of the take is not bit for bit the take's: {why}", sys.stderr)
        if meta.get("format_clipped_fraction"):
            say(f"note: the stem had samples over full scale (a take near it, where it was resampled or where "
                f"the new part crosses into it), which "
                f"{args.format} clips: {100 * meta['format_clipped_fraction']:.2g} % of its samples; ask for "
                "--format wav32f to keep them", sys.stderr)
    first = stems[0][1]
    if args.existing and first.get("earlier_layers_silent"):
        say("note: the --existing stems are silent over the region (each heard from its first sample at START), so "
            "the track was made as a first one: nothing was negated", sys.stderr)
    if first.get("negative_caption_heard") is False:  # a take that sounds no different must not surprise
        from stepfoley.engine.guidance import GUIDANCE_METHODS

        # the weight of the branch it replaces: w1 for the methods that take their own (dual), else alpha
        method = GUIDANCE_METHODS.get(first["method_used"])
        weight = "w1" if method is not None and "w1" in method.params else "alpha"
        say(f"note: --negative-caption had no effect: method {first['method_used']} at {weight} {first[weight]:g} "
            f"gives it no weight (it is heard with --method negative_prompt, or at --{weight} above 1)", sys.stderr)
    if len(stems) > 1:
        say(f"ranked by {ranking['ranked_by']}: {ranking['reason']}")
    if args.metadata is not None and written == 0:
        say(f"wrote {args.metadata}")
    return written


def _ranked_stems(result: dict) -> tuple[list[tuple[str, dict]], dict]:
    """A job's stems, best first, as (path, metadata), and their ranking ({"ranked_by",
    "reason"}): one shape whatever the request's protocol. A plain track's job (protocol 1,
    whose reply the protocol keeps as it was) made one take, ranked here as a protocol-2 job
    ranks its one take (rank 1, nothing to rank), so that a script reads every --metadata file
    the same way."""
    from stepfoley.engine.ranking import one_take

    if "stems" in result:
        return [(s["stem_path"], s["metadata"]) for s in result["stems"]], result["ranking"]
    ranking = one_take()
    return ([(result["stem_path"], {**result["metadata"], "rank": 1, "ranking": ranking.figures[0]})],
            ranking.to_json())


def _why_kept_changed(meta: dict, args: argparse.Namespace, take_subtype: str | None) -> str:
    """Why a stem's kept part is not the take's own samples (its metadata's kept_untouched is
    false), and what keeps them: one cause, not a list of maybes (`take_subtype`: the take
    file's sample format, so that a format is not advised that cannot keep it either)."""
    from stepfoley.request import SAMPLE_RATES

    take_rate = meta.get("take_sample_rate")
    if take_rate is not None and take_rate != meta["sample_rate"]:
        keeps = (f"--sample-rate {take_rate} keeps it" if take_rate in SAMPLE_RATES
                 else "no stem is written at the take's rate")  # --sample-rate 12000 is refused
        return f"it was resampled from the take's {take_rate} Hz to {meta['sample_rate']} Hz ({keeps})"
    if args.format != "wav32f" and take_subtype not in ("PCM_32", "DOUBLE"):
        return f"its samples do not fit {args.format} (--format wav32f keeps a float take's)"
    return "the take holds 32-bit integer or 64-bit float samples, which no format StepFoley writes holds exactly"


def _write_metadata(path: str, stems: list, ranking: dict, force: bool) -> int:
    """{"stems": [{"stem_path", "metadata"}, ...], "ranking"}, best first, each stem's metadata
    with its rank and ranking figures: written whole or not at all."""
    import json
    import os
    import sys

    from stepfoley.atomic import write_text_atomically

    report = {"stems": [{"stem_path": os.fspath(p), "metadata": m} for p, m in stems], "ranking": ranking}
    text = json.dumps(report, indent=1, default=str) + "\n"
    try:
        write_text_atomically(path, text, replace=force)
    except OSError as e:  # the stems are written; only the sidecar is missing
        say(f"stepfoley: the stems are written, but not the metadata file '{path}' ({e.strerror or e}).", sys.stderr)
        return 1
    return 0
