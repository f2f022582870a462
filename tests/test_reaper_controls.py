"""The REAPER actions that shape a new track (protocol 2): a loudness curve read from a selected
volume envelope, and a part of the picture typed in a dialog. Run under a real Lua 5.4 with the
fake reaper module against the stand-in `stepfoley send`, which validates each request with
stepfoley.request as the engine does."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")

FOLLOW = "StepFoley_Generate Foley track following selected envelope.lua"
PICTURE = "StepFoley_Generate Foley track for part of the picture.lua"
AT_0DB = -23.0  # LUFS of 0 dB on the envelope: StepFoley's stem level (engine.mixing.STEM_LUFS)


@pytest.fixture
def world(tmp_path):
    return h.make_world(tmp_path)


def gain(db: float) -> float:
    return 10 ** (db / 20)


def loudness_track(points, name="Volume", selected=True, scaling_mode=1):
    """An empty track whose envelope holds `points` [(seconds, dB, shape)]."""
    env = {"name": name, "scaling_mode": scaling_mode, "selected": selected,
           "points": [[t, gain(db) if db > -math.inf else 0.0, shape] for t, db, shape in points]}
    return {"name": "Loudness", "items": [], "envelopes": [env]}


def envelope_db(points, t: float) -> float:
    """What the fake's envelope holds at t, in dB: fader-scaled values (amplitude ** 0.25) are
    interpolated linearly, as REAPER interpolates a volume envelope's stored values."""
    raw = [(p[0], (gain(p[1]) if p[1] > -math.inf else 0.0) ** 0.25, p[2]) for p in points]
    value = raw[0][1]
    for (t0, v0, shape), nxt in zip(raw, raw[1:] + [None]):
        if t >= t0:
            value = v0
            if nxt and t < nxt[0] and shape == 0:
                value = v0 + (nxt[1] - v0) * (t - t0) / (nxt[0] - t0)
    return 20 * math.log10(value ** 4) if value > 0 else -math.inf


def curve_at(curve, t: float) -> float:
    times, dbs = zip(*curve)
    return float(np.interp(t, times, dbs))


def run(world, ts, points, answers=None, env_extra=None, video_item=None, **kw):
    sc = h.scenario(world, ts=ts, dialog=answers or h.answers(), actions=[{"script": FOLLOW}],
                    extra_tracks=[loudness_track(points, **kw)], video_item=video_item)
    return h.run_scenario(world["tmp"], sc, env_extra=env_extra)


def test_the_new_track_follows_the_selected_volume_envelope(world):
    """A ramp from -6 dB to +6 dB over 3.0-5.5 s: the request's curve is the envelope, 0 dB =
    -23 LUFS, at every point of the region (times from the region start)."""
    points = [(3.0, -6.0, 0), (5.5, 6.0, 0)]
    result = run(world, (3.0, 5.5), points)
    assert result["messages"] == []
    request = h.job_request(result)
    curve = request["loudness_curve"]
    assert request["protocol"] == 2 and curve[0][0] == 0.0 and curve[-1][0] == pytest.approx(2.5)
    for t in np.linspace(0, 2.5, 26):
        assert curve_at(curve, t) == pytest.approx(AT_0DB + envelope_db(points, 3.0 + t), abs=0.1)
    assert curve[0][1] == pytest.approx(-29.0) and curve[-1][1] == pytest.approx(-17.0)
    [track] = h.new_tracks(result, known=("Picture", "wind", "Loudness"))
    meta = h.take_meta(track["items"][0]["takes"][0])
    assert meta["loudness_curve"] == curve
    assert result["undo"] == [f'StepFoley: add Foley track "{h.CAPTION}" following the envelope']
    assert "from the drawn loudness curve" not in result["console"]  # followed (the stand-in's error: 0.0 dB)


def test_a_curve_the_take_could_not_follow_is_said(world):
    """An envelope raised to +23 dB asks for 0 LUFS, more than a stem under -1 dBTP reaches: the
    engine's metadata said how far the take stayed from it, and REAPER said nothing."""
    result = run(world, (3.0, 5.5), [(3.0, 23.0, 0), (5.5, 23.0, 0)])
    assert result["messages"] == [] and h.job_request(result)["loudness_curve"][0][1] == 0.0
    [track] = h.new_tracks(result, known=("Picture", "wind", "Loudness"))
    missed = h.take_meta(track["items"][0]["takes"][0])["engine"]["loudness_curve_error_db"]
    assert missed > 3.0  # the engine's own follow_curve, run by the stand-in on its stem
    assert (f"the new audio is {missed:.1f} dB from the drawn loudness curve (median, where it is heard): it asks for "
            "louder than the stem's peaks allow (they stay under -1 dBTP): draw the envelope lower, nearer 0 dB.") \
        in result["console"]


def test_a_stepped_envelope_becomes_a_few_points(world):
    """Square points: -12 dB until 4.0 s, then 0 dB. Flat stretches need no points between
    their ends; the step is kept within one reading (50 ms)."""
    points = [(3.0, -12.0, 1), (4.0, 0.0, 1)]
    curve = h.job_request(run(world, (3.0, 5.5), points))["loudness_curve"]
    assert len(curve) <= 6
    for t in np.linspace(0, 2.5, 51):
        if abs(t - 1.0) > 0.05:
            assert curve_at(curve, t) == pytest.approx(AT_0DB + (-12.0 if t < 1.0 else 0.0), abs=0.01)


def test_a_long_busy_envelope_stays_within_the_engines_point_limit(world):
    """A zigzag every 0.1 s over 8 s would need 161 readings; the engine takes at most 128."""
    points = [(2.0 + 0.1 * i, -10.0 if i % 2 else 3.0, 0) for i in range(81)]
    curve = h.job_request(run(world, (2.0, 10.0), points))["loudness_curve"]
    assert 100 <= len(curve) <= 128 and curve[-1][0] == pytest.approx(8.0)
    assert all(-70 <= db <= 0 for _, db in curve)


def test_a_short_dip_in_a_long_selection_survives(world):
    """-20 dB for 0.18 s (square points, 4.92-5.10 s) in a flat 30 s selection: read every 50 ms,
    the dip is there in the curve, and the flat rest needs no points."""
    points = [(3.0, 0.0, 1), (4.92, -20.0, 1), (5.10, 0.0, 1), (33.0, 0.0, 1)]
    long_picture = {"position": 2.0, "length": 32.0, "takes": [{"file": str(world["video"]), "length": 40.0}]}
    result = run(world, (3.0, 33.0), points, answers=h.answers(negatives="none"), video_item=long_picture)
    assert result["messages"] == []
    curve = h.job_request(result)["loudness_curve"]
    assert len(curve) <= 8 and curve[0][0] == 0.0 and curve[-1][0] == pytest.approx(30.0)
    for t in (1.95, 2.0, 2.05):  # the readings inside the dip (1.92-2.10 s from the start)
        assert curve_at(curve, t) == pytest.approx(AT_0DB - 20.0, abs=0.01)
    for t in np.concatenate([np.linspace(0, 1.9, 39), np.linspace(2.1, 30, 559)]):
        assert curve_at(curve, t) == pytest.approx(AT_0DB, abs=0.01)


@pytest.mark.parametrize("points, level", [
    ([(1.0, 0.0, 0), (3.0, 0.0, 0), (3.0, 6.0, 0), (5.5, 6.0, 0), (5.5, 0.0, 0), (9.0, 0.0, 0)], 6.0),
    ([(3.0, 0.0, 1), (5.5, -math.inf, 1)], 0.0)], ids=["edge points", "square to silence at the end"])
def test_an_envelope_that_changes_at_the_selections_edges_is_read_inside_them(world, points, level):
    """REAPER adds two points at each edge of a time selection when a segment inside it is
    raised; a square point may sit at its end. The last reading was taken at the end itself,
    beyond the step: the curve fell over the last 50 ms and the stem faded there."""
    curve = h.job_request(run(world, (3.0, 5.5), points))["loudness_curve"]
    assert curve[0][0] == 0.0 and curve[-1][0] == pytest.approx(2.5)
    assert all(db == pytest.approx(AT_0DB + level) for _, db in curve), curve


def test_silence_on_the_envelope_is_the_quietest_level_the_engine_takes(world):
    points = [(3.0, -math.inf, 1), (4.0, 0.0, 1)]
    curve = h.job_request(run(world, (3.0, 5.5), points))["loudness_curve"]
    assert curve[0][1] == -70.0 and curve[-1][1] == AT_0DB


@pytest.mark.parametrize("kw, env, words", [
    ({"selected": False}, {}, "Select the volume envelope to follow first"),
    ({"name": "Pan", "scaling_mode": 0}, {}, 'The selected envelope is "Pan"'),
    ({}, {"STEPFOLEY_STANDIN_PROTOCOL": "1"}, "cannot follow a loudness curve"),
], ids=["none-selected", "not-volume", "old-engine"])
def test_what_cannot_be_followed_is_explained_before_any_work(world, kw, env, words):
    result = run(world, (3.0, 5.5), [(3.0, 0.0, 0)], env_extra=env, **kw)
    assert words in result["messages"][0]["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []
    assert not list((world["proj"]).rglob("existing_mix*.wav"))  # nothing was bounced


def picture_answers(part, when=""):
    return [{"ok": True, "values": [part, when]}, *h.answers()]


def run_picture(world, ts, answers):
    sc = h.scenario(world, ts=ts, dialog=answers, actions=[{"script": PICTURE}])
    return h.run_scenario(world["tmp"], sc)


def test_part_of_the_picture_in_words_and_when(world):
    result = run_picture(world, (3.0, 5.5), picture_answers("upper right", "1-2"))
    assert result["messages"] == []
    request = h.job_request(result)
    assert request["protocol"] == 2 and request["picture_region"] == [0.5, 0, 1, 0.5]
    assert request["picture_region_time"] == [1, 2]
    assert result["dialogs"][0]["title"] == "StepFoley: part of the picture"
    [track] = h.new_tracks(result)
    assert h.take_meta(track["items"][0]["takes"][0])["picture_region"] == [0.5, 0, 1, 0.5]
    assert result["undo"] == [f'StepFoley: add Foley track "{h.CAPTION}" for part of the picture']


def test_no_picture_under_the_selection_is_said_before_the_part_of_it_is_asked_for(world):
    """The user answered which part of the picture, and when, before hearing there was none."""
    result = run_picture(world, (10.5, 11.5), picture_answers("centre"))
    [message] = result["messages"]
    assert message["message"].startswith("There is no video item under the time selection (10.500 s to 11.500 s).")
    assert result["dialogs"] == [] and h.generation_commands(result) == []


def test_times_count_from_the_selection_even_where_the_picture_starts_later(world):
    """Selection 1.0-5.0 s, picture from 2.0 s: "1.5-2.5" s into the selection is 2.5-3.5 s of
    the project, 0.5-1.5 s into the region the engine gets."""
    result = run_picture(world, (1.0, 5.0), picture_answers("centre", "1.5 - 2.5"))
    request = h.job_request(result)
    assert request["region"]["project_start"] == 2.0 and request["picture_region"] == [0.25, 0.25, 0.75, 0.75]
    assert request["picture_region_time"] == pytest.approx([0.5, 1.5])


def test_a_mistyped_part_asks_again_with_what_was_typed(world):
    answers = [{"ok": True, "values": ["the bird", ""]}, {"ok": True, "values": ["10, 20, 60, 90", ""]},
               *h.answers()]
    result = run_picture(world, (3.0, 5.5), answers)
    assert "Say which part of the picture" in result["messages"][0]["message"]
    assert result["dialogs"][1]["defaults"].split("\n") == ["the bird", ""]
    request = h.job_request(result)
    assert request["picture_region"] == pytest.approx([0.1, 0.2, 0.6, 0.9]) and "picture_region_time" not in request


def test_percentages_typed_with_their_sign_are_taken(world):
    """The field asks for "left top right bottom in %": "10%, 20%, 60%, 90%" was asked again."""
    result = run_picture(world, (3.0, 5.5), picture_answers("10%, 20%, 60%, 90%"))
    assert result["messages"] == []
    assert h.job_request(result)["picture_region"] == pytest.approx([0.1, 0.2, 0.6, 0.9])


def test_when_is_checked_in_seconds_of_picture_in_the_dialog(world):
    """A picture at playrate 2: 0.1 s of the selection is 0.2 s of picture, over the 0.16 s the
    engine needs; the dialog refused it in timeline seconds. 0.05 s (0.1 s of picture) is
    still asked again, in the dialog, with what the selection needs."""
    video_item = {"position": 2.0, "length": 4.0,
                  "takes": [{"file": str(world["video"]), "length": 10.0, "playrate": 2.0}]}
    sc = h.scenario(world, ts=(3.0, 5.5), video_item=video_item, actions=[{"script": PICTURE}],
                    dialog=[{"ok": True, "values": ["left", "0.5-0.55"]}, *picture_answers("left", "0.5-0.6")])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert message["message"].startswith("The picture region must apply for at least 0.08 s of the time selection "
                                         "(0.16 s of picture")
    assert h.job_request(result)["picture_region_time"] == pytest.approx([0.5, 0.6])


def test_a_part_of_exactly_the_smallest_size_is_taken_whatever_the_rounding(world):
    assert 0.15 - 0.10 < 0.05
    result = run_picture(world, (3.0, 5.5), picture_answers("10, 10, 15, 15", ""))
    assert result["messages"] == []
    assert h.job_request(result)["picture_region"] == pytest.approx([0.1, 0.1, 0.15, 0.15])  # the stand-in parses it


@pytest.mark.parametrize("part, when, words", [
    ("0, 0, 3, 100", "", "at least 5 % wide"),
    ("0, 0, 50, 120", "", "percentages, from 0 to 100"),
    ("left", "3-1", "start-end in seconds"),
    ("left", "4-5", "after the time selection ends"),
])
def test_impossible_parts_and_times_are_refused(world, part, when, words):
    result = run_picture(world, (3.0, 5.5), [{"ok": True, "values": [part, when]}, {"ok": False}])
    assert words in result["messages"][0]["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []


def controlled_layer(world, region_start=3.0, region_end=5.5, position=3.0):
    """A bird layer at `position` made over `region_start`-`region_end` of the default picture (at
    2 s, the file from 0 s) with a loudness curve and a part of the picture."""
    meta = {"caption": "bird", "seed": 3, "negatives": {"mode": "none", "tracks": []},
            "region": {"video": str(world["video"]), "project_start": region_start, "project_end": region_end,
                       "file_in": region_start - 2.0, "file_out": region_end - 2.0, "playrate": 1.0},
            "loudness_curve": [[0, -30], [2.5, -20]], "picture_region": [0, 0, 0.5, 1]}
    take = {"file": str(world["foley"]), "ext": {"stepfoley_metadata": json.dumps(meta)}, "name": "bird"}
    return {"name": "bird", "ext": {"stepfoley": "1"},
            "items": [{"position": position, "length": 2.5, "takes": [take], "selected": True}]}


def test_regenerate_keeps_the_curve_and_the_part_of_the_picture(world):
    sc = h.scenario(world, dialog=[{"ok": True, "values": []}], actions=[{"script": h.REGENERATE}],
                    extra_tracks=[controlled_layer(world)])
    request = h.job_request(h.run_scenario(world["tmp"], sc))
    assert request["protocol"] == 2 and request["loudness_curve"] == [[0, -30], [2.5, -20]]
    assert request["picture_region"] == [0, 0, 0.5, 1] and "picture_region_time" not in request


def test_regenerate_over_another_time_leaves_them_out_and_says_so(world):
    sc = h.scenario(world, dialog=[{"ok": True, "values": []}], actions=[{"script": h.REGENERATE}],
                    extra_tracks=[controlled_layer(world, region_start=2.0, region_end=4.5)])
    result = h.run_scenario(world["tmp"], sc)
    request = h.job_request(result)
    assert "loudness_curve" not in request and "picture_region" not in request
    assert "generating without them" in result["console"]


def test_regenerate_keeps_them_in_a_project_moved_with_its_media(world):
    """The project and its media moved to another drive: the take's metadata holds the old path
    of the same video file, and the controls were dropped as if over another picture."""
    layer = controlled_layer(world)
    meta = json.loads(layer["items"][0]["takes"][0]["ext"]["stepfoley_metadata"])
    meta["region"]["video"] = "/Volumes/OldDrive/project/" + world["video"].name
    layer["items"][0]["takes"][0]["ext"]["stepfoley_metadata"] = json.dumps(meta)
    sc = h.scenario(world, dialog=[{"ok": True, "values": []}], actions=[{"script": h.REGENERATE}],
                    extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    request = h.job_request(result)
    assert request["loudness_curve"] == [[0, -30], [2.5, -20]] and request["picture_region"] == [0, 0, 0.5, 1]
    assert "generating without them" not in result["console"]


@pytest.mark.parametrize("picture_at, layer_at, kept", [(4.0, 5.0, True), (1.5, 3.0, False)],
                         ids=["rippled-together", "picture-moved-alone"])
def test_regenerate_keeps_them_over_the_same_picture_wherever_it_now_is(world, picture_at, layer_at, kept):
    """The curve and the part of the picture count from a moment of the picture: a ripple edit that
    moved the picture and the layer 2 s later keeps them (they were dropped, the layer no longer at
    its old time); the picture alone moved 0.5 s earlier puts the layer over other frames, which
    drops them (they were kept, the layer at its old time)."""
    video_item = {"position": picture_at, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 10.0}]}
    sc = h.scenario(world, video_item=video_item, dialog=[{"ok": True, "values": []}],
                    actions=[{"script": h.REGENERATE}], extra_tracks=[controlled_layer(world, position=layer_at)])
    result = h.run_scenario(world["tmp"], sc)
    request = h.job_request(result)
    assert request["region"]["file_in"] == (1.0 if kept else 1.5)
    assert ("loudness_curve" in request, "picture_region" in request) == (kept, kept)
    assert ("generating without them" in result["console"]) == (not kept)


@pytest.mark.parametrize("script", [h.REPLACE, h.SOUND_LIKE])
def test_replace_and_sound_like_keep_the_curve_and_the_part_of_the_picture(world, script):
    dialog = [] if script == h.REPLACE else [{"ok": True, "values": []}]
    # (sound like: no second item selected, so the recording is picked as a file)
    sc = h.scenario(world, dialog=dialog, actions=[{"script": script}], extra_tracks=[controlled_layer(world)],
                    file_answers=[str(world["foley"])])
    result = h.run_scenario(world["tmp"], sc)
    request = h.job_request(result)
    assert request["protocol"] == 2 and request["loudness_curve"] == [[0, -30], [2.5, -20]], result["messages"]
    assert request["picture_region"] == [0, 0, 0.5, 1]


def test_a_repair_keeps_the_part_of_the_picture_and_a_later_regenerate_the_curve_too(world):
    """The engine takes no loudness curve with a take (the kept take sets the level), but a
    repaired take keeps the curve in its metadata: regenerated later over the same time, it
    follows the curve again. The part of the picture goes with the repair itself."""
    sc = h.scenario(world, ts=(3.5, 4.0), dialog=[{"ok": True, "values": []}, {"ok": True, "values": []}],
                    actions=[{"script": h.REPAIR}, {"script": h.REGENERATE, "after_idle": True}],
                    extra_tracks=[controlled_layer(world)])
    result = h.run_scenario(world["tmp"], sc)
    repair, regenerate = h.job_requests(result)
    assert repair["regenerate"] == [0.5, 1.0] and repair["picture_region"] == [0, 0, 0.5, 1]
    assert "loudness_curve" not in repair and "the curve stays with the new take" in result["console"]
    assert regenerate["loudness_curve"] == [[0, -30], [2.5, -20]] and regenerate["picture_region"] == [0, 0, 0.5, 1]


def test_an_extend_keeps_the_part_of_the_picture(world):
    sc = h.scenario(world, ts=(5.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                    extra_tracks=[controlled_layer(world)])
    request = h.job_request(h.run_scenario(world["tmp"], sc))
    assert request["regenerate"] == [2.0, 4.0] and request["picture_region"] == [0, 0, 0.5, 1]
    assert "loudness_curve" not in request


def test_a_trimmed_item_is_continued_without_controls_that_no_longer_fit(world):
    """Made over 3.0-5.5 s with its part of the picture from 1.5 to 2.5 s and a curve to 2.5 s,
    then trimmed to 2 s: the repair sends neither (the engine would refuse times past the stem's
    end), stores no curve, says so, and a later Regenerate works."""
    layer = controlled_layer(world)
    meta = {**json.loads(layer["items"][0]["takes"][0]["ext"]["stepfoley_metadata"]), "picture_region_time": [1.5, 2.5]}
    layer["items"][0]["takes"][0]["ext"]["stepfoley_metadata"] = json.dumps(meta)
    layer["items"][0]["length"] = 2.0
    sc = h.scenario(world, ts=(3.5, 4.0), dialog=[{"ok": True, "values": []}] * 2, extra_tracks=[layer],
                    actions=[{"script": h.REPAIR}, {"script": h.REGENERATE, "after_idle": True}])
    result = h.run_scenario(world["tmp"], sc)
    repair, regenerate = h.job_requests(result)
    assert result["messages"] == [] and repair["regenerate"] == [0.5, 1.0]
    assert not {"picture_region", "loudness_curve"} & (set(repair) | set(regenerate))
    assert "part of the picture was chosen for" in result["console"] and "another time than" in result["console"]
