"""The engine as a real process: SIGTERM and Ctrl-C shut it down cleanly, and a killed engine
leaves no stem (nothing under a .wav name) behind, even when killed mid-write; its temp file
goes with the next engine's start or the next write into that folder."""

import contextlib
import json
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

# The same start-up sweep and serve loop as `stepfoley serve` (output_folders.sweep,
# serve_until_signalled), with the sine runner; write_s holds each write with its temp file open.
ENGINE = """
import signal, sys, time
# as from a terminal: a test run started under nohup passes SIGHUP on ignored, and the engine
# rightly keeps it so (test_serve_under_nohup_outlives_its_terminal)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
from stepfoley.bridge.server import EngineServer, ServerConfig, serve_until_signalled
from stepfoley.engine import audio_io, output_folders
from test_bridge_kit import SineRunner
write, write_s = audio_io.soundfile.write, float(sys.argv[2])
audio_io.soundfile.write = lambda *a, **k: (time.sleep(write_s), write(*a, **k))
for path in output_folders.sweep():
    print("swept", path, file=sys.stderr, flush=True)
server = EngineServer(SineRunner(step_s=float(sys.argv[1])), ServerConfig(port=0))
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_stops_the_engine_cleanly(tmp_path, signum):
    proc, port = start_engine(step_s=0.05)
    peer = RawPeer(port)
    try:
        peer.generate(make_request(tmp_path, steps=200), "long")
        peer.receive_until({protocol.PROGRESS})
        peer.generate(make_request(tmp_path, caption="queued"), "queued")
        peer.receive_until({protocol.ACCEPTED})  # queued before the signal (after it: refused, engine_stopping)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
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


def kill_mid_write(tmp_path, caption="footsteps on gravel") -> tuple[list[str], dict, float]:
    """Kill an engine while it writes a stem: what is left in the folder, what its client heard,
    and how long after the kill it heard it."""
    proc, port = start_engine(step_s=0.0, write_s=5.0)
    client = EngineClient(port=port)
    out_dir = tmp_path / "out"
    try:
        job = client.submit(make_request(tmp_path, caption=caption))
        deadline = time.monotonic() + 5
        while not any(n.endswith(".part") for n in os.listdir(out_dir)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(n.endswith(".part") for n in os.listdir(out_dir)), "the write should be under way"
        proc.kill()
        proc.wait(5)
        leftovers, killed = os.listdir(out_dir), time.monotonic()
        return leftovers, job.wait(), time.monotonic() - killed
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_killed_engine_leaves_no_stem_and_its_client_is_told(tmp_path):
    leftovers, status, told_after_s = kill_mid_write(tmp_path)
    assert [n for n in leftovers if n.endswith(".wav")] == []
    assert all(n.startswith(".") for n in leftovers), "only a hidden temp file may remain"
    assert (status["exit_code"], status["error"]["code"]) == (EXIT_NOT_RUNNING, "engine_not_running")
    assert told_after_s < 3.0


def test_the_next_engine_removes_what_a_killed_one_left(tmp_path):
    """Finding 12: the temp file of a SIGKILLed engine goes at the next engine's start (it
    remembers the folders it wrote to) and, failing that, at the next write into the folder."""
    leftovers, _, _ = kill_mid_write(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].endswith(".part")
    proc, port = start_engine(step_s=0.0)
    try:
        peer = RawPeer(port)
        peer.send(protocol.PING, peer.port, "up", "")
        assert peer.receive()[0] == protocol.PONG
        peer.close()
        assert os.listdir(tmp_path / "out") == [], "swept at start-up"
    finally:
        proc.terminate()
        proc.communicate(timeout=120)

    leftovers, _, _ = kill_mid_write(tmp_path, caption="second")
    assert len(leftovers) == 1
    (Path(os.environ["STEPFOLEY_STATE_DIR"]) / "output-folders.json").unlink()  # forgotten: only the write sweeps
    proc, port = start_engine(step_s=0.0)
    client = EngineClient(port=port)
    try:
        assert os.listdir(tmp_path / "out") == leftovers
        status = client.submit(make_request(tmp_path, caption="third")).wait()
        assert status["state"] == "done"
        assert os.listdir(tmp_path / "out") == [os.path.basename(status["stem_path"])]
    finally:
        client.close()
        proc.terminate()
        proc.communicate(timeout=120)


# A `torch` found before the real one whose import does not end: the engine is held where
# it imports torch, for as long as a test needs.
HELD_TORCH = """
import time
print("importing torch", flush=True)
while True:
    time.sleep(0.01)
"""


def _killed(proc: subprocess.Popen) -> tuple[str, str]:
    """What a process that failed a test printed (stopped first, if it still runs)."""
    proc.kill()
    return proc.communicate()


def test_the_engine_answers_while_torch_imports_and_a_signal_then_is_a_clean_stop(tmp_path):
    """The engine listens before anything imports torch (seconds; far more from a cold disk),
    so a DAW hears "loading" instead of "not running". It used to check --device and --threads
    with torch first. SIGTERM then is a stop while loading, exit 0, as the docs say; it used to
    end 130 when the signal came while the engine's modules were still being imported."""
    import socket

    held = tmp_path / "held"
    (held / "torch").mkdir(parents=True)
    (held / "torch" / "__init__.py").write_text(HELD_TORCH)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(held), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "stepfoley", "serve", "--model", "tiny-random", "--port", str(port),
                             "--feature-cache", "off"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    peer = RawPeer(port)
    try:
        assert proc.stdout.readline() == "importing torch\n", _killed(proc)
        deadline = time.monotonic() + 60
        while True:  # torch's import is held: an answer now came before it
            peer.send(protocol.STATUS, peer.port, "s", "")
            try:
                address, args = peer.receive(timeout=0.2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, _killed(proc)
        assert address == protocol.STATUS_REPLY and json.loads(args[1])["model"] == "loading"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Engine stopped while loading the model." in err and "Traceback" not in err
    finally:
        peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def serve_with(tmp_path, sitecustomize: str, **popen) -> tuple[subprocess.Popen, int]:
    """`stepfoley serve` with the test model, `sitecustomize` run first in its Python; and its port."""
    import socket

    (tmp_path / "sitecustomize.py").write_text(sitecustomize)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "stepfoley", "serve", "--model", "tiny-random", "--port", str(port),
                             "--feature-cache", "off", "--threads", "1", "--nice", "0"],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, **popen)
    return proc, port


HOLD_SERVE = """
import time
from stepfoley.bridge.server import EngineServer
def held(real):
    def method(self, *a, **k):
        result = real(self, *a, **k)
        time.sleep(5)
        return result
    return method
EngineServer.{method} = held(EngineServer.{method})
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("held_in, answered, said", [
    ("start", lambda state: True, "Engine stopped while loading the model."),  # its thread answers at once
    ("attach", lambda state: state == "idle", "Engine stopped."),  # loaded, before the serving loop's handlers
], ids=["start", "attach"])
def test_a_signal_at_any_point_of_serve_s_start_is_a_clean_stop(tmp_path, signum, held_in, answered, said):
    """`stepfoley serve`'s main thread held (5 s, as a loaded machine may hold it) just after
    the server's thread starts, or just after the model is attached: a signal there used to end
    the command 130, "stopped (Ctrl-C)", outside the handling of either phase."""
    proc, port = serve_with(tmp_path, HOLD_SERVE.format(method=held_in), stdout=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    peer = RawPeer(port)
    try:
        deadline = time.monotonic() + 300  # a hang guard: loading on a loaded machine
        while True:
            peer.send(protocol.STATUS, peer.port, "s", "")
            try:
                address, args = peer.receive(timeout=0.05)
                if address == protocol.STATUS_REPLY and answered(json.loads(args[1])["state"]):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert (proc.returncode, "Traceback" in err, "(Ctrl-C)" in err) == (0, False, False), err
        assert said in err
    finally:
        peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# A library whose import turns an interrupt into an error of its own, as numpy's does ("cannot
# load module more than once per process" and the like, then errors of the half-imported module)
CONVERTS_INTERRUPT = """
import sys, time
from stepfoley.engine import service
def build_service(**kwargs):
    try:
        print("loading", flush=True)
        time.sleep(60)
    except BaseException:
        raise ImportError("cannot load module more than once per process")
service.build_service = build_service
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_lands_inside_an_import_is_still_a_clean_stop(tmp_path, signum):
    """A stop while the engine's libraries imported ended, one time in two, in "Could not load the
    model (an internal error; please report it)", a traceback and exit 1: the interrupt raised
    into the load became the library's own error (helper 194)."""
    proc, port = serve_with(tmp_path, CONVERTS_INTERRUPT, stdout=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "loading\n", _killed(proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, "Traceback" in err, "internal error" in err) == (0, False, False), err
        assert "Engine stopped while loading the model." in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


HANG_SWEEP = """
import threading
from stepfoley.engine import output_folders
def hangs():  # a remembered folder on a share that does not answer (a hard NFS mount)
    threading.Event().wait()
output_folders.sweep = hangs
"""


def test_a_remembered_folder_that_does_not_answer_does_not_hold_the_engine(tmp_path):
    """The start-up sweep of the folders the engine wrote to lately ran before the model loaded:
    a folder that did not answer held the engine there, "loading", deaf to a stop. It runs beside
    the serving now: the engine loads, answers and stops cleanly while it hangs."""
    proc, port = serve_with(tmp_path, HANG_SWEEP, stdout=subprocess.DEVNULL)
    peer = RawPeer(port)
    try:
        wait_until_idle(proc, peer, limit_s=120)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Engine stopped." in err and "Traceback" not in err, err
    finally:
        peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until_idle(proc: subprocess.Popen, peer: RawPeer, limit_s: float = 300) -> None:
    """Until the engine answers /status idle (its model loaded); `limit_s` guards a hang."""
    deadline = time.monotonic() + limit_s
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "not idle"
        peer.send(protocol.STATUS, peer.port, "s", "")
        try:
            address, args = peer.receive(timeout=0.05)
        except OSError:
            continue
        if address == protocol.STATUS_REPLY and json.loads(args[1])["state"] == "idle":
            return


def _hangup_as_from_a_terminal() -> None:
    # a test run started under nohup passes SIGHUP on ignored, which `serve` rightly keeps
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@contextlib.contextmanager
def serving(tmp_path, launcher=("-m", "stepfoley"), **popen):
    """`stepfoley serve` with the test model, once it answers idle, and a peer to talk to it;
    killed after, should it still run. `launcher`: what runs it, after the Python executable.
    Started as from a terminal (SIGHUP not ignored) unless `popen` says otherwise."""
    import socket

    popen.setdefault("preexec_fn", _hangup_as_from_a_terminal)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, *launcher, "serve", "--model", "tiny-random", "--port", str(port),
                             "--feature-cache", "off", "--threads", "1", "--nice", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path,
                            **popen)
    peer = RawPeer(port)
    wait_until_idle(proc, peer)
    try:
        yield proc, peer
    finally:
        peer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_stops_cleanly_when_its_terminal_closes(tmp_path):
    """Closing the terminal `stepfoley serve` runs in sends it SIGHUP, and its stderr is gone
    with the terminal: by default SIGHUP killed it mid-job; it is now a clean stop (exit 0)
    whose last words, which nobody can read, cannot turn it into a traceback."""
    with serving(tmp_path) as (proc, _):
        proc.stderr.close()  # the terminal has gone: what the engine prints now fails
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 0


# stderr open for reading only, so every write to it fails (EBADF), as to a terminal that has
# closed (EIO), from before the engine prints anything
TERMINAL_GONE = ("-c", "import os, sys; os.dup2(os.open(os.devnull, os.O_RDONLY), 2); "
                       "from stepfoley.cli import main; sys.exit(main(sys.argv[1:]))")


def test_serve_whose_terminal_closed_as_it_started_still_serves_and_stops_cleanly(tmp_path):
    # the terminal gone before "Loading the model..." or "ready" was printed: the print failed,
    # and the engine ended in a traceback (exit 1) instead of serving
    with serving(tmp_path, launcher=TERMINAL_GONE) as (proc, _):
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 0


def test_serve_under_nohup_outlives_its_terminal(tmp_path):
    """`nohup stepfoley serve &` starts it ignoring SIGHUP, to go on serving when the terminal
    closes: the stop on SIGHUP must not take that back."""
    with serving(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) as (proc, peer):
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        peer.send(protocol.PING, peer.port, "p", "")
        peer.receive_until({protocol.PONG})  # (status replies of the wait for idle may come first)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopping_send_cancels_its_job_and_gives_the_status_file_that_end(tmp_path, signum):
    # `stepfoley send` following a long job is stopped: the engine must not go on to write a
    # stem nobody collects, and the status file must not stay "running" for ever
    proc, port = start_engine(step_s=0.2)
    request, status = tmp_path / "request.json", tmp_path / "status.json"
    request.write_text(json.dumps(make_request(tmp_path, steps=200)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    send = subprocess.Popen([sys.executable, "-m", "stepfoley", "send", "--request", str(request), "--status",
                             str(status), "--port", str(port), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if status.exists() and json.loads(status.read_text())["state"] == "running":
                break
            time.sleep(0.05)
        assert json.loads(status.read_text())["state"] == "running"
        send.send_signal(signum)
        out, err = send.communicate(timeout=60)
        final = json.loads(status.read_text())
        assert (send.returncode, final["state"], final["exit_code"]) == (6, "cancelled", 6), err
        assert json.loads(out.splitlines()[-1])["state"] == "cancelled"
        assert os.listdir(tmp_path / "out") == []
        peer = RawPeer(port)
        try:
            peer.send(protocol.STATUS, peer.port, "s", "")
            engine = json.loads(peer.receive()[1][1])
        finally:
            peer.close()
        assert engine["state"] == "idle", engine  # not still running the 40 s job
    finally:
        for p in (send, proc):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_reader_that_has_gone_leaves_sends_exit_code_the_status_files(tmp_path):
    """`stepfoley send` into a pipe whose reader has gone (`| head`, a wrapper that stops
    reading): the job was done and the status file said exit 0, but printing the final JSON
    raised BrokenPipeError, a traceback and exit 1."""
    proc, port = start_engine(step_s=0.0)
    request, status = tmp_path / "request.json", tmp_path / "status.json"
    request.write_text(json.dumps(make_request(tmp_path, steps=2)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        send = subprocess.Popen([sys.executable, "-m", "stepfoley", "send", "--request", str(request), "--status",
                                 str(status), "--port", str(port), "--quiet"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        send.stdout.close()
        err = send.stderr.read().decode()
        assert send.wait(timeout=60) == 0 and json.loads(status.read_text())["exit_code"] == 0, err
        assert "Traceback" not in err and "Exception ignored" not in err
    finally:
        proc.kill()
        proc.wait()
