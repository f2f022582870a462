"""Bridge figures on loopback: ping round trip, the request-to-result overhead beyond the
generation itself (target <= 100 ms), the throughput of queued requests, and how many pings
are answered while another local process floods the engine with /status (with the flood limit
and, side by side, without it).

    stepfoley bench bridge [--pings 1000] [--requests 200]
    stepfoley bench bridge --port 9017   # pings against a running `stepfoley serve`

The in-process engine uses a runner that writes a tiny real WAV, so the figures are the
bridge's own cost (sockets, JSON, validation, queueing, the status-file client loop)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

from stepfoley.bridge.client import EngineClient, EngineNotRunning, send_request
from stepfoley.bridge.server import EngineServer, ServerConfig
from stepfoley.request import MAX_STEPS


class TimedRunner:
    """Writes 10 ms of silence per request and records how long it took inside the runner."""

    def __init__(self):
        self.inside_s: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, request, on_progress, is_cancelled):
        start = time.perf_counter()
        for step in range(1, request.steps + 1):
            on_progress("sampling", step, request.steps)
        with self.lock:
            self.count += 1
            n = self.count
        path = os.path.join(request.output_dir, f"bench_{n:06d}.wav")
        sf.write(path, np.zeros(request.sample_rate // 100, dtype=np.float32), request.sample_rate,
                 subtype="PCM_24")
        self.inside_s[request.caption] = time.perf_counter() - start
        return {"stem_path": path, "metadata": {"sample_rate": request.sample_rate}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_ping(port: int, n: int) -> None:
    with EngineClient(port=port) as c:
        for _ in range(20):
            c.ping()
        rtts = [c.ping()["round_trip_s"] * 1e3 for _ in range(n)]
    print(f"ping round trip ({n}): p50 {percentile(rtts, 0.5):.3f} ms, p99 {percentile(rtts, 0.99):.3f} ms")


def request_for(folder: str, caption: str, steps: int) -> dict:
    return {
        "region": {"video": os.path.join(folder, "picture.mp4"), "file_in": 0.0, "file_out": 1.0},
        "caption": caption, "steps": steps, "output_dir": folder, "sample_rate": 48000,
    }


def bench_overhead(port: int, runner: TimedRunner, folder: str, n: int, steps: int) -> None:
    overheads = []
    status_path = os.path.join(folder, "status.json")
    for i in range(n):
        caption = f"overhead {i}"
        start = time.perf_counter()
        code, _ = send_request(request_for(folder, caption, steps), status_path, port=port)
        total = time.perf_counter() - start
        assert code == 0, code
        overheads.append((total - runner.inside_s[caption]) * 1e3)
    print(f"request-to-result overhead beyond generation ({n} requests, {steps} steps, status file on): "
          f"p50 {percentile(overheads, 0.5):.2f} ms, p99 {percentile(overheads, 0.99):.2f} ms "
          f"(target <= 100 ms)")


def bench_throughput(port: int, folder: str, n: int, steps: int) -> None:
    with EngineClient(port=port) as c:
        start = time.perf_counter()
        jobs = [c.submit(request_for(folder, f"queued {i}", steps)) for i in range(n)]
        while not all(j.finished for j in jobs):
            for j in jobs:
                j.poll(0.0)
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    done = sum(j.status["state"] == "done" for j in jobs)
    print(f"queued throughput: {n} requests submitted at once, {done} done in {elapsed:.2f} s "
          f"= {n / elapsed:.0f} requests/s ({elapsed / n * 1e3:.2f} ms each, generation included)")


# Another process sends /status as fast as it can for argv[2] seconds and prints how many it sent.
FLOODER = """import socket, sys, time
from stepfoley.bridge import osc, protocol
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
message, target = osc.encode(protocol.STATUS, 9, "flood", ""), ("127.0.0.1", int(sys.argv[1]))
sent, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    for _ in range(100):
        try:
            s.sendto(message, target)
            sent += 1
        except OSError:  # a full send buffer (macOS: ENOBUFS): a flooder does not stop for it
            pass
print(sent)
"""


def pings_under_flood(limited: bool, pings: int) -> tuple[int, float, int]:
    """(pings answered, the flood's rate in datagrams a second, datagrams dropped as flood)."""
    with EngineServer(TimedRunner(), ServerConfig(port=0)).start() as srv:
        if not limited:
            srv.flood_rate = srv.flood_busy_s = float("inf")
        seconds = 1.0 + pings * 0.5 + 0.5  # a second to build the backlog, at most 0.5 s a ping
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(srv.address[1]), str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        answered = 0
        with EngineClient(port=srv.address[1]) as c:
            for _ in range(pings):
                try:
                    c.ping(timeout=0.5)
                    answered += 1
                except EngineNotRunning:
                    pass
        sent = int(flooder.communicate(timeout=seconds + 30)[0])
        return answered, sent / seconds, srv.flood_dropped


def bench_flood(pings: int) -> None:
    figures = {limited: pings_under_flood(limited, pings) for limited in (False, True)}
    (without, rate, _), (with_limit, _, dropped) = figures[False], figures[True]
    print(f"pings answered (0.5 s each) while one local process floods /status at {rate / 1e3:.0f}k datagrams/s: "
          f"{without}/{pings} without the flood limit, {with_limit}/{pings} with it ({dropped} flood datagrams "
          "dropped unread)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stepfoley bench bridge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--flood-pings", type=int, default=20, help="pings sent during each /status flood")
    parser.add_argument("--port", type=int, default=None, help="ping a running engine instead of an in-process one")
    args = parser.parse_args(argv)
    for option in ("pings", "requests", "steps", "flood_pings"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.steps > MAX_STEPS:  # the engine would refuse every request
        parser.error(f"--steps must be at most {MAX_STEPS}")
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error("--port must be from 1 to 65535")
    if args.port is not None:
        bench_ping(args.port, args.pings)
        return
    runner = TimedRunner()
    with tempfile.TemporaryDirectory() as folder, \
            EngineServer(runner, ServerConfig(port=0, max_queue=max(256, args.requests))).start() as srv:
        open(os.path.join(folder, "picture.mp4"), "wb").close()
        port = srv.address[1]
        print(f"in-process engine on 127.0.0.1:{port}, python {sys.version.split()[0]}")
        bench_ping(port, args.pings)
        bench_overhead(port, runner, folder, min(args.requests, 100), args.steps)
        bench_throughput(port, folder, args.requests, args.steps)
    bench_flood(args.flood_pings)


if __name__ == "__main__":
    main()
