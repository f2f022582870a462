"""Protocol 1 without sockets: request validation, message headers, OSC encode/decode."""

import json

import pytest

from stepfoley.bridge import osc, protocol
from test_bridge_kit import make_request


def test_minimal_request_gets_every_default(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    minimal = {"region": {"video": "/v.mp4", "file_in": 2, "file_out": 6}, "caption": "rain", "output_dir": str(out)}
    request = protocol.validate_request(minimal)
    assert request["region"] == {"video": "/v.mp4", "file_in": 2.0, "file_out": 6.0, "playrate": 1.0,
                                 "project_start": 0.0, "project_end": 4.0}
    assert (request["method"], request["alpha"], request["beta"], request["steps"]) == ("nag", 4.5, 1.5, 25)
    assert (request["sample_rate"], request["format"], request["existing_mix"]) == (48000, "wav24", None)
    assert minimal == {"region": {"video": "/v.mp4", "file_in": 2, "file_out": 6}, "caption": "rain",
                       "output_dir": str(out)}, "validation must not change the caller's dict"


def test_reference_request_keeps_its_recording(tmp_path):
    request = make_request(tmp_path)
    request.update(method="reference", reference_audio="/sounds/gravel.wav")
    checked = protocol.validate_request(request)
    assert (checked["method"], checked["reference_audio"]) == ("reference", "/sounds/gravel.wav")
    assert protocol.validate_request(make_request(tmp_path))["reference_audio"] is None


def test_project_end_follows_the_playrate(tmp_path):
    request = make_request(tmp_path)
    request["region"] = {"video": "/v.mp4", "file_in": 0.0, "file_out": 4.0, "playrate": 2.0, "project_start": 10.0}
    assert protocol.validate_request(request)["region"]["project_end"] == 12.0


@pytest.mark.parametrize(
    "change, words",
    [
        ({"protocol": 2}, "protocol 1"),
        ({"caption": "  "}, "caption is empty"),
        ({"caption": 5}, "caption must be a string"),
        ({"method": "magic"}, "method 'magic'"),
        ({"alpha": "4.5"}, "alpha must be a number"),
        ({"alpha": float("nan")}, "alpha must be a number"),
        ({"beta": -1}, "beta = -1"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": True}, "seed must be a whole number"),
        ({"steps": 0}, "steps = 0"),
        ({"sample_rate": 12345}, "sample_rate 12345"),
        ({"format": "mp3"}, "format 'mp3'"),
        ({"output_dir": "relative/dir"}, "must be an absolute path"),
        ({"existing_mix": ""}, "existing_mix must be a file path"),
        ({"method": "reference"}, "method 'reference' needs reference_audio"),
        ({"reference_audio": "/ref.wav"}, "only used by method 'reference'"),
        ({"method": "reference", "reference_audio": "ref.wav"}, "must be an absolute path"),
        ({"previous_captions": "rain"}, "previous_captions must be a list"),
        ({"colour": "red"}, "Unknown field(s) in request: colour"),
        ({"region": {"video": "/v.mp4", "file_in": 3, "file_out": 2}}, "must be after region.file_in"),
        ({"region": {"video": "/v.mp4", "file_out": 2}}, "missing the required field 'file_in'"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "speed": 1}}, "Unknown field(s) in region: speed"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "playrate": 0}}, "region.playrate"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "project_start": 5, "project_end": 4}},
         "must be after region.project_start"),
    ],
)
def test_bad_requests_are_named_precisely(tmp_path, change, words):
    request = make_request(tmp_path)
    request.update(change)
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.validate_request(request)
    assert e.value.code == "invalid_request"
    assert words in e.value.message


def test_missing_required_fields(tmp_path):
    for field in ("region", "caption", "output_dir"):
        request = make_request(tmp_path)
        del request[field]
        with pytest.raises(protocol.ProtocolError, match=f"missing the required field '{field}'"):
            protocol.validate_request(request)
    with pytest.raises(protocol.ProtocolError, match="JSON object"):
        protocol.validate_request(["not", "a", "dict"])


def test_output_dir_must_exist_on_the_engine_side(tmp_path):
    request = make_request(tmp_path, output_dir=str(tmp_path / "missing"))
    with pytest.raises(protocol.ProtocolError, match="does not exist"):
        protocol.validate_request(request)
    file_not_dir = tmp_path / "a_file"
    file_not_dir.write_text("x")
    with pytest.raises(protocol.ProtocolError, match="is not a folder"):
        protocol.validate_request(make_request(tmp_path, output_dir=str(file_not_dir)))
    assert protocol.validate_request(request, check_paths=False)["output_dir"] == str(tmp_path / "missing")


def test_header_checks():
    header, rest = protocol.parse_header(protocol.CANCEL, [9000, "req-1", "", "job"])
    assert (header.reply_port, header.request_id, header.token, rest) == (9000, "req-1", "", ["job"])
    bad = [
        (protocol.PING, [9000, "r"], "takes 3 arguments"),
        (protocol.PING, [9000, "r", "", "extra"], "takes 3 arguments"),
        (protocol.PING, ["9000", "r", ""], "'reply_port' must be an OSC int32"),
        (protocol.PING, [True, "r", ""], "'reply_port' must be an OSC int32"),
        (protocol.PING, [70000, "r", ""], "not a UDP port"),
        (protocol.PING, [9000, "bad id!", ""], "request_id must be"),
        (protocol.GENERATE, [9000, "r", "", 5], "'request_json' must be an OSC string"),
        ("/stepfoley/explode", [9000, "r", ""], "Unknown OSC address"),
    ]
    for address, args, words in bad:
        with pytest.raises(protocol.ProtocolError, match=words):
            protocol.parse_header(address, args)
    assert protocol.reply_port_of(["x"]) is None and protocol.reply_port_of([0]) is None
    assert protocol.reply_port_of([5000, 1]) == 5000 and protocol.request_id_of([1, "ok-1"]) == "ok-1"


def test_osc_round_trip_keeps_types_and_unicode():
    text = json.dumps({"caption": "pas sur le gravier, café ☕"}, ensure_ascii=False)
    data = osc.encode(protocol.GENERATE, 9000, "r1", "", text)
    assert osc.decode(data) == [(protocol.GENERATE, [9000, "r1", "", text])]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00\x00\x00", b"hello", b"/a\x00\x00,i\x00\x00\x00", b"/a\x00\x00,x\x00\x00" + b"\x00" * 4,
     b"#bundle\x00garbage", bytes(range(256)), b"/\xff\xfe\x00,s\x00\x00\xff\xff\x00\x00"],
)
def test_garbage_is_a_decode_error(data):
    with pytest.raises(osc.DecodeError):
        osc.decode(data)


def test_deeply_nested_bundles_are_a_decode_error_not_a_crash():
    datagram = osc.encode(protocol.PING, 9000, "r", "")
    for _ in range(1500):
        datagram = b"#bundle\x00" + bytes(8) + len(datagram).to_bytes(4, "big") + datagram
    with pytest.raises(osc.DecodeError):
        osc.decode(datagram)


def test_a_bundle_of_valid_messages_decodes_to_each_message():
    ping = osc.encode(protocol.PING, 9000, "r", "")
    bundle = b"#bundle\x00" + bytes(8) + (len(ping).to_bytes(4, "big") + ping) * 2
    assert osc.decode(bundle) == [(protocol.PING, [9000, "r", ""])] * 2
