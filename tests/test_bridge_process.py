"""The engine as a real process: SIGTERM and Ctrl-C shut it down cleanly, and a killed engine
leaves no stem (nothing under a .wav name) behind, even when killed mid-write."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepfoley.bridge import protocol
from stepfoley.bridge.client import EXIT_NOT_RUNNING, EngineClient
from test_bridge_kit import RawPeer, make_request

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# The same serve loop as `stepfoley serve` (serve_until_signalled), with the sine runner.
ENGINE = """
import sys
from stepfoley.bridge.server import EngineServer, ServerConfig, serve_until_signalled
from test_bridge_kit import SineRunner
server = EngineServer(SineRunner(step_s=float(sys.argv[1]), write_s=float(sys.argv[2])), ServerConfig(port=0))
print(server.address[1], flush=True)
serve_until_signalled(server)
print("clean exit", flush=True)
"""


def start_engine(step_s: float, write_s: float = 0.0) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(step_s), str(write_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    port = int(proc.stdout.readline())
    return proc, port


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_engine_cleanly(tmp_path, signum):
    proc, port = start_engine(step_s=0.05)
    peer = RawPeer(port)
    try:
        peer.generate(make_request(tmp_path, steps=200), "long")
        peer.receive_until({protocol.PROGRESS})
        peer.generate(make_request(tmp_path, caption="queued"), "queued")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0 and "clean exit" in out, err
        finals = {}
        while len(finals) < 2:
            address, args = peer.receive()
            if address in protocol.FINAL_REPLIES:
                finals[args[0]] = args[2]
        assert finals == {"long": "engine_stopped", "queued": "engine_stopped"}
        assert os.listdir(tmp_path / "out") == []
    finally:
        peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_killed_engine_leaves_no_stem_and_its_client_is_told(tmp_path):
    proc, port = start_engine(step_s=0.0, write_s=5.0)
    client = EngineClient(port=port)
    out_dir = tmp_path / "out"
    try:
        job = client.submit(make_request(tmp_path))
        deadline = time.monotonic() + 5
        while not any(n.endswith(".part") for n in os.listdir(out_dir)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(n.endswith(".part") for n in os.listdir(out_dir)), "the write should be under way"
        proc.kill()
        proc.wait(5)
        leftovers = os.listdir(out_dir)
        assert [n for n in leftovers if n.endswith(".wav")] == []
        assert all(n.startswith(".") for n in leftovers), "only a hidden temp file may remain"
        started = time.monotonic()
        status = job.wait()
        assert (status["exit_code"], status["error"]["code"]) == (EXIT_NOT_RUNNING, "engine_not_running")
        assert time.monotonic() - started < 3.0
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
