"""Protocol 2: variations in one job, every stem in one final reply (/done_stems), over real UDP
sockets on 127.0.0.1 with the sine runner; protocol-1 requests keep their /done."""

import json
import os

import pytest
import soundfile as sf

from stepfoley.bridge import osc, protocol
from stepfoley.bridge.jobs import Job, _checked_stems
from stepfoley.bridge.server import job_reply
from stepfoley.request import MAX_PATH_CHARS, MAX_VARIATIONS, parse_request
from test_bridge_kit import RawPeer, SineRunner, client, make_request, peer, runner, server  # noqa: F401


def test_a_version_2_request_gets_every_stem_in_one_final_reply(peer, tmp_path):
    peer.generate(make_request(tmp_path, protocol=2, variations=3, seed=40), "v2")
    replies = peer.receive_until({protocol.DONE, protocol.DONE_STEMS, protocol.ERROR})
    address, (rid, job_id, folder, stems_json) = replies[-1]
    assert (address, rid) == (protocol.DONE_STEMS, "v2")
    reply = json.loads(stems_json)
    stems = protocol.merged_stems(folder, reply)
    assert [s["metadata"]["seed"] for s in stems] == [40, 41, 42]
    assert reply["metadata"]["caption"] == "footsteps on gravel" and "seed" not in reply["metadata"]
    assert all("caption" not in entry["metadata"] for entry in reply["stems"])  # shared once, not per stem
    assert reply["ranking"]["ranked_by"] == "seed"
    assert folder == str(tmp_path / "out") and len({s["stem_path"] for s in stems}) == 3
    assert all(sf.info(s["stem_path"]).frames == 48000 for s in stems)


def test_one_stem_keeps_its_seed_and_rank_in_its_own_metadata():
    """Of one stem everything counted as shared, and its own metadata was empty."""
    own = {"seed": 40, "rank": 1, "ranking": {"score": 0.5}}
    reply = json.loads(protocol.stems_json([("rain_001.wav", {**own, "caption": "rain", "lufs": -23.0})], {}))
    assert reply["stems"] == [{"file": "rain_001.wav", "metadata": own}]
    assert reply["metadata"] == {"caption": "rain", "lufs": -23.0}
    # of several, what differs is each stem's own as before
    reply = json.loads(protocol.stems_json([("a.wav", {**own, "lufs": -23.0}), ("b.wav", {**own, "lufs": -22.0})], {}))
    assert [e["metadata"]["lufs"] for e in reply["stems"]] == [-23.0, -22.0] and reply["metadata"] == {}


def test_a_version_1_request_is_answered_as_before(peer, tmp_path):
    peer.generate(make_request(tmp_path, seed=5), "v1")
    address, args = peer.receive_until({protocol.DONE, protocol.DONE_STEMS, protocol.ERROR})[-1]
    assert address == protocol.DONE and len(args) == 4 and json.loads(args[3])["seed"] == 5
    assert len(os.listdir(tmp_path / "out")) == 1


def test_variations_in_a_version_1_request_are_refused_before_a_job(peer, tmp_path):
    peer.generate(make_request(tmp_path, variations=4), "old")
    address, args = peer.receive()
    assert (address, args[2]) == (protocol.ERROR, "invalid_request")
    assert "variations came with protocol 2" in args[3]


def test_the_client_keeps_every_stem_in_its_status_and_recovers_them_by_job_id(client, peer, tmp_path):
    final = client.submit(make_request(tmp_path, protocol=2, variations=4, seed=9)).wait()
    assert final["state"] == "done" and final["exit_code"] == 0
    assert [s["metadata"]["seed"] for s in final["stems"]] == [9, 10, 11, 12]
    assert final["stem_path"] == final["stems"][0]["stem_path"] and final["metadata"]["seed"] == 9
    assert all(os.path.isfile(s["stem_path"]) for s in final["stems"])
    # a lost /done_stems: /result gives the same stems back
    peer.send(protocol.RESULT, peer.port, "q", "", final["job_id"])
    summary = json.loads(peer.receive()[1][1])
    assert protocol.merged_stems(summary["stems"]["folder"], summary["stems"]) == final["stems"]
    v1 = client.submit(make_request(tmp_path)).wait()
    assert "stems" not in v1 and v1["metadata"]["seed"] == 1


def test_the_final_reply_fits_one_datagram_at_every_bound(tmp_path):
    """The longest folder a request may name (4-byte characters), eight stems with the longest
    names the engine makes and bulky metadata: /done_stems still fits one datagram, file names
    whole."""
    folder = tmp_path / ("\U0001F3B5" * 60)  # a real folder; the reply below names a longer one
    folder.mkdir()
    request = parse_request(make_request(tmp_path, protocol=2, variations=MAX_VARIATIONS, output_dir=str(folder)))
    stems = []
    for i in range(MAX_VARIATIONS):
        path = folder / (f"{'x' * 48}_{i + 1:03d}.wav")
        path.write_bytes(b"RIFF")
        stems.append({"stem_path": str(path), "metadata": {"seed": i, "levels": ["é" * 300] * 20,
                                                            "caption": "ü" * 1000, "notes": list(range(5000))}})
    folder_path, text, best = _checked_stems({"stems": stems, "ranking": {"reason": "r" * 5000}}, str(folder))
    job = Job("abcd-000001", "r" * protocol.MAX_REQUEST_ID_CHARS, request, ("127.0.0.1", 1),
              stems_folder="/" + "\U0001F3B5" * (MAX_PATH_CHARS - 1), stems_json=text)
    datagram = job_reply(job, protocol.DONE_STEMS)
    assert len(datagram) <= protocol.MAX_DATAGRAM_BYTES
    [(address, args)] = osc.decode(datagram)
    merged = protocol.merged_stems(folder_path, json.loads(args[3]))
    assert [os.path.basename(s["stem_path"]) for s in merged] == [f"{'x' * 48}_{i + 1:03d}.wav" for i in range(8)]
    assert [s["metadata"]["seed"] for s in merged] == list(range(8)) and best == stems[0]["stem_path"]


def test_a_result_with_a_stem_outside_the_folder_is_refused_and_its_stems_removed(tmp_path):
    class Stray(SineRunner):
        def __call__(self, request, on_progress, is_cancelled):
            result = super().__call__(request, on_progress, is_cancelled)
            result["stems"].append({"stem_path": str(tmp_path / "picture.mp4"), "metadata": {}})
            return result

    from stepfoley.bridge.client import EngineClient
    from stepfoley.bridge.server import EngineServer, ServerConfig

    with EngineServer(Stray(), ServerConfig(port=0)).start() as srv, EngineClient(port=srv.address[1]) as c:
        final = c.submit(make_request(tmp_path, protocol=2, variations=2)).wait()
    assert final["state"] == "error" and final["error"]["code"] == "internal_error"
    assert os.listdir(tmp_path / "out") == [] and (tmp_path / "picture.mp4").exists()


@pytest.mark.parametrize("name", ["../evil.wav", "a/b.wav", "..", ""])
def test_the_client_refuses_stem_names_that_leave_the_folder(name):
    with pytest.raises(ValueError, match="not a file name"):
        protocol.merged_stems("/out", {"stems": [{"file": name, "metadata": {}}], "metadata": {}})
