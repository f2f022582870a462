"""`stepfoley serve`: load the model once and answer OSC requests until Ctrl-C, SIGTERM or SIGHUP."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from stepfoley.bridge import protocol
from stepfoley.commands.runtime import add_runtime_arguments, say

MAX_NICE = 19  # the lowest priority a Unix process can have is niceness 19


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=protocol.DEFAULT_HOST,
                        help=f"address to listen on (default {protocol.DEFAULT_HOST}; any other needs a token)")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_PORT,
                        help=f"UDP port to listen on (default {protocol.DEFAULT_PORT})")
    parser.add_argument("--token-file", metavar="FILE", default=None,
                        help="read the shared secret every message must carry from FILE (mode 600). Default: "
                             "$STEPFOLEY_TOKEN, else $STEPFOLEY_TOKEN_FILE or $XDG_CONFIG_HOME/stepfoley/token "
                             "(~/.config/stepfoley/token) when it exists; required off loopback")
    parser.add_argument("--token", default=None,
                        help="the shared secret itself (every local user can read it in `ps`: prefer the above)")
    parser.add_argument("--weights", default=None, metavar="DIR|FILE",
                        help="a directory of official MMAudio weights, or embedded weights retrained by "
                             "`stepfoley train embedded` (default: the packaged embedded mini-world model)")
    parser.add_argument("--model", default=None, help="model variant inside --weights (for example small_16k)")
    parser.add_argument("--max-queue", type=int, default=256, help="jobs that may wait at once (default 256)")
    parser.add_argument("--nice", type=int, default=10,
                        help=f"run this many steps below normal CPU priority (default 10; 0 keeps it; at most "
                             f"{MAX_NICE}), so the DAW's audio comes first")
    add_runtime_arguments(parser)
    parser.add_argument("--verbose", "-v", action="store_true", help="log every dropped packet")


def _sweep_in_background() -> None:
    """Remove the temp files a killed engine left in the folders it wrote to lately, beside the
    serving: a remembered folder that does not answer (a network share offline, a hard NFS mount)
    held the engine before it loaded its model, deaf to a stop. Temp files of this engine's own
    writers are held locked, and left (stepfoley.atomic)."""
    from stepfoley.engine import output_folders

    def sweep() -> None:
        for path in output_folders.sweep():
            # said as far as anyone reads it: the terminal may close at any time
            say(f"Removed an unfinished stem left by a stopped engine: {path}", sys.stderr)

    threading.Thread(target=sweep, name="stepfoley-sweep", daemon=True).start()


def _reached_from_other_machines(host: str) -> bool:
    """Whether listening on `host` lets other machines in. A name that names no address does
    not: EngineServer says so (it checks again, and never binds one), the same with a token."""
    import socket

    from stepfoley.bridge.server import is_loopback

    try:
        return not is_loopback(host)
    except socket.gaierror:
        return False


def _who_holds_the_port(host: str, port: int, token: str | None) -> str | None:
    """What to say of a port that could not be taken when a StepFoley engine answers on it: one
    still stopping lets go of it within seconds (a restart right after a stop met it, told to pick
    another port, which the DAW does not know); None when nothing answers as an engine."""
    from stepfoley.bridge import client
    from stepfoley.bridge.server import listening_address

    asked = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # every address: this machine's
    try:
        with client.EngineClient(asked, port, token) as engine:
            status = engine.engine_status(timeout=1.0)
        state, model = str(status.get("state")), str(status.get("model"))
        known = f" ({state}" + (f", model {model})" if state != "loading" else ")")
    except client.RequestRejected:  # an engine that answers, refusing the question (another version)
        state, known = "", ""
    except Exception:  # silent: another program, or an engine with another token (it drops such datagrams)
        return None
    if state == "stopping":
        return (f"Cannot listen on {listening_address(host, port)}: the engine there is still stopping (it lets go "
                "of the port within seconds, once its running job has stopped). Start this one again in a moment.")
    return (f"Cannot listen on {listening_address(host, port)}: a StepFoley engine is already running there{known}. "
            "Stop it first (Ctrl-C in its window), or pick another --port and set the same port in your DAW.")


def run(args: argparse.Namespace) -> int:
    from stepfoley.bridge.auth import TokenError, resolve_token
    from stepfoley.bridge.server import (ConfigError, EngineServer, ServerConfig, listening_address,
                                         serve_until_signalled, stop_signals)

    if args.token is not None:
        print("warning: --token is visible to every user of this machine (ps); use $STEPFOLEY_TOKEN or a "
              "token file instead (docs/osc-protocol.md, Security).", file=sys.stderr)
    try:
        args.token = resolve_token(args.token, args.token_file)
    except TokenError as e:
        print(str(e), file=sys.stderr)
        return 2
    if not args.token and _reached_from_other_machines(args.host):
        print(f"Refusing to listen on {listening_address(args.host)} without a token: other machines could use "
              "the engine. Put one in $STEPFOLEY_TOKEN or a token file (--token-file).", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"--port {args.port} is not a UDP port (0-65535).", file=sys.stderr)
        return 2
    if args.max_queue < 1:  # an engine that refuses every job as "queue full" is no engine
        print(f"--max-queue must be at least 1 (got {args.max_queue}).", file=sys.stderr)
        return 2
    if not 0 <= args.nice <= MAX_NICE:  # os.nice raised OverflowError past a C int, after the port was bound
        print(f"--nice must be from 0 (priority unchanged) to {MAX_NICE} steps below normal (got {args.nice}).",
              file=sys.stderr)
        return 2

    # the engine's own messages at INFO; the libraries' (torch's cache statistics at exit) only
    # when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("stepfoley").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # Listen before anything imports torch (seconds, far more from a cold disk) or loads the
    # model: a second engine on the same port fails at once, and DAW scripts hear
    # "engine_loading" instead of silence meanwhile. The options that need torch to be checked
    # (--device, --threads, the feature cache's) are checked next, before any weights load.
    try:
        server = EngineServer(None, ServerConfig(host=args.host, port=args.port, token=args.token,
                                                 max_queue=args.max_queue, model="loading", device=args.device))
    except ConfigError as e:
        print(_who_holds_the_port(args.host, args.port, args.token) or str(e) if e.port_in_use else str(e),
              file=sys.stderr)
        return 3
    from stepfoley.engine.errors import InvalidInputError, StepFoleyError  # no torch: named by except clauses below

    loaded, checking, stop_asked = threading.Event(), threading.Event(), threading.Event()

    def stop_while_loading():
        # The load is left where it is, not unwound: an exception raised into it could land inside
        # a module's import (a half-imported numpy then failed the load as "an internal error",
        # and the process could still end killed by SIGINT, -2, after its clean stop). Nothing it
        # made needs to be kept: no job has run, and the system closes the port.
        say("Engine stopped while loading the model.", sys.stderr)  # after SIGHUP, maybe to no terminal
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)

    def on_signal(signum, frame):
        # while loading, stop there (exit 0); once loaded, end the serving loop as
        # serve_until_signalled's own handlers do, whenever the signal lands. During the option
        # checks the stop waits for them to end (they may write the feature cache's folder).
        if checking.is_set():
            stop_asked.set()
        elif not loaded.is_set():
            stop_while_loading()
        else:
            server.shutdown()

    previous = {s: signal.signal(s, on_signal) for s in stop_signals()}

    def restore_handlers():
        for s, handler in previous.items():
            signal.signal(s, handler)

    try:
        server.start()  # inside: its thread answers at once, and a signal may come before start() returns
        # the engine's modules load torch (seconds): a signal meanwhile is a stop while loading too
        from stepfoley.commands.runtime import check_runtime_arguments, feature_cache_from_arguments
        from stepfoley.engine.devices import share_cpu  # torch's import (seconds) stays interruptible
        from stepfoley.engine.service import build_service

        checking.set()
        try:
            check_runtime_arguments(args)
            feature_cache = feature_cache_from_arguments(args)
        except InvalidInputError as e:
            server.stop()
            print(str(e), file=sys.stderr)
            return 2
        finally:
            checking.clear()
        if stop_asked.is_set():
            server.stop()
            stop_while_loading()

        say("Loading the model...", sys.stderr)
        cpu = share_cpu(args.threads, args.nice)
        service = build_service(weights_dir=args.weights, device=args.device, model=args.model,
                                precision=args.precision, compile=args.compile, feature_cache=feature_cache)
        loaded.set()
    except StepFoleyError as e:
        server.stop()
        print(f"Could not load the model: {e}", file=sys.stderr)
        return 1
    except Exception:
        server.stop()
        logging.exception("Could not load the model (an internal error; please report it with this log)")
        return 1
    finally:
        if not loaded.is_set():  # not serving: the handlers go now
            restore_handlers()
    info = service.describe()
    server.attach(service, model=info["model"], device=info["device"], capabilities=service.capabilities(), cpu=cpu)

    if server.stopping:  # a signal since the model loaded
        server.stop()
        restore_handlers()
        say("Engine stopped.", sys.stderr)
        return 0
    host, port = server.address
    say(f"StepFoley engine ready on udp://{protocol.address_text(host, port)} (protocol {protocol.PROTOCOL_VERSION}, "
        f"model {server.config.model}, device {server.config.device}, {cpu['threads']} of {cpu['cores']} "
        f"cores at {cpu['priority']}). Ctrl-C stops it.", sys.stderr)
    if not args.token:  # loopback keeps other machines out, not the other users of this one
        from stepfoley.bridge.auth import token_file_path

        say(f"No token: any user of this machine can send it requests. On a shared machine, put one in "
            f"{token_file_path()} (docs/osc-protocol.md, Security).", sys.stderr)
    _sweep_in_background()
    serve_until_signalled(server)  # its own handlers from here on
    restore_handlers()
    say("Engine stopped.", sys.stderr)
    return 0

