"""The generation request, defined once: its fields, their bounds and units, and the one parser
that turns a JSON object (from OSC, the command line or a test) into a `GenerationRequest`.
Every layer after the parser trusts the typed request; none of them checks a field again.

A guidance field the request leaves out (method, alpha, beta, steps, w1-w3) means "the loaded
model's default": the engine publishes its defaults, methods and these bounds as `Capabilities`
(in /status), so a DAW dialog shows them instead of keeping its own copies.

Pure Python on purpose (no torch): the client imports this inside a DAW. Nothing here looks at
the files a request names: the engine does, before /accepted (engine.input_files).
docs/osc-protocol.md's field table is `markdown_table()`; tests/test_request.py keeps them equal.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import unicodedata
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

# The newest protocol this engine speaks; it answers every version in SUPPORTED_PROTOCOLS in
# that version's terms. A request that does not say is a version-1 request (clients older
# than version 2 did not always send it).
PROTOCOL_VERSION = 2
SUPPORTED_PROTOCOLS = (1, 2)

# --- bounds: the one place each is written ---------------------------------------------------
MAX_CAPTION_CHARS = 1000
MAX_PREVIOUS_CAPTIONS = 64
MAX_PATH_CHARS = 4096
MAX_NAME_HINT_CHARS = 200
# The longest stem file name the engine writes (engine.audio_io: a name of at most 48 ASCII
# characters, then _NNN and .wav): an output_dir must leave room for it and its temp name.
MAX_STEM_FILE_NAME_BYTES = 64
MIN_REGION_SECONDS = 1.0  # one Synchformer segment is 0.64 s: below a second there is no picture to follow
MAX_REGION_SECONDS = 600.0
# Region lengths are differences of DAW floats: 0.9 .. 1.9 is 0.9999999999999999 s.
REGION_TOLERANCE_S = 1e-6
MIN_PLAYRATE, MAX_PLAYRATE = 0.01, 100.0
# Project times and source-file times: a week of timeline. Far more than any project or picture,
# and small enough that a float still resolves a tenth of a nanosecond there (at 1e17 s its step
# is 16 s, so start + the picture's length was start again and the stem lasted 0 s).
MAX_TIMELINE_SECONDS = 7 * 24 * 3600.0
# The stem (project_end - project_start on the timeline) and the one file a job writes. The
# byte cap bounds the engine's memory too: post-processing holds several copies of the stem.
MAX_STEM_SECONDS = 600.0
MAX_STEM_BYTES = 128 * 2**20
BYTES_PER_SAMPLE = {"wav24": 3, "wav32f": 4}
WAV_HEADER_BYTES = 4096  # room for any header soundfile writes (44 bytes for wav24, 80 for wav32f)
# existing_mix and reference_audio: the file on disk, and the rate it may be read at. Only the
# region's stretch is read (MAX_STEM_SECONDS at most), downmixed to mono as it is read.
MAX_INPUT_AUDIO_BYTES = 2**30
# An input read for a stretch of the timeline may be this much shorter and still cover it (the
# rest is silence): a DAW's bounce rounds its length to whole samples.
SHORT_INPUT_TOLERANCE_S = 0.01
MAX_INPUT_SAMPLE_RATE = 192000
# The take is read whole, every channel, as 32-bit floats, from take_offset for the stem's length
# (MPEG audio from its start: it is decoded up to there; engine.service.TakeAudio.read); this bounds
# that array (the engine's memory).
MAX_TAKE_DECODED_BYTES = 2**30
DECODED_BYTES_PER_SAMPLE = 4  # float32
MAX_STEPS = 200
MAX_GUIDANCE = 100.0  # alpha, beta
MAX_WEIGHT = 100.0  # |w1|, |w2|, |w3| of Eq. A6
MAX_SEED = 2**63 - 1
# Variations of one request are sampled as one batch: the cap bounds the batch's memory, the
# job's files (each stem at most MAX_STEM_BYTES) and the final reply, which names every stem.
MAX_VARIATIONS = 8
# Extend and repair: the span made new is at least this long (a seam's crossfade each side
# needs room), and the take must keep something (else it is a plain generation).
MIN_REGENERATE_SECONDS = 0.1
# What the take keeps, before and after the span together, at least: less rounds to no sample
# at some rate (a selection one 96 kHz sample into an item replaced the whole take).
MIN_KEPT_SECONDS = 0.001
# Picture region: when it applies, in seconds of picture, at least the longest gap between the
# frames the slowest picture features read (8 fps: MMAudio's CLIP; the embedded model's
# appearance takes them from 25 fps frames, up to 4 frames apart), or no frame is seen cropped.
MIN_PICTURE_REGION_SECONDS = 0.16
# Picture region: each side at least this fraction of the picture (3 pixels of the embedded
# model's 64-pixel frames); anything smaller leaves no picture to follow.
MIN_PICTURE_REGION = 0.05
# Loudness curve: points a DAW envelope can send within one request datagram (about 20 bytes
# each as JSON), over the range a stem can usefully sit in (BS.1770's absolute gate to full scale).
MAX_LOUDNESS_POINTS = 128
MIN_CURVE_LUFS, MAX_CURVE_LUFS = -70.0, 0.0
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
FORMATS = ("wav24", "wav32f")
_METHOD_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Parameters of the guided velocity a method may read (GuidanceMethod.params in the engine).
GUIDANCE_PARAMS = ("alpha", "beta", "w1", "w2", "w3")
_WEIGHTS = GUIDANCE_PARAMS[2:]  # w1-w3, the weights of Eq. A6 (method dual's own)


def stem_bytes(seconds: float, sample_rate: int, format: str, channels: int = 1) -> int:
    """The size of a stem file: what a job writes (a new track is mono; an extended or repaired
    take keeps the take's channels)."""
    return math.ceil(seconds * sample_rate) * BYTES_PER_SAMPLE[format] * channels + WAV_HEADER_BYTES


class RequestError(ValueError):
    """A request that breaks the rules below; the message names the field and what to do."""

    code = "invalid_request"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- the typed request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoRegion:
    """The picture under the DAW's time selection: file times, and where it sits in the project."""

    video: str  # absolute path, only read
    file_in: float  # seconds in the source file
    file_out: float
    playrate: float = 1.0  # the picture's speed on the timeline: duration / project_duration
    project_start: float = 0.0  # project seconds
    project_end: float = 0.0  # project seconds; the stem lasts project_end - project_start

    @property
    def duration(self) -> float:
        """Seconds of picture (file time)."""
        return self.file_out - self.file_in

    @property
    def project_duration(self) -> float:
        """Seconds the stem lasts on the timeline."""
        return self.project_end - self.project_start


@dataclass(frozen=True)
class GenerationRequest:
    """One new track. None in a guidance field means the model's default (Capabilities)."""

    region: VideoRegion
    caption: str
    output_dir: str
    method: str | None = None
    alpha: float | None = None
    beta: float | None = None
    w1: float | None = None
    w2: float | None = None
    w3: float | None = None
    seed: int = 0
    steps: int | None = None
    negative_caption: str = ""
    previous_captions: tuple[str, ...] = ()
    existing_mix: str | None = None
    reference_audio: str | None = None
    sample_rate: int = 48000
    format: str = "wav24"
    name_hint: str = ""
    variations: int = 1
    take: str | None = None  # extend and repair: the take, its first sample at project_start
    regenerate: tuple[float, float] | None = None  # seconds from project_start: the span made new
    take_offset: float = 0.0  # seconds into the take file where project_start falls
    picture_region: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 of the picture, 0..1
    picture_region_time: tuple[float, float] | None = None  # seconds from project_start; None: throughout
    loudness_curve: tuple[tuple[float, float], ...] | None = None  # (seconds from project_start, dB)
    protocol: int = 1

    def to_json(self) -> dict:
        """The request as protocol JSON (None fields left out: they mean "default")."""
        newer = {f.name for f in FIELDS if f.since > self.protocol}  # a v1 request stays a v1 request
        out = {k: v for k, v in asdict(self).items() if v is not None and k not in newer}
        out["previous_captions"] = list(self.previous_captions)
        for name in ("regenerate", "picture_region", "picture_region_time"):
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        if self.loudness_curve is not None:
            out["loudness_curve"] = [list(point) for point in self.loudness_curve]
        return out



def resolve_guidance(defaults: "GuidanceDefaults", method: str | None = None, alpha: float | None = None,
                     beta: float | None = None, w1: float | None = None, w2: float | None = None,
                     w3: float | None = None, steps: int | None = None) -> dict:
    """The guidance fields of a track with the model's defaults filled in where they are None."""
    alpha = defaults.alpha if alpha is None else alpha
    beta = defaults.beta if beta is None else beta
    return {
        "method": method or defaults.method, "alpha": alpha, "beta": beta,
        # Eq. A6 with w1 = alpha, w2 = alpha + beta, w3 = beta is Eq. 9 (NAG)
        "w1": alpha if w1 is None else w1, "w2": alpha + beta if w2 is None else w2,
        "w3": beta if w3 is None else w3,
        "steps": defaults.steps if steps is None else steps,
    }


# --- what the engine publishes -------------------------------------------------------------------


@dataclass(frozen=True)
class GuidanceDefaults:
    """A model's own guidance defaults (the paper's values for MMAudio)."""

    method: str = "nag"
    alpha: float = 4.5
    beta: float = 1.5
    steps: int = 25
    # How far a guided step's level is moved toward the conditional branch's, 0 (not at all) to 1
    # (engine.sampler, `level_anchor`): for a latent where guidance raises the level (the embedded
    # model's log-mel). 0 for MMAudio, whose VAE latent has no level to read.
    level_anchor: float = 0.0

    def __post_init__(self):
        anchor = self.level_anchor
        if not isinstance(anchor, (int, float)) or isinstance(anchor, bool) or not 0.0 <= anchor <= 1.0:
            raise ValueError(f"A model's level anchor must be a number from 0 to 1, got {anchor!r}.")


@dataclass(frozen=True)
class MethodInfo:
    """A guidance method as a client sees it (the engine's registry entry, without the math)."""

    name: str
    summary: str
    params: tuple[str, ...]  # the guidance fields it reads
    audio: str | None = None  # "existing": hears existing_mix; "reference": needs reference_audio
    available: bool = True
    unavailable_reason: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What the loaded model offers: its defaults, its methods, and the request bounds."""

    model: str
    defaults: GuidanceDefaults
    methods: tuple[MethodInfo, ...]
    sample_rate: int = 0  # the model's own rate; stems are resampled to the request's

    def method(self, name: str) -> MethodInfo | None:
        return next((m for m in self.methods if m.name == name), None)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "sample_rate": self.sample_rate,
            "defaults": asdict(self.defaults),
            "methods": [{**asdict(m), "params": list(m.params)} for m in self.methods],
            "bounds": BOUNDS,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Capabilities":
        methods = tuple(MethodInfo(**{**m, "params": tuple(m["params"])}) for m in data["methods"])
        return cls(data["model"], GuidanceDefaults(**data["defaults"]), methods, data.get("sample_rate", 0))


# Published with the capabilities so no client keeps its own copy.
BOUNDS = {
    "alpha": [0.0, MAX_GUIDANCE], "beta": [0.0, MAX_GUIDANCE],
    "w1": [-MAX_WEIGHT, MAX_WEIGHT], "w2": [-MAX_WEIGHT, MAX_WEIGHT], "w3": [-MAX_WEIGHT, MAX_WEIGHT],
    "steps": [1, MAX_STEPS], "seed": [0, MAX_SEED], "variations": [1, MAX_VARIATIONS],
    "regenerate_seconds": MIN_REGENERATE_SECONDS, "picture_region_size": MIN_PICTURE_REGION,
    "picture_region_seconds": MIN_PICTURE_REGION_SECONDS,
    "loudness_curve_points": MAX_LOUDNESS_POINTS, "loudness_curve_db": [MIN_CURVE_LUFS, MAX_CURVE_LUFS],
    "caption_chars": MAX_CAPTION_CHARS, "previous_captions": MAX_PREVIOUS_CAPTIONS,
    "path_chars": MAX_PATH_CHARS, "name_hint_chars": MAX_NAME_HINT_CHARS,
    "region_seconds": [MIN_REGION_SECONDS, MAX_REGION_SECONDS], "playrate": [MIN_PLAYRATE, MAX_PLAYRATE],
    "sample_rates": list(SAMPLE_RATES), "formats": list(FORMATS),
    "stem_seconds": MAX_STEM_SECONDS, "stem_bytes": MAX_STEM_BYTES,
    "input_audio_bytes": MAX_INPUT_AUDIO_BYTES, "input_sample_rate": MAX_INPUT_SAMPLE_RATE,
    "take_decoded_bytes": MAX_TAKE_DECODED_BYTES, "timeline_seconds": MAX_TIMELINE_SECONDS,
}


# --- the field table: docs, CLI help and the parser read it -------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    name: str
    json_type: str
    default: str  # as the docs show it
    rule: str
    since: int = 1  # the protocol version that introduced it: an older request may not carry it


def _range(low, high) -> str:
    return f"{low:g}-{high:g}"


def mib(size: int) -> str:
    """A size in bytes as a message shows it."""
    return f"{size / 2**20:g} MiB"


def _stem_capacity() -> str:
    """What MAX_STEM_BYTES allows, in words: the highest rate at which a stem of MAX_STEM_SECONDS
    fits in either format, and how long a stem may be at the highest rate."""
    fits = max(r for r in SAMPLE_RATES if all(stem_bytes(MAX_STEM_SECONDS, r, f) <= MAX_STEM_BYTES for f in FORMATS))
    top = SAMPLE_RATES[-1]
    longest = ", ".join(f"{(MAX_STEM_BYTES - WAV_HEADER_BYTES) // (top * BYTES_PER_SAMPLE[f])} s in {f}"
                        for f in FORMATS)
    return f"{MAX_STEM_SECONDS:g} s fits at up to {fits} Hz; at {top} Hz, {longest}"


_INPUT_AUDIO_RULE = (f"only read, and only the region's stretch; at most {mib(MAX_INPUT_AUDIO_BYTES)} on disk and "
                     f"{MAX_INPUT_SAMPLE_RATE} Hz")


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("protocol", "int", "1", "1 or 2: the version the request is written in, which decides the shape of "
              "the final reply; the fields marked *(v2)* need 2"),
    FieldSpec("region.video", "string", "required", "absolute path of the picture file (only read)"),
    FieldSpec("region.file_in", "number (s)", "required",
              f"source-file time where the region starts, 0-{MAX_TIMELINE_SECONDS:g} (7 days)"),
    FieldSpec("region.file_out", "number (s)", "required",
              f"source-file time where it ends; the region is {MIN_REGION_SECONDS:g}-{MAX_REGION_SECONDS:g} s "
              f"long (±{REGION_TOLERANCE_S:g} s)"),
    FieldSpec("region.playrate", "number", "1.0", f"{_range(MIN_PLAYRATE, MAX_PLAYRATE)}; the item's playback rate, which sets "
              "`project_end` when that is left out (with it, the picture plays at the speed the two ends give, and "
              "the stem's metadata `playrate` says that speed)"),
    FieldSpec("region.project_start", "number (s)", "0.0",
              f"project time where the stem is placed, 0-{MAX_TIMELINE_SECONDS:g} (7 days)"),
    FieldSpec("region.project_end", "number (s)", "`project_start + (file_out - file_in) / playrate`",
              f"> `project_start`, ≤ {MAX_TIMELINE_SECONDS:g}; the stem lasts `project_end - project_start` (the "
              f"picture is varispeeded to it, at {MIN_PLAYRATE:g} to {MAX_PLAYRATE:g} times its speed, as `playrate` "
              f"allows), at most {MAX_STEM_SECONDS:g} s; with `take`, as long as the picture "
              f"(`file_out - file_in`, ±{REGION_TOLERANCE_S:g} s)"),
    FieldSpec("caption", "string", "required", f"the sound to make; not blank (only spaces and invisible characters "
              f"are), ≤ {MAX_CAPTION_CHARS} characters"),
    FieldSpec("method", "string", "the model's", "a guidance method the engine lists in `capabilities.methods`"),
    FieldSpec("alpha", "number", "the model's", f"{_range(0, MAX_GUIDANCE)}, the CFG scale (α of Eq. 9)"),
    FieldSpec("beta", "number", "the model's",
              f"{_range(0, MAX_GUIDANCE)}, the NAG scale (β of Eq. 9), or the pull toward the reference"),
    FieldSpec("w1", "number", "`alpha`", f"±{MAX_WEIGHT:g}; video weight of Eq. A6, method `dual` only"),
    FieldSpec("w2", "number", "`alpha + beta`", f"±{MAX_WEIGHT:g}; text weight of Eq. A6, method `dual` only"),
    FieldSpec("w3", "number", "`beta`", f"±{MAX_WEIGHT:g}; negative-audio weight of Eq. A6, method `dual` only"),
    FieldSpec("seed", "int", "0", f"0-{MAX_SEED}: below 2^32 the starting noise is MMAudio's for that seed (torch's "
              "CPU generator); from 2^32 on, numpy's PCG64 seeded with all 64 bits, so every seed is its own"),
    FieldSpec("steps", "int", "the model's", f"1-{MAX_STEPS} sampling steps"),
    FieldSpec("negative_caption", "string or null", '`""`',
              f"≤ {MAX_CAPTION_CHARS} characters; sounds to steer away from: heard by `negative_prompt` at any α, "
              "by the other methods only at α above 1 (w1 for `dual`; the metadata's `negative_caption_heard` "
              "says); `negative_prompt` uses the previous captions, joined with \", \", when it is empty or blank: "
              "each once, in order, as many as the text encoder hears whole (75 tokens; the metadata's "
              "`previous_captions_left_out` counts the others)"),
    FieldSpec("previous_captions", "list of strings", "`[]`",
              f"at most {MAX_PREVIOUS_CAPTIONS}, each ≤ {MAX_CAPTION_CHARS} characters: the captions of the "
              "layers already on the timeline (those in `existing_mix`, which a method that hears no audio, "
              "such as `negative_prompt`, does without)"),
    FieldSpec("existing_mix", "string or null", "null",
              "absolute path of a WAV of the tracks already on the timeline over the region, starting at "
              f"`project_start` and as long as the stem (up to {SHORT_INPUT_TOLERANCE_S * 1000:g} ms shorter is taken, the rest "
              "silence, as a bounce rounded to whole samples; a job given less fails: `bad_audio`; any rate and channel "
              f"count; {_INPUT_AUDIO_RULE}). Null for the first track: plain CFG, "
              "as for a mix silent over the region (below -70 LUFS, its offset taken out)"),
    FieldSpec("reference_audio", "string or null", "null",
              "absolute path of a WAV to sound like (any rate and channels, at least 0.1 s long, and heard: above "
              "−70 LUFS looped, its offset taken out, at its rate and at the model's, else the job fails with "
              "`invalid_input`; looped or "
              f"trimmed to the region; {_INPUT_AUDIO_RULE}); required by the methods whose `audio` is `reference`, "
              "refused by the others"),
    FieldSpec("output_dir", "string", "required", "absolute path of an **existing, writable folder**"),
    FieldSpec("sample_rate", "int", "48000",
              "the project's rate (the REAPER actions send the take's own for extend and repair, so that "
              "its kept part comes back sample for sample): one of " + ", ".join(str(r) for r in SAMPLE_RATES)),
    FieldSpec("format", "string", "`wav24`",
              f"`wav24` (24-bit PCM) or `wav32f` (32-bit float); the stem file is at most {mib(MAX_STEM_BYTES)} "
              f"({_stem_capacity()})"),
    FieldSpec("name_hint", "string", '`""` (= caption)',
              f"≤ {MAX_NAME_HINT_CHARS} characters; basis of the stem's file name"),
    FieldSpec("variations", "int", "1",
              f"1-{MAX_VARIATIONS}: takes with seeds `seed`, `seed + 1`, ... (the last at most {MAX_SEED}) sampled "
              "together in one job, each written as its own stem and named in the one final reply, best first",
              since=2),
    FieldSpec("take", "string or null", "null",
              "extend or repair: absolute path of a WAV of the take, its first sample at `project_start` (any rate "
              f"and channel count; only read, at most {mib(MAX_INPUT_AUDIO_BYTES)} on disk and {MAX_INPUT_SAMPLE_RATE} Hz; "
              "read from `take_offset` for the stem's length (MP3 from its start), "
              f"every channel, at most {mib(MAX_TAKE_DECODED_BYTES)} as 32-bit floats); the stem is this take with "
              "`regenerate` made new, the rest sample for sample (at the take's rate and channels when "
              "`sample_rate` is the take's; its size counts the take's channels); needs `regenerate` and a stem as "
              "long as the picture (the picture at 1x on the timeline)", since=2),
    FieldSpec("take_offset", "number (s)", "0.0",
              "0 to `timeline_seconds` (a week); where `project_start` falls in `take` (a DAW item's start offset "
              "into its source file, an hour into a long recording as well); only with `take`", since=2),
    FieldSpec("regenerate", "[start, end] or null", "null",
              "seconds from `project_start`: the span of `take` made new, continuing the audio around it and "
              f"synced to the picture; at least {MIN_REGENERATE_SECONDS:g} s, within the stem, and not all of it: "
              f"at least {MIN_KEPT_SECONDS * 1000:g} ms of the take kept, before and after it together (past the "
              "take's end: extend; inside it: repair); only with `take`", since=2),
    FieldSpec("picture_region", "[x0, y0, x1, y1] or null", "null",
              "the part of the picture the sound comes from, as fractions of its width and height (0, 0 = top "
              f"left; each side at least {MIN_PICTURE_REGION:g}): the video features see only it (MMAudio's CLIP "
              "and Synchformer, and the embedded model's features, see the picture cropped to it)", since=2),
    FieldSpec("picture_region_time", "[start, end] or null", "null (throughout)",
              f"seconds from `project_start`, within the stem, covering at least {MIN_PICTURE_REGION_SECONDS:g} s of "
              "picture (the longest gap between the frames the picture features read, so that one is seen cropped): "
              "when `picture_region` applies; the rest of the picture is seen whole; only with `picture_region`",
              since=2),
    FieldSpec("loudness_curve", "list of [seconds, dB] or null", "null",
              f"1-{MAX_LOUDNESS_POINTS} points, seconds from `project_start` (increasing, within the stem) and "
              f"momentary loudness (400 ms) in dB LUFS ({MIN_CURVE_LUFS:g} to {MAX_CURVE_LUFS:g}), straight lines between "
              "them and level beyond the ends: the stem follows it in time and absolute level (no loudness "
              "normalization; true-peak limited), applied as gain automation, and by a model with a loudness "
              "ControlNet (the embedded one) also followed while generating; not with `take`", since=2),
)

_TOP_FIELDS = tuple(dict.fromkeys(f.name.split(".", 1)[0] for f in FIELDS))
_REGION_FIELDS = tuple(f.name.split(".", 1)[1] for f in FIELDS if f.name.startswith("region."))


def markdown_table() -> str:
    """The request table of docs/osc-protocol.md."""
    lines = ["| field | type | default | rule |", "|-------|------|---------|------|"]
    lines += [f"| `{f.name}`{' *(v2)*' if f.since > 1 else ''} | {f.json_type} | {f.default} | {f.rule} |"
              for f in FIELDS]
    return "\n".join(lines)


def field_rule(name: str) -> str:
    """The rule of one field, for command-line help."""
    return next(f.rule for f in FIELDS if f.name == name)


# --- the parser ----------------------------------------------------------------------------------


# Python refuses an integer of over 4300 digits with a hint about sys.set_int_max_str_digits,
# no word for a sound designer; one under this bound reaches the field's own check, which names it.
MAX_JSON_INT_DIGITS = 4000


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:  # json.loads keeps the last silently: a request would not say what it seems to
            raise ValueError(f"the field {reprlib.repr(key)} is given twice")
        seen[key] = value
    return seen


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"a number has more than {MAX_JSON_INT_DIGITS} digits")
    return int(text)


def request_json(text: str | bytes) -> Any:
    """A request's JSON text parsed as a request is read everywhere (the engine, `send`): a
    field given twice, or a number of absurd length, is refused (ValueError saying which)."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_bounded_int)


def parse_request(data: Any, capabilities: Capabilities | None = None) -> GenerationRequest:
    """Check a decoded JSON request and return it typed. With `capabilities` (the engine side)
    the method must be one the loaded model offers. No file is looked at: the engine checks the
    files it names next (engine.input_files.check_request_paths). Raises RequestError naming the
    field."""
    if not isinstance(data, dict):
        _invalid("The request must be a JSON object ({...}).")
    _reject_unknown(data, _TOP_FIELDS, "request")
    _require(data, ("region", "caption", "output_dir"), "request")
    protocol = data.get("protocol", 1)
    if isinstance(protocol, float) and protocol in SUPPORTED_PROTOCOLS:
        _invalid(_not_whole("protocol", protocol))
    if not is_whole(protocol) or protocol not in SUPPORTED_PROTOCOLS:
        _invalid(f"This engine speaks protocol {' and '.join(map(str, SUPPORTED_PROTOCOLS))}, the request says "
                 f"{_show(protocol)}. Update the REAPER scripts or the engine so they match.")
    newer = [f.name for f in FIELDS if f.since > protocol and f.name in data]
    if newer:
        _invalid(f"{', '.join(newer)} came with protocol {max(f.since for f in FIELDS if f.name in newer)}; "
                 f"the request says protocol {protocol}. Send \"protocol\": {PROTOCOL_VERSION} with it.")

    method = _optional(data, "method", _method_name)
    info = _method_info(method, capabilities)
    weights = {name: _optional(data, name, lambda v, n: _number(v, n, -MAX_WEIGHT, MAX_WEIGHT))
               for name in _WEIGHTS}
    _check_weights_read([name for name, value in weights.items() if value is not None], method, info, capabilities)
    reference = _optional(data, "reference_audio", _path)
    _check_audio_heard(info, reference, data.get("existing_mix"))

    previous = data.get("previous_captions", [])
    if not isinstance(previous, list) or len(previous) > MAX_PREVIOUS_CAPTIONS:
        _invalid(f"previous_captions must be a list of at most {MAX_PREVIOUS_CAPTIONS} captions.")

    request = GenerationRequest(
        protocol=protocol,
        region=_region(data["region"]),
        caption=_text(data["caption"], "caption", MAX_CAPTION_CHARS, blank_ok=False),
        output_dir=_path(data["output_dir"], "output_dir"),
        method=method,
        alpha=_optional(data, "alpha", lambda v, n: _number(v, n, 0.0, MAX_GUIDANCE)),
        beta=_optional(data, "beta", lambda v, n: _number(v, n, 0.0, MAX_GUIDANCE)),
        **weights,
        seed=_integer(data.get("seed", 0), "seed", 0, MAX_SEED),
        steps=_optional(data, "steps", lambda v, n: _integer(v, n, 1, MAX_STEPS)),
        # null as none: a stem's metadata says null for none, and a request made again from it was refused
        negative_caption=_optional(data, "negative_caption",
                                   lambda v, n: _caption_or_nothing(_text(v, n, MAX_CAPTION_CHARS))) or "",
        previous_captions=tuple(_caption_or_nothing(_text(c, "previous_captions[]", MAX_CAPTION_CHARS))
                                for c in previous),
        existing_mix=_optional(data, "existing_mix", _path),
        reference_audio=reference,
        sample_rate=_choice(data.get("sample_rate", 48000), "sample_rate", SAMPLE_RATES,
                            "the project's rate"),
        format=_choice(data.get("format", "wav24"), "format", FORMATS, "the stem's file format"),
        name_hint=_text(data.get("name_hint", ""), "name_hint", MAX_NAME_HINT_CHARS),
        variations=_integer(data.get("variations", 1), "variations", 1, MAX_VARIATIONS),
        take=_optional(data, "take", _path),
        take_offset=_number(data.get("take_offset", 0.0), "take_offset", 0.0, MAX_TIMELINE_SECONDS),
        regenerate=_optional(data, "regenerate", _span),
        picture_region=_optional(data, "picture_region", _rectangle),
        picture_region_time=_optional(data, "picture_region_time", _span),
        loudness_curve=_optional(data, "loudness_curve", _curve),
    )
    _check_continuation(request)
    _check_shaping(request)
    if request.seed + request.variations - 1 > MAX_SEED:
        _invalid(f"seed {request.seed} leaves no room for {request.variations} variations (their seeds count up "
                 f"from it to at most {MAX_SEED}); choose a smaller seed.")
    check_stem_size(request)
    return request


def check_stem_size(request: GenerationRequest, channels: int = 1, take: str | None = None) -> None:
    """The stem `request` makes within MAX_STEM_BYTES: a new track mono, an extended or repaired take
    with the `channels` of the `take` file (engine.input_files reads them from its header)."""
    size = stem_bytes(request.region.project_duration, request.sample_rate, request.format, channels)
    if size > MAX_STEM_BYTES:
        why = "" if take is None else f", {channels} channels like the take '{printable(take)}'"
        # only what would help: a request already in wav24 was told to choose wav24
        frames = (MAX_STEM_BYTES - WAV_HEADER_BYTES) // (BYTES_PER_SAMPLE[request.format] * channels)
        longest = frames / request.sample_rate
        choices = (["a lower sample_rate"] if request.sample_rate > min(SAMPLE_RATES) else []) + (
            ["wav24"] if request.format != "wav24" else []) + [
            f"a region of at most {math.floor(longest * 10) / 10:.1f} s on the timeline"]
        if take is not None:
            choices.append("bounce the take with fewer channels")
        _invalid(f"The stem would be {_beside(size / 2**20, MAX_STEM_BYTES / 2**20, 0)} MiB "
                 f"({request.region.project_duration:.1f} s at "
                 f"{request.sample_rate} Hz in {request.format}{why}); a job writes at most {mib(MAX_STEM_BYTES)}. "
                 f"Choose {', '.join(choices[:-1])}, or {choices[-1]}.")


def _check_continuation(request: GenerationRequest) -> None:
    if (request.take is None) != (request.regenerate is None):
        _invalid("take and regenerate go together: the take to extend or repair, and the span of it to make new "
                 "(seconds from project_start). Give both, or neither for a new track.")
    if request.take is None:
        if request.take_offset:
            _invalid("take_offset says where project_start falls in the take; it needs take and regenerate.")
        return
    start, end = request.regenerate
    length = request.region.project_duration
    picture = request.region.duration
    if abs(length - picture) > REGION_TOLERANCE_S:
        shown_length, shown_picture = _beside(length, picture, 3), _beside(picture, length, 3)
        _invalid(f"Extending or repairing a take needs the picture at playrate 1, the stem as long as its picture: the "
                 f"time selection is {shown_length} s on the timeline (project_end - project_start) but the picture is "
                 f"{shown_picture} s (file_out - file_in), played at {request.region.playrate:g} times its speed, so "
                 "the take, kept sample for sample, and the new part, which follows the picture, would not line up. "
                 "Set the video item's playrate to 1 and select the same range on the timeline as on the picture, or "
                 "leave out project_end.")
    if end > length + REGION_TOLERANCE_S:
        _invalid(f"regenerate ends at {_beside(end, length)} s, after the stem's end ({length:.3f} s from "
                 "project_start); "
                 "make the time selection cover it.")
    if end - start < MIN_REGENERATE_SECONDS - REGION_TOLERANCE_S:  # 2.05 - 1.95 is 0.09999999999999987
        _invalid(f"regenerate is {_beside(end - start, MIN_REGENERATE_SECONDS, 3)} s long; make at least "
                 f"{MIN_REGENERATE_SECONDS:g} s new.")
    kept = max(0.0, start) + max(0.0, length - end)
    if kept < MIN_KEPT_SECONDS - REGION_TOLERANCE_S:  # a DAW's 2.099 - 0.1 keeps 0.000999... s
        what = ("covers the whole stem" if kept <= REGION_TOLERANCE_S else
                f"leaves {_beside(kept * 1000, MIN_KEPT_SECONDS * 1000, 3)} ms of the take, less than "
                f"{MIN_KEPT_SECONDS * 1000:g} ms")
        _invalid(f"regenerate {what}, so nothing of the take is kept; leave out take and regenerate to make a new "
                 "track, or keep more of the take.")


def _beside(value: float, limit: float, decimals: int | None = None) -> str:
    """`value` as a message shows it next to the limit it breaks: with `decimals` (else 6
    significant digits), or as many more as it takes not to read as the limit itself (a region
    of 0.996 s is not "1.00 s long; select at least 1 s")."""
    forms = [f".{d}f" for d in range(decimals, 10)] if decimals is not None else []
    forms += [f".{d}g" for d in (6, 9, 12, 15, 17)]
    for form in forms:
        if format(value, form) != format(limit, form):
            return format(value, form)
    return format(value, forms[0])  # the same number: shown as the limit is


def _check_shaping(request: GenerationRequest) -> None:
    length = request.region.project_duration
    if request.picture_region_time is not None:
        if request.picture_region is None:
            _invalid("picture_region_time says when the picture region applies; it needs picture_region.")
        if request.picture_region_time[1] > length + REGION_TOLERANCE_S:
            _invalid(f"picture_region_time ends at {_beside(request.picture_region_time[1], length)} s, after "
                     f"the stem's end ({length:.3f} s from project_start).")
        start, end = request.picture_region_time
        # in the picture's own time: the stem is the picture varispeeded to project_end - project_start
        picture = (end - start) * request.region.duration / length
        if picture < MIN_PICTURE_REGION_SECONDS - REGION_TOLERANCE_S:
            where = (f"{_beside(picture, MIN_PICTURE_REGION_SECONDS, 3)} s long" if abs(picture - (end - start)) < 1e-9
                     else f"{end - start:.3f} s of the stem, {_beside(picture, MIN_PICTURE_REGION_SECONDS, 3)} s of the "
                          "picture, which plays at another speed")
            _invalid(f"picture_region_time is {where}; the part of the picture must apply for at least "
                     f"{MIN_PICTURE_REGION_SECONDS:g} s of picture (the longest gap between the frames the picture "
                     "features read), or no frame may be seen cropped.")
    if request.loudness_curve is not None:
        if request.take is not None:
            _invalid("A loudness curve cannot shape a take being extended or repaired: the new part follows the "
                     "take's own level. Leave out loudness_curve, or make a new track.")
        last = request.loudness_curve[-1][0]
        if last > length + REGION_TOLERANCE_S:
            _invalid(f"loudness_curve has a point at {_beside(last, length)} s, after the stem's end "
                     f"({length:.3f} s from project_start).")


def _rectangle(value: Any, name: str) -> tuple[float, float, float, float]:
    if not isinstance(value, list) or len(value) != 4:
        _invalid(f"{name} must be [x0, y0, x1, y1] as fractions of the picture's width and height, got {_show(value)}.")
    x0, y0, x1, y1 = (_number(v, f"{name} {axis}", 0.0, 1.0) for v, axis in zip(value, ("x0", "y0", "x1", "y1")))
    if min(x1 - x0, y1 - y0) < MIN_PICTURE_REGION - 1e-9:  # 0.15 - 0.10 is 0.04999999999999999
        wide, high = (_beside(side, MIN_PICTURE_REGION, 3) for side in (x1 - x0, y1 - y0))
        _invalid(f"{name} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is {wide} wide and {high} high; each side "
                 f"must be at least {MIN_PICTURE_REGION:g} of the picture (and x1, y1 right of and below x0, y0).")
    return x0, y0, x1, y1


def _curve(value: Any, name: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LOUDNESS_POINTS:
        got = f"{len(value)} points" if isinstance(value, list) else _show(value)
        too_many = " Thin the envelope's points." if isinstance(value, list) and value else ""
        _invalid(f"{name} must be a list of 1 to {MAX_LOUDNESS_POINTS} [seconds, dB] points, got {got}.{too_many}")
    points = []
    for i, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            _invalid(f"{name}[{i}] must be [seconds, dB], got {_show(point)}.")
        seconds = _number(point[0], f"{name}[{i}] seconds", 0.0, MAX_STEM_SECONDS)
        db = _number(point[1], f"{name}[{i}] dB", MIN_CURVE_LUFS, MAX_CURVE_LUFS)
        if points and seconds <= points[-1][0]:
            _invalid(f"{name}[{i}] is at {_beside(seconds, points[-1][0])} s, not after the point before it "
                     f"({_beside(points[-1][0], seconds)} s); "
                     "give the points in time order, one per instant.")
        points.append((seconds, db))
    return tuple(points)


def _span(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        _invalid(f"{name} must be [start, end] in seconds from project_start, got {_show(value)}.")
    start = _number(value[0], f"{name} start", 0.0, MAX_STEM_SECONDS)
    end = _number(value[1], f"{name} end", 0.0, MAX_STEM_SECONDS)
    if end <= start:
        _invalid(f"{name} end ({_beside(end, start)} s) must be after its start ({_beside(start, end)} s).")
    return start, end


def for_model(request: GenerationRequest, capabilities: Capabilities, sample_rate: int) -> GenerationRequest:
    """`request`, parsed before the model loaded (stepfoley generate checks every argument
    first, at a stand-in rate where the model's is meant), at `sample_rate` and checked for what
    only the loaded model knows, as parse_request with `capabilities` checks it: its method and
    the weights and audio that method reads, and the stem's size at that rate (a take's rate is
    its own, known and checked with its channels before). Raises RequestError."""
    info = _method_info(request.method, capabilities)
    _check_weights_read([name for name in _WEIGHTS if getattr(request, name) is not None], request.method, info,
                        capabilities)
    _check_audio_heard(info, request.reference_audio, request.existing_mix)
    if sample_rate == request.sample_rate:
        return request
    request = replace(request, sample_rate=_choice(sample_rate, "sample_rate", SAMPLE_RATES, "the project's rate"))
    check_stem_size(request)
    return request


def _check_weights_read(given: list[str], method: str | None, info: MethodInfo | None,
                        capabilities: Capabilities | None) -> None:
    """The weights `given` are read by the method that runs (`info`, or `method` where no
    capabilities tell what runs)."""
    # which methods read a weight is the registry's (the capabilities); without them, the one
    # method the protocol documents with these weights
    readers = ([m for m in capabilities.methods if set(given) <= set(m.params)] if capabilities is not None
               else [MethodInfo("dual", "", ("w1", "w2", "w3"))])
    if given and (info.name if info is not None else method) not in [m.name for m in readers]:  # info: what runs
        runnable = [m.name for m in readers if m.available]
        choice = " or ".join(f"'{name}'" for name in runnable)
        if runnable:
            _invalid(f"{', '.join(given)} are weights of Eq. A6 and only apply to method {choice}; leave them out "
                     "or choose that method.")
        why = "; ".join(f"'{m.name}' is not available ({m.unavailable_reason or 'not with this model'})"
                        for m in readers)
        _invalid(f"{', '.join(given)} are weights of Eq. A6, which no method this model runs reads"
                 f"{': ' + why if why else ''}; leave them out.")


def _check_audio_heard(info: MethodInfo | None, reference: str | None, existing_mix: Any) -> None:
    """The method that runs (`info`; None: not known yet) gets the audio it hears, and no other."""
    wants_reference = info is not None and info.audio == "reference"
    if info is not None and wants_reference != (reference is not None):
        _invalid(f"method '{info.name}' needs reference_audio (the recording to sound like)." if wants_reference
                 else f"reference_audio is only used by a method that sounds like a recording, not by '{info.name}'.")
    if wants_reference and existing_mix is not None:
        # its audio branch hears the reference: the bounce was dropped without a word (and never checked)
        _invalid(f"method '{info.name}' hears reference_audio, not the earlier layers: leave existing_mix out, or "
                 "negate them with a method that hears them (such as 'nag').")


def _method_info(method: str | None, capabilities: Capabilities | None) -> MethodInfo | None:
    if capabilities is None:
        return None
    name = method or capabilities.defaults.method
    info = capabilities.method(name)
    if info is None:
        names = ", ".join(m.name for m in capabilities.methods)
        _invalid(f"method '{name}' is unknown to the model '{capabilities.model}'; use one of {names}.")
    if not info.available:
        _invalid(f"method '{name}' is not available with the model '{capabilities.model}': "
                 f"{info.unavailable_reason}")
    return info


def _region(region: Any) -> VideoRegion:
    if not isinstance(region, dict):
        _invalid("region must be a JSON object with video, file_in and file_out.")
    _reject_unknown(region, _REGION_FIELDS, "region")
    _require(region, ("video", "file_in", "file_out"), "region")
    video = _path(region["video"], "region.video")
    file_in = _number(region["file_in"], "region.file_in", 0.0, MAX_TIMELINE_SECONDS)
    file_out = _number(region["file_out"], "region.file_out", 0.0, MAX_TIMELINE_SECONDS)
    length = file_out - file_in
    if length <= 0:
        _invalid(f"region.file_out ({_beside(file_out, file_in)}) must be after region.file_in "
                 f"({_beside(file_in, file_out)}).")
    if length < MIN_REGION_SECONDS - REGION_TOLERANCE_S:
        _invalid(f"The region is {_beside(length, MIN_REGION_SECONDS, 2)} s long; select at least "
                 f"{MIN_REGION_SECONDS:g} s of picture.")
    if length > MAX_REGION_SECONDS + REGION_TOLERANCE_S:
        _invalid(f"The region is {_beside(length, MAX_REGION_SECONDS, 1)} s long; at most {MAX_REGION_SECONDS:g} s "
                 "can be made at once. "
                 "Select a shorter range and make the rest in a second pass.")
    playrate = _number(region.get("playrate", 1.0), "region.playrate", MIN_PLAYRATE, MAX_PLAYRATE)
    start = _number(region.get("project_start", 0.0), "region.project_start", 0.0, MAX_TIMELINE_SECONDS)
    if region.get("project_end") is None:
        end = start + length / playrate
        if end > MAX_TIMELINE_SECONDS:
            _invalid(f"The stem would end at {_beside(end, MAX_TIMELINE_SECONDS)} s of the project "
                     f"(region.project_start {time_text(start)} + "
                     f"{length / playrate:g} s); project times go up to {MAX_TIMELINE_SECONDS:g} s (7 days).")
    else:
        end = _number(region["project_end"], "region.project_end", 0.0, MAX_TIMELINE_SECONDS)
        if end <= start:
            _invalid(f"region.project_end ({_beside(end, start)}) must be after region.project_start "
                     f"({_beside(start, end)}).")
        # the picture is varispeeded to the stem: that speed is bounded as playrate is
        speed = length / (end - start)
        # relative tolerance: a DAW's playrate of exactly 100 comes back as 100.00000000000001
        if not MIN_PLAYRATE * (1 - 1e-9) <= speed <= MAX_PLAYRATE * (1 + 1e-9):
            _invalid(f"region.project_end ({time_text(end)}) would play {length:.2f} s of picture in "
                     f"{end - start:g} s, "
                     f"{_beside(speed, MIN_PLAYRATE if speed < MIN_PLAYRATE else MAX_PLAYRATE)} times its speed; "
                     f"the picture may play at {MIN_PLAYRATE:g} to {MAX_PLAYRATE:g} "
                     "times its speed, as with region.playrate.")
        if abs(speed - playrate) > 1e-6 * playrate:  # the picture plays at the speed the stem's length gives
            playrate = speed
    if end - start > MAX_STEM_SECONDS + REGION_TOLERANCE_S:
        given = (f"region.project_end {time_text(end)} - region.project_start {time_text(start)}"
                 if region.get("project_end") is not None else f"{length:.2f} s of picture at playrate {playrate:g}")
        _invalid(f"The stem would last {_beside(end - start, MAX_STEM_SECONDS, 1)} s on the timeline ({given}); at most "
                 f"{MAX_STEM_SECONDS:g} s can be made at once. "
                 "Select a shorter range and make the rest in a second pass.")
    return VideoRegion(video, file_in, file_out, playrate, start, end)


# --- field checks --------------------------------------------------------------------------------


def _invalid(message: str):
    raise RequestError(message)


def time_text(seconds: float) -> str:
    """A time on the project's timeline or in a file as a message shows it. `:g`'s 6 significant
    digits turned a project_start of 604799.5 s into 604800 (and an hour's 3600.125 into 3600.12);
    12 keep a DAW's milliseconds over a week and still drop float noise (30.000000000000004: 30)."""
    return format(seconds, ".12g")


def printable(text: str, limit: int = 200) -> str:
    """User text for a message: encodable whatever it holds (a lone surrogate from JSON's
    \\ud800, or a byte that was not UTF-8, becomes its escape), then cut to `limit` characters
    as shown, so a message's size is bounded whatever the text held."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 2, 60, 60


def _show(value: Any) -> str:
    """A value of any type (nested however deep) quoted for a message; never raises."""
    try:
        return printable(_SHORT_REPR.repr(value), 80)
    except Exception:  # e.g. an int past Python's 4300-digit limit for str() (a dict built in Python)
        if is_whole(value):
            return f"a {'negative ' if value < 0 else ''}whole number of {_digits(value)} digits"
        return f"a {printable(type(value).__name__, 40)}"


def _digits(value: int) -> int:
    """How many decimal digits |value| has, without str() (refused past 4300 digits)."""
    value = abs(value)
    digits = max(1, int(value.bit_length() * 0.30102999566398120))
    while 10**digits <= value:
        digits += 1
    while digits > 1 and 10 ** (digits - 1) > value:
        digits -= 1
    return digits


def _reject_unknown(obj: dict, known: tuple[str, ...], where: str) -> None:
    extra = sorted(printable(str(k), 40) for k in obj if k not in known)
    if extra:
        named = ", ".join(extra[:_MOST_NAMED])
        more = f" and {len(extra) - _MOST_NAMED} more" if len(extra) > _MOST_NAMED else ""
        _invalid(f"Unknown field(s) in {where}: {named}{more}. Known: {', '.join(known)}.")


_MOST_NAMED = 5  # unknown fields a message names: it must fit a reply however many were sent


def _require(obj: dict, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if name not in obj:
            _invalid(f"{where} is missing the required field '{name}'.")


def _optional(obj: dict, name: str, check):
    value = obj.get(name)
    return None if value is None else check(value, name)


def is_whole(value: Any) -> bool:
    """A whole number as JSON or Python gives one (True and False are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _invalid(f"{name} must be a number, got {_show(value)}.")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer has no size limit: 1 followed by 400 zeros is no float
        _invalid(f"{name} must be a number between {low:g} and {high:g}, got {_show(value)}.")
    if not math.isfinite(number):
        _invalid(f"{name} must be a number, got {_show(value)}.")
    if not low <= number <= high:
        _invalid(f"{name} = {_beside(number, low if number < low else high)} is outside {low:g} .. {high:g}.")
    return number


def _not_whole(name: str, value: Any) -> str:
    """Why `value` is refused where a whole number goes. Some JSON writers put every number as a
    float: 2.0 is told how to write it, not said to be another protocol or no whole number."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return f"{name} must be a whole number written without a decimal point ({int(value)}, not {_show(value)})."
    return f"{name} must be a whole number, got {_show(value)}."


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if not is_whole(value):
        _invalid(_not_whole(name, value))
    if not low <= value <= high:
        _invalid(f"{name} = {_show(value)} is outside {low} .. {high}.")
    return value


def _choice(value: Any, name: str, choices: tuple, what: str):
    # of the choices' own type: 22050.0 is not the rate 22050 (it would reach the stem's metadata)
    if value in choices and not isinstance(value, bool) and not any(type(value) is type(c) for c in choices):
        _invalid(_not_whole(name, value))
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        _invalid(f"{name} {_show(value)} is not supported ({what}); use one of {', '.join(map(str, choices))}.")
    return value


def is_utf8(text: str) -> bool:
    """Whether `text` can be sent as UTF-8: no lone surrogate (JSON's \\ud800, or a byte that was
    not UTF-8 kept escaped by a decoder's surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unicode(value: str, name: str) -> str:
    # JSON can spell a lone UTF-16 surrogate (\\ud800); no reply or file name can carry one.
    if not is_utf8(value):
        _invalid(f"{name} '{printable(value)}' holds bytes that are not UTF-8 text (or a lone UTF-16 surrogate); "
                 "send it as UTF-8.")
    return value


def is_blank(text: str) -> bool:
    """Whether `text` has nothing visible to describe a sound with: only spaces, control
    characters and invisible format characters (a byte-order mark, a zero-width space, a soft
    hyphen), which the embedded text encoder reads as the empty caption."""
    return not "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf")).strip()


def _caption_or_nothing(text: str) -> str:
    """A caption that may be left out, as "" when it is blank (is_blank): an invisible negative
    caption counted as given and turned off the previous captions' fallback."""
    return "" if is_blank(text) else text


def _text(value: Any, name: str, max_chars: int, blank_ok: bool = True) -> str:
    if not isinstance(value, str):
        _invalid(f"{name} must be text (a JSON string), got {_show(value)}.")
    _unicode(value, name)
    if not blank_ok and is_blank(value):
        _invalid(f"{name} is empty (or only spaces and invisible characters); describe the sound to generate.")
    if len(value) > max_chars:
        _invalid(f"{name} is longer than {max_chars} characters.")
    return value


# The methods the protocol documents (engine.guidance's public ones; a test holds them equal),
# what a name written another way is told it would be where no model's capabilities are at hand.
DOCUMENTED_METHODS = ("independent", "negative_prompt", "nag", "text_boost", "dual", "reference")


def _method_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _METHOD_NAME.fullmatch(value):
        # the likeliest slips ("NAG", "negative-prompt") named as what they would be
        short = isinstance(value, str) and len(value) <= 64
        guess = value.strip().lower().replace("-", "_").replace(" ", "_") if short else ""
        hint = f": did you mean '{guess}'?" if guess in DOCUMENTED_METHODS else "."
        _invalid(f"method {_show(value)} is not a method name (lower-case letters, digits and _){hint}")
    return value


def _path(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > MAX_PATH_CHARS:
        _invalid(f"{name} must be a file path (a non-empty string of at most {MAX_PATH_CHARS} characters).")
    _unicode(value, name)
    # The engine's working directory has nothing to do with the DAW's, so relative paths
    # would silently point somewhere else.
    if not os.path.isabs(value):
        _invalid(f"{name} '{printable(value)}' must be an absolute path.")
    return value

