"""A stand-in for `stepfoley send` (docs/osc-protocol.md), for the REAPER tests while no
real engine is available: same arguments, same status file (written atomically), same
cancel file convention (a stale cancel file removed by the real client's rule) and exit codes. It answers `--ping` and `--engine-status` like the
real client (with `--status`, into that file too), publishing capabilities built from the
real guidance-method registry with its own model defaults (method nag, alpha 3, beta 2,
steps 3: not MMAudio's, so a test sees where a value came from). It validates a request
with stepfoley.request against those capabilities, as the engine does, and "generates" a
sine stem of exactly the region's length, named after the caption; its metadata has the
values used (the request's, or the defaults). It writes the arguments it received to
`standin_argv.json` next to the status file, so a test can check what survived the command
line.

Its waits are on the fake REAPER's clock when $STEPFOLEY_FAKE_CLOCK names the file the driver
publishes it in (tests/reaper_fake/run_scenario.lua), as the harness does; times below are on it.

Behaviour from $STEPFOLEY_STANDIN:
- "ok" (default): an older engine, no `phase` field;
- "down": engine not running (exit 3);
- "slow": 0.3 s per step, so a test can cancel or switch tabs mid-generation;
- "phases": a newer engine: phase "features" (4 picture steps), then "sampling", with
  step/total counting within the phase;
- "queue": waits in the engine's queue (queue_position 6, 5, ... 1, one every 4 s), then runs;
- "stall": the engine goes silent after step 1; like the real client, gives up after
  --timeout seconds with error "timed_out" (exit 7);
- "hung": the client itself hangs after step 1 (its status file never changes again; it
  only exits, silently, once the cancel file appears);
- "flaky": 4.5 s after the start, the status file is half-written (not atomically) for 1.5 s,
  then all is well;
- "garbled": 2 s after the start, the status file is half-written until the cancel file appears;
- "badstem": finishes with a stem that is not a WAV file;
- "late": as "slow", but a cancel comes too late: the engine finishes the job anyway (done);
- "loading": the engine was still loading its model past --timeout (engine_loading);
- "stopping": /status says the engine is shutting down (its running job stopping);
- "lost", "stopped", "gone": after step 1 the engine went away as the real client tells it: restarted
  (job_lost), stopped (engine_stopped), or no longer answering (engine_not_running), the job id known.

Its statuses say `client_alive`, as the real client's do, unless $STEPFOLEY_STANDIN_CLIENT is
"old" (a client from before it). `--cancel JOB_ID` (the engine asked to cancel a job itself)
answers done and appends the id to engine_cancels.txt beside the fake clock's file.

A protocol-2 request gets `variations` stems and a status with `stems` (best first: the stand-in
scores each take by its seed, as the engine's embedding scores takes, so higher seeds rank first
and a test sees that the order comes from the engine) and `ranking`.
$STEPFOLEY_STANDIN_PROTOCOL: "2" (default) or "1" (an engine older than protocol 2: /status
without `protocols`, and a protocol-2 request refused as such an engine refuses it).

$STEPFOLEY_STANDIN_CAPS: "full" (default); "none": an older engine whose status has no
capabilities; "no_controlnet": a model without NAG ControlNet (methods that hear audio are
listed as unavailable).
$STEPFOLEY_STANDIN_BOUNDS: a JSON object of bounds published instead of the protocol's."""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stepfoley.bridge.client import (EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_USAGE, JOB_LOST, not_running_message,
                                    request_payload, too_large_message)
from stepfoley.bridge.jobs import ENGINE_STOPPED_RUNNING
from stepfoley.bridge.protocol import MAX_REQUEST_BYTES
from stepfoley.commands.send import remove_stale_cancel
from stepfoley.engine import mixing
from stepfoley.engine.guidance import public_methods
from stepfoley.engine.ranking import RANKED_BY_EMBEDDING, RANKED_BY_SEED
from stepfoley.request import (Capabilities, GuidanceDefaults, MethodInfo, RequestError, is_blank, parse_request,
                               resolve_guidance)

DEFAULTS = GuidanceDefaults(method="nag", alpha=3.0, beta=2.0, steps=3)


def capabilities() -> Capabilities:
    no_controlnet = os.environ.get("STEPFOLEY_STANDIN_CAPS") == "no_controlnet"
    methods = tuple(MethodInfo(m.name, m.summary, m.params, m.audio, available=not (no_controlnet and m.audio),
                               unavailable_reason="no NAG ControlNet" if no_controlnet and m.audio else "")
                    for m in public_methods())
    return Capabilities("standin", DEFAULTS, methods, 16000)


def write_status(path: Path, **fields) -> None:
    fields["updated"] = time.time()
    if os.environ.get("STEPFOLEY_STANDIN_CLIENT") != "old":
        fields["client_alive"] = fields["updated"]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fields), encoding="utf-8")
    os.replace(tmp, path)


# the engine gone mid-job, in the real client's words
GONE = {"lost": lambda port: JOB_LOST, "stopped": lambda port: ("engine_stopped", ENGINE_STOPPED_RUNNING),
        "gone": lambda port: ("engine_not_running", not_running_message("127.0.0.1", port))}


def write_half(path: Path) -> None:
    """What a reader may see of a file written in place: its first bytes."""
    path.write_text('{"state": "runn', encoding="utf-8")


FAKE_CLOCK = os.environ.get("STEPFOLEY_FAKE_CLOCK")


def fake_now() -> float:
    """Seconds on the fake REAPER's clock (run_scenario.lua publishes it each tick), so that
    the stand-in's phases last as long for the script as the test says, whatever the load;
    the machine's clock where no driver publishes one."""
    while FAKE_CLOCK:
        try:
            if time.time() - os.stat(FAKE_CLOCK).st_mtime > 10:
                return math.inf  # the driver has ended (a tick takes a fraction of a second): time is up
            return float(Path(FAKE_CLOCK).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not yet published
            time.sleep(0.01)
    return time.monotonic()


def wait_for(cancel: Path, seconds: float) -> bool:
    """Sleeps up to `seconds` of the fake clock; True as soon as the cancel file exists."""
    end = fake_now() + seconds
    while fake_now() < end:
        if cancel.exists():
            return True
        time.sleep(0.01)
    return cancel.exists()


def sleep(seconds: float) -> None:
    end = fake_now() + seconds
    while fake_now() < end:
        time.sleep(0.01)


def newest_protocol() -> int:
    return int(os.environ.get("STEPFOLEY_STANDIN_PROTOCOL", "2"))


def query(args, mode: str) -> int:
    """--ping / --engine-status: the final status on stdout and, with --status, in that file."""
    if mode == "down":
        final = {"state": "error", "exit_code": 3, "answer": None,
                 "error": {"code": "engine_not_running", "message": not_running_message("127.0.0.1", args.port)}}
    elif args.ping:
        final = {"state": "done", "exit_code": 0, "error": None,
                 "answer": {"protocol": newest_protocol(), "model": "standin", "device": "cpu",
                            "round_trip_s": 0.001}}
    else:
        answer = {"protocol": newest_protocol(), "model": "standin", "device": "cpu",
                  "state": "stopping" if mode == "stopping" else "idle", "current": None,
                  "queue": [], "queue_length": 0, "queue_limit": 256, "jobs_finished": 0, "engine_steps": 0}
        if mode == "long_queue":  # as the engine answers 200 waiting jobs: the list cut to fit one datagram
            answer.update(state="busy", current={"job_id": "j0", "caption": "rain", "phase": "sampling"},
                          queue=[{"job_id": f"j{i}", "caption": "rain"} for i in range(1, 65)],
                          queue_length=200, queue_truncated=True)
        if newest_protocol() >= 2:
            answer["protocols"] = list(range(1, newest_protocol() + 1))
        if os.environ.get("STEPFOLEY_STANDIN_CAPS") != "none":
            answer["capabilities"] = capabilities().to_json()
            if os.environ.get("STEPFOLEY_STANDIN_BOUNDS"):  # an engine publishing other bounds
                answer["capabilities"]["bounds"] = {**answer["capabilities"]["bounds"],
                                                    **json.loads(os.environ["STEPFOLEY_STANDIN_BOUNDS"])}
        final = {"state": "done", "exit_code": 0, "error": None, "answer": answer}
    if args.status:
        write_status(Path(args.status), **final)
    print(json.dumps(final))
    return final["exit_code"]


def make_stem(request: dict, caption: str, used: dict, seed: int, mode: str) -> dict:
    """A sine stem of the region's length for one seed: {"stem_path", "metadata"}."""
    region = request["region"]
    sr = request["sample_rate"]
    frames = round((region["project_end"] - region["project_start"]) * sr)
    freq = 100.0 + seed % 1000
    wave = 0.25 * np.sin(2 * math.pi * freq * np.arange(frames) / sr)
    name = "".join(c if c.isalnum() else "_" for c in request["name_hint"])[:40] or "stem"
    stem = Path(request["output_dir"]) / f"{name}_{seed}.wav"
    tmp = stem.with_name(stem.name + ".tmp.wav")
    followed = {}
    if request.get("loudness_curve"):  # as every model does: gain automation onto the curve
        from stepfoley.engine.loudness_curve import follow_curve

        finished, levels = follow_curve(wave, sr, request["loudness_curve"])
        wave = finished[0]
        followed = {k: levels[k] for k in ("loudness_curve_applied_as", "loudness_curve_error_db",
                                           "loudness_curve_gain_db")}
    if mode == "badstem":
        tmp.write_bytes(b"not audio")
    else:
        sf.write(tmp, wave, sr, subtype="PCM_24")
    os.replace(tmp, stem)
    return {"stem_path": str(stem),
            "metadata": {"model": "standin", "seed": seed, "frequency_hz": freq, "caption": caption,
                         "method": used["method"], "alpha": used["alpha"], "beta": used["beta"],
                         "steps": used["steps"],
                         "earlier_layers_silent": silent_mix(request.get("existing_mix")),
                         **captions_left_out(request, used["method"]), **followed}}


def captions_left_out(request: dict, method: str) -> dict:
    """negative_prompt without a negative caption of its own steers away from the previous
    captions, as many as the text encoder hears whole: the engine's rule (session.fit_captions)
    with the embedded model's own tokenizer, and its metadata's count of those left out."""
    if method != "negative_prompt" or not is_blank(request.get("negative_caption", "")):
        return {}
    from stepfoley.engine.embedded.text import TEXT_SEQ_LEN, WordPieceTokenizer, packaged_model_dir
    from stepfoley.engine.session import fit_captions

    tokenizer = WordPieceTokenizer(packaged_model_dir() / "vocab.txt")
    _, left_out = fit_captions(request.get("previous_captions", []), lambda text: len(tokenizer.content_ids(text)),
                               TEXT_SEQ_LEN - 2)
    return {"previous_captions_left_out": left_out}


def silent_mix(path) -> bool:
    """Whether the layers' bounce is there and silent as the engine gates it (below -70 LUFS):
    the track is then made as a first track is, and its metadata says so (engine/session.py)."""
    if not path:
        return False
    mix, sr = sf.read(path, always_2d=True)
    return mixing.integrated_loudness(mix.T, sr) < mixing.SILENCE_GATE_LUFS


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("send")
    p.add_argument("--request")
    p.add_argument("--ping", action="store_true")
    p.add_argument("--engine-status", action="store_true")
    p.add_argument("--cancel")
    p.add_argument("--status")
    p.add_argument("--port", type=int, default=9017)
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    mode = os.environ.get("STEPFOLEY_STANDIN", "ok")
    if args.ping or args.engine_status:
        return query(args, mode)
    if args.cancel is not None:
        with open(Path(FAKE_CLOCK or ".").parent / "engine_cancels.txt", "a", encoding="utf-8") as log:
            log.write(args.cancel + "\n")
        print(json.dumps({"state": "done", "exit_code": 0, "error": None, "answer": {"cancelled": args.cancel}}))
        return 0
    status = Path(args.status)
    cancel = Path(args.status + ".cancel")
    status.with_name("standin_argv.json").write_text(json.dumps(sys.argv[1:], ensure_ascii=False), encoding="utf-8")
    remove_stale_cancel(str(cancel), args.request, str(status))  # as the real client does
    if mode == "down":
        write_status(status, state="error", exit_code=3, error={"code": "engine_not_running",
                     "message": not_running_message("127.0.0.1", args.port)})
        return 3
    try:  # as the real client (stepfoley send): a file that is not a request is said in the status
        raw = json.loads(Path(args.request).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        write_status(status, state="error", exit_code=EXIT_USAGE, error={
            "code": "bad_request_file", "message": f"Cannot read the request file '{args.request}': {e}"})
        return EXIT_USAGE
    try:
        if raw.get("protocol", 1) > newest_protocol():
            raise RequestError(f"This engine speaks protocol 1, the request says {raw['protocol']}.")
        typed = parse_request(raw, capabilities())
    except RequestError as e:
        write_status(status, state="error", exit_code=4, error={"code": e.code, "message": e.message})
        return 4
    size = len(request_payload(raw).encode("utf-8"))
    if size > MAX_REQUEST_BYTES:  # the real client refuses it before sending
        write_status(status, state="error", exit_code=4, error={"code": "payload_too_large",
                                                                "message": too_large_message(size)})
        return 4
    request = typed.to_json()
    used = resolve_guidance(DEFAULTS, typed.method, typed.alpha, typed.beta, steps=typed.steps)
    job_id = "standin-%d" % os.getpid()
    total = used["steps"]
    if mode == "loading":  # the real client's words after --timeout of an engine loading its model
        write_status(status, state="error", exit_code=4, error={"code": "engine_loading", "message": (
            f"The engine was still loading its model after {args.timeout:g} s; wait until it prints 'StepFoley "
            "engine ready', then send again (or give a longer --timeout).")})
        return 4
    write_status(status, state="queued", job_id=job_id, step=0, total=total)
    if mode == "queue":
        for ahead in range(6, 0, -1):
            write_status(status, state="queued", job_id=job_id, step=0, total=total, queue_position=ahead)
            if wait_for(cancel, 4.0):
                write_status(status, state="cancelled", job_id=job_id, step=0, total=total)
                return 6
    if mode in ("flaky", "garbled"):
        sleep(4.5 if mode == "flaky" else 2.0)  # garbled: after the script has read the first status
        write_half(status)
        if wait_for(cancel, 1.5 if mode == "flaky" else 600):
            return 6
    if mode == "phases":
        for step in range(1, 5):
            sleep(0.25)
            write_status(status, state="running", phase="features", job_id=job_id, step=step, total=4)
    for step in range(1, total + 1):
        if cancel.exists() and mode != "late":
            write_status(status, state="cancelled", job_id=job_id, step=step - 1, total=total)
            return 6
        sleep(0.3 if mode in ("slow", "phases", "late") else 0.01)
        fields = {"phase": "sampling"} if mode == "phases" else {}
        write_status(status, state="running", job_id=job_id, step=step, total=total, **fields)
        if mode == "stall":
            if wait_for(cancel, args.timeout):
                write_status(status, state="cancelled", job_id=job_id, step=step, total=total)
                return 6
            write_status(status, state="error", job_id=job_id, step=step, total=total, exit_code=7,
                         error={"code": "timed_out",
                                "message": f"The engine showed no progress for {args.timeout:g} s; "
                                           "the job may still be running there."})
            return 7
        if mode == "hung":
            wait_for(cancel, 600)
            return 1
        if mode in GONE:
            code, message = GONE[mode](args.port)
            exit_code = EXIT_NOT_RUNNING if code == "engine_not_running" else EXIT_FAILED
            write_status(status, state="error", job_id=job_id, step=step, total=total, exit_code=exit_code,
                         error={"code": code, "message": message})
            return exit_code
    stems = [make_stem(request, typed.caption, used, request["seed"] + i, mode) for i in range(typed.variations)]
    if typed.protocol >= 2:
        stems.reverse()
        scored = len(stems) > 1  # as the engine: one take is not ranked, and gets no score
        for rank, one in enumerate(stems, 1):
            one["metadata"].update(rank=rank, ranking={"score": float(one["metadata"]["seed"])} if scored else {})
        write_status(status, state="done", job_id=job_id, step=total, total=total, stem_path=stems[0]["stem_path"],
                     metadata=stems[0]["metadata"], stems=stems,
                     ranking={"ranked_by": RANKED_BY_EMBEDDING if scored else RANKED_BY_SEED,
                              "reason": "the stand-in scores a take by its seed" if scored else "one take"})
        return 0
    write_status(status, state="done", job_id=job_id, step=total, total=total, **stems[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
