"""The client library and `stepfoley send`: status files, exit codes, watchdog, cancel file."""

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stepfoley.bridge import client as bc
from stepfoley.bridge import osc, protocol
from stepfoley.bridge.server import EngineServer, ServerConfig
from stepfoley.cli import main
from test_bridge_kit import SineRunner, client, make_request, runner, server  # noqa: F401


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def read_status(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_send_request_keeps_the_status_file_and_ends_done(tmp_path):
    status_path = str(tmp_path / "status.json")
    seen_states = []
    seen = threading.Condition()

    def note(status):
        with seen:
            seen_states.append((status["state"], status["step"]))
            seen.notify_all()

    def after_the_client_saw(step):  # each step waits until the client has reported the one before
        with seen:
            assert seen.wait_for(lambda: step == 1 or ("running", step - 1) in seen_states, timeout=10)

    with EngineServer(SineRunner(before_step=after_the_client_saw), ServerConfig(port=0)).start() as srv:
        code, final = bc.send_request(make_request(tmp_path, steps=3), status_path, port=srv.address[1],
                                      on_update=note)
    assert code == bc.EXIT_DONE
    assert seen_states[0] == ("queued", 0) and seen_states[-1] == ("done", 3)
    running = [s for s in seen_states if s[0] == "running" and s[1] > 0]
    assert list(dict.fromkeys(running)) == [("running", 1), ("running", 2), ("running", 3)]  # a heartbeat repeats one
    on_disk = read_status(status_path)
    assert on_disk["state"] == "done" and on_disk["exit_code"] == 0 and os.path.isfile(on_disk["stem_path"])
    assert on_disk["metadata"]["caption"] == "footsteps on gravel"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".status.json")] == [], "no temp file left"


def test_engine_not_running_is_reported_in_the_status_file(tmp_path):
    status_path = str(tmp_path / "status.json")
    started = time.monotonic()
    code, _ = bc.send_request(make_request(tmp_path), status_path, port=free_udp_port())
    # told after its connect timeout, not after the job watchdog's 120 s
    assert code == bc.EXIT_NOT_RUNNING and time.monotonic() - started < 60
    status = read_status(status_path)
    assert (status["state"], status["error"]["code"], status["exit_code"]) == ("error", "engine_not_running", 3)


class WinsockLikeSocket(socket.socket):
    """A real UDP socket that reports "nobody listens" as Windows does: WSAECONNRESET (10054,
    ConnectionResetError) where Linux and macOS say ECONNREFUSED."""

    def _as_windows(self, call, *args):
        try:
            return call(*args)
        except ConnectionRefusedError:
            raise ConnectionResetError(10054, "An existing connection was forcibly closed by the remote host") from None

    def recv(self, *args):
        return self._as_windows(super().recv, *args)

    def send(self, *args):
        return self._as_windows(super().send, *args)


def test_engine_not_running_is_reported_as_windows_says_it_too(tmp_path, monkeypatch):
    monkeypatch.setattr(bc.socket, "socket", WinsockLikeSocket)
    status_path = str(tmp_path / "status.json")
    code, _ = bc.send_request(make_request(tmp_path), status_path, port=free_udp_port())
    assert code == bc.EXIT_NOT_RUNNING
    assert read_status(status_path)["error"]["code"] == "engine_not_running"


class BreakableNetworkSocket(socket.socket):
    """A real UDP socket whose network can be cut: while `down`, every send and receive fails as
    a link that has gone does (EHOSTUNREACH), where the engine is still there."""
    down = False

    def _over_the_network(self, call, *args):
        if BreakableNetworkSocket.down:
            raise OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH))
        return call(*args)

    def recv(self, *args):
        return self._over_the_network(super().recv, *args)

    def send(self, *args):
        return self._over_the_network(super().send, *args)

    def sendto(self, *args):
        return self._over_the_network(super().sendto, *args)


@pytest.mark.parametrize("outage_s, outcome", [(0.6, "done"), (None, "timed_out")], ids=["brief", "lasting"])
def test_a_network_error_while_following_a_job_is_a_lost_datagram(tmp_path, monkeypatch, outage_s, outcome):
    """A link that goes down while a job is followed (no route to the engine's machine): the
    error escaped `send` as a traceback and the status file stayed "running" for ever. It is
    now a lost datagram: a brief outage is ridden out, a lasting one ends at the watchdog, in
    the status file, naming what the network said."""
    monkeypatch.setattr(BreakableNetworkSocket, "down", False)
    status_path = str(tmp_path / "status.json")
    cut = []

    def on_update(status):
        if status["state"] == "running" and not cut:
            cut.append(time.monotonic())
            BreakableNetworkSocket.down = True
            if outage_s is not None:
                threading.Timer(outage_s, lambda: setattr(BreakableNetworkSocket, "down", False)).start()

    with EngineServer(SineRunner(step_s=0.1), ServerConfig(port=0)).start() as srv:
        monkeypatch.setattr(bc.socket, "socket", BreakableNetworkSocket)  # the client's network, not the engine's
        code, status = bc.send_request(make_request(tmp_path, steps=20), status_path, port=srv.address[1],
                                       timeout=2.0, on_update=on_update)
    assert cut and status["state"] == ("done" if outcome == "done" else "error")
    assert read_status(status_path)["exit_code"] == code
    if outcome == "timed_out":
        assert (code, status["error"]["code"]) == (bc.EXIT_TIMED_OUT, "timed_out")
        assert "The network said: No route to host." in status["error"]["message"]


def test_an_address_the_network_refuses_ends_in_words_not_a_traceback(tmp_path):
    """Sending to a broadcast address without leave to (EACCES) escaped as a traceback."""
    status_path = str(tmp_path / "status.json")
    code, status = bc.send_request(make_request(tmp_path), status_path, host="255.255.255.255", port=9,
                                   connect_timeout=0.5)
    assert (code, status["error"]["code"]) == (bc.EXIT_NOT_RUNNING, "engine_not_running")
    assert "The network said: Permission denied." in status["error"]["message"]
    assert read_status(status_path)["exit_code"] == bc.EXIT_NOT_RUNNING


def test_a_silent_engine_counts_as_not_running(tmp_path):
    # a socket that receives but never answers (a hung engine, or a firewall)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", 0))
        code, status = bc.send_request(make_request(tmp_path), None, port=mute.getsockname()[1], connect_timeout=0.5)
    assert code == bc.EXIT_NOT_RUNNING and status["error"]["code"] == "engine_not_running"


def test_rejected_and_failed_have_their_own_exit_codes(server, tmp_path):
    port = server.address[1]
    code, status = bc.send_request(make_request(tmp_path, output_dir=str(tmp_path / "absent")), None, port=port)
    assert (code, status["error"]["code"]) == (bc.EXIT_REJECTED, "invalid_request")
    code, status = bc.send_request(make_request(tmp_path, steps=-1), None, port=port)  # refused before sending
    assert (code, status["error"]["code"]) == (bc.EXIT_REJECTED, "invalid_request")
    bad = make_request(tmp_path)
    bad["region"]["video"] = str(tmp_path / "gone.mp4")
    code, status = bc.send_request(bad, None, port=port)
    assert (code, status["error"]["code"], status["job_id"] is not None) == (bc.EXIT_FAILED, "bad_video", True)


def test_the_cancel_file_cancels_the_job(tmp_path):
    with EngineServer(SineRunner(step_s=0.05), ServerConfig(port=0)).start() as srv:
        status_path = str(tmp_path / "status.json")

        def cancel_when_running():
            while not (os.path.exists(status_path) and read_status(status_path)["state"] == "running"):
                time.sleep(0.01)
            open(status_path + ".cancel", "w").close()

        helper = threading.Thread(target=cancel_when_running)
        helper.start()
        code, status = bc.send_request(make_request(tmp_path, steps=200), status_path, port=srv.address[1])
        helper.join()
    assert code == bc.EXIT_CANCELLED and read_status(status_path)["state"] == "cancelled"
    assert status["step"] < 200


def test_send_waits_for_an_engine_still_loading_its_model(tmp_path):
    # `stepfoley serve` listens before its model is loaded and refuses generation with
    # engine_loading ("send again shortly"); send used to end there, exit 4, on a fresh engine.
    # Meanwhile the status file keeps its heartbeat (a script takes a file that stops changing
    # for a dead client).
    from test_request import capabilities

    loading_updates = []
    with EngineServer(None, ServerConfig(port=0, model="loading")).start() as srv:
        loaded = threading.Timer(4.5, lambda: srv.attach(SineRunner(), model="test-sine", device="cpu",
                                                         capabilities=capabilities()))
        loaded.start()  # later than the client's connect timeout: the loading replies keep it waiting
        try:
            code, status = bc.send_request(
                make_request(tmp_path), None, port=srv.address[1], timeout=30.0, connect_timeout=1.5,
                on_update=lambda st: (st["phase"], st["job_id"]) == ("engine_loading", None)
                and loading_updates.append(st["updated"]))
        finally:
            loaded.cancel()
    assert (code, status["state"]) == (bc.EXIT_DONE, "done")
    assert len(loading_updates) >= 2 and loading_updates == sorted(set(loading_updates))  # every 2 s
    assert status["phase"] != "engine_loading"


def test_an_engine_loading_for_longer_than_the_timeout_ends_the_wait_in_words(tmp_path):
    with EngineServer(None, ServerConfig(port=0, model="loading")).start() as srv:
        began = time.monotonic()
        code, status = bc.send_request(make_request(tmp_path), None, port=srv.address[1], timeout=2.0,
                                       connect_timeout=1.5)
    assert (code, status["error"]["code"]) == (bc.EXIT_REJECTED, "engine_loading")
    assert "still loading its model after 2 s; wait until it prints 'StepFoley engine ready'" in \
        status["error"]["message"]
    assert time.monotonic() - began < 15.0


def test_a_cancel_while_the_engine_loads_withdraws_the_copy_it_reads_once_loaded(tmp_path):
    # The model finishes loading while a copy of the request waits unread in the engine's socket:
    # that copy becomes a job, which the client's withdrawal, read after it, must cancel before
    # it writes a stem nobody collects.
    from test_request import capabilities

    stalled, release, copies = threading.Event(), threading.Event(), []
    with EngineServer(None, ServerConfig(port=0, model="loading")).start() as srv:
        handle = srv.dispatcher.handle_datagram

        def held_once_loading_was_said(data, sender):
            if data.startswith(protocol.GENERATE.encode()):
                copies.append(data)
                if len(copies) == 2:  # the first was answered engine_loading
                    stalled.set()
                    release.wait(10.0)
            return handle(data, sender)

        srv.dispatcher.handle_datagram = held_once_loading_was_said
        with bc.EngineClient(port=srv.address[1]) as c:
            job = c.submit(make_request(tmp_path, steps=100), timeout=20.0, connect_timeout=5.0)
            while not stalled.is_set() and not job.finished:
                job.poll(0.05)
            job.cancel()
            assert (job.status["state"], job.status["exit_code"]) == ("cancelled", bc.EXIT_CANCELLED)
        srv.attach(SineRunner(step_s=0.05), model="test-sine", device="cpu", capabilities=capabilities())
        release.set()
        deadline = time.monotonic() + 20.0
        while srv.jobs.snapshot()["jobs_finished"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.jobs.snapshot()["jobs_finished"] == 1  # the held copy did become a job
    assert list((tmp_path / "out").iterdir()) == []  # ... and it was cancelled before its stem


def test_an_engine_loading_answer_to_an_old_copy_does_not_end_an_accepted_job(server, tmp_path):
    with bc.EngineClient(port=server.address[1]) as c:
        job = c.submit(make_request(tmp_path, steps=5))
        while not job.accepted:
            job.poll(0.05)
        job._on_reply(protocol.ERROR, [job.request_id, "", "engine_loading", "still loading"], "generate")
        assert not job.finished
        assert job.wait()["state"] == "done"


def test_cancel_before_acceptance_waits_for_the_job_id(tmp_path):
    with EngineServer(SineRunner(step_s=0.05), ServerConfig(port=0)).start() as srv:
        with bc.EngineClient(port=srv.address[1]) as c:
            job = c.submit(make_request(tmp_path, steps=100))
            job.cancel()  # no job id yet
            assert job.wait()["state"] == "cancelled"


def test_watchdog_times_out_without_progress_but_not_while_progressing(tmp_path):
    release = threading.Event()

    def stuck(request, on_progress, is_cancelled):
        on_progress("sampling", 1, 2)
        release.wait(10)
        return SineRunner()(request, on_progress, is_cancelled)

    with EngineServer(stuck, ServerConfig(port=0)).start() as srv:
        started = time.monotonic()
        code, status = bc.send_request(make_request(tmp_path), None, port=srv.address[1], timeout=1.0)
        release.set()
        # (a watchdog that did not fire would have waited for the release: done, 10 s later)
        assert (code, status["error"]["code"]) == (bc.EXIT_TIMED_OUT, "timed_out")
        assert 1.0 <= time.monotonic() - started
        # 20 steps of 0.25 s = 5 s in total, twice the watchdog, but never 2.5 s without news
        # (news 10 times as often as the watchdog asks: a loaded machine may hold this process a second)
        srv.jobs.runner = SineRunner(step_s=0.25)
        code, _ = bc.send_request(make_request(tmp_path, steps=20), None, port=srv.address[1], timeout=2.5)
        assert code == bc.EXIT_DONE


def test_a_queued_job_behind_a_long_one_does_not_time_out(tmp_path):
    # the queue is a sign of life, however long the job ahead: it lasts twice the second's watchdog
    # (the client's thread may be held a second or two on a loaded machine, so the watchdog is not shorter)
    with EngineServer(SineRunner(step_s=0.25), ServerConfig(port=0)).start() as srv, \
            bc.EngineClient(port=srv.address[1]) as c:
        first = c.submit(make_request(tmp_path, caption="long", steps=24))  # 6 s
        second = c.submit(make_request(tmp_path, caption="next", steps=1), timeout=3.0)
        while not (first.finished and second.finished):
            first.poll(0.02)
            second.poll(0.02)
        assert first.status["state"] == second.status["state"] == "done"


def test_lost_progress_and_done_replies_are_recovered_by_polling(server, tmp_path, monkeypatch):
    # drop the first /accepted and every pushed /progress and /done: resends and /result polls must do
    original = bc.EngineClient._route
    dropped = []

    def lossy(self, address, args):
        if address in (protocol.PROGRESS, protocol.DONE) or (address == protocol.ACCEPTED and not dropped):
            dropped.append(address)
            return
        original(self, address, args)

    monkeypatch.setattr(bc.EngineClient, "_route", lossy)
    monkeypatch.setattr(bc, "QUIET_POLL_S", 0.1)
    code, status = bc.send_request(make_request(tmp_path), None, port=server.address[1])
    assert code == bc.EXIT_DONE and os.path.isfile(status["stem_path"])


def test_client_queries(server, tmp_path):
    with bc.EngineClient(port=server.address[1]) as c:
        assert {k: v for k, v in c.ping().items() if k != "round_trip_s"} == {
            "protocol": protocol.PROTOCOL_VERSION, "model": "test-sine", "device": "cpu"}
        job = c.submit(make_request(tmp_path))
        final = job.wait()
        assert c.result(job.job_id)["stem_path"] == final["stem_path"]
        assert c.cancel(job.job_id) == protocol.CANCEL_TOO_LATE
        with pytest.raises(bc.RequestRejected) as e:
            c.cancel("nope")
        assert e.value.code == "unknown_job"
        assert c.engine_status()["jobs_finished"] == 1


def test_send_leaves_a_users_file_that_only_has_a_cancel_files_name(server, tmp_path, capsys):
    request_file = write_json(tmp_path / "req.json", make_request(tmp_path))
    notes = tmp_path / "notes.txt.cancel"  # --status notes.txt, a new file beside it
    notes.write_text("my cancel notes")
    os.utime(notes, ns=(os.stat(request_file).st_mtime_ns - 10**9,) * 2)
    assert main(["send", "--request", request_file, "--status", str(tmp_path / "notes.txt"),
                 "--port", str(server.address[1]), "-q"]) == 2
    assert notes.read_text() == "my cancel notes" and "is not a cancel file" in capsys.readouterr().out
    stale = tmp_path / "notes.txt.cancel"  # an earlier job's, as the REAPER actions write it: removed
    stale.write_text("cancel\n")
    os.utime(stale, ns=(os.stat(request_file).st_mtime_ns - 10**9,) * 2)
    assert main(["send", "--request", request_file, "--status", str(tmp_path / "notes.txt"),
                 "--port", str(server.address[1]), "-q"]) == 0
    assert not stale.exists()


def test_send_reads_its_request_where_the_system_opens_nothing_without_waiting(server, tmp_path, monkeypatch):
    """Windows (no O_NONBLOCK) has os.set_blocking from Python 3.12 for pipes alone: called on a
    request file, it failed every `send --request`."""
    def pipes_only(handle, blocking):
        raise OSError(22, "Invalid argument")

    monkeypatch.delattr(os, "O_NONBLOCK", raising=False)
    monkeypatch.setattr(os, "set_blocking", pipes_only)
    request_file = write_json(tmp_path / "req.json", make_request(tmp_path))
    assert main(["send", "--request", request_file, "--status", str(tmp_path / "s.json"),
                 "--port", str(server.address[1]), "-q"]) == 0


def test_a_cancel_file_powershell_wrote_is_one(tmp_path):
    from stepfoley.commands.send import _is_a_cancel_file

    (tmp_path / "utf16").write_bytes("cancel\r\n".encode("utf-16"))  # `"cancel" > s.json.cancel`, PowerShell 5
    (tmp_path / "notes").write_text("cancel the session tomorrow")
    assert _is_a_cancel_file(str(tmp_path / "utf16")) and not _is_a_cancel_file(str(tmp_path / "notes"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_send_given_a_pipe_nobody_writes_to_as_its_request_says_so_at_once(tmp_path):
    """It opened the pipe waiting for a writer: held for ever, with no status written."""
    os.mkfifo(tmp_path / "request.json")
    status = tmp_path / "status.json"
    done = subprocess.run([sys.executable, "-m", "stepfoley", "send", "--request", str(tmp_path / "request.json"),
                           "--status", str(status), "--port", "9"], capture_output=True, timeout=60)
    assert done.returncode == 2
    assert "it is empty (a pipe nobody writes to" in read_status(str(status))["error"]["message"]


def test_stepfoley_send_cli(server, tmp_path, capsys):
    port = str(server.address[1])
    request_file = write_json(tmp_path / "req.json", make_request(tmp_path))
    status_path = str(tmp_path / "st.json")
    open(status_path + ".cancel", "w").close()  # stale, from an earlier job: must not cancel this one
    os.utime(status_path + ".cancel", ns=(os.stat(request_file).st_mtime_ns - 10**9,) * 2)
    assert main(["send", "--request", request_file, "--status", status_path, "--port", port, "-q"]) == 0
    assert read_status(status_path)["state"] == "done"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["state"] == "done"

    assert main(["send", "--ping", "--port", port, "--status", status_path]) == 0
    assert read_status(status_path)["answer"]["model"] == "test-sine"
    assert main(["send", "--engine-status", "--port", port]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"]["state"] == "idle"
    assert main(["send", "--cancel", "unknown", "--port", port]) == bc.EXIT_REJECTED

    # a byte-order mark before UTF-8, as PowerShell and .NET write it, is read past; UTF-16 is named
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + Path(request_file).read_bytes())
    assert main(["send", "--request", str(bom), "--status", status_path, "--port", port, "-q"]) == 0
    bom.write_bytes(Path(request_file).read_text().encode("utf-16"))
    assert main(["send", "--request", str(bom), "--status", status_path, "--port", port]) == 2
    assert "it is saved as UTF-16" in read_status(status_path)["error"]["message"]
    (tmp_path / "broken.json").write_text("{ not json")
    assert main(["send", "--request", str(tmp_path / "broken.json"), "--status", status_path, "--port", port]) == 2
    assert read_status(status_path)["error"]["code"] == "bad_request_file"
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python's recursion
    assert main(["send", "--request", str(tmp_path / "deep.json"), "--status", status_path, "--port", port]) == 2
    assert "nested too deeply" in read_status(status_path)["error"]["message"]
    with open(tmp_path / "huge.json", "wb") as huge:  # sparse: read only as far as a request can be
        huge.truncate(64 * 2**20)
    assert main(["send", "--request", str(tmp_path / "huge.json"), "--status", status_path, "--port", port]) == 2
    assert "far more than one request can hold" in read_status(status_path)["error"]["message"]
    label = "x" * 70 + ".example"  # a host name label longer than 63 characters: no resolver takes it
    for what in (["--ping"], ["--request", request_file]):
        assert main(["send", *what, "--host", label, "--port", port, "--status", status_path]) == bc.EXIT_NOT_RUNNING
        assert read_status(status_path)["error"]["code"] == "engine_not_running"
    assert main(["send", "--ping", "--port", str(free_udp_port())]) == bc.EXIT_NOT_RUNNING
    assert main(["send", "--ping", "--port", port, "--status", str(tmp_path / "no" / "st.json")]) == 2
    with pytest.raises(SystemExit) as e:
        main(["send", "--port", port])  # nothing to do
    assert e.value.code == 2


def test_a_cancel_made_before_send_starts_cancels_its_job_and_stays_that_jobs(tmp_path, capsys):
    """REAPER's actions write the request, start `send`, and may cancel before the client is up
    (Esc at once, or "Cancel running generation"): that cancel file is newer than the request and
    must not be taken for an earlier job's. Run again on the same paths, where the earlier job's
    end is in the status file, a cancel file there is that job's: the new job runs."""
    with EngineServer(SineRunner(step_s=0.05), ServerConfig(port=0)).start() as srv:
        port = str(srv.address[1])
        request_file = write_json(tmp_path / "req.json", make_request(tmp_path, steps=40))
        status_path = str(tmp_path / "st.json")
        open(status_path + ".cancel", "w").close()
        assert main(["send", "--request", request_file, "--status", status_path, "--port", port, "-q"]) == \
            bc.EXIT_CANCELLED
        assert read_status(status_path)["state"] == "cancelled" and os.path.exists(status_path + ".cancel")
        assert main(["send", "--request", request_file, "--status", status_path, "--port", port, "-q"]) == \
            bc.EXIT_DONE
        assert read_status(status_path)["state"] == "done" and not os.path.exists(status_path + ".cancel")
        # a cancel that came in just after that job was done is its, not the next one's
        open(status_path + ".cancel", "w").close()
        assert main(["send", "--request", request_file, "--status", status_path, "--port", port, "-q"]) == \
            bc.EXIT_DONE


def test_send_cancel_with_an_empty_job_id_is_a_usage_error(server, capsys):
    # an unset $JOB: the engine read "" as this client's own request, and said a random
    # request id the user never saw was unknown (exit 4)
    for job in ("", "  "):
        assert main(["send", "--cancel", job, "--port", str(server.address[1])]) == bc.EXIT_USAGE
        said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert said["error"]["code"] == "bad_option" and "--cancel needs the job id" in said["error"]["message"]


def test_send_needs_a_finite_positive_timeout(server, tmp_path, capsys):
    """--timeout nan passed `timeout <= 0` and turned the watchdog off: send then waited for a
    silent engine forever. Refused at once, before anything is sent."""
    port = str(server.address[1])
    request_file = write_json(tmp_path / "req.json", make_request(tmp_path))
    status_file = tmp_path / "status.json"
    for timeout in ("nan", "inf", "-inf", "0", "-1", "2m"):  # "2m": argparse's refusal wrote no status
        started = time.monotonic()
        assert main(["send", "--request", request_file, "--port", port, f"--timeout={timeout}", "-q",
                     "--status", str(status_file)]) == bc.EXIT_USAGE
        assert time.monotonic() - started < 60  # refused, not sent to wait on a silent engine
        # a final status on stdout and in the status file, as every other ending (it had neither)
        said = json.loads(capsys.readouterr().out)
        assert said["error"]["code"] == "bad_option" and json.loads(status_file.read_text()) == said
        assert said["error"]["message"] == f"--timeout must be a number of seconds above 0 (got {timeout})."
        status_file.unlink()  # (the port, which is right, was named as wrong too)
    assert main(["send", "--request", request_file, "--port", "70000", "--timeout=5", "-q",
                 "--status", str(status_file)]) == bc.EXIT_USAGE
    assert json.loads(capsys.readouterr().out)["error"]["message"] == "--port must be a UDP port, 1-65535 (got 70000)."
    status_file.unlink()
    with bc.EngineClient(port=server.address[1]) as c:
        assert c.engine_status()["jobs_finished"] == 0  # nothing was sent
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_status_file_that_cannot_be_written_stops_the_job_before_it_is_sent(server, tmp_path, capsys):
    """A folder, or a name longer than the file system takes: a usage error (no traceback), and
    the engine is never asked to make a stem no one would pick up. (A name just under the limit
    works: its temporary file's name is shortened to fit.)"""
    port = str(server.address[1])
    request_file = write_json(tmp_path / "req.json", make_request(tmp_path))
    (tmp_path / "a_folder").mkdir()
    for status in (tmp_path / "a_folder", tmp_path / ("s" * 260 + ".json"), tmp_path / "nowhere" / "st.json"):
        for what in (["--request", request_file], ["--ping"]):
            assert main(["send", *what, "--status", str(status), "--port", port]) == bc.EXIT_USAGE
            out, err = capsys.readouterr()
            final = json.loads(out.strip().splitlines()[-1])  # on stdout, as every other ending
            assert (final["error"]["code"], final["exit_code"]) == ("bad_status_file", bc.EXIT_USAGE)
            assert any(w in err for w in ("is a folder", "Cannot write the status file", "does not exist"))
    with bc.EngineClient(port=server.address[1]) as c:
        assert c.engine_status()["jobs_finished"] == 0 and c.engine_status()["current"] is None
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not any(n.startswith(".s") for n in os.listdir(tmp_path)), "no temp file left"


def test_send_never_replaces_a_file_that_is_not_a_status_file(server, tmp_path, capsys):
    """A mistyped --status (the request itself, a take, a video, a notes file) is left as it is;
    an earlier status file, or an empty one (Lua's os.tmpname makes one), is written over."""
    port = str(server.address[1])
    request_file = write_json(tmp_path / "req.json", make_request(tmp_path))
    take, notes = tmp_path / "take.wav", tmp_path / "notes.json"
    take.write_bytes(b"RIFF\x00\x00\x00\x00WAVE")
    notes.write_text('{"state": "draft"}')
    for status, words in ((request_file, "is the request file"), (take, "is not a status file of StepFoley's"),
                          (notes, "is not a status file of StepFoley's")):
        before = Path(status).read_bytes()
        for what in (["--request", request_file], ["--ping"]):
            assert main(["send", *what, "--status", str(status), "--port", port]) == bc.EXIT_USAGE
            out, err = capsys.readouterr()
            assert json.loads(out.strip().splitlines()[-1])["error"]["code"] == "bad_status_file"
            # with --ping there is no request file: the request's JSON is just not a status
            assert (words if what[0] == "--request" else "is not a status file of StepFoley's") in err
        assert Path(status).read_bytes() == before
    if hasattr(os, "mkfifo"):  # a link to a pipe is refused at once, never opened waiting for a writer
        os.mkfifo(tmp_path / "pipe")
        (tmp_path / "to_pipe.json").symlink_to(tmp_path / "pipe")
        assert main(["send", "--ping", "--status", str(tmp_path / "to_pipe.json"), "--port", port]) == bc.EXIT_USAGE
        assert "is not a status file of StepFoley's" in capsys.readouterr().err
    earlier, empty, dangling = tmp_path / "earlier.json", tmp_path / "empty.json", tmp_path / "dangling.json"
    write_json(earlier, bc.failure_status("engine_not_running", "earlier run", bc.EXIT_NOT_RUNNING))
    empty.write_bytes(b"")
    dangling.symlink_to(tmp_path / "gone.json")
    for status in (earlier, empty, dangling):
        assert main(["send", "--ping", "--status", str(status), "--port", port]) == 0
        capsys.readouterr()
        assert read_status(status)["exit_code"] == 0
    # a status another send is still writing: the two jobs' ends were lost to each other
    running = {"state": "running", "job_id": "j1", "exit_code": None, "client_alive": time.time() - 1}
    write_json(tmp_path / "running.json", running)
    before = (tmp_path / "running.json").read_bytes()
    for what in (["--request", request_file], ["--ping"]):
        assert main(["send", *what, "--status", str(tmp_path / "running.json"), "--port", port]) == bc.EXIT_USAGE
        assert "is being written by a `stepfoley send` that is still running" in capsys.readouterr().err
    assert (tmp_path / "running.json").read_bytes() == before
    write_json(tmp_path / "running.json", {**running, "client_alive": time.time() - 60})  # that send died
    assert main(["send", "--ping", "--status", str(tmp_path / "running.json"), "--port", port]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("refusals, outcome", [(1, "done"), (10**6, "cancelled")])
def test_a_status_file_that_stops_taking_writes_cancels_the_job(tmp_path, monkeypatch, refusals, outcome):
    """A write refused for a moment is forgiven (a reader holding the file); a file that takes
    no write for STATUS_WRITE_GRACE_S ends the job, as nobody can follow it any more."""
    writes, real_write = [], bc.write_status

    def refuse_after_three(path, status):
        writes.append(status["state"])
        if 3 <= len(writes) < 3 + refusals:
            raise OSError(28, "No space left on device")
        real_write(path, status)

    monkeypatch.setattr(bc, "write_status", refuse_after_three)
    monkeypatch.setattr(bc, "STATUS_WRITE_GRACE_S", 0.3)
    with EngineServer(SineRunner(step_s=0.05), ServerConfig(port=0)).start() as srv:
        code, status = bc.send_request(make_request(tmp_path, steps=40), str(tmp_path / "st.json"),
                                       port=srv.address[1])
    assert status["state"] == outcome
    if outcome == "done":
        assert code == bc.EXIT_DONE and status["error"] is None and read_status(tmp_path / "st.json")["state"] == "done"
    else:
        assert code == bc.EXIT_USAGE and status["error"]["code"] == "bad_status_file"
        assert "took no write for 0.3 s" in status["error"]["message"] and "No space left" in status["error"]["message"]


def test_a_job_waiting_behind_a_long_one_keeps_its_status_file_alive(tmp_path, monkeypatch):
    """Nothing of a queued job changes while the one ahead runs; the file is rewritten (a new
    `updated`) as the engine works, so a DAW script watching it does not think the client dead."""
    monkeypatch.setattr(bc, "HEARTBEAT_S", 0.2)
    seen = []
    with EngineServer(SineRunner(step_s=0.05), ServerConfig(port=0)).start() as srv:
        ahead = bc.EngineClient(port=srv.address[1])
        ahead.submit(make_request(tmp_path, caption="ahead", steps=120), timeout=30)
        time.sleep(0.2)
        code, _ = bc.send_request(make_request(tmp_path, caption="behind", steps=1), str(tmp_path / "st.json"),
                                  port=srv.address[1], on_update=lambda st: seen.append(dict(st)))
        ahead.close()
    assert code == bc.EXIT_DONE
    queued = [st for st in seen if st["state"] == "queued" and st["job_id"]]
    # about 6 s waiting; the client hears the engine's step counter about once a second
    assert len({st["updated"] for st in queued}) >= 3
    assert len({st["client_alive"] for st in queued}) == len(queued)  # every write says the client is there


def test_the_client_says_it_is_alive_while_the_engine_is_silent(tmp_path, monkeypatch):
    """The engine holds still in a step (nothing of the job moves): `updated` stays, as the
    engine shows no progress, but `client_alive` goes on, so a DAW script tells a client that
    died (closed, crashed), which leaves the job running in the engine, from a slow engine in
    seconds; it waited for the engine's watchdog and more (190 s by default)."""
    monkeypatch.setattr(bc, "HEARTBEAT_S", 0.1)
    release, seen = threading.Event(), []
    runner = SineRunner(step_s=0.01, before_step=lambda step: step < 2 or release.wait(60))
    with EngineServer(runner, ServerConfig(port=0)).start() as srv:
        def let_go(status):
            seen.append(dict(status))
            if status["step"] == 1 and len([st for st in seen if st["step"] == 1]) >= 15:
                release.set()
        code, _ = bc.send_request(make_request(tmp_path, steps=3), str(tmp_path / "st.json"), port=srv.address[1],
                                  timeout=30, on_update=let_go)
    assert code == bc.EXIT_DONE
    stalled = [st for st in seen if st["step"] == 1]
    assert len(stalled) >= 15 and len({st["client_alive"] for st in stalled}) == len(stalled)
    assert len({st["updated"] for st in stalled}) < len(stalled) / 2


def test_a_refused_write_is_tried_again_and_the_final_status_always_lands(tmp_path, monkeypatch):
    """The status file refuses writes for 0.4 s while the job waits (nothing changes), and its
    first try at the final status: the job runs on, and the file ends done."""
    real_write, refused, four_refused = bc.write_status, [], threading.Event()

    def flaky(path, status):
        if status["state"] == "done" and "done" not in refused:
            refused.append(status["state"])
            raise PermissionError(13, "Permission denied")  # Windows: a reader holds the file
        if status["state"] == "queued" and status["job_id"] and len(refused) < 4:
            refused.append(status["state"])
            if len(refused) == 4:
                four_refused.set()
            else:
                time.sleep(0.1)
            raise OSError(28, "No space left on device")
        real_write(path, status)

    monkeypatch.setattr(bc, "write_status", flaky)
    monkeypatch.setattr(bc, "STATUS_WRITE_GRACE_S", 30.0)  # a bound on a hang, not what is tested
    monkeypatch.setattr(bc, "HEARTBEAT_S", 0.1)
    # the job ahead holds the other one queued until its status file has refused four writes
    ahead_runner = SineRunner(step_s=0.05, before_step=lambda step: step > 1 or four_refused.wait(60))
    with EngineServer(ahead_runner, ServerConfig(port=0)).start() as srv:
        ahead = bc.EngineClient(port=srv.address[1])
        ahead.submit(make_request(tmp_path, caption="ahead", steps=30), timeout=30)
        code, status = bc.send_request(make_request(tmp_path, caption="behind", steps=1), str(tmp_path / "st.json"),
                                       port=srv.address[1])
        ahead.close()
    assert refused == ["queued"] * 4 + ["done"]
    assert (code, status["error"]) == (bc.EXIT_DONE, None)
    assert read_status(tmp_path / "st.json")["state"] == "done"


def test_write_status_never_leaves_a_half_file(tmp_path):
    path = str(tmp_path / "s.json")
    bc.write_status(path, {"state": "queued"})
    with pytest.raises(TypeError):
        bc.write_status(path, {"state": object()})
    assert read_status(path) == {"state": "queued"} and os.listdir(tmp_path) == ["s.json"]


def test_localhost_reaches_the_default_ipv4_engine(server):
    with bc.EngineClient(host="localhost", port=server.address[1]) as c:
        assert c.ping()["model"] == "test-sine"


def test_a_number_no_float_can_hold_ends_in_a_rejected_status_not_a_crash(server, tmp_path, capsys):
    """alpha = 1 followed by 400 zeros (JSON allows it): the client raised OverflowError before
    writing any status file, and the engine answered internal_error."""
    payload = json.dumps(make_request(tmp_path)).replace('"alpha": 4.5', '"alpha": 1' + "0" * 400)
    status_path = str(tmp_path / "status.json")
    code, status = bc.send_request(json.loads(payload), status_path, port=server.address[1])
    assert (code, status["error"]["code"]) == (bc.EXIT_REJECTED, "invalid_request")
    assert read_status(status_path)["error"]["message"].startswith(
        "alpha must be a number between 0 and 100, got 100000000000000000...0000000000000000000")
    request_file = tmp_path / "req.json"
    request_file.write_text(payload)
    assert main(["send", "--request", str(request_file), "--status", status_path,
                 "--port", str(server.address[1]), "-q"]) == bc.EXIT_REJECTED
    assert read_status(status_path)["error"]["code"] == "invalid_request"
    # the engine refuses it the same way from a client that does not check first
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.settimeout(3.0)
        port = raw.getsockname()[1]
        raw.sendto(osc.encode(protocol.GENERATE, port, "huge", "", payload), server.address)
        [(address, args)] = osc.decode(raw.recv(65536))
    assert (address, args[:3]) == (protocol.ERROR, ["huge", "", "invalid_request"])
    assert args[3].startswith("alpha must be a number between 0 and 100, got 1000")


def test_an_unexpected_error_while_checking_a_request_ends_in_a_status_file(tmp_path, monkeypatch):
    """The safety net behind the parser: whatever it raises, a DAW script polling the status file
    sees the request end (rejected, with a message), never a client that died without one."""
    def broken(request, *args, **kwargs):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(bc, "parse_request", broken)
    status_path = str(tmp_path / "status.json")
    code, status = bc.send_request(make_request(tmp_path), status_path, port=free_udp_port())
    assert (code, status["state"], status["error"]["code"]) == (bc.EXIT_REJECTED, "error", "internal_error")
    assert read_status(status_path) == status
    assert "OverflowError: int too large to convert to float" in status["error"]["message"]


def test_a_token_too_long_in_the_environment_ends_in_a_usage_status(tmp_path, monkeypatch):
    """send_request reads $STEPFOLEY_TOKEN like `stepfoley send`: a token no engine accepts is
    refused before anything is sent, and the status file says so (it used to raise, no file)."""
    monkeypatch.setenv("STEPFOLEY_TOKEN", "k" * 257)
    status_path = str(tmp_path / "status.json")
    code, status = bc.send_request(make_request(tmp_path), status_path, port=free_udp_port())
    assert (code, status["error"]["code"]) == (bc.EXIT_USAGE, "bad_token")
    assert read_status(status_path)["error"]["message"].startswith(
        "The token from $STEPFOLEY_TOKEN is 257 characters long; a token is 1-256 characters")


def test_a_request_in_another_script_costs_its_utf8_bytes_and_the_limit_is_checked_before_sending(tmp_path):
    """The client sends compact UTF-8 JSON: 32 KB of Japanese captions (63 KB written as \\u
    escapes) fit one message; past MAX_REQUEST_BYTES, or past one datagram with a long token,
    the client refuses before anything is sent."""
    with EngineServer(SineRunner(), ServerConfig(port=0, token="t")).start() as srv:
        request = make_request(tmp_path, caption="雨" * 1000, previous_captions=["雷" * 150] * 63)
        size = len(bc.request_payload(request).encode())
        assert 31_000 < size <= protocol.MAX_REQUEST_BYTES < len(json.dumps(request))
        code, status = bc.send_request(request, None, port=srv.address[1], token="t")
        assert code == bc.EXIT_DONE and status["metadata"]["caption"] == "雨" * 1000
        too_big = make_request(tmp_path, caption="雨" * 1000, previous_captions=["雷" * 150] * 64)
        code, status = bc.send_request(too_big, None, port=srv.address[1], token="t")
        assert (code, status["error"]["code"]) == (bc.EXIT_REJECTED, "payload_too_large")
        assert f"more than the {protocol.MAX_REQUEST_BYTES} one message carries" in status["error"]["message"]
        # filled to within one character of the limit whatever tmp_path's length, so that the
        # longest token (256 characters, 768 bytes) cannot fit beside it in one datagram
        request["previous_captions"][-1] += "雷" * ((protocol.MAX_REQUEST_BYTES - size) // 3)
        assert protocol.MAX_REQUEST_BYTES - 3 < len(bc.request_payload(request).encode()) <= protocol.MAX_REQUEST_BYTES
        code, status = bc.send_request(request, None, port=srv.address[1], token="鍵" * protocol.MAX_TOKEN_CHARS)
        assert (code, status["error"]["code"]) == (bc.EXIT_REJECTED, "payload_too_large")
        assert "With the token, the request makes a message of" in status["error"]["message"]
        with bc.EngineClient(port=srv.address[1], token="t") as c:
            assert c.engine_status()["jobs_finished"] == 1  # the refused ones never reached it


class ScriptedEngine:
    """A UDP socket on 127.0.0.1 answering as an engine would, one scripted reply per message
    address: for what a real engine only does in a rare race."""

    def __init__(self, answers):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port, self.answers, self.seen, self._stop = self.sock.getsockname()[1], answers, [], threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                continue
            for address, args in osc.decode(data):
                self.seen.append((address, args))
                answer = self.answers.get(address)
                if answer is not None:
                    self.sock.sendto(osc.encode(*answer(args)), (sender[0], args[0]))

    def close(self):
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def test_a_job_id_given_out_again_by_a_new_engine_is_not_taken_for_ours(tmp_path):
    """The engine is restarted on its port and, by chance, gives another client's job the id
    ours had: its summary carries that client's request_id, so ours is lost, not 'done' with
    a stem in another project's folder."""
    engine = ScriptedEngine({
        protocol.GENERATE: lambda args: (protocol.ACCEPTED, args[1], "abcd-000001", 0),
        protocol.RESULT: lambda args: (protocol.JOB, args[1], json.dumps({
            "job_id": "abcd-000001", "request_id": "someone-else", "state": "done", "phase": None,
            "queue_position": 0, "step": 25, "total": 25, "caption": "door slam",
            "stem_path": "/elsewhere/door_slam_001.wav", "metadata": {"caption": "door slam"}, "error": None,
            "engine_steps": 25})),
    })
    try:
        code, status = bc.send_request(make_request(tmp_path), None, port=engine.port, timeout=30)
    finally:
        engine.close()
    assert code == bc.EXIT_FAILED and status["error"]["code"] == "job_lost" and status["stem_path"] is None


def test_a_request_given_up_on_is_withdrawn_when_a_stalled_engine_reads_on(tmp_path):
    """The engine does not read its socket for longer than the client waits (a stalled
    process): the client reports it not running, and the engine, reading its backlog later,
    must not run the request into a stem nobody collects. The client's cancel by request_id,
    sent after the request's copies, withdraws it."""
    srv = EngineServer(SineRunner(), ServerConfig(port=0))  # bound, not yet reading: stalled
    try:
        code, status = bc.send_request(make_request(tmp_path), None, port=srv.address[1], connect_timeout=0.5)
        assert code == bc.EXIT_NOT_RUNNING
        srv.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and srv.jobs.jobs_finished == 0:
            time.sleep(0.05)
        time.sleep(0.3)  # a job that ran would have written its stem by now
        assert srv.jobs.jobs_finished == 1
    finally:
        srv.stop()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_a_job_the_watchdog_gives_up_on_is_cancelled_on_the_engine(tmp_path):
    """The client exits on `timed_out`, so nobody would collect the job's stem, and the job
    would hold the engine's one worker: the client asks the engine to cancel it first."""
    seen_cancel = threading.Event()

    def stuck(request, on_progress, is_cancelled):
        on_progress("sampling", 1, 2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not is_cancelled():
            time.sleep(0.02)
        if is_cancelled():
            seen_cancel.set()
        return SineRunner()(request, on_progress, is_cancelled)

    with EngineServer(stuck, ServerConfig(port=0)).start() as srv:
        code, status = bc.send_request(make_request(tmp_path), None, port=srv.address[1], timeout=1.0)
        assert (code, status["error"]["code"]) == (bc.EXIT_TIMED_OUT, "timed_out")
        assert seen_cancel.wait(5)


def test_a_long_wait_keeps_a_bounded_number_of_query_routes(tmp_path, monkeypatch):
    """Each quiet poll of a waiting job added a request id the client kept until the job ended:
    3,600 an hour, each scanned at the end. Only the last ROUTES_KEPT are kept, and the job still
    hears its end."""
    monkeypatch.setattr(bc, "QUIET_POLL_S", 0.01)
    release = threading.Event()
    with EngineServer(SineRunner(before_step=lambda s: release.wait(30)), ServerConfig(port=0)).start() as srv:
        with bc.EngineClient(port=srv.address[1]) as c:
            first = c.submit(make_request(tmp_path, caption="long job", steps=1))
            waiting = c.submit(make_request(tmp_path, caption="waiting job", steps=1), timeout=1e6)
            polls_until = time.monotonic() + 1.0
            while time.monotonic() < polls_until:  # about 100 quiet polls each
                waiting.poll(0.005)
                first.poll(0)
            assert len(c._routes) <= 2 * (1 + bc.ROUTES_KEPT)
            release.set()
            assert waiting.wait()["state"] == first.wait()["state"] == "done"
            assert c._routes == {}
