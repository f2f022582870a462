"""stepfoley.request: the one request model, its parser, its documentation and the capabilities
an engine publishes."""

import json
from pathlib import Path

import pytest

from stepfoley.request import (FIELDS, Capabilities, GuidanceDefaults, MethodInfo, RequestError, markdown_table,
                               parse_request, printable)
from test_bridge_kit import make_request

REPO = Path(__file__).resolve().parents[1]


def capabilities(**changes) -> Capabilities:
    """What the engine publishes for a model with a ControlNet (FoleyModel.capabilities)."""
    from stepfoley.engine.guidance import public_methods

    methods = tuple(MethodInfo(m.name, m.summary, m.params, m.audio) for m in public_methods())
    return Capabilities("test-model", GuidanceDefaults(**changes), methods, 16000)


def test_minimal_request_leaves_guidance_to_the_model(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    minimal = {"region": {"video": "/v.mp4", "file_in": 2, "file_out": 6}, "caption": "rain", "output_dir": str(out)}
    request = parse_request(minimal, capabilities(), check_paths=True)
    region = request.region
    assert (region.video, region.file_in, region.file_out, region.playrate) == ("/v.mp4", 2.0, 6.0, 1.0)
    assert (region.project_start, region.project_end) == (0.0, 4.0)
    assert (request.method, request.alpha, request.beta, request.steps) == (None, None, None, None)
    assert (request.sample_rate, request.format, request.existing_mix, request.seed) == (48000, "wav24", None, 0)
    assert minimal == {"region": {"video": "/v.mp4", "file_in": 2, "file_out": 6}, "caption": "rain",
                       "output_dir": str(out)}, "parsing must not change the caller's dict"


def test_to_json_round_trips(tmp_path):
    request = parse_request(make_request(tmp_path, previous_captions=["wind"], negative_caption="birds"))
    assert parse_request(json.loads(json.dumps(request.to_json()))) == request


def test_a_version_2_request_with_variations_round_trips_and_a_version_1_request_stays_one(tmp_path):
    v2 = parse_request(make_request(tmp_path, protocol=2, variations=8, seed=2**63 - 8))
    assert (v2.protocol, v2.variations) == (2, 8)
    assert parse_request(json.loads(json.dumps(v2.to_json()))) == v2
    v1 = parse_request(make_request(tmp_path))
    assert (v1.protocol, v1.variations) == (1, 1) and "variations" not in v1.to_json()
    assert parse_request({k: v for k, v in make_request(tmp_path).items() if k != "protocol"}).protocol == 1


def test_picture_region_and_loudness_curve_round_trip_as_tuples(tmp_path):
    request = parse_request(make_request(tmp_path, protocol=2, picture_region=[0.1, 0.2, 0.6, 0.9],
                                         picture_region_time=[0.25, 0.75], loudness_curve=[[0, -40], [1, -18]]))
    assert request.picture_region == (0.1, 0.2, 0.6, 0.9) and request.picture_region_time == (0.25, 0.75)
    assert request.loudness_curve == ((0.0, -40.0), (1.0, -18.0))
    assert parse_request(json.loads(json.dumps(request.to_json()))) == request


def test_a_loudness_curve_does_not_shape_a_take(tmp_path):
    with pytest.raises(RequestError, match="cannot shape a take"):
        parse_request(make_request(tmp_path, protocol=2, take="/take.wav", regenerate=[0.5, 1],
                                   loudness_curve=[[0, -20]]))


def test_a_take_that_is_a_pipe_a_link_to_one_or_too_big_is_refused_before_work(tmp_path):
    import os

    fifo = tmp_path / "take.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "take.wav"
    link.symlink_to(fifo)
    huge = tmp_path / "huge.wav"
    with open(huge, "wb") as f:
        f.truncate(2**30 + 1)  # sparse: costs no disk
    for take, words in ((fifo, "not a regular file"), (link, "not a regular file"), (huge, "at most 1024 MiB")):
        with pytest.raises(RequestError, match=words):
            parse_request(make_request(tmp_path, protocol=2, take=str(take), regenerate=[0.5, 1]), check_paths=True)


def test_project_end_follows_the_playrate(tmp_path):
    request = make_request(tmp_path)
    request["region"] = {"video": "/v.mp4", "file_in": 0.0, "file_out": 4.0, "playrate": 2.0, "project_start": 10.0}
    assert parse_request(request).region.project_end == 12.0


def test_a_region_of_exactly_one_second_in_daw_floats_is_accepted(tmp_path):
    request = make_request(tmp_path)
    request["region"] = {"video": "/v.mp4", "file_in": 0.9, "file_out": 1.9}  # 0.9999999999999999 s
    assert parse_request(request).region.duration < 1.0
    request["region"]["file_out"] = 1.89
    with pytest.raises(RequestError, match="select at least 1 s"):
        parse_request(request)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"protocol": 3}, "speaks protocol 1 and 2, the request says 3"),
        ({"protocol": True}, "the request says True"),
        ({"variations": 2}, "variations came with protocol 2; the request says protocol 1"),
        ({"protocol": 2, "variations": 9}, "variations = 9 is outside 1 .. 8"),
        ({"protocol": 2, "variations": 0}, "variations = 0 is outside 1 .. 8"),
        ({"protocol": 2, "variations": 2.0}, "variations must be a whole number"),
        ({"protocol": 2, "variations": 3, "seed": 2**63 - 2}, "leaves no room for 3 variations"),
        ({"caption": "  "}, "caption is empty"),
        ({"caption": 5}, "caption must be a string"),
        ({"method": "magic"}, "method 'magic' is unknown to the model 'test-model'"),
        ({"method": "Bad Name"}, "is not a method name"),
        ({"alpha": "4.5"}, "alpha must be a number"),
        ({"alpha": float("nan")}, "alpha must be a number"),
        ({"beta": -1}, "beta = -1 is outside"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": True}, "seed must be a whole number"),
        ({"steps": 0}, "steps = 0 is outside 1 .. 200"),
        ({"steps": 201}, "steps = 201 is outside 1 .. 200"),
        ({"w1": 2.0}, "only apply to method 'dual'"),
        ({"method": "dual", "w3": 101}, "w3 = 101 is outside"),
        ({"sample_rate": 12345}, "sample_rate 12345 is not supported"),
        ({"sample_rate": True}, "sample_rate True is not supported"),
        ({"format": "mp3"}, "format 'mp3' is not supported"),
        ({"output_dir": "relative/dir"}, "must be an absolute path"),
        ({"existing_mix": ""}, "existing_mix must be a file path"),
        ({"method": "reference"}, "method 'reference' needs reference_audio"),
        ({"reference_audio": "/ref.wav"}, "only used by a method that sounds like a recording, not by 'nag'"),
        ({"method": "reference", "reference_audio": "ref.wav"}, "must be an absolute path"),
        ({"previous_captions": "rain"}, "previous_captions must be a list"),
        ({"name_hint": "x" * 201}, "name_hint is longer than 200"),
        ({"colour": "red"}, "Unknown field(s) in request: colour"),
        ({"region": {"video": "/v.mp4", "file_in": 3, "file_out": 2}}, "must be after region.file_in"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 0.5}}, "select at least 1 s"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 601}}, "at most 600 s"),
        ({"region": {"video": "/v.mp4", "file_out": 2}}, "missing the required field 'file_in'"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "speed": 1}}, "Unknown field(s) in region: speed"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "playrate": 0}}, "region.playrate"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "project_start": 5, "project_end": 4}},
         "must be after region.project_start"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 10, "playrate": 0.01}},
         "The stem would last 1000.0 s on the timeline (10.00 s of picture at playrate 0.01); at most 600 s"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 200}, "sample_rate": 192000, "format": "wav32f"},
         "The stem would be 146 MiB (200.0 s at 192000 Hz in wav32f); a job writes at most 128 MiB"),
        ({"caption": "rain \ud800"}, "caption 'rain \\ud800' holds a lone UTF-16 surrogate"),
        ({"existing_mix": "/mix\udcff.wav"}, "existing_mix '/mix\\udcff.wav' holds a lone UTF-16 surrogate"),
        ({"alpha": [[[[[[1]]]]]]}, "alpha must be a number, got [[[...]]]"),
        ({"picture_region": [0, 0, 0.5, 0.5]}, "picture_region came with protocol 2"),
        ({"protocol": 2, "picture_region": [0.5, 0, 0.2, 1]}, "each side must be at least 0.05 of the picture"),
        ({"protocol": 2, "picture_region": [0, 0, 1.5, 1]}, "picture_region x1 = 1.5 is outside 0 .. 1"),
        ({"protocol": 2, "picture_region": [0, 0, 1]}, "picture_region must be [x0, y0, x1, y1]"),
        ({"protocol": 2, "picture_region_time": [0, 1]}, "it needs picture_region"),
        ({"protocol": 2, "picture_region": [0, 0, 1, 1], "picture_region_time": [0.5, 1.5]}, "after the stem's end"),
        ({"protocol": 2, "loudness_curve": []}, "list of 1 to 128 [seconds, dB] points, got 0 points"),
        ({"protocol": 2, "loudness_curve": [[0, -20]] * 129}, "got 129 points. Thin the envelope's points"),
        ({"protocol": 2, "loudness_curve": [[0, -20], [0, -10]]}, "loudness_curve[1] is at 0 s, not after"),
        ({"protocol": 2, "loudness_curve": [[0, 3]]}, "loudness_curve[0] dB = 3 is outside -70 .. 0"),
        ({"protocol": 2, "loudness_curve": [[0, -20], [1.5, -20]]}, "a point at 1.5 s, after the stem's end"),
        ({"protocol": 2, "loudness_curve": [-20]}, "loudness_curve[0] must be [seconds, dB]"),
    ],
)
def test_bad_requests_are_named_precisely(tmp_path, change, words):
    request = make_request(tmp_path)
    request.update(change)
    with pytest.raises(RequestError) as e:
        parse_request(request, capabilities())
    assert e.value.code == "invalid_request"
    assert words in e.value.message


def test_missing_required_fields(tmp_path):
    for field in ("region", "caption", "output_dir"):
        request = make_request(tmp_path)
        del request[field]
        with pytest.raises(RequestError, match=f"missing the required field '{field}'"):
            parse_request(request)
    with pytest.raises(RequestError, match="JSON object"):
        parse_request(["not", "a", "dict"])


def test_output_dir_must_exist_on_the_engine_side(tmp_path):
    request = make_request(tmp_path, output_dir=str(tmp_path / "missing"))
    with pytest.raises(RequestError, match="does not exist"):
        parse_request(request, check_paths=True)
    file_not_dir = tmp_path / "a_file"
    file_not_dir.write_text("x")
    with pytest.raises(RequestError, match="is not a folder"):
        parse_request(make_request(tmp_path, output_dir=str(file_not_dir)), check_paths=True)
    assert parse_request(request).output_dir == str(tmp_path / "missing")


def test_a_method_the_model_cannot_run_is_refused_with_the_reason(tmp_path):
    caps = capabilities()
    no_controlnet = Capabilities(caps.model, caps.defaults, tuple(
        MethodInfo(m.name, m.summary, m.params, m.audio, available=m.audio is None,
                   unavailable_reason="" if m.audio is None else "no NAG ControlNet") for m in caps.methods))
    with pytest.raises(RequestError, match="not available .* no NAG ControlNet"):
        parse_request(make_request(tmp_path, method="nag"), no_controlnet)
    with pytest.raises(RequestError, match="not available"):  # the model's default method counts too
        parse_request({k: v for k, v in make_request(tmp_path).items() if k != "method"}, no_controlnet)
    assert parse_request(make_request(tmp_path, method="text_boost"), no_controlnet).method == "text_boost"


def test_messages_quoting_user_text_are_always_encodable(tmp_path):
    bad = "\ud800"
    for change in ({"output_dir": bad}, {bad: 1}, {"region": {"video": bad, "file_in": 0, "file_out": 2}}):
        with pytest.raises(RequestError) as e:
            parse_request({**make_request(tmp_path), **change})
        e.value.message.encode("utf-8")
    assert printable("café ☕") == "café ☕"


def test_capabilities_round_trip_through_json():
    caps = capabilities(alpha=2.5)
    again = Capabilities.from_json(json.loads(json.dumps(caps.to_json())))
    assert again == caps
    assert caps.to_json()["bounds"]["steps"] == [1, 200]
    assert caps.to_json()["bounds"]["variations"] == [1, 8]
    assert {k: caps.to_json()["bounds"][k] for k in ("stem_seconds", "stem_bytes", "input_audio_bytes",
                                                     "input_sample_rate")} == {
        "stem_seconds": 600.0, "stem_bytes": 128 * 2**20, "input_audio_bytes": 2**30, "input_sample_rate": 192000}


def test_the_largest_stems_the_limits_allow_are_accepted(tmp_path):
    for rate, fmt, seconds in ((48000, "wav32f", 600), (192000, "wav24", 233), (192000, "wav32f", 174)):
        request = make_request(tmp_path, sample_rate=rate, format=fmt)
        request["region"] = {"video": "/v.mp4", "file_in": 0, "file_out": seconds}
        assert parse_request(request).region.project_duration == seconds


def test_the_protocol_document_shows_the_field_table():
    doc = (REPO / "docs" / "osc-protocol.md").read_text(encoding="utf-8")
    assert markdown_table() in doc, (
        "docs/osc-protocol.md's request table differs from stepfoley.request.FIELDS; paste the output of "
        "`python -c 'from stepfoley.request import markdown_table; print(markdown_table())'`")
    assert len({f.name for f in FIELDS}) == len(FIELDS)


def test_a_method_added_to_the_registry_reaches_the_cli_and_the_protocol(tmp_path, monkeypatch):
    """Adding a guidance method is one registry entry: the command line offers it, the engine
    publishes it, and the protocol accepts it; nothing else lists methods."""
    from stepfoley.cli import build_parser
    from stepfoley.engine import guidance
    from stepfoley.engine.embedded.model import build_embedded_model

    monkeypatch.setitem(guidance.GUIDANCE_METHODS, "half_cfg", guidance.GuidanceMethod(
        "half_cfg", "CFG at half strength", ("cond", "uncond"),
        lambda v, w: guidance.classifier_free_guidance(v["cond"], v["uncond"], w.alpha / 2)))

    parser = build_parser()
    args = parser.parse_args(["generate", "v.mp4", "0", "2", "rain", "--method", "half_cfg"])
    assert args.method == "half_cfg"
    caps = build_embedded_model(random_weights=True).capabilities()
    assert caps.method("half_cfg").summary == "CFG at half strength"
    wire = Capabilities.from_json(json.loads(json.dumps(caps.to_json())))  # as a client reads /status
    assert parse_request(make_request(tmp_path, method="half_cfg"), wire).method == "half_cfg"
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "v.mp4", "0", "2", "rain", "--method", "half_cfg"])
