"""A stand-in for `stepfoley send` (docs/osc-protocol.md), for the REAPER tests while no
real engine is available: same arguments, same status file (written atomically), same
cancel file convention and exit codes. It validates the request with bridge.protocol and
"generates" a sine stem of exactly the region's length, named after the caption.

Behaviour from $STEPFOLEY_STANDIN: "ok" (default), "down" (engine not running: exit 3),
"slow" (0.3 s per step, so a test can cancel mid-generation)."""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stepfoley.request import RequestError, parse_request


def write_status(path: Path, **fields) -> None:
    fields["updated"] = time.time()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fields), encoding="utf-8")
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("send")
    p.add_argument("--request")
    p.add_argument("--ping", action="store_true")
    p.add_argument("--status")
    p.add_argument("--port", type=int, default=9017)
    p.add_argument("--timeout", type=float)
    args = p.parse_args()
    mode = os.environ.get("STEPFOLEY_STANDIN", "ok")
    if args.ping:
        if mode == "down":
            print(f"No StepFoley engine answers on 127.0.0.1:{args.port}.", file=sys.stderr)
            return 3
        print('{"model": "standin", "device": "cpu"}')
        return 0
    status = Path(args.status)
    cancel = Path(args.status + ".cancel")
    if mode == "down":
        write_status(status, state="error", error={"code": "engine_not_running",
                     "message": f"No StepFoley engine answers on 127.0.0.1:{args.port}. Start it with `stepfoley serve`."})
        return 3
    try:
        request = parse_request(json.loads(Path(args.request).read_text(encoding="utf-8"))).to_json()
    except RequestError as e:
        write_status(status, state="error", error={"code": e.code, "message": e.message})
        return 4
    job_id = "standin-%d" % os.getpid()
    total = request.get("steps", 25)  # absent: the model's default
    write_status(status, state="queued", job_id=job_id, step=0, total=total)
    for step in range(1, total + 1):
        if cancel.exists():
            write_status(status, state="cancelled", job_id=job_id, step=step - 1, total=total)
            return 6
        time.sleep(0.3 if mode == "slow" else 0.01)
        write_status(status, state="running", job_id=job_id, step=step, total=total)
    region = request["region"]
    sr = request["sample_rate"]
    frames = round((region["project_end"] - region["project_start"]) * sr)
    freq = 100.0 + request["seed"] % 1000
    wave = 0.25 * np.sin(2 * math.pi * freq * np.arange(frames) / sr)
    name = "".join(c if c.isalnum() else "_" for c in request["name_hint"])[:40] or "stem"
    stem = Path(request["output_dir"]) / f"{name}_{request['seed']}.wav"
    tmp = stem.with_name(stem.name + ".tmp.wav")
    sf.write(tmp, wave, sr, subtype="PCM_24")
    os.replace(tmp, stem)
    write_status(status, state="done", job_id=job_id, step=total, total=total, stem_path=str(stem),
                 metadata={"model": "standin", "seed": request["seed"], "frequency_hz": freq})
    return 0


if __name__ == "__main__":
    sys.exit(main())
