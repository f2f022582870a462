"""FoleyService: the engine as the bridge sees it.

A checked request (stepfoley.request.GenerationRequest) goes in; a new WAV stem is written
into the request's output directory and its path and metadata come out. Video features are
cached across requests, so the 2nd..Nth track of a region skips the video encoders.

Inputs are read only for the region they cover, mono, within the limits of stepfoley.request;
the stem is checked against the byte cap before it is written, and everything that can fail
runs before the write, so a failed job leaves no stem.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stepfoley.engine import audio_io, mixing, output_folders
from stepfoley.engine.devices import release_freed_memory
from stepfoley.engine.errors import (AudioError, InvalidInputError, StepFoleyError, out_of_memory_said,
                                     stop_if_cancelled)
from stepfoley.engine.guidance import GUIDANCE_METHODS
from stepfoley.engine.input_files import take_length_problem
from stepfoley.engine.loudness_curve import MAX_BOOST_DB, MAX_CUT_DB, distance_from_curve, follow_curve
from stepfoley.engine.pipeline import FoleyModel, PictureFocus, Region
from stepfoley.engine.ranking import judge_for, rank_takes
from stepfoley.engine.session import (SEAM_S, KnownAudio, ProgressFn, StepSession, TrackSettings, channel_balance,
                                      kept_power, limit_new_part, splice)
from stepfoley.engine.video import check_video_region
from stepfoley.request import (MAX_INPUT_AUDIO_BYTES, MAX_INPUT_SAMPLE_RATE, MAX_STEM_BYTES, REGION_TOLERANCE_S,
                               Capabilities, GenerationRequest)

FORMATS = {"wav24": "PCM_24", "wav32f": "FLOAT"}
STEM_CEILING_DBTP = mixing.STEM_CEILING_DBTP  # the session finished the track; kept after resampling
# A track finished at the model's rate and resampled to the project's peaks a few tenths of a dB
# over the ceiling: up to this, one gain takes it off (the limiter costs more: mixing.limit_true_peak).
RESAMPLED_OVERSHOOT_DB = 1.0


def _existing_file(path: str, what: str) -> Path:
    # The request was checked when it arrived; the file may have gone since.
    if not os.path.isfile(path):
        raise InvalidInputError(f"{what} '{path}' does not exist or is not a file.")
    return Path(path)


def _read_input(path: str, what: str, seconds: float) -> tuple[np.ndarray, int]:
    """The first `seconds` of an input recording, mono, within the request's input limits."""
    return audio_io.read_input_audio(_existing_file(path, what), seconds)


def _in_picture_time(samples: np.ndarray, sample_rate: int, region) -> np.ndarray:
    """Audio of the timeline from project_start (a bounce, a stem) in the picture's time: when
    the stem is not as long as its picture (a playrate other than 1, or a project_end that says
    so) its seconds are not the picture's, so it is varispeeded back, the inverse of
    `_finished_stem`, and NAG hears each sound where the picture shows it."""
    # samples: (C, S) at sample_rate -> (C, round(region.duration * sample_rate))
    if abs(region.project_duration - region.duration) <= REGION_TOLERANCE_S:
        return samples
    on_timeline = mixing.fit_length(samples, int(round(region.project_duration * sample_rate)))
    return mixing.resample_to_length(on_timeline, sample_rate, sample_rate, int(round(region.duration * sample_rate)))


@dataclass(frozen=True)
class _StemName:
    """The name a job's one stem is given in its output folder (audio_io.publish_stem): None for
    the usual numbered one."""

    file: str | os.PathLike | None = None
    replace: bool = False


class FoleyService:
    """A runner for bridge.server: `service(request, on_progress, is_cancelled) -> result`."""

    def __init__(self, model: FoleyModel, feature_cache=None, remember_folders: bool = True):
        """`remember_folders`: write each output folder into the list `serve` sweeps of a killed
        engine's temp files (engine.output_folders); a run in temporary folders (the lab's
        evaluation) leaves it out, since each would push out a user's project folder."""
        self.model = model
        self.feature_cache = feature_cache
        self.remember_folders = remember_folders

    def describe(self) -> dict:
        return {"model": self.model.model_id, "device": str(self.model.device), "note": self.model.note}

    def capabilities(self) -> Capabilities:
        return self.model.capabilities()

    def __call__(self, request: GenerationRequest, on_progress: ProgressFn | None = None,
                 is_cancelled: Callable[[], bool] | None = None,
                 existing_tracks: Sequence[tuple[np.ndarray, int, int]] = (),
                 stem_file: str | os.PathLike | None = None, replace: bool = False,
                 take: TakeAudio | None = None) -> dict:
        """`existing_tracks`: (samples, sample_rate, how many stems they sum) of stems already in
        memory, heard like the request's existing_mix (stepfoley generate --existing: no bounce
        file). `take`: the request's take already read (TakeAudio.read; stepfoley generate reads
        it before the model loads), else it is read here. `stem_file`: the name, in
        request.output_dir, of a job's one stem (stepfoley generate --out FILE.wav), given to it
        straight from its temporary file (audio_io.publish_stem, with `replace`); a file already
        there and not `replace`: the usual numbered name."""
        def said(whose: str) -> str:  # said as what it is (it was an internal error, "please report it")
            asked = f"{request.region.duration:.1f} s" + (f", {request.variations} variations"
                                                         if request.variations > 1 else "")
            return (f"The {whose} ran out of memory while making this track ({asked}). Close other programs, or ask "
                    "for fewer variations or a shorter time selection, and try again.")

        try:
            with out_of_memory_said(said):
                return self._generate(request, on_progress, is_cancelled, existing_tracks,
                                      _StemName(stem_file, replace), take)
        finally:
            release_freed_memory()  # an engine serves all day: each job's buffers go back to the system

    def _generate(self, request: GenerationRequest, on_progress: ProgressFn | None,
                  is_cancelled: Callable[[], bool] | None, existing_tracks: Sequence[tuple[np.ndarray, int, int]],
                  name: _StemName, take_audio: TakeAudio | None) -> dict:
        region = request.region
        video = _existing_file(region.video, "The video")
        # the region as asked, from what the file says, before any work: a region made in several
        # windows was refused at its last one, named by that window's times
        check_video_region(video, region.file_in, region.file_out)
        if not os.path.isdir(request.output_dir):
            raise InvalidInputError(f"The output folder '{request.output_dir}' does not exist; create it first.")
        session = StepSession(self.model, Region(video, region.file_in, region.file_out,
                                                 PictureFocus.from_request(request)), self.feature_cache)
        for samples, sample_rate, layers in existing_tracks:
            session.add_track(_in_picture_time(samples, sample_rate, region), sample_rate, layers=layers)
        reference = None
        if request.reference_audio is not None:
            # looped or trimmed to the region's picture: more than that is never heard
            reference = _read_input(request.reference_audio, "The reference sound", region.duration)
        elif request.existing_mix is not None:
            # the DAW's bounce of the region, from project_start: it covers the stem's length
            samples, sample_rate = _read_input(request.existing_mix, "The bounced mix", region.project_duration)
            held = audio_io.seconds_short_of(samples, sample_rate, region.project_duration)
            if held is not None:  # a file cut short, or a bounce of less than the selection: refused, not padded
                raise AudioError(f"The bounced mix '{request.existing_mix}' holds {held:.3f} s, but the region is "
                                 f"{region.project_duration:.3f} s on the timeline, so the earlier layers would be "
                                 "heard over its start only. Bounce the whole time selection (or was the file cut "
                                 "short?).")
            session.add_track(_in_picture_time(samples, sample_rate, region), sample_rate)
        # what the layers on the timeline are, with or without their bounce (negative_prompt
        # steers away from them and hears no audio, so a client sends it none)
        session.add_captions(request.previous_captions)
        settings = TrackSettings.from_request(request)
        on_progress, stems_said = _finishing_in_two_halves(on_progress or _said_to_no_one)
        if request.protocol < 2:
            track = session.next_track(settings, on_progress=on_progress, is_cancelled=is_cancelled,
                                       reference=reference)
            stop_if_cancelled(is_cancelled, "before the stem was written")
            stem, metadata = self._finished_stem(request, track)
            written = self._write(request, stem, name)
            stems_said(1, 1)
            return {"stem_path": os.fspath(written), "metadata": metadata, "stem_identity": _identity(written)}
        return self._variations(request, session, settings, on_progress, stems_said, is_cancelled, reference, name,
                                take_audio)

    def _finished_stem(self, request: GenerationRequest, track) -> tuple[np.ndarray, dict]:
        region = request.region
        # The picture plays at `playrate`, so the stem is varispeeded to its length on the timeline
        # (one resampling to the request's rate and that length).
        length = int(round(region.project_duration * request.sample_rate))
        stem = mixing.resample_to_length(track.samples[None], track.sample_rate, request.sample_rate, length)
        following = {}
        varispeeded = abs(region.project_duration - region.duration) > REGION_TOLERANCE_S
        if request.loudness_curve is not None and (varispeeded or request.sample_rate < track.sample_rate):
            # varispeed moves the track's spectrum and a lower rate cuts its top, and K-weighted
            # loudness moves with both (a flat -30 LUFS curve came out at -35.7 at playrate 0.1):
            # the stem is brought onto the curve again where it is heard, in the timeline's time,
            # within the room the automation's bounds leave after the first pass
            lowest, highest = track.metadata["loudness_curve_gain_db"]
            stem, again = follow_curve(stem[0], request.sample_rate, request.loudness_curve,
                                       max_boost_db=max(0.0, MAX_BOOST_DB - highest),
                                       max_cut_db=max(0.0, MAX_CUT_DB + lowest))
            following = {"loudness_curve_error_db": again["loudness_curve_error_db"],
                         "loudness_curve_output_correction_db": again["loudness_curve_gain_db"]}
        else:
            if varispeeded or request.sample_rate < track.sample_rate:
                # the same for a stem's loudness (at playrate 0.25 or at 8 kHz one came out 2-6 dB under
                # it): brought back to the loudness it was finished at, as far as its peaks leave room,
                # so never limited harder than there (a peaky take the limiter could not bring to a
                # stem's loudness stays where it was)
                made_up = resampled_loudness_gain_db(track, stem, request.sample_rate)
                stem = (stem * np.float32(10 ** (made_up / 20))).astype(np.float32)
                following = {"resampled_loudness_gain_db": round(made_up, 2)}
            stem = mixing.limit_true_peak(stem, request.sample_rate, STEM_CEILING_DBTP,
                                          gain_up_to_db=RESAMPLED_OVERSHOOT_DB)
            if request.loudness_curve is not None:  # at a higher rate: measured on the stem as written
                following["loudness_curve_error_db"] = distance_from_curve(stem[0], request.sample_rate,
                                                                           request.loudness_curve)
        metadata = {
            **track.metadata,
            **following,
            "sample_rate": request.sample_rate,
            "duration": length / request.sample_rate,
            "lufs": mixing.reported_lufs(stem, request.sample_rate),
            "playrate": region.playrate,
            "project_start": region.project_start,
            "format": request.format,
            "reference_audio": request.reference_audio,
        }
        return stem, metadata

    def _write(self, request: GenerationRequest, stem: np.ndarray, name: _StemName) -> Path:
        self._remember(request.output_dir)
        return audio_io.write_new_wav(request.output_dir, self._name_hint(request), stem, request.sample_rate,
                                      FORMATS[request.format], max_bytes=MAX_STEM_BYTES,
                                      stem_file=name.file, replace=name.replace)

    @staticmethod
    def _name_hint(request: GenerationRequest) -> str:
        return request.name_hint or request.caption

    def _variations(self, request: GenerationRequest, session: StepSession, settings: TrackSettings,
                    on_progress, stems_said, is_cancelled, reference, name: _StemName,
                    take_audio: TakeAudio | None) -> dict:
        """A protocol-2 job: request.variations takes in one batch, ranked, each its own stem.
        Stems are finished and staged one at a time (one stem's worth of memory) under hidden
        temporary names, and named only when all are on the disk: a job that fails, is stopped
        or is killed before then leaves all its stems or none."""
        # the earlier layers count against a take only where its method hears them (a bounce sent
        # with 'independent' is read, not heard)
        hears = GUIDANCE_METHODS[settings.resolved(self.model.defaults).method].audio == "existing"
        earlier = session.conditioning_mix() if hears else None
        take = (None if request.take is None else
                _Take(take_audio or TakeAudio.read(request, request.take), request, session))
        takes = session.next_variations(settings, request.variations, on_progress, is_cancelled, reference,
                                        known=None if take is None else take.known)
        # ranked, then finished and written a stem at a time, each said: 8 stems of 600 s at 48 kHz
        # took two minutes without a word, and a client's watchdog gave the job up. Nothing is said
        # before the ranking: the session's last word, its takes joined and levelled, was this very
        # count a moment ago (said again, every client heard the same datagram twice)
        judge, why_not = self._judge() if len(takes) > 1 else (None, "")
        # judged as the stems will sound: a continuation's kept part is the take's, not the model's
        # (one take is not judged, rank_takes says so unheard: a 600 s take is not spliced for nothing)
        heard = [t.samples if take is None or len(takes) == 1 else take.as_heard(t) for t in takes]
        ranking = rank_takes(heard, self.model.sample_rate, request.caption, earlier, judge, why_not)
        staged, metadatas, published = [], [], []
        self._remember(request.output_dir)  # before any temp file: a killed job's are swept at start
        try:
            for rank, index in enumerate(ranking.order):
                stop_if_cancelled(is_cancelled, f"before stem {rank + 1} of {len(takes)} was written")
                stem, metadata = (self._finished_stem(request, takes[index]) if take is None
                                  else take.spliced(request, takes[index]))
                staged.append(audio_io.stage_new_wav(request.output_dir, self._name_hint(request), stem,
                                                     request.sample_rate, FORMATS[request.format],
                                                     max_bytes=MAX_STEM_BYTES))
                if take is not None:
                    metadata["kept_untouched"] = take.came_back_untouched(staged[-1].temp, request)
                metadatas.append({**metadata, "rank": rank + 1, "ranking": ranking.figures[index]})
                stems_said(rank + 1, len(takes))
            stop_if_cancelled(is_cancelled, f"before the {len(takes)} stems were named")
            for file in staged:
                published.append(audio_io.publish_stem(file, request.output_dir, self._name_hint(request),
                                                       name.file if len(staged) == 1 else None, name.replace))
        except BaseException:
            # by what was published, not by name: a folder moved away (or its link pointed
            # elsewhere) while the stems were named has a user's file of the same name there
            for file in staged:
                file.withdraw()
            raise
        finally:
            for file in staged:
                file.discard()
        return {"stems": [{"stem_path": os.fspath(path), "metadata": metadata,
                           "stem_identity": file.published and file.published[1]}
                          for path, metadata, file in zip(published, metadatas, staged)],
                "ranking": ranking.to_json()}

    def _remember(self, folder: str) -> None:
        if self.remember_folders:
            output_folders.remember(folder)

    def _judge(self):
        # loaded once per engine, on the first job that has takes to rank
        if not hasattr(self, "_judge_cache"):
            self._judge_cache = judge_for(self.model)
        return self._judge_cache


@dataclass(frozen=True)
class TakeAudio:
    """The take of an extend or repair request as its job uses it: from take_offset for the
    stem's length, every channel."""

    samples: np.ndarray  # (C, S) float32
    rate: int
    subtype: str  # the file's sample format ("PCM_24", "FLOAT", ...)

    @classmethod
    def read(cls, request: GenerationRequest, path: str | os.PathLike) -> "TakeAudio":
        """request.take, at `path` (the name its messages give it: stepfoley generate's as the
        user typed it). Raises AudioError, InvalidInputError."""
        # only the stem's stretch is read, from take_offset (an item cut from an hour's recording
        # reads its seconds, not the hour before them), and a millisecond more, since
        # ceil(length * rate) in floats can fall one sample short of round(length * rate)
        samples, rate, subtype = audio_io.read_audio_and_subtype(
            _existing_file(path, "The take"), max_seconds=request.region.project_duration + 1e-3,
            max_bytes=MAX_INPUT_AUDIO_BYTES, max_rate=MAX_INPUT_SAMPLE_RATE, start_seconds=request.take_offset)
        problem = take_length_problem(request, samples.shape[-1], rate)  # the file may have changed since
        if problem:
            raise InvalidInputError(problem)
        return cls(samples, rate, subtype)


class _Take:
    """The take of an extend or repair request: as read (C, S) at its own rate, what the model
    hears of it, and the span kept."""

    def __init__(self, audio: TakeAudio, request: GenerationRequest, session: StepSession):
        self.samples, self.rate = audio.samples, audio.rate
        # float32, as every input is read, holds integer samples of up to 24 bits and 32-bit floats
        self.read_exactly = audio.subtype not in ("PCM_32", "DOUBLE")
        start, end = request.regenerate
        model_rate = session.model.sample_rate
        channels = mixing.fit_length(mixing.resample(audio.samples, audio.rate, model_rate), session.length)  # (C, S)
        keep = _kept(session.length, model_rate, start, end)
        self.known = KnownAudio(channels.mean(axis=0), keep, power=kept_power(channels, keep))

    def as_heard(self, track) -> np.ndarray:
        """The stem `track` makes, as the model hears the take: mono (S,) at the model's rate,
        the take where it is kept and the track where it is new, spliced as `spliced` does."""
        known = self.known
        return splice(known.samples[None], track.samples[None], known.keep,
                      int(round(SEAM_S * track.sample_rate)))[0]

    def spliced(self, request: GenerationRequest, track) -> tuple[np.ndarray, dict]:
        """The stem: the take at the request's rate, the track where it is new, crossfaded at
        the seams on the new side. The new audio was brought to the take's level and limited by
        the session; it is limited again after resampling, the take never."""
        rate = request.sample_rate
        length = int(round(request.region.project_duration * rate))
        take = self.samples if self.rate == rate else mixing.resample(self.samples, self.rate, rate)
        take_length = min(take.shape[-1], length)
        keep = _kept(length, rate, *request.regenerate)
        # only the new part is ever heard of the model's audio: the span `_kept` leaves out
        new = mixing.resample_span(track.samples[None], track.sample_rate, rate, length,
                                   *(round(t * rate) for t in request.regenerate))
        take = mixing.fit_length(take, length)
        new = new * channel_balance(take, keep, rate, take_length)                             # (C, S)
        new = limit_new_part(new, ~keep, rate, gain_up_to_db=RESAMPLED_OVERSHOOT_DB)
        stem = splice(take, new, keep, int(round(SEAM_S * rate)), take_length)
        clipped = float((np.abs(stem) > 1.0).mean()) if FORMATS[request.format] != "FLOAT" else 0.0
        if clipped:  # measured as written
            stem = np.clip(stem, -1.0, 1.0)
        metadata = {
            **track.metadata,
            "sample_rate": rate,
            "duration": length / rate,
            "channels": stem.shape[0],
            "format": request.format,
            "project_start": request.region.project_start,
            "playrate": request.region.playrate,
            "reference_audio": request.reference_audio,
            "take": request.take,
            "take_sample_rate": self.rate,
            "regenerate": list(request.regenerate),
            "kept_untouched": None,  # known once the stem is written: came_back_untouched
            # of the stem's samples, those past full scale that `format` clips (a float take's overs,
            # or a take near full scale resampled: resampling raises peaks)
            "format_clipped_fraction": clipped,
            # the whole stem's, the take's level for the most part (the new part's: new_part_lufs)
            "lufs": mixing.reported_lufs(stem, rate),
            # in the take's channels, as the stem's: the session measured the model's mono part
            "new_part_lufs": mixing.reported_lufs(stem[:, ~keep], rate) if (~keep).sum() >= rate // 2 else None,
        }
        return stem, metadata

    def came_back_untouched(self, path: Path, request: GenerationRequest) -> bool:
        """Whether the written stem holds every kept sample exactly as the take's file does:
        not when the take was resampled to the project's rate, nor when the stem's format
        cannot hold its samples (a float take written as wav24 is rounded and its overs clipped).
        Read back rather than predicted: the file is the truth."""
        if self.rate != request.sample_rate or not self.read_exactly:
            return False
        try:
            written, _ = audio_io.read_audio(path)
        except (OSError, StepFoleyError):
            return False
        n = min(written.shape[-1], self.samples.shape[-1])  # extending past the take's end: nothing kept there
        a, b = _new_span(n, self.rate, *request.regenerate)
        # the kept stretches on each side of the new span, compared where they lie: picked out by
        # a mask, the whole take and stem were copied first, which took longer than the reading
        return all(np.array_equal(written[:, lo:hi], self.samples[:, lo:hi]) for lo, hi in ((0, a), (b, n)))


def _new_span(length: int, rate: int, start: float, end: float) -> tuple[int, int]:
    # [a, b): the samples of [start, end) seconds within the first `length`
    a, b = (min(max(round(t * rate), 0), length) for t in (start, end))
    return a, b


def _kept(length: int, rate: int, start: float, end: float) -> np.ndarray:
    # (length,) bool: True outside [start, end) seconds (set by a slice: a 600 s stem's
    # samples compared index by index took a tenth of a second, three times a job)
    keep = np.ones(length, bool)
    a, b = _new_span(length, rate, start, end)
    keep[a:b] = False
    return keep


def _identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the stem just written, which the bridge removes only as that file
    should it refuse the result; None where it cannot be told."""
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _said_to_no_one(phase: str, done: int, total: int) -> None:
    """The progress of a job run without a listener."""


def _finishing_in_two_halves(tell: ProgressFn) -> tuple[ProgressFn, Callable[[int, int], None]]:
    """The session's progress, its "finishing" (the takes joined and levelled) the first half of
    the job's, and `stems_said(done, stems)` for the second (each stem brought to the request's
    rate and level, and written): one count, 2 per take, that only goes forward (it said 0 of N
    before each take was joined, then counted the stems from 0 again)."""
    def session_said(phase: str, done: int, total: int) -> None:
        tell(phase, done, 2 * total if phase == "finishing" else total)

    def stems_said(done: int, stems: int) -> None:
        tell("finishing", stems + done, 2 * stems)

    return session_said, stems_said


def resampled_loudness_gain_db(track, stem: np.ndarray, sample_rate: int) -> float:
    """The gain that brings `stem` ((C, S) at `sample_rate`, the track varispeeded or resampled)
    back to the track's own loudness, at most up to the true-peak ceiling; 0 for silence."""
    before = mixing.integrated_loudness(track.samples[None], track.sample_rate)
    after, blocks = mixing.loudness_and_blocks(stem, sample_rate)
    if not (math.isfinite(before) and math.isfinite(after)):
        return 0.0
    headroom = STEM_CEILING_DBTP - mixing.true_peak(stem, sample_rate)
    # solved on the gating blocks, not the plain difference: blocks crossing the -70 LUFS gate
    # move the relative gate with them (mixing.loudness_gain_db)
    return float(min(mixing.loudness_gain_db(blocks, before, after), max(headroom, 0.0)))


def load_runtime_model(weights_dir: str | os.PathLike | None = None, model: str | None = None,
                       device: str = "auto", precision: str = "auto", compile: bool = False):
    """The FoleyModel on the chosen device and precision. weights_dir None: the embedded
    mini-world model; model "tiny-random": random weights through the same code path, for tests
    only. compile: torch.compile the per-step network path (CUDA only; the first job is slower)."""
    from stepfoley.engine.devices import check_precision, choose_device, maybe_compile
    from stepfoley.engine.loading import load_foley_model

    precision = check_precision(precision)
    chosen = choose_device(device)
    # a weights file too large to read was said so where it was read
    with out_of_memory_said(lambda whose: f"The model does not fit in the {whose}'s memory. Close other programs, or "
                            "choose a smaller model (--model)"
                            + (", or run it on the CPU (--device cpu)" if whose == "GPU" else "") + "."):
        foley = load_foley_model(weights_dir=weights_dir, variant=model, device=chosen)
    foley.precision = precision
    if compile:
        foley.net.predict_flow = maybe_compile(foley.net.predict_flow, foley.device)
    return foley


def build_service(weights_dir: str | os.PathLike | None = None, device: str = "auto",
                  model: str | None = None, precision: str = "auto", compile: bool = False,
                  feature_cache=None) -> FoleyService:
    """Load a model once (see load_runtime_model) and wrap it with a feature cache: the one
    given, else the persistent one under the user's cache folder (opened first: a folder that
    cannot be used is refused before the model loads)."""
    from stepfoley.engine.features.cache import open_feature_cache

    cache = feature_cache if feature_cache is not None else open_feature_cache()
    foley = load_runtime_model(weights_dir, model, device, precision, compile)
    return FoleyService(foley, feature_cache=cache)
