"""Protocol 1 without sockets: message headers, OSC encode/decode (the request is tests/test_request.py)."""

import json

import pytest

from stepfoley.bridge import osc, protocol


def test_header_checks():
    header, rest = protocol.parse_header(protocol.CANCEL, [9000, "req-1", "", "job"])
    assert (header.reply_port, header.request_id, header.token, rest) == (9000, "req-1", "", ["job"])
    bad = [
        (protocol.PING, [9000, "r"], "takes 3 arguments"),
        (protocol.PING, [9000, "r", "", "extra"], "takes 3 arguments"),
        (protocol.PING, ["9000", "r", ""], "'reply_port' must be an OSC int32"),
        (protocol.PING, [True, "r", ""], "'reply_port' must be an OSC int32"),
        (protocol.PING, [70000, "r", ""], "not a UDP port"),
        (protocol.PING, [0, "r", ""], "reply_port 0 is not a UDP port"),
        (protocol.PING, [9000, "r", "t" * (protocol.MAX_TOKEN_CHARS + 1)], "token is too long"),
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


def test_fit_json_cuts_long_strings_and_lists_and_says_so():
    small = {"caption": "rain", "n": 1}
    assert protocol.fit_json(small, 100) == json.dumps(small)
    big = {"caption": "雨" * 1000, "captions": ["雷" * 100] * 500, "seed": 7}
    text = protocol.fit_json(big, 4096)
    cut = json.loads(text)
    assert len(text) <= 4096 and cut["truncated"] is True and cut["seed"] == 7
    assert cut["caption"].startswith("雨") and cut["caption"].endswith("…")
    assert json.loads(protocol.fit_json({"x" * 5000: 1}, 100)) == {"truncated": True}
    assert protocol.fit_json({"bad": "\ud800"}, 100).isascii()


def test_encode_escapes_what_utf8_cannot_carry():
    data = osc.encode(protocol.ERROR, "r", "", "bad_audio", "file '/tmp/\ud800.wav'")
    assert osc.decode(data)[0][1][3] == "file '/tmp/\\ud800.wav'"


def test_token_sources_in_order(tmp_path, monkeypatch):
    from stepfoley.bridge.auth import TokenError, read_token_file, resolve_token

    for name in ("STEPFOLEY_TOKEN", "STEPFOLEY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert resolve_token() == ""  # no token anywhere
    path = tmp_path / "stepfoley" / "token"
    path.parent.mkdir()
    path.write_text("from-file\n")
    path.chmod(0o640)
    with pytest.raises(TokenError, match="chmod 600"):
        resolve_token()
    path.chmod(0o600)
    assert resolve_token() == "from-file"
    monkeypatch.setenv("STEPFOLEY_TOKEN", "from-env")
    assert resolve_token() == "from-env" and resolve_token("explicit") == "explicit"
    other = tmp_path / "other"
    other.write_bytes("\ufeffwritten-by-powershell\r\n".encode("utf-8"))  # a byte-order mark is not the token's
    other.chmod(0o600)
    assert read_token_file(other) == "written-by-powershell"
    other.write_text("\n")
    other.chmod(0o600)
    with pytest.raises(TokenError, match="first line"):
        read_token_file(other)
    longest = "k" * protocol.MAX_TOKEN_CHARS
    other.write_text("   " + longest + "\n")  # read as 258 characters, it was a shorter token
    assert read_token_file(other) == longest
    for long_line in (" " + longest + "k\n", " " * 5000 + longest):
        other.write_text(long_line)
        with pytest.raises(TokenError, match="1-256 characters"):
            read_token_file(other)
    monkeypatch.delenv("STEPFOLEY_TOKEN")
    monkeypatch.setenv("STEPFOLEY_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(TokenError, match="Cannot read"):
        resolve_token()


def test_every_token_source_is_held_to_the_token_files_rules(tmp_path, monkeypatch):
    """A token of 257 characters from STEPFOLEY_TOKEN or --token used to be taken as it was: the
    engine started and then refused every message ("token is too long"). Every source now has
    the token file's rule (1-256 characters of text), refused when the token is resolved."""
    from stepfoley.bridge.auth import TokenError, resolve_token

    for name in ("STEPFOLEY_TOKEN", "STEPFOLEY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    longest = "k" * protocol.MAX_TOKEN_CHARS
    monkeypatch.setenv("STEPFOLEY_TOKEN", longest)
    assert resolve_token() == longest and resolve_token(longest) == longest
    monkeypatch.setenv("STEPFOLEY_TOKEN", longest + "k")
    with pytest.raises(TokenError) as e:
        resolve_token()
    assert e.value.code == "bad_token"
    assert e.value.args[0] == ("The token from $STEPFOLEY_TOKEN is 257 characters long; a token is 1-256 "
                               "characters of text (no NUL). Choose a shorter one.")
    with pytest.raises(TokenError, match="The token from --token is 300 characters long; a token is 1-256"):
        resolve_token("k" * 300)
    monkeypatch.setenv("STEPFOLEY_TOKEN", "byte \udcff")  # how os.environ holds a byte that is not UTF-8
    with pytest.raises(TokenError, match="STEPFOLEY_TOKEN is not text: a token is 1-256 characters of text"):
        resolve_token()
    with pytest.raises(TokenError, match="--token is not text: a token is 1-256 characters of text"):
        resolve_token("nul\x00inside")
    file = tmp_path / "token"
    file.write_text("a\x00b\n")
    file.chmod(0o600)
    with pytest.raises(TokenError, match="first line"):
        resolve_token(file=file)
    assert resolve_token("") == ""  # an explicit empty token still means none


def test_a_job_names_its_stems_only_once_it_is_done(tmp_path):
    """A cancel that lands while the stems are written ends the job cancelled with its stems
    removed: /result and /status must not name them (a client testing stem_path would import
    a missing file)."""
    from stepfoley.bridge.jobs import CANCELLED, DONE, Job
    from stepfoley.request import parse_request
    from test_bridge_kit import make_request

    job = Job("abcd0123-000001", "r1", parse_request(make_request(tmp_path)), ("127.0.0.1", 9000))
    job.stem_path, job.metadata = str(tmp_path / "door_slam_001.wav"), {"caption": "door slam"}
    job.stems_folder, job.stems_json = str(tmp_path), json.dumps({"stems": [{"file": "door_slam_001.wav"}]})
    job.state = CANCELLED
    summary = job.summary(0, 25)
    assert summary["stem_path"] is None and summary["metadata"] is None and "stems" not in summary
    job.state = DONE
    summary = job.summary(0, 25)
    assert summary["stem_path"].endswith("door_slam_001.wav") and summary["stems"]["folder"] == str(tmp_path)
