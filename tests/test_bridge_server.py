"""The engine server over real UDP sockets on 127.0.0.1: the protocol driven by the sine runner,
and the real engine (the embedded model's code path with random weights) behind the server."""

import json
import socket
import sys
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from stepfoley.bridge import osc, protocol
from stepfoley.bridge.client import EngineClient
from stepfoley.bridge.server import ConfigError, EngineServer, ServerConfig
from test_bridge_kit import RawPeer, SineRunner, client, make_request, peer, runner, server  # noqa: F401


def test_ping_names_protocol_model_and_device(peer):
    peer.send(protocol.PING, peer.port, "p1", "")
    assert peer.receive() == (protocol.PONG, ["p1", protocol.PROTOCOL_VERSION, "test-sine", "cpu"])


def test_generate_replies_in_order_and_writes_a_real_wav(peer, tmp_path):
    request = make_request(tmp_path, steps=3, sample_rate=44100, format="wav32f", seed=7)
    peer.generate(request, "gen-1")
    replies = peer.receive_until({protocol.DONE, protocol.ERROR})
    addresses = [a for a, _ in replies]
    assert addresses == [protocol.ACCEPTED] + [protocol.PROGRESS] * 4 + [protocol.DONE]
    job_id = replies[0][1][1]
    assert replies[0][1] == ["gen-1", job_id, 0]
    assert [args[2:] for _, args in replies[1:-1]] == [
        [0, 0, "starting"], [1, 3, "sampling"], [2, 3, "sampling"], [3, 3, "sampling"]]
    _, (rid, done_job, stem_path, metadata_json) = replies[-1]
    assert (rid, done_job) == ("gen-1", job_id)
    metadata = json.loads(metadata_json)
    assert {k: metadata[k] for k in ("sample_rate", "seed", "method", "model")} == {
        "sample_rate": 44100, "seed": 7, "method": "nag", "model": "test-sine"}
    info = sf.info(stem_path)
    assert (info.samplerate, info.subtype) == (44100, "FLOAT")
    assert os.path.dirname(stem_path) == request["output_dir"]


def test_two_requests_for_the_same_name_never_overwrite(client, tmp_path):
    request = make_request(tmp_path)
    paths = []
    for _ in range(2):
        job = client.submit(request)
        paths.append(job.wait()["stem_path"])
    assert len(set(paths)) == 2 and all(os.path.isfile(p) for p in paths)


def test_concurrent_clients_run_in_fifo_order(tmp_path):
    all_accepted = threading.Event()  # the first job waits, so no job can end before the last is queued
    runner = SineRunner(before_step=lambda step: all_accepted.wait(10))
    with EngineServer(runner, ServerConfig(port=0)).start() as srv:
        peers = [RawPeer(srv.address[1]) for _ in range(4)]
        try:
            positions = []
            for i, p in enumerate(peers):
                p.generate(make_request(tmp_path, caption=f"sound {i}", steps=3), f"r{i}")
                address, args = p.receive()
                assert address == protocol.ACCEPTED
                positions.append(args[2])
            all_accepted.set()
            assert positions == [0, 1, 2, 3]
            for p in peers:
                assert p.receive_until({protocol.DONE})[-1][0] == protocol.DONE
        finally:
            for p in peers:
                p.close()
    assert runner.started == ["sound 0", "sound 1", "sound 2", "sound 3"]


def test_ping_is_answered_while_a_job_runs(tmp_path):
    release = threading.Event()  # step 2 is held until the test has its answers
    runner = SineRunner(before_step=lambda step: step < 2 or release.wait(10))
    with EngineServer(runner, ServerConfig(port=0)).start() as srv, EngineClient(port=srv.address[1]) as c:
        job = c.submit(make_request(tmp_path, steps=10))
        while job.poll(0.05)["step"] < 1:
            pass
        try:  # a dispatch that waited on generation would answer nothing before the release
            c.ping(timeout=5.0)  # raises EngineNotRunning when unanswered
            status = c.engine_status(timeout=5.0)
        finally:
            release.set()
        assert status["state"] == "busy" and status["current"]["job_id"] == job.job_id
        job.cancel()
        assert job.wait()["state"] == "cancelled"


def test_cancel_stops_a_running_job_within_one_step(tmp_path):
    cancel_answered = threading.Event()  # step 3 is held until the cancel was answered
    runner = SineRunner(before_step=lambda step: step < 3 or cancel_answered.wait(10))
    with EngineServer(runner, ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        p.generate(make_request(tmp_path, steps=200), "long")
        job_id = p.receive()[1][1]
        while True:  # wait for a real step so the cancel lands mid-job
            address, args = p.receive()
            if address == protocol.PROGRESS and args[2] == 2:
                break
        p.send(protocol.CANCEL, p.port, "c1", "", job_id)
        replies = p.receive_until({protocol.CANCEL_REPLY})
        cancel_answered.set()
        replies += p.receive_until({protocol.CANCELLED})
        assert [a[2] for addr, a in replies if addr == protocol.PROGRESS] == []  # the next step never ran
        assert (protocol.CANCEL_REPLY, ["c1", job_id, protocol.CANCEL_STOPPING]) in replies
        assert os.listdir(tmp_path / "out") == [], "a cancelled job writes no stem"
        p.send(protocol.CANCEL, p.port, "c2", "", job_id)
        assert p.receive() == (protocol.CANCEL_REPLY, ["c2", job_id, protocol.CANCEL_TOO_LATE])
        p.close()


def test_cancel_drops_a_queued_job(tmp_path):
    dropped = threading.Event()  # the first job runs on once the second is dropped
    runner = SineRunner(before_step=lambda step: dropped.wait(10))
    with EngineServer(runner, ServerConfig(port=0)).start() as srv:
        first, second = RawPeer(srv.address[1]), RawPeer(srv.address[1])
        first.generate(make_request(tmp_path, caption="first", steps=6), "a")
        first.receive()
        second.generate(make_request(tmp_path, caption="second", steps=6), "b")
        queued_id = second.receive()[1][1]
        second.send(protocol.CANCEL, second.port, "c", "", queued_id)
        replies = [second.receive(), second.receive()]  # in either order
        dropped.set()
        assert (protocol.CANCELLED, ["b", queued_id]) in replies
        assert (protocol.CANCEL_REPLY, ["c", queued_id, protocol.CANCEL_DROPPED]) in replies
        assert first.receive_until({protocol.DONE})[-1][0] == protocol.DONE
        first.close(), second.close()
    assert runner.started == ["first"]


def test_a_failing_job_fails_alone(peer, tmp_path):
    bad_video = make_request(tmp_path, caption="bad")
    bad_video["region"]["video"] = str(tmp_path / "missing.mp4")
    bad_mix = make_request(tmp_path, caption="bad mix", existing_mix=str(tmp_path / "picture.mp4"))
    peer.generate(bad_video, "v")
    peer.generate(bad_mix, "m")
    peer.generate(make_request(tmp_path, caption="good"), "g")
    finals = {}
    while len(finals) < 3:
        address, args = peer.receive()
        if address in protocol.FINAL_REPLIES:
            finals[args[0]] = (address, args)
    assert finals["v"][0] == protocol.ERROR and finals["v"][1][2] == "bad_video"
    assert "missing.mp4" in finals["v"][1][3]
    assert finals["m"][0] == protocol.ERROR and finals["m"][1][2] == "bad_audio"
    assert finals["g"][0] == protocol.DONE


def test_an_unexpected_exception_is_internal_error_and_the_server_keeps_serving(tmp_path):
    calls = []

    def flaky(request, on_progress, is_cancelled):
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("division by zero")
        if len(calls) == 2:
            return {"stem_path": "/etc/passwd", "metadata": {}}  # outside output_dir: refused
        return SineRunner()(request, on_progress, is_cancelled)

    with EngineServer(flaky, ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        codes, messages = [], []
        for i in range(3):
            p.generate(make_request(tmp_path), f"r{i}")
            address, args = p.receive_until(protocol.FINAL_REPLIES)[-1]
            codes.append(args[2] if address == protocol.ERROR else "done")
            messages.append(args[3] if address == protocol.ERROR else "")
        p.close()
    assert codes == ["internal_error", "internal_error", "done"]
    assert messages[0] == "ZeroDivisionError: division by zero"  # the kind of bug is what a report needs


def test_the_log_of_an_unexpected_error_keeps_where_it_failed(caplog):
    """A deep traceback is cut from its start, not its end: the failing frame and the error line
    survive the log's bound."""
    import logging

    from stepfoley.bridge.logs import MAX_TRACEBACK_CHARS, LogBudget

    chain = {}  # 80 distinct frames (Python folds a recursion's repeated ones)
    exec(compile("\n".join(f"def f{i}():\n    return f{i + 1}()" for i in range(80))
                 + "\ndef f80():\n    raise KeyError('deep_bug_key')", "deep_module.py", "exec"), chain)
    try:
        chain["f0"]()
    except KeyError:
        record = logging.LogRecord("stepfoley.bridge", logging.ERROR, __file__, 1, "job failed", (), sys.exc_info())
    assert len(logging.Formatter().formatException(record.exc_info)) > MAX_TRACEBACK_CHARS
    assert LogBudget().filter(record)
    assert record.msg.endswith("KeyError: 'deep_bug_key'") and "in f80" in record.msg[-300:]
    assert len(record.msg) <= len("job failed\n") + MAX_TRACEBACK_CHARS
    # a client's text in the error: escaped bytes do not push the end out, a newline forges nothing
    try:
        raise RuntimeError("model choked on caption steps\udcff" * 30 + "\n2099-01-01 00:00:00 ERROR forged")
    except RuntimeError:
        record = logging.LogRecord("stepfoley.bridge", logging.ERROR, __file__, 1, "job failed", (), sys.exc_info())
    assert LogBudget().filter(record)
    lines = record.msg.splitlines()
    assert lines[0] == "job failed" and all(line.startswith("  | ") for line in lines[1:])
    assert lines[-1] == "  | 2099-01-01 00:00:00 ERROR forged"


def test_a_retransmitted_request_is_one_job(peer, tmp_path):
    request = make_request(tmp_path)
    peer.generate(request, "same")
    first = peer.receive()
    peer.generate(request, "same")
    replies = peer.receive_until({protocol.DONE})
    accepted = [args for address, args in [first] + replies if address == protocol.ACCEPTED]
    assert len(accepted) == 2 and accepted[0][1] == accepted[1][1]
    time.sleep(0.1)
    assert len(os.listdir(tmp_path / "out")) == 1


def test_a_request_id_used_again_for_another_request_is_refused_not_answered_with_the_old_job(peer, tmp_path):
    peer.generate(make_request(tmp_path, caption="rain"), "job-1")
    first = peer.receive_until({protocol.DONE})
    peer.generate(make_request(tmp_path, caption="door slam"), "job-1")  # a client counting from 1 again
    address, args = peer.receive()
    assert address == protocol.ERROR and args[0] == "job-1" and args[2] == "invalid_request"
    assert "already used for another request" in args[3]
    assert len([a for a, _ in first if a == protocol.ACCEPTED]) == 1
    assert len(os.listdir(tmp_path / "out")) == 1


def test_a_string_that_is_not_utf8_gets_an_error_reply_not_silence(peer, tmp_path):
    """A host on a Windows code page sends a Latin-1 caption: the message still has its reply
    port, so the sender is told what is wrong (it used to be dropped unanswered, which a client
    can only take for an engine that is not running)."""
    datagram = osc.encode(protocol.GENERATE, peer.port, "r-latin", "", json.dumps(make_request(tmp_path, caption="cafX")))
    peer.send_bytes(datagram.replace(b"cafX", b"caf\xe9"))
    address, args = peer.receive()
    assert address == protocol.ERROR and args[0] == "r-latin" and args[2] == "invalid_request"
    assert "caption 'caf\\udce9' holds bytes that are not UTF-8 text" in args[3]
    peer.send_bytes(osc.encode(protocol.PING, peer.port, "idX", "").replace(b"idX", b"id\xe9"))
    address, args = peer.receive()  # a request_id that is not UTF-8: refused (and not echoed)
    assert address == protocol.ERROR and args[0] == "" and "request_id" in args[3]


@pytest.mark.parametrize("address, extra", [(protocol.CANCEL, "jX"), (protocol.RESULT, "jX"), (protocol.PING, None)])
def test_a_job_id_or_token_that_is_not_utf8_is_refused_as_such(peer, address, extra):
    """A job id with a Latin-1 byte was answered "unknown job", and a token with one was taken
    by an engine without a token; each is refused naming the argument."""
    args = (peer.port, "r-bytes", "tX") if extra is None else (peer.port, "r-bytes", "", extra)
    peer.send_bytes(osc.encode(address, *args).replace(b"X\x00", b"\xe9\x00"))
    reply, answer = peer.receive()
    name = "token" if extra is None else "job_id"
    assert reply == protocol.ERROR and answer[:3] == ["r-bytes", "", "bad_arguments"]
    assert f"argument '{name}' holds bytes that are not UTF-8 text" in answer[3]


def test_a_lost_final_reply_can_be_fetched_by_job_id(peer, client, tmp_path):
    job = client.submit(make_request(tmp_path, seed=3))
    final = job.wait()
    peer.send(protocol.RESULT, peer.port, "q", "", final["job_id"])
    address, args = peer.receive()
    summary = json.loads(args[1])
    assert (address, args[0]) == (protocol.JOB, "q")
    assert summary["state"] == "done" and summary["stem_path"] == final["stem_path"]
    assert summary["metadata"]["seed"] == 3


@pytest.mark.parametrize(
    "make_args, code",
    [
        (lambda port: (protocol.PING, port, "x"), "bad_arguments"),  # missing token
        (lambda port: (protocol.PING, port, "x", "", 1), "bad_arguments"),  # extra argument
        (lambda port: (protocol.STATUS, port, "x", 7), "bad_arguments"),  # wrong type
        (lambda port: ("/stepfoley/nope", port, "x", ""), "unknown_address"),
        (lambda port: (protocol.GENERATE, port, "x", "", "{not json"), "invalid_request"),
        (lambda port: (protocol.GENERATE, port, "x", "", "[1, 2]"), "invalid_request"),
        (lambda port: (protocol.RESULT, port, "x", "", "no-such-job"), "unknown_job"),
        (lambda port: (protocol.CANCEL, port, "x", "", "no-such-job"), "unknown_job"),
    ],
)
def test_malformed_messages_get_an_error_reply(peer, make_args, code):
    peer.send(*make_args(peer.port))
    address, args = peer.receive()
    assert address == protocol.ERROR and args[0] == "x" and args[2] == code and args[3]
    peer.send(protocol.PING, peer.port, "alive", "")
    assert peer.receive()[0] == protocol.PONG


def test_invalid_request_fields_are_rejected_with_the_reason(peer, tmp_path):
    peer.generate(make_request(tmp_path, output_dir=str(tmp_path / "nowhere")), "r")
    address, args = peer.receive()
    assert (address, args[1], args[2]) == (protocol.ERROR, "", "invalid_request")
    assert "nowhere" in args[3]


def test_an_oversized_datagram_is_refused_with_an_error(peer, tmp_path):
    request = make_request(tmp_path, caption="x" * 900, previous_captions=["y" * 900] * 40)
    peer.generate(request, "big")
    address, args = peer.receive()
    assert (address, args[0], args[2]) == (protocol.ERROR, "big", "payload_too_large")


def test_token_is_required_when_set(tmp_path):
    """Finding 9: without the token a datagram gets no reply at all, whatever it holds."""
    with EngineServer(SineRunner(), ServerConfig(port=0, token="s3cret")).start() as srv:
        p = RawPeer(srv.address[1])
        for message in ((protocol.PING, p.port, "no", ""), (protocol.PING, p.port, "wrong", "s3creT"),
                        ("/stepfoley/nope", p.port, "x", ""), (protocol.PING, p.port, "x"),
                        (protocol.STATUS, p.port, "bad id!", "")):
            p.send(*message)
        p.send(protocol.PING, p.port, "ok", "s3cret")
        assert p.receive() == (protocol.PONG, ["ok", protocol.PROTOCOL_VERSION, "unknown", "unknown"])  # the first reply of all
        p.send("/stepfoley/nope", p.port, "x", "s3cret")
        assert p.receive()[1][2] == "unknown_address"  # with the token, errors are answered
        p.send(protocol.PING, p.port, "ok", "s3cret")
        assert p.receive()[0] == protocol.PONG
        p.close()
        with EngineClient(port=srv.address[1], token="s3cret") as c:
            assert c.submit(make_request(tmp_path)).wait()["state"] == "done"


def test_listening_off_loopback_needs_a_token():
    with pytest.raises(ConfigError, match="token"):
        EngineServer(SineRunner(), ServerConfig(host="0.0.0.0", port=0))
    with pytest.raises(ConfigError, match="Listening on every interface lets other machines"):  # bind's ""
        EngineServer(SineRunner(), ServerConfig(host="", port=0))
    srv = EngineServer(SineRunner(), ServerConfig(host="0.0.0.0", port=0, token="t"))
    srv.stop()


def test_what_bind_took_is_held_to_loopback_without_a_token(monkeypatch):
    """The name is looked up twice, once to check it and once by bind(): a name whose answer moved
    off loopback in between (a DNS answer, a hosts file edited) was served without a token."""
    import stepfoley.bridge.server as server_module

    monkeypatch.setattr(server_module, "is_loopback", lambda host: True)  # the first look's answer
    with pytest.raises(ConfigError, match="took 0.0.0.0, which lets other machines reach the engine"):
        EngineServer(SineRunner(), ServerConfig(host="0.0.0.0", port=0))
    srv = EngineServer(SineRunner(), ServerConfig(host="127.0.0.1", port=0))
    srv.stop()


def test_a_busy_port_is_a_clear_error(server):
    with pytest.raises(ConfigError, match="already running"):
        EngineServer(SineRunner(), ServerConfig(port=server.address[1]))


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])  # TEST-NET-1: never this machine's
def test_an_address_this_computer_does_not_have_is_said_as_such(host):
    """It was said as a busy port: "Is another engine already running? Pick another --port." """
    with pytest.raises(ConfigError) as refused:
        EngineServer(SineRunner(), ServerConfig(host=host, port=0, token="t"))
    assert "This computer has no such address" in str(refused.value) and "--port" not in str(refused.value)


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid"])
def test_a_name_of_no_address_is_said_as_such_with_or_without_a_token(host):
    """Without a token it was refused as an address other machines could reach."""
    said = []
    for token in ("t", ""):
        with pytest.raises(ConfigError) as refused:
            EngineServer(SineRunner(), ServerConfig(host=host, port=0, token=token))
        said.append(str(refused.value))
    assert said[0] == said[1] and f"Cannot listen on {host}:0" in said[0]
    assert "This computer has no such address" in said[0] and "token" not in said[0]


def test_queue_limit(tmp_path):
    gate, running = threading.Event(), threading.Event()

    def blocked(request, on_progress, is_cancelled):
        running.set()
        gate.wait(60)  # job 0 holds the queue until the fourth request is answered
        return SineRunner()(request, on_progress, is_cancelled)

    with EngineServer(blocked, ServerConfig(port=0, max_queue=2)).start() as srv:
        p = RawPeer(srv.address[1])
        codes = []
        for i in range(4):  # one runs, two wait, the fourth is refused
            p.generate(make_request(tmp_path), f"q{i}")
            address, args = p.receive_until({protocol.ACCEPTED, protocol.ERROR})[-1]
            codes.append(args[2] if address == protocol.ERROR else "accepted")
            if i == 0:  # the worker must have taken job 0 off the queue, however busy the CPU
                assert running.wait(60)
        gate.set()
        p.close()
    assert codes == ["accepted", "accepted", "accepted", "queue_full"]


def test_stop_fails_queued_jobs_and_stops_the_running_one(tmp_path):
    srv = EngineServer(SineRunner(step_s=0.5), ServerConfig(port=0)).start()
    p = RawPeer(srv.address[1])
    p.generate(make_request(tmp_path, caption="running", steps=200), "run")  # 100 s
    p.receive_until({protocol.PROGRESS})
    p.generate(make_request(tmp_path, caption="waiting"), "wait")
    p.receive_until({protocol.ACCEPTED})  # queued before the stop (after it: refused, engine_stopping)
    started = time.monotonic()
    srv.stop(timeout=60)
    assert time.monotonic() - started < 30  # stopped at its next step, not waited for
    finals = {}
    while len(finals) < 2:
        address, args = p.receive()
        if address in protocol.FINAL_REPLIES:
            finals[args[0]] = (address, args[2])
    assert finals == {"run": (protocol.ERROR, "engine_stopped"), "wait": (protocol.ERROR, "engine_stopped")}
    assert os.listdir(tmp_path / "out") == []
    p.close()


def test_a_server_still_loading_its_model_answers_and_refuses_generation(tmp_path):
    from test_request import capabilities

    with EngineServer(None, ServerConfig(port=0, model="loading")).start() as srv:
        p = RawPeer(srv.address[1])
        p.send(protocol.PING, p.port, "p", "")
        assert p.receive()[1][2] == "loading"
        p.send(protocol.STATUS, p.port, "s", "")
        status = json.loads(p.receive()[1][1])
        assert (status["state"], status["capabilities"]) == ("loading", None)
        p.generate(make_request(tmp_path), "early")
        address, args = p.receive()
        assert (address, args[2]) == (protocol.ERROR, "engine_loading")
        srv.attach(SineRunner(), model="test-sine", device="cpu", capabilities=capabilities(alpha=2.0))
        p.send(protocol.STATUS, p.port, "s2", "")
        status = json.loads(p.receive()[1][1])
        assert status["state"] == "idle" and status["capabilities"]["defaults"]["alpha"] == 2.0
        p.generate(make_request(tmp_path), "later")
        assert p.receive_until(protocol.FINAL_REPLIES)[-1][0] == protocol.DONE
        p.send(protocol.PING, p.port, "p2", "")
        assert p.receive() == (protocol.PONG, ["p2", protocol.PROTOCOL_VERSION, "test-sine", "cpu"])
        p.close()


def test_a_restart_while_the_engine_on_the_port_stops_is_told_to_wait_not_to_change_port(capsys):
    """An engine lets go of its port only once its running job has stopped (up to 10 s): a
    restart then was told "Is another engine already running? Pick another --port.", and a DAW
    knows only its own port. Here a UDP socket answers /status as a stopping engine does."""
    from stepfoley.cli import main

    stopping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stopping.bind(("127.0.0.1", 0))
    stopping.settimeout(10)

    def answer_as_stopping():
        try:
            data, sender = stopping.recvfrom(65536)
        except OSError:
            return
        [(address, args)] = osc.decode(data)
        header, _ = protocol.parse_header(address, args)
        status = {"state": "stopping", "model": "stepfoley-mini", "queue": [], "current": None}
        stopping.sendto(osc.encode(protocol.STATUS_REPLY, header.request_id, json.dumps(status)),
                        (sender[0], header.reply_port))

    answering = threading.Thread(target=answer_as_stopping)
    answering.start()
    try:
        assert main(["serve", "--port", str(stopping.getsockname()[1])]) == 3
    finally:
        answering.join()
        stopping.close()
    err = capsys.readouterr().err
    assert "the engine there is still stopping" in err and "Start this one again in a moment." in err
    assert "another --port" not in err


def test_stepfoley_serve_refuses_unsafe_or_busy_addresses(server, capsys):
    from stepfoley.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "--port", str(server.address[1])]) == 3
    assert "a StepFoley engine is already running there (idle, model test-sine)" in capsys.readouterr().err
    for size in ("0", "-3"):  # it would refuse every job as "queue full"
        assert main(["serve", "--port", "0", "--max-queue", size]) == 2
        assert "--max-queue must be at least 1" in capsys.readouterr().err
    # past a C int os.nice raised OverflowError, after the port was bound; below 0 it was ignored
    for nice in ("99999999999", "20", "-5"):
        assert main(["serve", "--port", "0", "--nice", nice]) == 2
        assert f"--nice must be from 0 (priority unchanged) to 19 steps below normal (got {nice})" in \
            capsys.readouterr().err
    # an unset shell variable: not the current folder's name
    assert main(["serve", "--port", "0", "--token-file", ""]) == 2
    assert "The token file name is empty" in capsys.readouterr().err


def test_stepfoley_serve_says_an_address_that_does_not_exist_as_such_token_or_not(tmp_path, monkeypatch, capsys):
    """Without a token, "--host 999.1.1.1" was refused as listening off loopback (exit 2); with one,
    "no such address" (exit 3). "--host ''" was named as nothing: "Refusing to listen on  without"."""
    from stepfoley.cli import main

    monkeypatch.delenv("STEPFOLEY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no token file
    for host in ("999.1.1.1", "no-such-host.invalid"):
        said = []
        for token in ("a-token", ""):  # "" in $STEPFOLEY_TOKEN: none
            monkeypatch.setenv("STEPFOLEY_TOKEN", token)
            assert main(["serve", "--host", host, "--port", "0"]) == 3
            said.append(capsys.readouterr().err)
        assert said[0] == said[1] and f"Cannot listen on {host}:0" in said[0], said
        assert "This computer has no such address" in said[0] and "Refusing" not in said[0]
    assert main(["serve", "--host", "", "--port", "0"]) == 2  # every interface: still refused without a token
    assert "Refusing to listen on every interface without a token" in capsys.readouterr().err


def test_a_request_the_model_cannot_run_is_refused_before_accepted(tmp_path):
    """The one bound lives in stepfoley.request: steps 201 and an unknown method never get a job."""
    from test_request import capabilities

    with EngineServer(SineRunner(), ServerConfig(port=0), capabilities=capabilities()).start() as srv:
        p = RawPeer(srv.address[1])
        for rid, change, words in (("a", {"steps": 201}, "steps = 201"), ("b", {"method": "magic"}, "unknown"),
                                   ("c", {"w1": 1.0}, "only apply to method 'dual'")):
            p.generate(make_request(tmp_path, **change), rid)
            address, args = p.receive()
            assert (address, args[1], args[2]) == (protocol.ERROR, "", "invalid_request") and words in args[3]
        p.generate(make_request(tmp_path, method="dual", w1=1.0, w2=2.0, w3=0.5, steps=200), "ok")
        assert p.receive_until(protocol.FINAL_REPLIES, timeout=20)[-1][0] == protocol.DONE
        p.close()


# --- the real engine behind the server ---------------------------------------------------------

@pytest.fixture(scope="module")
def real_engine(tmp_path_factory):
    """What `stepfoley serve --model tiny-random` runs, in this process: a server that starts
    before its model, then is handed the real FoleyService (random weights, every line of the
    embedded model's path: picture features, guided sampling, decoding, finishing, the writer)."""
    from stepfoley.engine.features.cache import open_feature_cache
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.engine.service import build_service

    srv = EngineServer(None, ServerConfig(port=0, model="loading", device="cpu")).start()
    service = build_service(model="tiny-random", device="cpu", feature_cache=open_feature_cache("off"))
    info = service.describe()
    srv.attach(service, model=info["model"], device=info["device"], capabilities=service.capabilities())
    video = write_scene(make_scene(20_000_001, n_sources=2), tmp_path_factory.mktemp("scene"))["video"]
    yield srv, str(video)
    srv.stop()


def test_the_real_engine_answers_generates_and_cancels_through_the_server(real_engine, tmp_path):
    srv, video = real_engine
    region = {"video": video, "file_in": 1.0, "file_out": 3.0, "playrate": 1.0, "project_start": 5.0,
              "project_end": 7.0}
    with EngineClient(port=srv.address[1]) as c:
        status = c.engine_status()
    assert status["model"] == "stepfoley-mini-random"
    assert {m["name"] for m in status["capabilities"]["methods"]} >= {"independent", "nag"}

    p = RawPeer(srv.address[1])
    try:
        request = make_request(tmp_path, region=region, steps=3, caption="rain on a tin roof")
        p.generate(request, "real")
        replies = p.receive_until(set(protocol.FINAL_REPLIES), timeout=120)
        address, args = replies[-1]
        assert address == protocol.DONE, args
        phases = [a[4] for addr, a in replies if addr == protocol.PROGRESS]
        assert [ph for i, ph in enumerate(phases) if i == 0 or phases[i - 1] != ph] == list(protocol.PHASES)
        assert [a[2:4] for addr, a in replies if addr == protocol.PROGRESS and a[4] == "sampling"] == [
            [1, 3], [2, 3], [3, 3]]
        metadata = json.loads(args[3])
        assert (metadata["model"], metadata["caption"], metadata["steps"]) == ("stepfoley-mini-random",
                                                                                 "rain on a tin roof", 3)
        stem, rate = sf.read(args[2], dtype="float32")
        assert rate == 48000 and len(stem) == 2 * 48000  # project_end - project_start
        assert np.abs(stem).max() > 0.01 and metadata["lufs"] == pytest.approx(-23.0, abs=0.5)

        cancelled_out = tmp_path / "cancelled"
        cancelled_out.mkdir()
        p.generate(make_request(tmp_path, region=region, steps=200, output_dir=str(cancelled_out)), "long")
        job_id = p.receive()[1][1]
        while True:  # cancel once the real sampler is under way
            address, args = p.receive(timeout=120)
            if address == protocol.PROGRESS and args[4] == "sampling" and args[2] >= 2:
                break
        p.send(protocol.CANCEL, p.port, "c", "", job_id)
        address, _ = p.receive_until({protocol.CANCELLED, protocol.DONE, protocol.ERROR}, timeout=60)[-1]
        assert address == protocol.CANCELLED
        assert os.listdir(cancelled_out) == [], "a cancelled job writes no stem"
    finally:
        p.close()


def test_a_token_no_message_can_carry_is_refused_at_start():
    """With a 300-character token the engine started, then answered every message, the right
    token included, with "token is too long"."""
    with pytest.raises(ConfigError, match="The token is 300 characters long; a token is 1-256 characters"):
        EngineServer(SineRunner(), ServerConfig(port=0, token="k" * 300))
    longest = "k" * protocol.MAX_TOKEN_CHARS
    with EngineServer(SineRunner(), ServerConfig(port=0, token=longest)).start() as srv:
        with EngineClient(port=srv.address[1], token=longest) as c:
            assert c.ping()["protocol"] == protocol.PROTOCOL_VERSION


class _Unstoppable(SineRunner):
    """A job that cannot be cut short (one long step): it ignores is_cancelled until released,
    then writes its stem."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.written: list[str] = []

    def __call__(self, request, on_progress, is_cancelled):
        on_progress("sampling", 0, 1)
        self.release.wait(120.0)
        result = self._stem(request, request.seed)
        self.written.append(result["stem_path"])
        return result


def _running_a_job_that_cannot_stop(tmp_path):
    """An engine whose running job (request "long") has begun and ignores a stop: (runner, server, peer)."""
    runner = _Unstoppable()
    srv = EngineServer(runner, ServerConfig(port=0)).start()
    p = RawPeer(srv.address[1])
    p.generate(make_request(tmp_path, caption="long step"), "long")
    p.receive_until({protocol.PROGRESS})
    return runner, srv, p


def test_an_engine_stopped_while_loading_says_stopping_not_loading(tmp_path):
    """It said "loading" and refused a request with "send again in a moment": an engine that
    will not load."""
    with EngineServer(None, ServerConfig(port=0, model="loading")).start() as srv:
        p = RawPeer(srv.address[1])
        srv.jobs.refuse_new()  # the first thing a stop does (EngineServer.shutdown)
        p.send(protocol.STATUS, p.port, "s", "")
        assert json.loads(p.receive()[1][1])["state"] == "stopping"
        p.generate(make_request(tmp_path), "late")
        address, args = p.receive()
        assert (address, args[2]) == (protocol.ERROR, "engine_stopping")
        p.close()


def test_a_job_that_outlasts_the_stop_is_told_engine_stopped_and_leaves_no_stem(tmp_path):
    runner, srv, p = _running_a_job_that_cannot_stop(tmp_path)
    started = time.monotonic()
    srv.stop(timeout=0.3)
    assert time.monotonic() - started < 30  # gave up on it after 0.3 s, not its 120 s step
    address, args = p.receive_until(protocol.FINAL_REPLIES)[-1]
    assert (address, args[0], args[2]) == (protocol.ERROR, "long", "engine_stopped")
    runner.release.set()  # the worker finishes after all: what it wrote goes
    deadline = time.monotonic() + 60.0
    while (not runner.written or os.listdir(tmp_path / "out")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.written and os.listdir(tmp_path / "out") == []
    p.close()


def test_a_stopping_engine_answers_while_its_running_job_stops(tmp_path):
    """It held its port for up to 10 s and answered nothing: a ping said the engine was not
    running, and a request was lost without a word."""
    runner, srv, p = _running_a_job_that_cannot_stop(tmp_path)
    try:
        stopping = threading.Thread(target=srv.stop, kwargs={"timeout": 30.0})
        stopping.start()
        while not srv.stopping:  # the stop has been asked for (a /status before that says "busy")
            time.sleep(0.001)
        p.sock.sendto(osc.encode(protocol.STATUS, p.port, "st", ""), p.server)
        address, args = p.receive_until({protocol.STATUS_REPLY})[-1]
        assert json.loads(args[1])["state"] == "stopping"
        p.sock.sendto(osc.encode(protocol.PING, p.port, "pi", ""), p.server)
        assert p.receive_until({protocol.PONG})[-1][1][0] == "pi"
        p.generate(make_request(tmp_path, caption="after"), "after")
        address, args = p.receive_until({protocol.ERROR})[-1]
        assert (args[0], args[2]) == ("after", "engine_stopping")
    finally:
        runner.release.set()
        stopping.join(60)
        p.close()
    assert not stopping.is_alive()


def test_a_job_outlasting_the_stop_is_waited_for_once(tmp_path):
    runner, srv, p = _running_a_job_that_cannot_stop(tmp_path)
    try:
        worker, waits = srv.jobs._worker, []
        join = worker.join
        worker.join = lambda timeout=None: waits.append(timeout) or join(timeout)
        srv.stop(timeout=1.0)
        # it waited the timeout, then the timeout again, holding the port and answering nothing
        assert [t for t in waits if t] == [1.0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", srv.address[1]))  # the port is free once stop() returns
    finally:
        runner.release.set()
        p.close()


def test_accepted_always_comes_before_the_jobs_own_replies(tmp_path):
    """A job that fails at once (its video is missing) while the dispatch loop is slow to send
    its /accepted (descheduled on a busy machine): the worker's replies must not overtake it, or
    a client written to the protocol document would wait for ever."""
    srv = EngineServer(SineRunner(), ServerConfig(port=0))
    send = srv._send

    def slow_accepted(datagram, address):
        if datagram.startswith(protocol.ACCEPTED.encode()):
            time.sleep(0.2)
        send(datagram, address)

    srv._send = slow_accepted
    srv.start()
    p = RawPeer(srv.address[1])
    request = make_request(tmp_path, steps=1)
    request["region"]["video"] = str(tmp_path / "missing.mp4")
    for i in range(3):
        p.generate(request, f"r{i}")
        seen = [address for address, _ in p.receive_until({protocol.ERROR})]
        assert seen == [protocol.ACCEPTED, protocol.PROGRESS, protocol.ERROR], (i, seen)
    p.close()
    srv.stop()


def test_a_late_cancels_stem_goes_whatever_clock_stamped_it(tmp_path):
    """A stem on a network share carries the server's clock: one stamped an hour behind the
    engine's is still this job's new file, and a late cancel removes it; a file that was in the
    folder before the job is never removed, whatever the result names."""

    class BehindClock(SineRunner):
        def __call__(self, request, on_progress, is_cancelled):
            result = super().__call__(request, on_progress, is_cancelled)
            os.utime(result["stem_path"], (time.time() - 3600,) * 2)
            gate.set()
            deadline = time.monotonic() + 10
            while not is_cancelled() and time.monotonic() < deadline:  # the cancel lands after the last check
                time.sleep(0.01)
            return result

    import threading

    gate = threading.Event()
    srv = EngineServer(BehindClock(), ServerConfig(port=0)).start()
    p = RawPeer(srv.address[1])
    p.generate(make_request(tmp_path, steps=1), "job")
    job_id = p.receive_until({protocol.ACCEPTED})[-1][1][1]
    assert gate.wait(5)
    p.send(protocol.CANCEL, p.port, "c1", "", job_id)
    replies = p.receive_until({protocol.DONE, protocol.CANCELLED})
    assert replies[-1][0] == protocol.CANCELLED
    time.sleep(0.2)
    assert os.listdir(tmp_path / "out") == []
    p.close()
    srv.stop()

    from stepfoley.bridge.jobs import _discard_stem, _names_in

    out = tmp_path / "out"
    mine, below = out / "my_take.wav", out / "sub" / "user_take_001.wav"
    below.parent.mkdir()
    mine.write_bytes(b"RIFF")
    below.write_bytes(b"RIFF")
    before = _names_in(str(out))
    for path in (mine, below):  # a faulty runner names files that were there: never removed
        _discard_stem({"stem_path": str(path)}, str(out), before)
    assert mine.exists() and below.exists()
    mine.unlink()  # the name freed during the job and taken again by its stem: the job's file
    mine.write_bytes(b"RIFF new")
    _discard_stem({"stem_path": str(mine)}, str(out), before)
    assert not mine.exists()


def test_a_refused_stem_is_removed_only_as_the_file_the_job_wrote(tmp_path):
    """A folder swapped for another during the job holds a user's file under the stem's name,
    new to the listing taken at the start: removed by name, it was lost."""
    from stepfoley.bridge.jobs import _discard_stem, _names_in

    before = _names_in(str(tmp_path))
    theirs = tmp_path / "rain_001.wav"
    theirs.write_bytes(b"the user's own")
    found = os.lstat(theirs)
    _discard_stem({"stem_path": str(theirs), "stem_identity": (found.st_dev, found.st_ino + 1)}, str(tmp_path), before)
    assert theirs.read_bytes() == b"the user's own"
    _discard_stem({"stems": [{"stem_path": str(theirs), "stem_identity": (found.st_dev, found.st_ino)}]},
                  str(tmp_path), before)
    assert not theirs.exists()


def test_a_file_that_was_there_is_kept_where_the_folder_listing_gives_no_inodes(tmp_path, monkeypatch):
    """Windows's folder listing (os.DirEntry.stat) reports every inode as 0 where os.stat gives
    the real one: compared across the two, a file that was there when the job began looked new
    and a faulty runner's result naming it had it removed."""
    import contextlib
    import types

    from stepfoley.bridge import jobs

    scandir = os.scandir

    def stat_without_inode(entry):
        def stat(follow_symlinks=True):
            info = entry.stat(follow_symlinks=follow_symlinks)
            return types.SimpleNamespace(st_ino=0, st_mtime_ns=info.st_mtime_ns, st_size=info.st_size)
        return types.SimpleNamespace(name=entry.name, path=entry.path, stat=stat)

    @contextlib.contextmanager
    def listing_as_on_windows(folder):
        with scandir(folder) as entries:
            yield [stat_without_inode(e) for e in entries]

    monkeypatch.setattr(jobs.os, "scandir", listing_as_on_windows)
    mine = tmp_path / "my_take.wav"
    mine.write_bytes(b"RIFF")
    before = jobs._names_in(str(tmp_path))
    jobs._discard_stem({"stem_path": str(mine)}, str(tmp_path), before)
    assert mine.read_bytes() == b"RIFF"
    mine.unlink()  # still told apart by its time and size: a new file under the name is the job's
    mine.write_bytes(b"RIFF, the job's")
    jobs._discard_stem({"stem_path": str(mine)}, str(tmp_path), before)
    assert not mine.exists()


def test_a_cancel_answered_stopping_ends_cancelled_even_after_the_last_check(tmp_path):
    """The cancel lands while the stem is being written (no check inside): "stopping" was the
    answer, so the job ends /cancelled and its stem goes."""

    import threading

    answered = threading.Event()  # the stem is written once the cancel was answered

    class SlowWriter(SineRunner):
        def _stem(self, request, seed):
            answered.wait(10)
            return super()._stem(request, seed)

    srv = EngineServer(SlowWriter(), ServerConfig(port=0)).start()
    p = RawPeer(srv.address[1])
    p.generate(make_request(tmp_path, steps=1), "job")
    job_id = p.receive_until({protocol.ACCEPTED})[-1][1][1]
    p.receive_until({protocol.PROGRESS})
    p.receive_until({protocol.PROGRESS})  # sampling 1 of 1: the runner's last check is behind it
    p.send(protocol.CANCEL, p.port, "c1", "", job_id)
    replies = p.receive_until({protocol.CANCEL_REPLY})
    answered.set()
    replies += p.receive_until({protocol.DONE, protocol.CANCELLED})
    assert (protocol.CANCEL_REPLY, ["c1", job_id, protocol.CANCEL_STOPPING]) in replies
    assert replies[-1][0] == protocol.CANCELLED and os.listdir(tmp_path / "out") == []
    p.close()
    srv.stop()


def test_a_job_held_for_its_batch_is_let_go_by_a_stop(tmp_path):
    # The jobs book holds a job until its submitter says the replies to it are out, however long
    # that takes. A stop that comes first must not leave the worker holding it for ever:
    # the job ends at its first step, and the stop returns at once.
    from stepfoley.bridge.jobs import CANCELLED, ERROR, RUNNING, JobBook
    from stepfoley.request import parse_request

    told, runner = [], SineRunner()
    book = JobBook(runner, lambda job, kind: told.append(kind))
    book.start()
    job, _ = book.submit("held", parse_request(make_request(tmp_path, steps=3)), ("127.0.0.1", 9))
    deadline = time.monotonic() + 60
    while job.state != RUNNING and time.monotonic() < deadline:  # the worker has it; no replies_sent() comes
        time.sleep(0.01)
    assert runner.started == [] and told == []
    started = time.monotonic()
    book.stop(timeout=60)
    assert time.monotonic() - started < 30 and not book._worker.is_alive()
    assert job.state in (CANCELLED, ERROR) and told[-1] in protocol.FINAL_REPLIES
    assert os.listdir(tmp_path / "out") == []


def test_a_job_given_up_by_the_stop_says_nothing_after_its_final_reply(tmp_path):
    # told engine_stopped, the runner went on and its progress still reached the client
    from stepfoley.bridge.jobs import JobBook
    from stepfoley.request import parse_request

    release, told = threading.Event(), []

    def unstoppable(request, on_progress, is_cancelled):
        on_progress("sampling", 0, 1)
        release.wait(60)
        on_progress("finishing", 0, 1)
        raise RuntimeError("stopped late")

    book = JobBook(unstoppable, lambda job, kind: told.append(kind))
    book.start()
    book.submit("late", parse_request(make_request(tmp_path)), ("127.0.0.1", 9))
    book.replies_sent()
    deadline = time.monotonic() + 60
    while protocol.PROGRESS not in told and time.monotonic() < deadline:
        time.sleep(0.01)
    book.stop(timeout=0.1)  # given up on: engine_stopped said
    assert told[-1] == protocol.ERROR
    release.set()
    book._worker.join(60)
    assert told[-1] == protocol.ERROR and told.count(protocol.ERROR) == 1


@pytest.mark.parametrize("text, said", [
    # json.loads keeps the last of two equal keys: the first output_dir would be silently dropped
    (lambda good: good[:-1] + ', "output_dir": "/elsewhere"}', "the field 'output_dir' is given twice"),
    (lambda good: good.replace('"seed": 1', '"seed": ' + "9" * 5000), "a number has more than 4000 digits"),
    # a lone surrogate in the name comes back escaped: the reply cannot fail to encode
    (lambda good: good[:-1] + ', "\\ud800": 1, "\\ud800": 2}', "the field '\\ud800' is given twice"),
], ids=["a field twice", "a number of 5000 digits", "a lone surrogate twice"])
def test_a_request_that_does_not_say_one_thing_is_refused_with_the_reason(peer, tmp_path, text, said):
    good = json.dumps(make_request(tmp_path))
    peer.send(protocol.GENERATE, peer.port, "twice", "", text(good))
    address, args = peer.receive()
    assert (address, args[0], args[2]) == (protocol.ERROR, "twice", "invalid_request")
    assert args[3] == f"The request is not valid JSON: {said}."
    assert list((tmp_path / "out").iterdir()) == []


def _has_ipv6() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this machine")
def test_an_ipv6_link_local_address_keeps_its_interface_both_ways():
    """Python gives an IPv6 sender's interface (scope id) only as the sockaddr's 4th item, and
    both sides kept the first two: with several interfaces (Docker, a VPN), replies to a
    link-local client, and its requests, could leave by the wrong one and be lost."""
    import socket

    from stepfoley.bridge.server import sender_address

    assert sender_address(("fe80::1", 5000, 0, 4)) == ("fe80::1%4", 5000)
    assert sender_address(("2001:db8::1", 5000, 0, 0)) == ("2001:db8::1", 5000)
    assert sender_address(("127.0.0.1", 5000)) == ("127.0.0.1", 5000)
    with EngineClient(host="fe80::1%lo", port=9, token="secret") as c:
        assert c._target == ("fe80::1", 9, 0, socket.if_nametoindex("lo"))


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this machine")
def test_an_engine_on_ipv6_loopback_answers():
    with EngineServer(SineRunner(), ServerConfig(host="::1", port=0)).start() as srv:
        with EngineClient(host="::1", port=srv.address[1]) as c:
            assert c.ping()["protocol"] == protocol.PROTOCOL_VERSION


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this machine")
def test_an_ipv6_address_is_written_in_brackets_in_messages():
    """"Cannot listen on ::1:40000" read as one longer address (and the client's "No StepFoley
    engine answered at ::1:40000" too); they now write it as a URL does, "[::1]:40000"."""
    import socket

    from stepfoley.bridge.client import not_running_message, unreachable_engine

    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
        taken.bind(("::1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            EngineServer(SineRunner(), ServerConfig(host="::1", port=port))
    assert f"Cannot listen on [::1]:{port} (" in str(refused.value)
    assert f"answered at [::1]:{port}." in not_running_message("::1", port)
    assert f"Cannot reach [fe80::1%lo]:{port}:" in unreachable_engine("fe80::1%lo", port, OSError("x"))["error"]["message"]
    assert "answered at 127.0.0.1:9017." in not_running_message("127.0.0.1", 9017)
