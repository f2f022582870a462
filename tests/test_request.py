"""stepfoley.request: the one request model, its parser, its documentation and the capabilities
an engine publishes."""

import json
import os
from pathlib import Path

import pytest

from stepfoley.engine.input_files import check_request_paths
from stepfoley.request import (FIELDS, Capabilities, GuidanceDefaults, MethodInfo, RequestError, for_model,
                               markdown_table, parse_request, printable)
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
    request = check_request_paths(parse_request(minimal, capabilities()))
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
            check_request_paths(parse_request(make_request(tmp_path, protocol=2, take=str(take), regenerate=[0.5, 1])))


def test_a_project_end_at_the_playrate_bounds_is_taken_whatever_the_rounding(tmp_path):
    refused = 0
    for rate in (100.0, 0.01):  # as a DAW computes the end: start + length / rate
        for i in range(200):
            start, length = 0.137 * i, 1.0 + 0.0137 * i
            region = {"video": "/v.mp4", "file_in": 1.3, "file_out": 1.3 + length, "project_start": start,
                      "project_end": start + length / rate}
            try:
                parse_request(make_request(tmp_path, region=region))
            except RequestError:
                refused += 1
    assert refused == 0


def test_project_end_follows_the_playrate(tmp_path):
    request = make_request(tmp_path)
    request["region"] = {"video": "/v.mp4", "file_in": 0.0, "file_out": 4.0, "playrate": 2.0, "project_start": 10.0}
    assert parse_request(request).region.project_end == 12.0


def test_with_project_end_the_playrate_is_the_speed_the_two_ends_give(tmp_path):
    # 3 s of picture over a 4 s stem plays at 0.75, whatever playrate said: the metadata said 0.5
    request = make_request(tmp_path)
    request["region"] = {"video": "/v.mp4", "file_in": 1.0, "file_out": 4.0, "playrate": 0.5,
                         "project_start": 2.0, "project_end": 6.0}
    assert parse_request(request).region.playrate == 0.75
    # a DAW's ends that agree with its playrate to the last bits keep the playrate it sent
    request["region"] = {"video": "/v.mp4", "file_in": 0.9, "file_out": 1.9, "playrate": 1.0,
                         "project_start": 10.2, "project_end": 11.2}
    assert parse_request(request).region.playrate == 1.0


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
        # bounded by the timeline (a week), no longer by a stem's 600 s; never negative
        ({"protocol": 2, "take": "/t.wav", "regenerate": [0.5, 1], "take_offset": -1},
         "take_offset = -1 is outside 0 .. 604800"),
        ({"protocol": 2, "take": "/t.wav", "regenerate": [0.5, 1], "take_offset": 604801},
         "take_offset = 604801 is outside 0 .. 604800"),
        ({"protocol": 2, "variations": 3, "seed": 2**63 - 2}, "leaves no room for 3 variations"),
        ({"caption": "  "}, "caption is empty"),
        # invisible to both text encoders, which read it as the empty caption
        *(({"caption": blank}, "caption is empty (or only spaces and invisible characters)")
          for blank in ("\ufeff", "\u200b", "\u00ad", "\u200e\u200f", "\x01\x02", " \u2060 ")),
        ({"caption": 5}, "caption must be text (a JSON string)"),
        ({"method": "magic"}, "method 'magic' is unknown to the model 'test-model'"),
        ({"method": "Bad Name"}, "is not a method name"),
        ({"method": "NAG"}, "method 'NAG' is not a method name (lower-case letters, digits and _): did you mean 'nag'?"),
        ({"method": "negative-prompt"}, "did you mean 'negative_prompt'?"),
        ({"method": "CFG"}, "method 'CFG' is not a method name (lower-case letters, digits and _)."),  # no such method
        # the hint's guess never raises and is never made of a huge or odd value
        ({"method": "NAG\ud800"}, "method 'NAG\\ud800' is not a method name (lower-case letters, digits and _)."),
        ({"method": "N" * 10**6}, "is not a method name (lower-case letters, digits and _)."),
        ({"method": -1}, "method -1 is not a method name (lower-case letters, digits and _)."),
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
        ({"sample_rate": 22050.0}, "sample_rate must be a whole number written without a decimal point (22050, "
                                   "not 22050.0)"),
        # some JSON writers put every number as a float: 2.0 was said to be another protocol
        ({"protocol": 2.0}, "protocol must be a whole number written without a decimal point (2, not 2.0)"),
        ({"seed": 1.0}, "seed must be a whole number written without a decimal point (1, not 1.0)"),
        ({"format": "mp3"}, "format 'mp3' is not supported"),
        ({"output_dir": "relative/dir"}, "must be an absolute path"),
        ({"existing_mix": ""}, "existing_mix must be a file path"),
        ({"method": "reference"}, "method 'reference' needs reference_audio"),
        ({"reference_audio": "/ref.wav"}, "only used by a method that sounds like a recording, not by 'nag'"),
        ({"method": "reference", "reference_audio": "ref.wav"}, "must be an absolute path"),
        # the bounce was dropped without a word, and a missing one was never noticed
        ({"method": "reference", "reference_audio": "/ref.wav", "existing_mix": "/mix.wav"},
         "method 'reference' hears reference_audio, not the earlier layers: leave existing_mix out"),
        ({"previous_captions": "rain"}, "previous_captions must be a list"),
        ({"previous_captions": ["rain"] * 65}, "previous_captions must be a list of at most 64 captions"),
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
        ({"region": {"video": "/v.mp4", "file_in": 2, "file_out": 10, "project_start": 10, "project_end": 10.00001}},
         "region.project_end (10.00001) would play 8.00 s of picture in 1e-05 s, 800000 times its speed; the "
         "picture may play at 0.01 to 100 times its speed"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "project_start": 0, "project_end": 201}},
         "0.00995025 times its speed"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 10, "playrate": 0.01}},
         "The stem would last 1000.0 s on the timeline (10.00 s of picture at playrate 0.01); at most 600 s"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 200}, "sample_rate": 192000, "format": "wav32f"},
         "The stem would be 146 MiB (200.0 s at 192000 Hz in wav32f); a job writes at most 128 MiB. Choose a lower "
         "sample_rate, wav24, or a region of at most 174.7 s on the timeline."),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 300}, "sample_rate": 192000, "format": "wav24"},
         "(300.0 s at 192000 Hz in wav24); a job writes at most 128 MiB. Choose a lower sample_rate, or a region of "
         "at most 233.0 s on the timeline."),  # not told to choose the wav24 it asked for
        ({"caption": "rain \ud800"}, "caption 'rain \\ud800' holds bytes that are not UTF-8 text (or a lone UTF-16 surrogate)"),
        ({"existing_mix": "/mix\udcff.wav"}, "existing_mix '/mix\\udcff.wav' holds bytes that are not UTF-8 text (or a lone UTF-16 surrogate)"),
        ({"alpha": [[[[[[1]]]]]]}, "alpha must be a number, got [[[...]]]"),
        ({"picture_region": [0, 0, 0.5, 0.5]}, "picture_region came with protocol 2"),
        ({"protocol": 2, "picture_region": [0.5, 0, 0.2, 1]}, "each side must be at least 0.05 of the picture"),
        ({"protocol": 2, "picture_region": [0, 0, 1, 0.0499]}, "each side must be at least 0.05 of the picture"),
        ({"protocol": 2, "picture_region": [0, 0.9, 1, 0.1]}, "each side must be at least 0.05 of the picture"),
        ({"protocol": 2, "picture_region": [0, 0, 1.5, 1]}, "picture_region x1 = 1.5 is outside 0 .. 1"),
        ({"protocol": 2, "picture_region": [0, 0, 1]}, "picture_region must be [x0, y0, x1, y1]"),
        ({"protocol": 2, "picture_region_time": [0, 1]}, "it needs picture_region"),
        ({"protocol": 2, "picture_region": [0, 0, 1, 1], "picture_region_time": [0.5, 1.5]}, "after the stem's end"),
        # shorter than a frame of 8 fps features: no frame was seen cropped, the metadata said it was
        ({"protocol": 2, "picture_region": [0, 0, 0.5, 0.5], "picture_region_time": [0.51, 0.53]},
         "picture_region_time is 0.020 s long; the part of the picture must apply for at least 0.16 s of picture"),
        # 0.85-0.98 s fell between the embedded model's appearance frames (25 fps frames 21 and 25)
        ({"protocol": 2, "picture_region": [0, 0, 0.5, 0.5], "picture_region_time": [0.85, 0.98]},
         "picture_region_time is 0.130 s long"),
        ({"protocol": 2, "loudness_curve": []}, "list of 1 to 128 [seconds, dB] points, got 0 points"),
        ({"protocol": 2, "loudness_curve": [[0, -20]] * 129}, "got 129 points. Thin the envelope's points"),
        ({"protocol": 2, "loudness_curve": [[0, -20], [0, -10]]}, "loudness_curve[1] is at 0 s, not after"),
        ({"protocol": 2, "loudness_curve": [[0, 3]]}, "loudness_curve[0] dB = 3 is outside -70 .. 0"),
        ({"protocol": 2, "loudness_curve": [[0, -20], [1.5, -20]]}, "a point at 1.5 s, after the stem's end"),
        ({"protocol": 2, "loudness_curve": [-20]}, "loudness_curve[0] must be [seconds, dB]"),
        # a value just past a limit is shown so that it does not read as the limit itself
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 0.996}},
         "The region is 0.996 s long; select at least 1 s"),
        ({"alpha": 100.0000001}, "alpha = 100.0000001 is outside 0 .. 100"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 2, "project_start": 30.0000001, "project_end": 30}},
         "region.project_end (30) must be after region.project_start (30.0000001)"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 600, "playrate": 2, "project_start": 0,
                     "project_end": 601}},  # the 601 s comes from project_end: it is named
         "The stem would last 601.0 s on the timeline (region.project_end 601 - region.project_start 0)"),
        # project times are named as given: 6 significant digits said 604800 + 1.5 s for these
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 1.5, "project_start": 604799.5}},
         "The stem would end at 604801 s of the project (region.project_start 604799.5 + 1.5 s)"),
        ({"region": {"video": "/v.mp4", "file_in": 0, "file_out": 300, "project_start": 36000.125,
                     "project_end": 36601.375}},
         "(region.project_end 36601.375 - region.project_start 36000.125)"),
        ({"region": {"video": "/v.mp4", "file_in": 2, "file_out": 10, "project_start": 36000.125,
                     "project_end": 36000.135}},
         "region.project_end (36000.135) would play 8.00 s of picture"),
        ({"protocol": 2, "picture_region": [0, 0, 0.0499, 1]}, "is 0.0499 wide and 1.000 high"),
        ({"protocol": 2, "loudness_curve": [[0, -20], [1, -20], [0.9999999, -20]]},
         "loudness_curve[2] is at 0.9999999 s, not after the point before it (1 s)"),
        ({"protocol": 2, "picture_region": [0, 0, 1, 1], "picture_region_time": [1.0000001, 1]},
         "picture_region_time end (1 s) must be after its start (1.0000001 s)"),
        ({"protocol": 2, "picture_region": [0, 0, 1, 1], "picture_region_time": [0, 1.000002]},
         "picture_region_time ends at 1.000002 s, after the stem's end (1.000 s"),
    ],
)
def test_bad_requests_are_named_precisely(tmp_path, change, words):
    request = make_request(tmp_path)
    request.update(change)
    with pytest.raises(RequestError) as e:
        parse_request(request, capabilities())
    assert e.value.code == "invalid_request"
    assert words in e.value.message


def test_an_empty_loudness_curve_is_not_told_to_thin_its_points(tmp_path):
    with pytest.raises(RequestError) as e:
        parse_request({**make_request(tmp_path), "protocol": 2, "loudness_curve": []}, capabilities())
    assert e.value.message.endswith("got 0 points.")


def test_missing_required_fields(tmp_path):
    for field in ("region", "caption", "output_dir"):
        request = make_request(tmp_path)
        del request[field]
        with pytest.raises(RequestError, match=f"missing the required field '{field}'"):
            parse_request(request)
    with pytest.raises(RequestError, match="JSON object"):
        parse_request(["not", "a", "dict"])


@pytest.mark.parametrize("value, shown", [(None, "None"), (["rain"], "['rain']"), (12, "12")])
def test_text_of_the_wrong_type_is_shown_as_sent_not_as_a_python_type(tmp_path, value, shown):
    with pytest.raises(RequestError) as caught:
        parse_request(make_request(tmp_path, caption=value))
    assert str(caught.value) == f"caption must be text (a JSON string), got {shown}."


def test_which_methods_read_a_weight_is_the_registrys(tmp_path):
    """A guidance method is one registry entry: a new method that reads w1 takes it from a
    request, with no name of it in the parser."""
    caps = capabilities()
    caps = Capabilities(caps.model, caps.defaults, caps.methods + (MethodInfo("mine", "w1 alone", ("w1",)),), 16000)
    assert parse_request(make_request(tmp_path, method="mine", w1=2.0), caps).w1 == 2.0
    with pytest.raises(RequestError, match="w1, w2 are weights of Eq. A6 and only apply to method 'dual'"):
        parse_request(make_request(tmp_path, method="mine", w1=2.0, w2=1.0), caps)


def test_output_dir_must_exist_on_the_engine_side(tmp_path):
    request = make_request(tmp_path, output_dir=str(tmp_path / "missing"))
    with pytest.raises(RequestError, match="does not exist"):
        check_request_paths(parse_request(request))
    file_not_dir = tmp_path / "a_file"
    file_not_dir.write_text("x")
    with pytest.raises(RequestError, match="is not a folder"):
        check_request_paths(parse_request(make_request(tmp_path, output_dir=str(file_not_dir))))
    assert parse_request(request).output_dir == str(tmp_path / "missing")


def test_an_output_dir_no_file_can_be_made_in_is_refused_and_a_good_one_is_left_as_it_was(tmp_path):
    """Tried with a real file: as root (the CI's user) the permission bits let any folder pass,
    /proc included, and the job failed only after its sampling, at the stem's write."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "theirs.wav").write_bytes(b"x")
    assert check_request_paths(parse_request(make_request(tmp_path, output_dir=str(out))))
    assert [p.name for p in out.iterdir()] == ["theirs.wav"]  # the probe file is gone
    if os.path.isdir("/proc"):
        with pytest.raises(RequestError, match="'/proc' is not writable by the engine"):
            check_request_paths(parse_request(make_request(tmp_path, output_dir="/proc")))
    if os.name == "posix" and os.geteuid() != 0:  # as root a mode says nothing; /proc above tells
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(RequestError, match="is not writable by the engine"):
            check_request_paths(parse_request(make_request(tmp_path, output_dir=str(locked))))


def test_an_output_dir_too_deep_for_its_stems_paths_is_refused_before_work(tmp_path):
    """A folder within the path field's bound whose stems' temp files would pass the system's
    longest path (4,096 bytes on Linux) is refused now, not after the job's sampling."""
    from stepfoley.atomic import temp_name_bytes
    from stepfoley.engine.audio_io import MAX_STEM_NAME_CHARS
    from stepfoley.request import MAX_STEM_FILE_NAME_BYTES

    assert MAX_STEM_NAME_CHARS + len("_999999.wav") <= MAX_STEM_FILE_NAME_BYTES  # a million takes of one name
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")
    room = 1 + temp_name_bytes("s" * MAX_STEM_FILE_NAME_BYTES)  # "/" and the longest temp name
    deep = tmp_path / ("d" * 200)
    while len(os.fsencode(str(deep))) + 200 + 1 + room < limit:
        deep = deep / ("d" * 200)
    short = limit - room - len(os.fsencode(str(deep))) - 2  # the deepest folder that fits: its paths end before the NUL
    fits, too_deep = deep / ("e" * short), deep / ("e" * (short + 1))
    fits.mkdir(parents=True)
    too_deep.mkdir()
    with pytest.raises(RequestError, match="with the file's name it would pass the 4096 bytes .* nearer the root"):
        check_request_paths(parse_request(make_request(tmp_path, output_dir=str(too_deep))))
    assert check_request_paths(parse_request(make_request(tmp_path, output_dir=str(fits))))


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
    # Eq. A6's weights are dual's, which this model cannot run: not "or choose that method"
    with pytest.raises(RequestError) as e:
        parse_request(make_request(tmp_path, method="text_boost", w1=2.0), no_controlnet)
    assert e.value.message == ("w1 are weights of Eq. A6, which no method this model runs reads: 'dual' is not "
                               "available (no NAG ControlNet); leave them out.")


def test_a_request_parsed_before_the_model_loaded_is_checked_for_it_as_parse_request_checks(tmp_path):
    """stepfoley generate parses its request once, before the model loads, at a stand-in rate:
    for_model then gives what parsing it again with the model's capabilities and rate gave."""
    caps = capabilities()
    no_controlnet = Capabilities(caps.model, caps.defaults, tuple(
        MethodInfo(m.name, m.summary, m.params, m.audio, available=m.audio is None,
                   unavailable_reason="" if m.audio is None else "no NAG ControlNet") for m in caps.methods))
    reference = tmp_path / "like.wav"
    cases = [(make_request(tmp_path), caps), (make_request(tmp_path, method="nag"), no_controlnet),
             ({k: v for k, v in make_request(tmp_path).items() if k != "method"}, no_controlnet),
             (make_request(tmp_path, method="dual", w1=2.0), no_controlnet),
             (make_request(tmp_path, method="reference"), caps),
             (make_request(tmp_path, method="nag", reference_audio=str(reference)), caps),
             (make_request(tmp_path, method="reference", reference_audio=str(reference),
                           existing_mix=str(reference)), caps)]
    outcomes = []
    for data, model in cases:
        for rate in (48000, 16000):
            try:
                expected = parse_request({**data, "sample_rate": rate}, model)
            except RequestError as e:
                expected = e.message
            try:
                got = for_model(parse_request(data), model, rate)
            except RequestError as e:
                got = e.message
            assert got == expected, (data, rate)
            outcomes.append(isinstance(got, str))
    assert outcomes == [False, False] + [True] * 12  # each refusal met, and the rate set where none is


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


# --- numbers a float cannot hold, a continuation's two lengths, audio headers, the timeline ------

HUGE = 10**400  # what JSON's 1 followed by 400 zeros decodes to: an int no float can hold


@pytest.mark.parametrize("change, words", [
    ({"alpha": HUGE}, "alpha must be a number between 0 and 100, got 100000000000000000...0000000000000000000."),
    ({"alpha": -HUGE}, "alpha must be a number between 0 and 100, got -10000000000000000...0000000000000000000."),
    ({"region": {"video": "/v.mp4", "file_in": HUGE, "file_out": 4}}, "region.file_in must be a number between 0"),
    ({"protocol": 2, "take": "/t.wav", "regenerate": [0.5, 1], "take_offset": HUGE}, "take_offset must be a number"),
    ({"protocol": 2, "loudness_curve": [[0, -HUGE]]}, "loudness_curve[0] dB must be a number between -70 and 0"),
    ({"seed": HUGE}, "seed = 100000000000000000...0000000000000000000 is outside 0 .. 9223372036854775807."),
    ({"seed": 10**5000}, "seed = a whole number of 5001 digits is outside 0 .. 9223372036854775807."),
    ({"alpha": 10**5000}, "alpha must be a number between 0 and 100, got a whole number of 5001 digits."),
    ({"alpha": [10**5000]}, "alpha must be a number, got a list."),
])
def test_a_number_no_float_can_hold_is_refused_by_name_in_a_short_message(tmp_path, change, words):
    """JSON integers have no size limit: 1 followed by 400 zeros overflowed math.isfinite (an
    internal_error from the engine, a crash in the client), and a range message printed every
    digit. (Past 4300 digits Python cannot even print the number: a dict built in Python.)"""
    request = make_request(tmp_path)
    request.update(change)
    with pytest.raises(RequestError) as e:
        parse_request(request, capabilities())
    assert words in e.value.message and len(e.value.message) < 300


def test_the_json_text_of_a_huge_number_is_refused_as_a_request_error(tmp_path):
    text = json.dumps(make_request(tmp_path)).replace('"alpha": 4.5', '"alpha": 1' + "0" * 400)
    with pytest.raises(RequestError, match=r"alpha must be a number between 0 and 100, got 1000"):
        parse_request(json.loads(text))


def test_a_take_is_extended_or_repaired_only_when_the_stem_is_as_long_as_its_picture(tmp_path):
    """The take is kept sample for sample on the timeline, the new part follows the picture: a
    time selection longer than the picture left part of the stem without picture (silence)."""
    take = {"protocol": 2, "take": "/take.wav", "regenerate": [2.5, 3.5]}
    request = make_request(tmp_path, **take)
    request["region"] = {"video": "/v.mp4", "file_in": 1.0, "file_out": 3.0, "project_start": 0.0, "project_end": 4.0}
    with pytest.raises(RequestError) as e:
        parse_request(request)
    assert ("the time selection is 4.000 s on the timeline (project_end - project_start) but the picture is "
            "2.000 s (file_out - file_in)") in e.value.message
    request["region"].update(file_out=5.0)  # 4 s of picture over 4 s of timeline
    assert parse_request(request).region.project_duration == 4.0
    request["region"].update(project_start=0.9, project_end=4.9000004)  # a difference of DAW floats: within 1e-6 s
    assert parse_request(request).region.duration == 4.0
    request["region"].update(project_end=4.900002)  # 2 µs longer: the digits that differ are shown
    with pytest.raises(RequestError, match=r"4\.000002 s on the timeline .* the picture is 4\.000000 s"):
        parse_request(request)
    # a new track may still be varispeeded onto a selection of another length
    new = make_request(tmp_path)
    new["region"] = {"video": "/v.mp4", "file_in": 1.0, "file_out": 3.0, "project_start": 0.0, "project_end": 4.0}
    assert parse_request(new).region.project_duration == 4.0


def write_sound(path, rate: int, channels: int, seconds: float = 0.1, subtype: str = "PCM_16") -> str:
    import numpy as np
    import soundfile as sf

    sf.write(str(path), np.zeros((int(rate * seconds), channels), np.float32), rate, subtype=subtype)
    return str(path)


def test_an_audio_input_above_the_highest_rate_is_refused_before_accepted(tmp_path):
    from stepfoley.request import MAX_INPUT_SAMPLE_RATE

    fast = write_sound(tmp_path / "fast.wav", 2 * MAX_INPUT_SAMPLE_RATE, 2)
    ok = write_sound(tmp_path / "ok.wav", MAX_INPUT_SAMPLE_RATE, 2, seconds=1.0)  # a take as long as the stem
    for name, extra in (("existing_mix", {}), ("reference_audio", {"method": "reference"}),
                        ("take", {"protocol": 2, "regenerate": [0.5, 1]})):
        with pytest.raises(RequestError) as e:
            check_request_paths(parse_request(make_request(tmp_path, **{name: fast, **extra}), capabilities()))
        assert f"{name} '{fast}' is at 384000 Hz; at most 192000 Hz is read" in e.value.message
        check_request_paths(parse_request(make_request(tmp_path, **{name: ok, **extra}), capabilities()))
        # parse_request alone (the client, which may not see the engine's files) opens nothing
        parse_request(make_request(tmp_path, **{name: fast, **extra}), capabilities())


def test_an_ogg_input_s_header_is_read_from_its_start_only(tmp_path, monkeypatch):
    """libsndfile finds an Ogg file's length by searching it from its end: a tail of false page
    headers held the thread that answers every client 0.3 s a MiB (11 s for 32 MiB, about 5
    minutes at the 1 GiB an input may have) before /accepted. Its rate and channels are still
    checked; its length is the job's to find, as an MP3's."""
    import io
    import os

    import numpy as np
    import soundfile as sf

    from stepfoley.engine import input_files, mpeg_audio

    header = io.BytesIO()
    sf.write(header, np.zeros((4000, 2), np.float32), 44100, format="OGG", subtype="VORBIS")
    tail = bytearray(os.urandom(2 * mpeg_audio.HEADER_SEARCH_BYTES))
    for k in range(0, len(tail) - 5, 28):
        tail[k:k + 5] = b"OggS\0"
    crafted = tmp_path / "crafted.ogg"
    crafted.write_bytes(header.getvalue() + bytes(tail))
    read, real_info = [], sf.info

    def info(file, *args, **kwargs):
        read.append(file.seek(0, io.SEEK_END))  # how much of the file libsndfile was given
        file.seek(0)
        return real_info(file, *args, **kwargs)

    monkeypatch.setattr(sf, "info", info)
    for name, extra in (("existing_mix", {}), ("take", {"protocol": 2, "regenerate": [0.5, 1]})):
        check_request_paths(parse_request(make_request(tmp_path, **{name: str(crafted), **extra}), capabilities()))
    assert read and max(read) <= mpeg_audio.HEADER_SEARCH_BYTES
    monkeypatch.setattr(input_files, "MAX_INPUT_SAMPLE_RATE", 32000)  # the rate is still read from its start
    with pytest.raises(RequestError, match="is at 44100 Hz; at most "):
        check_request_paths(parse_request(make_request(tmp_path, existing_mix=str(crafted)), capabilities()))


def test_an_output_dir_that_leads_to_a_folder_named_in_no_utf8_is_refused(tmp_path):
    """`lnk/..` with lnk a link into a folder named in Latin-1: the text is UTF-8, the folder the
    stems went to is not, and the job reported done with a stem path that does not exist."""
    import os

    latin = os.fsencode(tmp_path) + b"/caf\xe9"
    os.makedirs(latin + b"/sub")
    os.symlink(latin + b"/sub", tmp_path / "lnk")
    with pytest.raises(RequestError, match=r"leads to the folder '.*caf\\udce9', whose name is not UTF-8 text"):
        check_request_paths(parse_request(make_request(tmp_path, output_dir=str(tmp_path / "lnk" / "..")),
                                          capabilities()))
    # the link itself is named in the client's words, which lead there: taken
    assert check_request_paths(parse_request(make_request(tmp_path, output_dir=str(tmp_path / "lnk")), capabilities()))


def test_an_audio_input_soundfile_cannot_read_stays_the_jobs_error(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not a wave at all" * 10)
    for name, extra in (("existing_mix", {}), ("take", {"protocol": 2, "regenerate": [0.5, 1]})):
        request = check_request_paths(parse_request(make_request(tmp_path, **{name: str(garbage), **extra})))
        assert getattr(request, name) == str(garbage)


def test_a_take_whose_channels_make_the_stem_too_big_is_refused(tmp_path):
    """The stem has the take's channels: 80 s at 192 kHz in wav32f is 58.6 MiB a channel, so two
    channels fit in 128 MiB and three do not."""
    request = make_request(tmp_path, protocol=2, sample_rate=192000, format="wav32f", regenerate=[10, 20])
    request["region"] = {"video": "/v.mp4", "file_in": 0, "file_out": 80}
    two = check_request_paths(parse_request({**request, "take": write_sound(tmp_path / "two.wav", 8000, 2, 80)}))
    assert two.region.project_duration == 80
    three = write_sound(tmp_path / "three.wav", 8000, 3, 80)
    with pytest.raises(RequestError) as e:
        check_request_paths(parse_request({**request, "take": three}))
    # at the lowest rate there is no lower one to offer
    seven = write_sound(tmp_path / "seven.wav", 8000, 7, 1)
    low = {**request, "sample_rate": 8000, "region": {"video": "/v.mp4", "file_in": 0, "file_out": 600}}
    with pytest.raises(RequestError, match="a job writes at most 128 MiB. Choose wav24, a region of at most"):
        check_request_paths(parse_request({**low, "take": seven}))
    assert ("The stem would be 176 MiB (80.0 s at 192000 Hz in wav32f, 3 channels like the take "
            f"'{three}'); a job writes at most 128 MiB. Choose a lower sample_rate, wav24, a region of at most 58.2 s on the "
            "timeline, or bounce the take with fewer channels.") in e.value.message


def test_a_take_too_big_to_hold_in_memory_is_refused_by_the_part_that_is_read(tmp_path):
    """The engine decodes the take's channels as 32-bit floats from take_offset for the stem's
    length. A sparse WAV (8 channels at 192 kHz, 40 000 001 frames: 610 MiB on disk, 1221 MiB
    decoded, a few KB of disk used) is refused when all of it is read, accepted when only 150 s
    (879 MiB) is, wherever they start (the part before take_offset was read too)."""
    import numpy as np
    import soundfile as sf

    take = tmp_path / "long.wav"
    with sf.SoundFile(str(take), "w", 192000, 8, "PCM_16") as f:
        f.seek(40_000_000)
        f.write(np.zeros((1, 8), np.int16))
    assert sf.info(str(take)).frames * 8 * 4 > 2**30  # MAX_TAKE_DECODED_BYTES
    request = make_request(tmp_path, protocol=2, sample_rate=8000, take=str(take), regenerate=[100, 110])
    request["region"] = {"video": "/v.mp4", "file_in": 0, "file_out": 300}
    with pytest.raises(RequestError) as e:
        check_request_paths(parse_request(request))
    assert (f"take '{take}' would fill 1221 MiB of memory (208.3 s of 8 channels at 192000 Hz as 32-bit floats: "
            "the engine reads it from take_offset for the stem's length); at most 1024 MiB is read") in e.value.message
    request["region"] = {"video": "/v.mp4", "file_in": 0, "file_out": 150}
    assert check_request_paths(parse_request(request)).take == str(take)
    request["take_offset"] = 58.0  # 150 s from there, not 208 s
    assert check_request_paths(parse_request(request)).take_offset == 58.0


@pytest.mark.parametrize("region, words", [
    ({"project_start": 1e17}, "region.project_start = 1e+17 is outside 0 .. 604800"),
    ({"project_start": 604800.0, "project_end": 604801.0}, "region.project_end = 604801 is outside 0 .. 604800"),
    ({"file_in": 1e17, "file_out": 1e17 + 4}, "region.file_in = 1e+17 is outside 0 .. 604800"),
    ({"project_start": 604799.0}, "The stem would end at 604803 s of the project (region.project_start 604799 + 4 s)"),
])
def test_times_are_bounded_so_the_stem_cannot_round_away(tmp_path, region, words):
    """At 1e17 s a float's step is 16 s: start + 4 s of picture was start again, and a stem of
    0 s was accepted. Project and file times are at most MAX_TIMELINE_SECONDS (7 days)."""
    request = make_request(tmp_path)
    request["region"] = {"video": "/v.mp4", "file_in": 0.0, "file_out": 4.0, **region}
    with pytest.raises(RequestError) as e:
        parse_request(request)
    assert words in e.value.message
    request["region"] = {"video": "/v.mp4", "file_in": 604796.0, "file_out": 604800.0, "project_start": 604796.0}
    assert parse_request(request).region.project_duration == 4.0


def test_a_picture_region_time_is_long_enough_in_the_pictures_own_time(tmp_path):
    """At playrate 0.25 a span of 0.3 s of the stem is 0.075 s of picture, which no frame of the
    8 fps features fell in: it was accepted, and the picture region applied to nothing."""
    request = make_request(tmp_path, protocol=2, picture_region=[0, 0, 0.5, 0.5], picture_region_time=[1.0, 1.3])
    request["region"].update(playrate=0.25, project_end=34.0)  # 1 s of picture over 4 s of timeline
    with pytest.raises(RequestError) as refused:
        parse_request(request)
    assert "picture_region_time is 0.300 s of the stem, 0.075 s of the picture, which plays at another speed" in \
        refused.value.message
    assert parse_request({**request, "picture_region_time": [1.0, 1.7]}).picture_region_time == (1.0, 1.7)


def test_an_invisible_negative_or_previous_caption_counts_as_none(tmp_path):
    """A negative caption of only invisible characters counted as given: it turned off the
    previous captions' fallback, and the track was steered away from the empty caption."""
    request = parse_request({**make_request(tmp_path), "negative_caption": "\u200b ",
                             "previous_captions": ["rain", "\ufeff", "wind\u200b"]})
    assert request.negative_caption == "" and request.previous_captions == ("rain", "", "wind\u200b")


def test_a_null_negative_caption_is_none_as_a_stems_metadata_says_it(tmp_path):
    """A stem's metadata says "negative_caption": null for none; a request made again from it was refused."""
    assert parse_request({**make_request(tmp_path), "negative_caption": None}).negative_caption == ""
    with pytest.raises(RequestError, match="negative_caption must be text"):
        parse_request({**make_request(tmp_path), "negative_caption": 0})


def test_the_documented_methods_are_the_registrys_public_ones():
    from stepfoley.engine.guidance import public_methods
    from stepfoley.request import DOCUMENTED_METHODS

    assert DOCUMENTED_METHODS == tuple(m.name for m in public_methods())
