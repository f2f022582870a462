"""Shared parts of the bridge tests: a small runner that obeys the FoleyService contract and
does real work (checks the mix, writes a real WAV with the engine's writer, reports each step,
honors cancel), and fixtures for a real server on an ephemeral 127.0.0.1 port. The sine runner
makes protocol tests fast and exact; what only the engine can get wrong behind the server (its
phases, its cancel, its metadata, its stem) is tested with the real engine in
test_bridge_server.py (test_the_real_engine_...) and test_bridge_hardening.py."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from stepfoley.bridge import osc, protocol
from stepfoley.bridge.client import EngineClient
from stepfoley.bridge.server import EngineServer, ServerConfig
from stepfoley.engine import audio_io, output_folders
from stepfoley.engine.errors import AudioError, GenerationCancelled, VideoError
from stepfoley.request import MAX_STEM_BYTES, parse_request

SUBTYPES = {"wav24": "PCM_24", "wav32f": "FLOAT"}
DEFAULT_STEPS = 25


class SineRunner:
    """A stand-in model: a sine whose pitch depends on the seed, `step_s` seconds per step. It
    writes its stem the way FoleyService does (the engine's own writer, the folder remembered)."""

    def __init__(self, step_s: float = 0.0, model: str = "test-sine", before_step=None):
        self.step_s = step_s
        self.model = model
        # before_step(step): called before each step's work, so a test can hold a job at a
        # known point instead of hoping a sleep outlasts the machine's load
        self.before_step = before_step
        self.started: list[str] = []  # captions in the order jobs started
        self.lock = threading.Lock()

    def __call__(self, request, on_progress, is_cancelled):
        with self.lock:
            self.started.append(request.caption)
        region = request.region
        if not os.path.isfile(region.video):
            raise VideoError(f"The video '{region.video}' does not exist.")
        if request.existing_mix is not None:
            try:
                sf.info(request.existing_mix)
            except Exception as e:
                raise AudioError(f"The existing mix '{request.existing_mix}' cannot be read: {e}") from None
        total = request.steps or DEFAULT_STEPS
        for step in range(1, total + 1):
            if self.before_step is not None:
                self.before_step(step)
            if is_cancelled():
                raise GenerationCancelled("Cancelled by the user.")
            if self.step_s:
                time.sleep(self.step_s)
            on_progress("sampling", step, total)
        results = [self._stem(request, request.seed + i) for i in range(request.variations)]
        if request.protocol < 2:
            return results[0]
        # protocol 2: every variation its own stem, best first; a sine has no judge, so seed order
        return {"stems": results, "ranking": {"ranked_by": "seed", "reason": "a sine has no embedding"}}

    def _stem(self, request, seed: int) -> dict:
        region = request.region
        sr = request.sample_rate
        t = np.arange(int(round(region.project_duration * sr))) / sr
        wave = (0.25 * np.sin(2 * np.pi * (220 + seed % 500) * t)).astype(np.float32)
        output_folders.remember(request.output_dir)
        path = audio_io.write_new_wav(request.output_dir, request.name_hint or request.caption, wave, sr,
                                      SUBTYPES[request.format], max_bytes=MAX_STEM_BYTES)
        metadata = {
            "sample_rate": sr, "duration": len(t) / sr, "lufs": None, "caption": request.caption,
            "seed": seed, "alpha": request.alpha, "beta": request.beta,
            "method": request.method, "model": self.model,
        }
        return {"stem_path": str(path), "metadata": metadata}


def make_request(tmp_path, caption="footsteps on gravel", **changes) -> dict:
    video = tmp_path / "picture.mp4"
    if not video.exists():
        video.write_bytes(b"not really a video, the sine runner only checks it exists")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    request = {
        "protocol": 1,
        "region": {"video": str(video), "file_in": 12.0, "file_out": 13.0, "playrate": 1.0,
                   "project_start": 30.0, "project_end": 31.0},
        "caption": caption, "method": "nag", "alpha": 4.5, "beta": 1.5, "seed": 1, "steps": 4,
        "output_dir": str(out), "sample_rate": 48000, "format": "wav24",
    }
    request.update(changes)
    return request


@pytest.fixture
def runner():
    return SineRunner()


@pytest.fixture
def server(runner):
    srv = EngineServer(runner, ServerConfig(port=0, model="test-sine", device="cpu")).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = EngineClient(port=server.address[1])
    yield c
    c.close()


class RawPeer:
    """A bare UDP socket speaking OSC by hand, for replies the client library would hide."""

    def __init__(self, server_port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(30.0)
        self.server = ("127.0.0.1", server_port)
        self.port = self.sock.getsockname()[1]

    def send(self, address: str, *args) -> None:
        self.sock.sendto(osc.encode(address, *args), self.server)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    # The defaults bound a wait for a reply that should come (a loaded machine may hold either
    # side for seconds); a test that expects silence says how long it listens.
    def receive(self, timeout: float = 30.0) -> tuple[str, list]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        [(address, args)] = osc.decode(data)
        return address, args

    def receive_until(self, addresses, timeout: float = 60.0) -> list[tuple[str, list]]:
        """Every reply up to and including the first whose address is in `addresses`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            address, args = self.receive(max(0.01, deadline - time.monotonic()))
            seen.append((address, args))
            if address in addresses:
                return seen

    def generate(self, request: dict, request_id: str = "r1", token: str = "") -> None:
        self.send(protocol.GENERATE, self.port, request_id, token, json.dumps(request))

    def close(self):
        self.sock.close()


@pytest.fixture
def peer(server):
    p = RawPeer(server.address[1])
    yield p
    p.close()


def test_sine_runner_obeys_the_service_contract(tmp_path):
    request = parse_request(make_request(tmp_path, steps=3, format="wav32f", sample_rate=44100))
    steps = []
    result = SineRunner()(request, lambda *p: steps.append(p), lambda: False)
    assert steps == [("sampling", 1, 3), ("sampling", 2, 3), ("sampling", 3, 3)]
    info = sf.info(result["stem_path"])
    assert (info.samplerate, info.subtype, info.frames) == (44100, "FLOAT", 44100)
    assert os.listdir(request.output_dir) == [os.path.basename(result["stem_path"])]
    with pytest.raises(GenerationCancelled):
        SineRunner()(request, lambda *p: None, lambda: True)
