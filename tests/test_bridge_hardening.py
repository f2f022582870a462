"""Issue 12, finding by finding: what a hostile or careless client sends to the engine over real
UDP sockets on 127.0.0.1, and what must hold afterwards (it answers pings, leaves no stray
file, writes little log, still serves a valid request). Each test names its finding."""

import json
import logging
import os
import random
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf

from stepfoley.bridge import logs, osc, protocol
from stepfoley.bridge import server as server_module
from stepfoley.bridge.client import EngineClient, EngineNotRunning
from stepfoley.bridge.server import EngineServer, ServerConfig
from stepfoley.engine.errors import AudioError
from test_bridge_kit import RawPeer, SineRunner, client, make_request, peer, runner, server  # noqa: F401
from test_session import scene_video, tiny  # noqa: F401

BUNDLE = b"#bundle\x00" + bytes(8)


def element(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big", signed=True) + data


def alive(p: RawPeer, request_id: str = "alive") -> None:
    p.send(protocol.PING, p.port, request_id, "")
    assert p.receive(timeout=30.0)[:1] == (protocol.PONG,)


def nested(data: bytes, depth: int) -> bytes:
    for _ in range(depth):
        data = BUNDLE + element(data)
    return data


# --- 1: bundles are parsed with bounded work ---------------------------------------------------

PING = osc.encode(protocol.PING, 9, "r", "")


@pytest.mark.parametrize("datagram", [
    BUNDLE + (-4).to_bytes(4, "big", signed=True),  # the 20 bytes that hung the engine
    BUNDLE + element(PING) + (-4).to_bytes(4, "big", signed=True),
    BUNDLE + (0).to_bytes(4, "big"),
    BUNDLE + (6).to_bytes(4, "big") + b"/a\x00\x00,\x00\x00\x00",  # not a multiple of 4
    BUNDLE + (2**31 - 1).to_bytes(4, "big") + PING,  # past the end
    BUNDLE + b"\x00\x00",  # a size cut short
    nested(PING, 5),  # deeper than 4
    BUNDLE + element(PING) * 17,  # more than 16 messages
], ids=["negative", "negative-after-a-message", "zero", "unaligned", "past-the-end", "short-size", "too-deep",
        "too-many"])
def test_finding_01_a_malformed_bundle_is_dropped_at_once(datagram):
    with pytest.raises(osc.DecodeError):
        osc.decode(datagram)
    with EngineServer(SineRunner(), ServerConfig(port=0, token="t")).start() as srv:
        p = RawPeer(srv.address[1])
        p.send_bytes(datagram)
        p.send(protocol.PING, p.port, "after", "t")
        assert p.receive(timeout=2.0) == (protocol.PONG, ["after", protocol.PROTOCOL_VERSION, "unknown", "unknown"])
        p.close()


def osc_string(text: bytes) -> bytes:
    return text + b"\x00" * (4 - len(text) % 4)


@pytest.mark.parametrize("datagram, words", [
    (BUNDLE + (2**31 - 4).to_bytes(4, "big") + PING, "bundle element size 2147483644 "),  # aligned, past the end
    (BUNDLE + (6).to_bytes(4, "big") + b"/a\x00\x00,\x00" + b"\x00\x00" + element(PING), "bundle element size 6 "),
    (osc_string(b"/a") + osc_string(b"," + b"i" * 17) + b"\x00" * 68, "at most 16 tags"),
    (osc_string(b"/a") + osc_string(b",b") + (-4).to_bytes(4, "big", signed=True) + b"\x00" * 8, "blob size -4 "),
], ids=["aligned-past-the-end", "unaligned-then-more", "17-arguments", "negative-blob"])
def test_each_decoder_bound_refuses_on_its_own(datagram, words):
    """One case per check, each breaking that check alone: cases that broke two checks at once
    let either check be removed unnoticed."""
    with pytest.raises(osc.DecodeError, match=re.escape(words)):
        osc.decode(datagram)


def test_finding_01_a_well_formed_nested_bundle_is_answered(peer):
    ping = osc.encode(protocol.PING, peer.port, "inner", "")
    peer.send_bytes(nested(ping, 4))
    assert peer.receive()[1][0] == "inner"


# --- 2 and 3: lone surrogates neither stop the loop nor the worker -------------------------------

@pytest.mark.parametrize("change", [
    {"\ud800": 1},
    {"output_dir": "/tmp/\ud800"},
    {"output_dir": "relative/\ud800"},
    {"caption": "rain \udcff"},
    {"region": {"video": "/v\ud800.mp4", "file_in": 0, "file_out": 2}},
    {"existing_mix": "/tmp/mix\ud800.wav"},
    {"method": "reference", "reference_audio": "/tmp/ref\ud800.wav"},
], ids=["key", "output_dir", "relative", "caption", "video", "existing_mix", "reference"])
def test_finding_02_03_a_lone_surrogate_is_refused_before_a_job_exists(peer, tmp_path, change):
    request = {**make_request(tmp_path), **change}
    peer.generate(request, "s")
    address, args = peer.receive()
    assert (address, args[1], args[2]) == (protocol.ERROR, "", "invalid_request")
    assert "\\ud" in args[3] or "\\udcff" in args[3]  # quoted, escaped
    alive(peer)
    peer.generate(make_request(tmp_path), "good")
    assert peer.receive_until(protocol.FINAL_REPLIES)[-1][0] == protocol.DONE


class Unprintable(Exception):
    code = "bad_audio"

    def __str__(self):
        raise RuntimeError("no message")


@pytest.mark.parametrize("error", [
    AudioError("The existing mix '/tmp/\ud800.wav' cannot be read."),  # a message with a lone surrogate
    Unprintable(),  # an exception whose message cannot even be made
], ids=["surrogate-message", "unprintable"])
def test_finding_03_the_worker_survives_any_job_failure_and_always_replies(tmp_path, error):
    calls = []

    def failing_once(request, on_progress, is_cancelled):
        calls.append(request.caption)
        if len(calls) == 1:
            raise error
        return SineRunner()(request, on_progress, is_cancelled)

    with EngineServer(failing_once, ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        p.generate(make_request(tmp_path, caption="first"), "a")
        p.generate(make_request(tmp_path, caption="second"), "b")
        finals = {}
        while len(finals) < 2:
            address, args = p.receive()
            if address in protocol.FINAL_REPLIES:
                finals[args[0]] = (address, args[2:])
        assert finals["a"][0] == protocol.ERROR and finals["a"][1][0] == "bad_audio"
        assert finals["b"][0] == protocol.DONE
        p.send(protocol.STATUS, p.port, "st", "")
        status = json.loads(p.receive()[1][1])
        assert (status["state"], status["queue"], status["jobs_finished"]) == ("idle", [], 2)
        p.close()


# --- 4: the log stays small whatever arrives ---------------------------------------------------

class LogBytes(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bytes = 0

    def emit(self, record):
        self.bytes += len(self.format(record).encode("utf-8", "backslashreplace")) + 1


@pytest.fixture
def log_bytes():
    handler, root, bridge = LogBytes(), logging.getLogger(), logging.getLogger("stepfoley.bridge")
    levels = root.level, bridge.level
    root.addHandler(handler)
    bridge.setLevel(logging.DEBUG)  # --verbose: every dropped datagram is logged
    yield handler
    root.removeHandler(handler)
    root.setLevel(levels[0]), bridge.setLevel(levels[1])


def test_finding_04_a_flood_of_junk_writes_a_few_kb_of_log(peer, log_bytes):
    unknown_tags = b"/stepfoley/ping\x00" + b"," + b"x" * 60_000
    unknown_tags += b"\x00" * (4 - len(unknown_tags) % 4)
    bundle = BUNDLE + element(unknown_tags)
    assert 60_000 < len(bundle) < 65_000
    started = time.monotonic()
    for i in range(3):
        peer.send_bytes(bundle)
        alive(peer, f"a{i}")
    for i in range(500):
        peer.send_bytes(b"#bundle\x00" + bytes(i % 40))
        peer.send(f"/junk/{i}", peer.port, "j", "")  # unknown_address: answered, with a log line at debug
    while True:  # drain the replies, then one ping proves the engine read everything
        try:
            if peer.receive(timeout=0.5)[0] == protocol.PONG:
                break
        except TimeoutError:
            peer.send(protocol.PING, peer.port, "end", "")
    elapsed = time.monotonic() - started
    assert log_bytes.bytes <= logs.LOG_BURST_BYTES + logs.LOG_BYTES_PER_S * elapsed + 1024


def test_the_log_budget_holds_back_and_then_says_how_much():
    now = [0.0]
    budget = logs.LogBudget(bytes_per_s=1000, burst=1000, clock=lambda: now[0])
    log = logging.getLogger("test.budget")
    records = [log.makeRecord(log.name, logging.WARNING, __file__, 1, "x" * 300 + " %s", ("\ud800",), None)
               for _ in range(5)]
    assert [budget.filter(r) for r in records] == [True, True, False, False, False]
    now[0] = 10.0
    assert budget.filter(records[0]) and "3 earlier log records suppressed" in records[0].msg
    assert "\\ud800" in records[0].msg and records[0].msg.encode("utf-8")


def test_a_record_whose_arguments_do_not_fit_its_format_is_logged_not_raised():
    # the flood warning once formatted an infinite rate with %d: the OverflowError, raised in
    # this filter, ended the engine's dispatch thread
    log = logging.getLogger("test.budget")
    record = log.makeRecord(log.name, logging.WARNING, __file__, 1, "over %d a second", (float("inf"),), None)
    assert logs.LogBudget().filter(record) and record.msg == "over %d a second (inf,)"


# --- 5: limits stated by the request model and enforced before work ---------------------------

@pytest.mark.parametrize("change, words", [
    ({"region": {"video": "V", "file_in": 0.0, "file_out": 600.0, "playrate": 0.01}, "sample_rate": 192000,
      "format": "wav32f"}, "at most 600 s"),  # the largest request protocol 1 allowed: ~46 GB
    ({"region": {"video": "V", "file_in": 0.0, "file_out": 600.0}, "sample_rate": 192000, "format": "wav32f"},
     "at most 128 MiB"),
    ({"region": {"video": "V", "file_in": 0.0, "file_out": 1.0, "playrate": 0.001}}, "region.playrate"),
])
def test_finding_05_a_request_over_a_limit_is_refused_naming_it(peer, tmp_path, change, words):
    request = make_request(tmp_path, **change)
    request["region"]["video"] = str(tmp_path / "picture.mp4")
    peer.generate(request, "big")
    address, args = peer.receive()
    assert (address, args[1], args[2]) == (protocol.ERROR, "", "invalid_request") and words in args[3]
    assert os.listdir(tmp_path / "out") == []


def test_finding_05_input_files_are_checked_before_a_job_exists(peer, tmp_path):
    huge = tmp_path / "huge.wav"
    with open(huge, "wb") as f:
        f.truncate(2**30 + 1)  # sparse: costs no disk
    fifo = tmp_path / "mix.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.wav"
    link.symlink_to(fifo)
    for rid, change, words in (("huge", {"existing_mix": str(huge)}, "at most 1024 MiB"),
                               ("fifo", {"existing_mix": str(fifo)}, "not a regular file"),
                               ("link", {"existing_mix": str(link)}, "not a regular file"),
                               ("ref", {"method": "reference", "reference_audio": str(huge)}, "at most 1024 MiB"),
                               ("video", {"region": {"video": str(fifo), "file_in": 0, "file_out": 2}},
                                "not a regular file")):
        peer.generate(make_request(tmp_path, **change), rid)
        address, args = peer.receive()
        assert (address, args[0], args[1], args[2]) == (protocol.ERROR, rid, "", "invalid_request")
        assert words in args[3]
    alive(peer)


# --- 6: a failed job removes its stem; metadata always fits ------------------------------------

def test_finding_06_long_metadata_is_cut_to_fit_and_the_job_is_done(tmp_path):
    def wordy(request, on_progress, is_cancelled):
        result = SineRunner()(request, on_progress, is_cancelled)
        result["metadata"]["negative_caption"] = ", ".join(request.previous_captions)  # as the session does
        return result

    with EngineServer(wordy, ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        request = make_request(tmp_path, caption="雨" * 1000, previous_captions=["雷" * 120] * 64)
        p.send(protocol.GENERATE, p.port, "cjk", "", json.dumps(request, ensure_ascii=False))  # 26 KB in UTF-8
        address, args = p.receive_until(protocol.FINAL_REPLIES)[-1]
        assert address == protocol.DONE
        metadata = json.loads(args[3])
        assert metadata["truncated"] is True and metadata["caption"].startswith("雨" * 200)
        assert os.listdir(tmp_path / "out") == [os.path.basename(args[2])]
        p.close()


def test_finding_06_a_refused_result_leaves_no_stem(tmp_path):
    def not_json(request, on_progress, is_cancelled):
        result = SineRunner()(request, on_progress, is_cancelled)
        result["metadata"]["oops"] = object()
        return result

    with EngineServer(not_json, ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        p.generate(make_request(tmp_path), "r")
        address, args = p.receive_until(protocol.FINAL_REPLIES)[-1]
        assert (address, args[2]) == (protocol.ERROR, "internal_error")
        assert os.listdir(tmp_path / "out") == []
        p.close()


# --- 7: stems get the user's umask -------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_finding_07_stems_are_created_with_the_users_umask(client, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        status = client.submit(make_request(tmp_path)).wait()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(status["stem_path"]).st_mode) == mode


# --- 10: /status fits one datagram however long the queue's captions --------------------------

def test_finding_10_status_fits_a_datagram_with_a_long_non_ascii_queue(tmp_path):
    gate = threading.Event()

    def blocked(request, on_progress, is_cancelled):
        gate.wait(10)
        return SineRunner()(request, on_progress, is_cancelled)

    with EngineServer(blocked, ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        try:
            for i in range(40):
                p.generate(make_request(tmp_path, caption="足音" * 500), f"q{i}")
                p.receive_until({protocol.ACCEPTED})
            p.sock.sendto(osc.encode(protocol.STATUS, p.port, "st", ""), p.server)
            data = p.sock.recv(65536)
            assert len(data) <= protocol.MAX_DATAGRAM_BYTES
            status = json.loads(osc.decode(data)[0][1][1])
            assert status["state"] == "busy" and status["jobs_truncated"] is True and len(status["queue"]) == 39
            assert status["queue_length"] == 39 and "queue_truncated" not in status
            for i in range(40, 120):  # a queue too long to list: how long it is still said
                p.generate(make_request(tmp_path, caption="steps"), f"q{i}")
                p.receive_until({protocol.ACCEPTED})
            p.sock.sendto(osc.encode(protocol.STATUS, p.port, "st2", ""), p.server)
            status = json.loads(osc.decode(p.sock.recv(65536))[0][1][1])
            assert status["queue_truncated"] is True and len(status["queue"]) < 119 and status["queue_length"] == 119
            caption = status["queue"][0]["caption"]
            assert caption.startswith("足音") and caption.endswith("…") and len(caption) < 1000
            with EngineClient(port=srv.address[1]) as c:
                assert c.engine_status()["queue_limit"] == 256  # what `stepfoley send --engine-status` asks
        finally:
            gate.set()
            p.close()


# --- 11: a job belongs to (address, port, request_id) ------------------------------------------

def test_finding_11_the_same_request_id_from_another_port_is_another_job(server, tmp_path):
    first, second = RawPeer(server.address[1]), RawPeer(server.address[1])
    try:
        first.generate(make_request(tmp_path, caption="mine"), "same-id")
        second.generate(make_request(tmp_path, caption="theirs"), "same-id")
        done = [p.receive_until({protocol.DONE})[-1][1] for p in (first, second)]
        assert done[0][1] != done[1][1] and done[0][2] != done[1][2]
        first.generate(make_request(tmp_path, caption="mine"), "same-id")  # a resend is still one job
        assert first.receive()[1][1] == done[0][1]
        second.send(protocol.RESULT, second.port, "q", "", done[1][1])
        assert json.loads(second.receive()[1][1])["caption"] == "theirs"
    finally:
        first.close(), second.close()


# --- 13: the spec drift ------------------------------------------------------------------------

def test_finding_13_a_region_of_exactly_one_second_in_daw_floats_is_served(peer, tmp_path):
    request = make_request(tmp_path)
    request["region"] = {"video": request["region"]["video"], "file_in": 0.9, "file_out": 1.9}
    peer.generate(request, "one-second")
    address, args = peer.receive_until(protocol.FINAL_REPLIES)[-1]
    assert address == protocol.DONE and sf.info(args[2]).frames == 48000


@pytest.mark.parametrize("request_json", ["[" * 30_000, '{"caption": ' + "[" * 5000 + "]" * 5000 + "}",
                                          '{"alpha": ' + "[" * 900 + "]" * 900 + "}"])
def test_finding_13_deeply_nested_json_is_an_invalid_request(peer, request_json):
    peer.send(protocol.GENERATE, peer.port, "deep", "", request_json)
    address, args = peer.receive()
    assert (address, args[2]) == (protocol.ERROR, "invalid_request")
    alive(peer)


# --- 8 and 14: `stepfoley serve` as a process: its token never on a command line, its CPU share --

def stepfoley(tmp_path, *args, env: dict | None = None) -> subprocess.Popen:
    """`python -m stepfoley ARGS` with its own config folder (the token file's home) and no
    token in its environment unless `env` gives one."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STEPFOLEY_TOKEN")}
    clean.update(XDG_CONFIG_HOME=str(tmp_path / "config"), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "stepfoley", *args], env=clean, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path, *args, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    return stepfoley(tmp_path, "serve", "--port", str(port), "--device", "cpu", *args, env=env), port


def send(tmp_path, *args, env: dict | None = None) -> tuple[int, dict]:
    out, _ = stepfoley(tmp_path, "send", "-q", *args, env=env).communicate(timeout=60)
    return json.loads(out.splitlines()[-1])["exit_code"], json.loads(out.splitlines()[-1])


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=180)  # a hang guard: on a loaded machine the exit itself took over 10 s
    finally:
        proc.kill()


def loaded_status(port: int, token: str) -> dict:
    with EngineClient(port=port, token=token) as c:
        deadline = time.monotonic() + 300  # loading on a loaded machine; a hang guard, not a target
        while time.monotonic() < deadline:
            try:
                status = c.engine_status(timeout=0.5)
                if status["state"] != "loading":
                    return status
            except EngineNotRunning:
                pass
            time.sleep(0.1)
    raise AssertionError("the engine never finished loading")


def write_token(tmp_path, token: str, mode: int):
    path = tmp_path / "config" / "stepfoley" / "token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def test_finding_08_14_serve_reads_its_token_from_the_token_file_and_shares_the_cpu(tmp_path):
    write_token(tmp_path, "file-secret", 0o600)
    before = os.getpriority(os.PRIO_PROCESS, 0)
    proc, port = serve(tmp_path, "--threads", "1", "--nice", "3")
    try:
        status = loaded_status(port, "file-secret")
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"file-secret" not in f.read()
        nice = min(before + 3, 19)  # POSIX caps niceness at 19 (a CI runner may start niced)
        assert status["cpu"]["threads"] == 1 and status["cpu"]["nice"] == nice
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == nice
        assert send(tmp_path, "--ping", "--port", str(port))[0] == 0  # send reads the same file
        with pytest.raises(EngineNotRunning):  # a wrong token: no reply at all
            EngineClient(port=port, token="guess").ping(timeout=0.5)
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_finding_08_the_token_from_the_environment_and_a_shared_token_file_refused(tmp_path):
    write_token(tmp_path, "file-secret", 0o644)
    proc = stepfoley(tmp_path, "serve", "--port", str(free_port()))
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "chmod 600" in err
    code, status = send(tmp_path, "--ping")
    assert code == 2 and status["error"]["code"] == "bad_token_file"

    # at its own priority: a niced engine on a loaded machine takes minutes to load and stop
    proc, port = serve(tmp_path, "--threads", "1", "--nice", "0", env={"STEPFOLEY_TOKEN": "env-secret"})  # the variable wins over the file
    try:
        assert loaded_status(port, "env-secret")["state"] == "idle"
        code, status = send(tmp_path, "--ping", "--port", str(port), env={"STEPFOLEY_TOKEN": "env-secret"})
        assert code == 0 and status["answer"]["protocol"] == 2
    finally:
        stop(proc)



def test_serve_and_send_refuse_a_token_no_message_can_carry_from_any_source(tmp_path):
    """A 300-character $STEPFOLEY_TOKEN (or --token) used to start an engine that then refused every
    message ("token is too long"); the token file's rule now holds for every source: exit 2 at
    start, before the model loads, as for a bad token file."""
    env = {"STEPFOLEY_TOKEN": "k" * 300}
    proc = stepfoley(tmp_path, "serve", "--port", str(free_port()), env=env)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2
    assert "The token from $STEPFOLEY_TOKEN is 300 characters long; a token is 1-256 characters" in err
    proc = stepfoley(tmp_path, "serve", "--port", str(free_port()), "--token", "k" * 257)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2 and "The token from --token is 257 characters long" in err
    code, status = send(tmp_path, "--ping", env=env)
    assert (code, status["error"]["code"]) == (2, "bad_token")

# --- 5 and 13 with the real service: inputs read only for the region, project_end, negatives -----

def test_finding_05_13_the_service_reads_only_the_region_and_follows_the_request(tiny, scene_video, tmp_path,
                                                                                 monkeypatch):
    from stepfoley.engine.service import FoleyService

    mix = tmp_path / "bounce.wav"
    sf.write(mix, np.full((10 * 48000, 4), 0.1, np.float32), 48000)  # 10 s of 4 channels for a 2-s region
    frames_read = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, frames=-1, *a, **k: frames_read.append(
        len(data := real_read(self, frames, *a, **k))) or data)
    region = {"video": str(scene_video), "file_in": 1.0, "file_out": 3.0, "project_start": 10.0, "project_end": 11.5}
    with EngineServer(FoleyService(tiny), ServerConfig(port=0), capabilities=tiny.capabilities()).start() as srv:
        p = RawPeer(srv.address[1])
        p.generate(make_request(tmp_path, region=region, existing_mix=str(mix), previous_captions=["wind"],
                                steps=1), "second")
        address, args = p.receive_until(protocol.FINAL_REPLIES, timeout=120)[-1]
        assert address == protocol.DONE, args
        assert sf.info(args[2]).frames == 72000  # project_end - project_start = 1.5 s at 48 kHz
        assert sum(frames_read) == 72000  # the bounce's 1.5 s on the timeline (the stem's), not its 10
        p.generate(make_request(tmp_path, region=region, method="negative_prompt", negative_caption="birds",
                                steps=1), "first")
        address, args = p.receive_until(protocol.FINAL_REPLIES, timeout=120)[-1]
        metadata = json.loads(args[3])
        assert (metadata["method_used"], metadata["negative_caption"]) == ("negative_prompt", "birds")
        p.close()


# --- all of it at once ---------------------------------------------------------------------------

def test_a_hostile_run_leaves_the_engine_serving_with_no_stray_file_and_a_small_log(tmp_path, log_bytes):
    """The malformed corpus of test_bridge_soak plus semantic attacks, then a valid request."""
    from test_bridge_soak import mutations

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    (tmp_path / "link.mp4").symlink_to(fifo)
    with open(tmp_path / "huge.wav", "wb") as f:
        f.truncate(2**31)
    hostile_requests = [
        {"\ud800": 1}, {"caption": "\udcff"}, {"output_dir": "/tmp/\ud800"}, {"existing_mix": "/m\ud800.wav"},
        {"existing_mix": str(fifo)}, {"region": {"video": str(tmp_path / "link.mp4"), "file_in": 0, "file_out": 2}},
        {"existing_mix": str(tmp_path / "huge.wav")}, {"sample_rate": 192000, "format": "wav32f",
                                                       "region": {"video": "/v", "file_in": 0, "file_out": 600}},
        {"region": {"video": "/v", "file_in": 0, "file_out": 600, "playrate": 0.01}},
        {"output_dir": str(tmp_path / "link.mp4")}, {"previous_captions": ["x"] * 65}, {"seed": 10**30},
        {"alpha": float("inf")}, {"name_hint": "../../" * 30},
    ]
    started = time.monotonic()
    with EngineServer(SineRunner(), ServerConfig(port=0, max_queue=8)).start() as srv:
        p = RawPeer(srv.address[1])
        p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
        (tmp_path / "fuzz").mkdir()  # the corpus's valid /generate writes its stems there
        valid = [osc.encode(protocol.PING, p.port, "f", ""), osc.encode(protocol.STATUS, p.port, "f", ""),
                 osc.encode(protocol.GENERATE, p.port, "f", "", json.dumps(make_request(tmp_path / "fuzz")))]
        for data in list(mutations(random.Random(12), valid))[:600]:
            try:
                aimed_elsewhere = any(protocol.reply_port_of(a) not in (None, p.port) for _, a in osc.decode(data))
            except osc.DecodeError:
                aimed_elsewhere = False
            if not aimed_elsewhere:
                p.send_bytes(data)
        for data in (BUNDLE + (-4).to_bytes(4, "big", signed=True), BUNDLE + element(b"/a\x00\x00," + b"x" * 60_000),
                     "[" * 30_000, '{"a": "\\ud800"'):
            if isinstance(data, str):
                p.send(protocol.GENERATE, p.port, "deep", "", data)
            else:
                p.send_bytes(data)
        for i, change in enumerate(hostile_requests):
            p.send(protocol.GENERATE, p.port, f"h{i}", "", json.dumps({**make_request(tmp_path), **change}))
        for i in range(2000):
            p.send_bytes(bytes([i % 256]) * (i % 64))
        p.close()
        # asked from another socket: the storm's sender is past the flood limit, and a machine with
        # a smaller receive buffer than this one's drops some of its datagrams
        probe, deadline = RawPeer(srv.address[1]), time.monotonic() + 20
        while True:
            probe.send(protocol.PING, probe.port, "still-there", "")
            try:
                if probe.receive(timeout=0.5)[1][:1] == ["still-there"]:
                    break
            except OSError:
                assert time.monotonic() < deadline, "the engine stopped answering"
        probe.close()
        with EngineClient(port=srv.address[1]) as c:
            cut = c.submit(make_request(tmp_path, caption="after the storm")).wait()
    assert cut["state"] == "done"
    # "../../" in name_hint is a valid request: its stem is stem_001.wav, inside output_dir
    assert sorted(os.listdir(tmp_path / "out")) == sorted([os.path.basename(cut["stem_path"]), "stem_001.wav"])
    assert all(name.endswith(".wav") for name in os.listdir(tmp_path / "fuzz" / "out"))
    assert log_bytes.bytes <= logs.LOG_BURST_BYTES + logs.LOG_BYTES_PER_S * (time.monotonic() - started) + 1024


# --- review of 2026-12-02 -----------------------------------------------------------------------

def test_an_output_dir_with_dotdot_after_a_symlink_is_where_the_kernel_puts_the_stems(peer, tmp_path):
    """`shortcuts/media` links to `project/media`: `shortcuts/media/../StepFoley` is
    `project/StepFoley` to the kernel, where the stems go; the job must be done there, not
    refused (and its stems left) because the path's text says `shortcuts/StepFoley`."""
    (tmp_path / "project" / "media").mkdir(parents=True)
    (tmp_path / "project" / "StepFoley").mkdir()
    (tmp_path / "shortcuts").mkdir()
    (tmp_path / "shortcuts" / "media").symlink_to(tmp_path / "project" / "media")
    for protocol_version, final in ((1, protocol.DONE), (2, protocol.DONE_STEMS)):
        request = make_request(tmp_path, output_dir=str(tmp_path / "shortcuts" / "media" / ".." / "StepFoley"),
                               protocol=protocol_version, steps=1)
        peer.send(protocol.GENERATE, peer.port, f"dd{protocol_version}", "", json.dumps(request))
        address, args = peer.receive_until({protocol.DONE, protocol.DONE_STEMS, protocol.ERROR})[-1]
        assert address == final, args
        assert os.path.isfile(os.path.join(args[2], json.loads(args[3])["stems"][0]["file"]) if protocol_version == 2
                              else args[2])
    assert len(os.listdir(tmp_path / "project" / "StepFoley")) == 2


def test_a_stem_in_a_symlinked_output_dir_is_named_under_the_link(peer, tmp_path):
    """The reply names the folder as the request did (`output_dir` made absolute), not with its
    links resolved: a DAW keeps the media path under the project's own (linked) folder."""
    (tmp_path / "real").mkdir()
    (tmp_path / "project").symlink_to(tmp_path / "real")
    for protocol_version, final in ((1, protocol.DONE), (2, protocol.DONE_STEMS)):
        request = make_request(tmp_path, output_dir=str(tmp_path / "project") + "/", protocol=protocol_version,
                               steps=1)
        peer.send(protocol.GENERATE, peer.port, f"ln{protocol_version}", "", json.dumps(request))
        address, args = peer.receive_until({protocol.DONE, protocol.DONE_STEMS, protocol.ERROR})[-1]
        assert address == final, args
        path = (os.path.join(args[2], json.loads(args[3])["stems"][0]["file"]) if protocol_version == 2
                else args[2])
        assert os.path.dirname(path) == str(tmp_path / "project") and os.path.isfile(path)


def test_result_never_cuts_a_stems_path_to_fit(peer, tmp_path):
    """A long caption and a long non-ASCII folder, each within its bound: /result (the way to
    recover a lost final reply) cuts the caption and metadata, never the folder or a file name."""
    folder = tmp_path / "/".join(["\U0001F3B5" * 60] * 6)
    folder.mkdir(parents=True)
    request = make_request(tmp_path, protocol=2, variations=2, output_dir=str(folder), caption="\U0001F327" * 1000,
                           steps=1)
    peer.send(protocol.GENERATE, peer.port, "cut", "", json.dumps(request))
    address, args = peer.receive_until({protocol.DONE_STEMS, protocol.ERROR})[-1]
    assert address == protocol.DONE_STEMS, args
    peer.send(protocol.RESULT, peer.port, "res", "", args[1])
    job = json.loads(peer.receive_until({protocol.JOB})[-1][1][1])
    assert job["state"] == "done" and job["truncated"] and job["stems"]["folder"] == str(folder)
    assert all(os.path.isfile(s["stem_path"]) for s in protocol.merged_stems(job["stems"]["folder"], job["stems"]))


def test_result_says_when_paths_cannot_be_sent_and_the_client_does_not_call_it_done():
    summary = {"job_id": "j", "request_id": "r", "state": "done", "phase": None, "queue_position": 0, "step": 1,
               "total": 1, "caption": "x", "stem_path": "/" + "\U0001F3B5" * 4000, "metadata": {"seed": 1},
               "error": None, "engine_steps": 1}
    job = json.loads(protocol.job_json(summary))
    assert len(protocol.job_json(summary)) <= protocol.MAX_REPLY_JSON_BYTES
    assert job["paths_lost"] and job["stem_path"] is None
    from stepfoley.bridge.client import EXIT_FAILED, RemoteJob, queued_status
    # the job's state machine as /result's answer reaches it (no engine can send such a path)
    recovering = RemoteJob.__new__(RemoteJob)
    recovering._client = EngineClient(port=9)
    recovering.request_id = "r"
    recovering.status, recovering.accepted, recovering._engine_steps = {**queued_status(), "request_id": "r"}, True, -1
    recovering._last_sign_of_life = 0.0
    recovering._apply_summary(job)
    recovering._client.close()
    assert recovering.status["state"] == "error" and recovering.status["exit_code"] == EXIT_FAILED
    assert recovering.status["error"]["code"] == "result_lost"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_send_never_replaces_a_pipe_or_a_device_with_its_status_file(server, tmp_path, capsys):
    from stepfoley.cli import main

    fifo = tmp_path / "listening"  # (not /dev/null itself: a regression would replace the machine's)
    os.mkfifo(fifo)
    assert main(["send", "--ping", "--port", str(server.address[1]), "--status", str(fifo)]) == 2
    assert "is not a regular file (a device or a pipe)" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_clients_newline_cannot_forge_a_log_record(caplog):
    log = logging.getLogger("stepfoley.test.forged")
    log.addFilter(logs.LogBudget())
    with caplog.at_level(logging.INFO, logger="stepfoley.test.forged"):
        log.warning("job 1: The video '%s' does not exist.", "/x\n2026-12-02 03:00:00,000 INFO engine ready\r/y.mp4")
    [record] = caplog.records
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()
    assert "/x\\n2026-12-02 03:00:00,000 INFO engine ready\\r/y.mp4" in record.getMessage()


def test_sigterm_while_the_model_loads_stops_the_engine_cleanly(tmp_path):
    """`serve` answers (state loading) before its model is in; a SIGTERM then ends it with
    exit 0 like one after loading, not killed by the signal."""
    import signal

    port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    slow = tmp_path / "sitecustomize.py"  # the model takes long to load: 30 s
    slow.write_text("import time, stepfoley.engine.service as s\n"
                    "real = s.build_service\n"
                    "s.build_service = lambda *a, **k: (time.sleep(30), real(*a, **k))[1]\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    engine = subprocess.Popen([sys.executable, "-m", "stepfoley", "serve", "--port", str(number), "--host", "127.0.0.1",
                               "--threads", "1", "--nice", "0"],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        c = EngineClient(port=number)
        deadline = time.monotonic() + 300  # its start imports torch (sitecustomize): a hang guard
        while True:
            try:
                if c.engine_status()["state"] == "loading":
                    break
            except EngineNotRunning:
                assert time.monotonic() < deadline, "the engine never answered"
                time.sleep(0.05)  # a refused send returns at once: no spinning a core the engine needs
        c.close()
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=120) == 0, engine.stderr.read()
    finally:
        engine.kill()


def test_an_error_reply_fits_a_datagram_whatever_the_request_held(peer, tmp_path):
    """360 unknown keys of 80 bytes that are not UTF-8 (each kept as an escape six characters
    long): the refusal names a few and still reaches the sender in one datagram; a NUL in a key
    is written as its escape, not cut where the OSC string would end."""
    request = json.dumps(make_request(tmp_path)).encode()[:-1]
    keys = b"".join(b', "' + b"\xff" * 76 + b"%04d" % i + b'": 1' for i in range(360))
    datagram = _generate_bytes(peer.port, request + keys + b"}")
    assert len(datagram) <= protocol.MAX_DATAGRAM_BYTES
    peer.send_bytes(datagram)
    address, args = peer.receive()
    assert address == protocol.ERROR and args[2] == "invalid_request" and "and 355 more" in args[3]
    peer.generate({**make_request(tmp_path), "caption\u0000x": 1}, "nul")
    address, args = peer.receive()
    assert "caption\\x00x" in args[3] and args[3].endswith(".")


def _generate_bytes(port: int, payload: bytes) -> bytes:
    """A /generate datagram whose request_json holds `payload` as it is (bytes that need not be UTF-8)."""
    marker = "Q" * 8
    datagram = osc.encode(protocol.GENERATE, port, "many", "", marker)
    head = datagram[:datagram.index(marker.encode())]
    return head + payload + b"\x00" * (4 - len(payload) % 4)



class MacLikeSocket(socket.socket):
    """A real UDP socket made with macOS's default send buffer (net.inet.udp.maxdgram, 9,216
    bytes), past which macOS refuses a datagram (EMSGSIZE), loopback included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 9216)


def test_the_engine_and_the_client_make_room_for_the_largest_datagram(monkeypatch):
    import stepfoley.bridge.client as client_module
    import stepfoley.bridge.server as server_module

    monkeypatch.setattr(server_module.socket, "socket", MacLikeSocket)
    monkeypatch.setattr(client_module.socket, "socket", MacLikeSocket)
    with EngineServer(SineRunner(), ServerConfig(port=0)).start() as srv:
        engine_client = EngineClient(port=srv.address[1])
        try:
            for sock in (srv._sock, engine_client._sock):
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= protocol.MAX_DATAGRAM_BYTES
            assert engine_client.ping()["protocol"] == protocol.PROTOCOL_VERSION
        finally:
            engine_client.close()
    # a larger default stays as it is
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as roomy:
        roomy.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * protocol.SEND_BUFFER_BYTES)
        before = roomy.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        protocol.make_room_for_datagrams(roomy)
        assert roomy.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before


def test_a_bug_in_a_handler_costs_one_internal_error_reply_not_the_server(server, peer, monkeypatch):
    """A handler that raises (here /result's lookup) answers /error internal_error at once, so
    the client does not wait out its timeout; the next message is served as usual."""
    def broken(job_id):
        raise RuntimeError("lookup failed")

    monkeypatch.setattr(server.jobs, "describe", broken)
    peer.send(protocol.RESULT, peer.port, "r1", "", "0123456789abcdef")
    address, args = peer.receive()
    assert address == protocol.ERROR and args[0] == "r1" and args[2:] == ["internal_error", "lookup failed"]
    peer.send(protocol.PING, peer.port, "p1", "")
    assert peer.receive()[0] == protocol.PONG


# --- a local client that floods the engine ----------------------------------------------------


def _replies(p: RawPeer) -> list[tuple[str, list]]:
    seen = []
    while True:
        try:
            seen.append(p.receive(timeout=0.5))
        except TimeoutError:
            return seen


@pytest.mark.parametrize("dont_wait", [True, False], ids=["MSG_DONTWAIT", "windows-select"])
def test_a_flooding_sender_is_cut_to_its_rate_in_a_backlog_and_the_others_are_answered(caplog, monkeypatch,
                                                                                       dont_wait):
    # The datagrams wait in the socket before the loop starts, so the batches are exact: 20 /status
    # from the flooder, then one ping from another client; batches of 8, 5 a second from one sender.
    if not dont_wait:  # Windows has no MSG_DONTWAIT: the loop asks select before each further read
        monkeypatch.setattr(server_module, "_DONT_WAIT", 0)
    # the server's clock stands still: the three batches fall in one second of the rate, however
    # long a loaded machine takes between them
    monkeypatch.setattr(server_module, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))
    srv = EngineServer(SineRunner(), ServerConfig(port=0))
    srv.drain_batch, srv.flood_rate = 8, 5
    flooder, other = RawPeer(srv.address[1]), RawPeer(srv.address[1])
    for i in range(20):
        flooder.send(protocol.STATUS, flooder.port, f"s{i}", "")
    other.send(protocol.PING, other.port, "still-heard", "")
    with caplog.at_level(logging.WARNING, logger="stepfoley.bridge"), srv.start():
        assert other.receive()[:2] == (protocol.PONG, ["still-heard", protocol.PROTOCOL_VERSION, "unknown", "unknown"])
        answered = [args[0] for _, args in _replies(flooder)]
    # batch 1 (full): s0-s4 answered, s5-s7 over the rate; batch 2 (full): all over it;
    # batch 3 (5 datagrams, no backlog): s16-s19 answered with the ping
    assert answered == ["s0", "s1", "s2", "s3", "s4", "s16", "s17", "s18", "s19"]
    assert srv.flood_dropped == 11
    # one line for the flood (the shared log budget may append a count of earlier records)
    floods = [r.getMessage() for r in caplog.records if "sends more than the engine can answer" in r.getMessage()]
    assert len(floods) == 1 and floods[0].startswith(
        f"127.0.0.1:{flooder.port} sends more than the engine can answer; what it sends over 5 a second, or over "
        "0.25 s of the engine's time a second, is dropped while this lasts")


def test_a_flooding_sender_whose_answers_are_dear_is_cut_to_its_share_of_the_engines_time():
    # Each /status takes 50 ms to answer (as over a long queue), so in a second of the loop's time
    # the flooder never reaches its datagram rate: its budget of the engine's time cuts it
    # instead. 20 /status then a ping from another client, batches of 8, 0.12 s a second each.
    srv = EngineServer(SineRunner(), ServerConfig(port=0))
    srv.drain_batch, srv.flood_rate, srv.flood_busy_s = 8, 1000, 0.12
    handle = srv.dispatcher.handle_datagram

    def dear_status(data, sender):
        if data.startswith(protocol.STATUS.encode()):
            time.sleep(0.05)
        return handle(data, sender)

    srv.dispatcher.handle_datagram = dear_status
    flooder, other = RawPeer(srv.address[1]), RawPeer(srv.address[1])
    for i in range(20):
        flooder.send(protocol.STATUS, flooder.port, f"s{i}", "")
    other.send(protocol.PING, other.port, "still-heard", "")
    with srv.start():
        assert other.receive()[:2] == (protocol.PONG, ["still-heard", protocol.PROTOCOL_VERSION, "unknown", "unknown"])
        answered = [args[0] for _, args in _replies(flooder)]
    # batch 1 (full): s0-s2 take 0.15 s, past the budget, so s3-s7 are dropped unread (a machine
    # slow enough to start another second before batch 2 may answer some of s8-s15 again)
    assert answered[:3] == ["s0", "s1", "s2"] and not {"s3", "s4", "s5", "s6", "s7"} & set(answered)
    assert srv.flood_dropped >= 5


def test_a_job_starts_while_the_rest_of_its_receive_batch_is_handled(tmp_path):
    # /generate then three /status wait in the socket, so the loop reads them as one batch; each
    # /status is handled only once the job has started (or 4 s have passed). The job used to wait
    # for the whole batch before its first step.
    started = threading.Event()
    srv = EngineServer(SineRunner(before_step=lambda step: started.set()), ServerConfig(port=0))
    p = RawPeer(srv.address[1])
    p.generate(make_request(tmp_path, steps=1), "job")
    for i in range(3):
        p.send(protocol.STATUS, p.port, f"s{i}", "")
    handle, seen_started = srv.dispatcher.handle_datagram, []

    def status_after_the_start(data, sender):
        if data.startswith(protocol.STATUS.encode()):
            seen_started.append(started.wait(4.0))
        return handle(data, sender)

    srv.dispatcher.handle_datagram = status_after_the_start
    with srv.start():
        replies = p.receive_until({protocol.DONE}, timeout=20.0)
    assert seen_started == [True, True, True]
    assert [kind for kind, _ in replies][:1] == [protocol.ACCEPTED]


@pytest.mark.parametrize("in_a_bundle", [False, True], ids=["message", "bundle"])
def test_a_cancel_waiting_behind_a_request_in_its_batch_is_read_before_the_job_runs(tmp_path, in_a_bundle):
    # What a client that gave up on a stalled engine leaves in its socket: the request, a
    # /status, then its cancel by request_id (as a message, or in a bundle). The /status is handled
    # only once the job has finished, or after 2 s (twice the 1 s the jobs book used to wait before
    # starting a job anyway), so a job started before the cancel is read makes its stem.
    srv = EngineServer(SineRunner(), ServerConfig(port=0))
    p = RawPeer(srv.address[1])
    p.generate(make_request(tmp_path, steps=1), "job")
    p.send(protocol.STATUS, p.port, "s", "")
    cancel = osc.encode(protocol.CANCEL, p.port, "job", "", "")
    p.send_bytes(BUNDLE + element(osc.encode(protocol.PING, p.port, "p", "")) + element(cancel) if in_a_bundle else cancel)
    handle = srv.dispatcher.handle_datagram

    def status_after_the_job(data, sender):
        if data.startswith(protocol.STATUS.encode()):
            deadline = time.monotonic() + 2.0
            while srv.jobs.jobs_finished == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        return handle(data, sender)

    srv.dispatcher.handle_datagram = status_after_the_job
    with srv.start():
        replies = p.receive_until({protocol.CANCELLED, protocol.DONE}, timeout=20.0)
    assert [kind for kind, _ in replies if kind in protocol.FINAL_REPLIES] == [protocol.CANCELLED]
    assert list((tmp_path / "out").iterdir()) == []


def test_a_request_cancelled_in_its_own_bundle_is_accepted_before_it_is_cancelled(tmp_path):
    # A bundle of /generate and its /cancel by request_id, while another job runs: the client must
    # hear of the job (/accepted) before its final reply. The queued job's /cancelled used to go
    # out at once, while the bundle's own replies waited for the whole datagram, so it came first.
    gate = threading.Event()
    srv = EngineServer(SineRunner(before_step=lambda step: gate.wait(20.0)), ServerConfig(port=0))
    p = RawPeer(srv.address[1])
    generate = osc.encode(protocol.GENERATE, p.port, "job", "", json.dumps(make_request(tmp_path, steps=1)))
    cancel = osc.encode(protocol.CANCEL, p.port, "job", "", "")
    with srv.start():
        p.generate(make_request(tmp_path, steps=1), "first")
        p.receive_until({protocol.ACCEPTED}, timeout=20.0)
        p.send_bytes(BUNDLE + element(generate) + element(cancel))
        replies = p.receive_until({protocol.CANCELLED}, timeout=20.0)
        gate.set()
        replies += p.receive_until({protocol.DONE}, timeout=20.0)
    kinds = [kind for kind, args in replies if args[0] == "job"]
    assert kinds.index(protocol.ACCEPTED) < kinds.index(protocol.CANCELLED)
    assert sorted(kinds) == sorted([protocol.ACCEPTED, protocol.CANCEL_REPLY, protocol.CANCELLED])
    assert [args[2] for kind, args in replies if kind == protocol.CANCEL_REPLY] == [protocol.CANCEL_DROPPED]


def test_without_a_backlog_a_sender_past_the_rate_loses_nothing():
    srv = EngineServer(SineRunner(), ServerConfig(port=0))
    srv.drain_batch, srv.flood_rate = 8, 5
    p = RawPeer(srv.address[1])
    for i in range(7):  # one batch, not full
        p.send(protocol.STATUS, p.port, f"s{i}", "")
    with srv.start():
        assert [args[0] for _, args in _replies(p)] == [f"s{i}" for i in range(7)]
    assert srv.flood_dropped == 0


def test_a_status_flood_at_full_speed_leaves_pings_answered(tmp_path):
    # a real flood from another process (the benchmark's), as fast as it can send, while this client pings
    from stepfoley.bench.bench_bridge import FLOODER

    with EngineServer(SineRunner(), ServerConfig(port=0)).start() as srv:
        # the flood lasts until the pings are done; each ping may take 2 s on a loaded machine
        # (without the limit none is answered: the socket's buffer stays full of the flood)
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(srv.address[1]), "300"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60  # the flooder's start (a second, far more on a loaded machine)
            while srv.flood_dropped == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            answered = 0
            with EngineClient(port=srv.address[1]) as c:
                for _ in range(10):
                    try:
                        c.ping(timeout=2.0)
                        answered += 1
                    except EngineNotRunning:
                        pass
        finally:
            flooder.kill()
            flooder.wait(10)
        assert srv.flood_dropped > 0, "the flood never built a backlog: the test proves nothing"
    assert answered >= 8


# --- review of 2026-12-04: what a request's files can cost the thread that answers everyone ----


def test_a_resent_request_gets_its_job_back_without_its_files_looked_at_again(tmp_path, server, peer):
    """A client resends /generate until it hears /accepted, and the engine read every copy's files
    again on the thread that answers every client before finding the copy's job: a damaged MP3 of
    200 MB took seconds a copy. A copy is now looked up first: here its output folder is gone
    since, and the copy still gets its job (the job itself says what became of the folder)."""
    request = make_request(tmp_path, steps=40)
    peer.generate(request, "again")
    address, args = peer.receive()
    assert address == protocol.ACCEPTED
    (tmp_path / "out").rename(tmp_path / "moved")
    peer.generate(request, "again")
    assert peer.receive_until([protocol.ACCEPTED, protocol.ERROR])[-1] == (protocol.ACCEPTED, args)
    peer.generate(request, "new")  # a new request is checked as before
    # the first copy's job may end first, in an error of its own (its folder is gone): skipped
    address, args = protocol.ACCEPTED, [""]
    while args[0] != "new":
        address, args = peer.receive_until([protocol.ACCEPTED, protocol.ERROR])[-1]
    assert address == protocol.ERROR and args[2] == "invalid_request" and "output_dir" in args[3]


def test_stop_waits_for_a_loop_run_in_the_callers_own_thread(tmp_path, monkeypatch):
    """serve_forever run in a thread of the caller's (not start()'s): stop() closed the socket
    under a batch still being handled, and its replies were lost. It now waits for the loop."""
    srv = EngineServer(SineRunner(), ServerConfig(port=0))
    handling, release = threading.Event(), threading.Event()
    handle = srv.dispatcher.handle_datagram

    def held(data, sender):
        handling.set()
        release.wait(30.0)
        return handle(data, sender)

    monkeypatch.setattr(srv.dispatcher, "handle_datagram", held)
    loop = threading.Thread(target=srv.serve_forever, daemon=True)
    loop.start()
    p = RawPeer(srv.address[1])
    p.send(protocol.PING, p.port, "held", "")
    assert handling.wait(30.0)
    stopping = threading.Thread(target=srv.stop, daemon=True)
    stopping.start()
    stopping.join(0.5)
    assert stopping.is_alive()  # still waiting for the batch
    release.set()
    assert p.receive()[0] == protocol.PONG
    stopping.join(30.0)
    assert not stopping.is_alive() and not loop.is_alive()
    p.close()
