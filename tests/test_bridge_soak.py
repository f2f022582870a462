"""Load and abuse: hundreds of requests with no reply lost, and malformed datagrams thrown at
the server, which must keep answering."""

import json
import os
import random
import socket
import threading

from stepfoley.bridge import client as bc
from stepfoley.bridge import osc, protocol
from stepfoley.bridge.server import EngineServer, ServerConfig
from test_bridge_kit import RawPeer, SineRunner, make_request


def tiny_request(tmp_path, caption: str) -> dict:
    request = make_request(tmp_path, caption=caption, steps=2, sample_rate=8000)
    request["region"].update(file_in=0.0, file_out=1.0, project_start=0.0, project_end=1.0)
    return request


def test_a_burst_of_300_requests_from_6_clients_loses_no_reply(tmp_path):
    peers_n, per_peer, steps = 6, 50, 2
    with EngineServer(SineRunner(), ServerConfig(port=0, max_queue=peers_n * per_peer)).start() as srv:
        peers = [RawPeer(srv.address[1]) for _ in range(peers_n)]
        for p in peers:
            p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
        for i in range(per_peer):  # interleaved, as several DAW scripts would send
            for k, p in enumerate(peers):
                p.generate(tiny_request(tmp_path, f"c{k} n{i}"), f"k{k}-n{i}")
        replies = {}
        for p in peers:
            finals = 0
            while finals < per_peer:
                address, args = p.receive(timeout=20)
                replies.setdefault(args[0], []).append(address)
                finals += address in protocol.FINAL_REPLIES
            p.close()
    assert len(replies) == peers_n * per_peer
    expected = [protocol.ACCEPTED] + [protocol.PROGRESS] * (steps + 1) + [protocol.DONE]
    assert all(seen == expected for seen in replies.values())
    stems = [n for n in os.listdir(tmp_path / "out") if n.endswith(".wav")]
    assert len(stems) == peers_n * per_peer


def test_120_requests_through_the_client_library_from_4_threads(tmp_path):
    with EngineServer(SineRunner(), ServerConfig(port=0)).start() as srv:
        results, errors = [], []

        def worker(k: int) -> None:
            try:
                with bc.EngineClient(port=srv.address[1]) as c:
                    for i in range(30):
                        results.append(c.submit(tiny_request(tmp_path, f"t{k} {i}")).wait())
            except Exception as e:  # surfaced below: a thread's assert would be lost
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == []
    assert len(results) == 120 and all(r["state"] == "done" for r in results)
    assert len({r["stem_path"] for r in results}) == 120


def mutations(rng: random.Random, valid: list[bytes]):
    """Malformed datagrams of every kind: junk, truncations, bit flips, wrong types, bundles, giants."""
    for _ in range(1500):
        kind = rng.randrange(7)
        base = rng.choice(valid)
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        elif kind == 1:
            yield base[: rng.randrange(len(base))]
        elif kind == 2:
            data = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield bytes(data)
        elif kind == 3:
            yield base + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif kind == 4:
            yield b"#bundle\x00" + bytes(8) + len(base).to_bytes(4, "big") + base + bytes(rng.randrange(3))
        elif kind == 5:
            tag = "".join(rng.choice("ifsTFNhdbx[]") for _ in range(rng.randrange(1, 6)))
            yield osc.encode("/stepfoley/ping")[:16] + b"," + tag.encode() + b"\x00" * (4 - (len(tag) + 1) % 4)
        else:
            yield base + bytes(rng.randrange(40_000, 60_000))


def test_fuzzed_datagrams_never_stop_the_server(tmp_path):
    rng = random.Random(1234)
    with EngineServer(SineRunner(), ServerConfig(port=0)).start() as srv:
        p = RawPeer(srv.address[1])
        p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
        request_json = json.dumps(tiny_request(tmp_path, "fuzz"))
        valid = [
            osc.encode(protocol.PING, p.port, "f", ""),
            osc.encode(protocol.STATUS, p.port, "f", ""),
            osc.encode(protocol.GENERATE, p.port, "f", "", request_json),
            osc.encode(protocol.CANCEL, p.port, "f", "", "job"),
            osc.encode(protocol.RESULT, p.port, "f", "", "job"),
        ]
        sent = 0
        for n, data in enumerate(mutations(rng, valid)):
            try:
                decoded = osc.decode(data)
            except osc.DecodeError:
                decoded = []
            # never let a flipped bit aim the engine's replies at somebody else's port on this machine
            if any(protocol.reply_port_of(args) not in (None, p.port) for _, args in decoded):
                continue
            p.send_bytes(data)
            sent += 1
            if n % 100 == 99:
                p.send(protocol.PING, p.port, f"alive{n}", "")
                while p.receive()[1][:1] != [f"alive{n}"]:
                    pass
        assert sent > 1000
        assert srv.dropped_datagrams > 0
        p.close()
        code, status = bc.send_request(tiny_request(tmp_path, "after the storm"), None, port=srv.address[1])
        assert code == bc.EXIT_DONE, status
