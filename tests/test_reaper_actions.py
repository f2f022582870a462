"""The REAPER actions, run under a real Lua 5.4 with the fake reaper module
(tests/reaper_fake/) against the stand-in `stepfoley send` (same arguments, status file,
cancel file and exit codes as docs/osc-protocol.md; it validates requests with
bridge.protocol). The same cases against a real `stepfoley serve` are in
tests/test_reaper_engine.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")

SR = h.SR
CAPTION = h.CAPTION
answers = h.answers
scenario = h.scenario
job_request = h.job_request
new_tracks = h.new_tracks
assert_project_untouched = h.assert_project_untouched


@pytest.fixture
def world(tmp_path):
    return h.make_world(tmp_path)


def assert_exact_placement(item, start, end):
    # "to the sample": the item starts and ends on exactly the region's samples
    assert round(item["position"] * SR) == h.frames(start, SR) and abs(item["position"] - start) < 1e-9
    assert abs(item["length"] - (end - start)) < 1e-9
    assert round((item["position"] + item["length"]) * SR) == h.frames(end, SR)


def test_generate_track_for_time_selection(world):
    result = h.run_scenario(world["tmp"], scenario(world))
    assert result["messages"] == []
    # the dialog separates values with newlines, so captions may hold commas
    assert result["dialogs"][0]["separator"] == "\n"
    [track] = new_tracks(result)
    assert result["tracks"][2] is not None and result["tracks"][2]["name"] == CAPTION  # after the last Foley track
    assert track["ext"] == {"stepfoley": "1"}
    [item] = track["items"]
    assert_exact_placement(item, 3.0, 5.5)
    [take] = item["takes"]
    meta = h.take_meta(take)
    assert meta["caption"] == CAPTION and meta["seed"] == 7
    # nothing typed: the request leaves the guidance fields out, the engine used its model's defaults
    request = job_request(result)
    assert not {"method", "alpha", "beta", "steps"} & set(request) and not {"method", "alpha", "steps"} & set(meta)
    assert {k: meta["engine"][k] for k in h.STANDIN_DEFAULTS} == h.STANDIN_DEFAULTS
    assert meta["region"] == {"video": str(world["video"]), "file_in": 1.0, "file_out": 3.5, "playrate": 1.0,
                              "project_start": 3.0, "project_end": 5.5}
    assert meta["previous_captions"] == ["wind in the trees"]
    assert meta["negatives"] == {"mode": "layers", "tracks": ["wind"]}
    assert meta["engine"]["model"] == "standin"
    assert CAPTION in item["notes"] and "seed 7" in item["notes"] and "alpha default (3.0)" in item["notes"]
    assert take["markers"] == [{"name": "seed 7", "position": 0}]
    # the stem: in the project's StepFoley folder, exactly the region long
    stem = Path(take["source_file"])
    assert stem.parent == world["proj"] / "StepFoley" and meta["stem_path"] == str(stem)
    wave, sr = sf.read(stem)
    assert sr == SR and len(wave) == h.frames(2.5)
    expected = 0.25 * np.sin(2 * np.pi * (100.0 + 7) * np.arange(len(wave)) / SR)
    np.testing.assert_allclose(wave, expected, atol=2 / 2**23)
    # the bounce: the Foley track over the region, master FX bypassed (gain 0.5 not applied)
    mix, mix_sr = sf.read(request["existing_mix"])
    assert mix_sr == SR and mix.shape == (h.frames(2.5), 2)
    src = world["foley_samples"][h.frames(3.0):h.frames(5.5)]
    np.testing.assert_allclose(mix[:, 0], src, atol=1 / 2**22)
    np.testing.assert_allclose(mix[:, 1], src, atol=1 / 2**22)
    assert result["undo"] == [f'StepFoley: add Foley track "{CAPTION}"']
    assert_project_untouched(result)
    assert [t["selected"] for t in result["tracks"][:2]] == [False, False]
    assert json.loads(result["extstate"]["StepFoley"]["running_status_files"]) == []


def test_no_time_selection(world):
    result = h.run_scenario(world["tmp"], scenario(world, ts=(0.0, 0.0)))
    [msg] = result["messages"]
    assert "time selection" in msg["message"]
    assert result["dialogs"] == [] and result["exec"] == [] and new_tracks(result) == []


def test_engine_defaults_are_shown_and_typed_values_sent(world):
    """Issue 10 item 2: the dialog shows the engine's model defaults and methods (the stand-in's
    alpha 3, not a copy of 4.5), sends only what was typed and remembers only that."""
    sc = scenario(world, dialog=answers(alpha="5", method="independent"), actions=[
        {"script": h.MAIN}, {"script": h.MAIN, "after_idle": True}])
    sc["dialog_answers"] += [{"ok": False}]
    result = h.run_scenario(world["tmp"], sc)
    first, second = result["dialogs"]
    captions = dict(zip(["caption", "method", "alpha", "beta", "seed", "steps", "negatives"], first["captions"]))
    assert captions["alpha"] == "Alpha: text guidance (empty = 3)"
    assert captions["steps"] == "Steps (empty = 3)"
    assert captions["method"].startswith("Method (empty = nag; or independent / negative_prompt / nag / ")
    assert "reference" not in captions["method"]  # the reference method has its own action
    assert captions["negatives"] == "Negatives: layers (wind) / selection (0 items) / none"
    assert first["title"] == "StepFoley: generate Foley track (model standin on cpu)"
    [request] = job_requests = h.job_requests(result)
    assert request["alpha"] == 5.0 and request["method"] == "independent" and "beta" not in request
    assert len(job_requests) == 1
    # the second dialog: the last caption and only the values the user typed
    assert second["defaults"].split("\n") == [CAPTION, "independent", "5", "", "", "", ""]
    assert json.loads(result["extstate"]["StepFoley"]["last_params"]) == {"method": "independent", "alpha": "5"}
    assert json.loads(result["extstate"]["StepFoley"]["caption_history"]) == [CAPTION]


def test_a_caption_with_an_apostrophe_keeps_the_next_dialogs_fields_in_place(world):
    """REAPER reads GetUserInputs' initial text with its own quote rules (the fake does as
    REAPER): the remembered "man's footsteps" is shown with a typographic apostrophe, so the
    fields after it keep their own text, and what comes back is sent with the user's apostrophe."""
    caption = "man's footsteps (gravel)"
    sc = scenario(world, dialog=answers(caption=caption, method="independent", alpha="5"), actions=[
        {"script": h.MAIN}, {"script": h.MAIN, "after_idle": True}])
    sc["dialog_answers"] += answers(caption=None, method=None, alpha=None, seed="8")
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    second = result["dialogs"][1]
    assert second["shown"] == ["man\u2019s footsteps (gravel)", "independent", "5", "", "", "", ""]
    first_request, second_request = h.job_requests(result)
    assert first_request["caption"] == second_request["caption"] == caption
    assert second_request["method"] == "independent" and second_request["alpha"] == 5.0 and second_request["seed"] == 8


def test_an_answer_reaper_cut_short_is_not_sent(world):
    """GetUserInputs hands a script at most 1,023 bytes, every field together: a caption within
    the engine's 1,000 characters but not within those bytes is said to be cut, never sent
    shortened with the later fields fallen back to defaults."""
    caption = "砂利の上を歩く足音" * 40  # 360 characters, 1,080 bytes
    sc = scenario(world, dialog=answers(caption=caption, method="independent", negatives="none") + [{"ok": False}])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "at most 1023 bytes" in message["message"] and "was cut" in message["message"]
    assert h.generation_commands(result) == [] and new_tracks(result) == []
    shown_again = result["dialogs"][1]["shown"][0]
    assert caption.startswith(shown_again) and len(shown_again.encode()) <= 1023  # whole characters only


def test_dialog_without_a_running_engine_invents_no_defaults(world):
    result = h.run_scenario(world["tmp"], scenario(world), env_extra={"STEPFOLEY_STANDIN": "down"})
    [dialog] = result["dialogs"]
    assert "Alpha: text guidance (empty = the model's default)" in dialog["captions"]
    assert "Method (empty = the model's default)" in dialog["captions"]
    assert dialog["title"] == "StepFoley: generate Foley track (engine NOT running: defaults unknown)"


def test_older_settings_defaults_are_forgotten(world):
    # before 0.3.0 the Settings persisted alpha 4.5 etc.: the model's defaults apply now
    extstate = h.extstate(world, alpha="4.5", beta="1.5", steps="25", method="nag")
    result = h.run_scenario(world["tmp"], scenario(world, extstate=extstate))
    assert not {"method", "alpha", "beta", "steps"} & set(job_request(result))
    assert not {"method", "alpha", "beta", "steps"} & set(result["extstate"]["StepFoley"])


def test_a_long_caption_gives_a_name_hint_the_engine_takes(world):
    """Captions may have 1000 characters, the stem's name hint at most 200 (the engine's
    bound): the hint is the caption's first 200 characters, never half of a multi-byte one."""
    caption = "pas lourds sur gravier mouillé, " + "é" * 150 + " — " + "足音" * 40  # 265 characters
    result = h.run_scenario(world["tmp"], scenario(world, dialog=answers(caption=caption)))
    assert result["messages"] == []
    request = job_request(result)
    assert request["caption"] == caption and request["name_hint"] == caption[:200]
    assert len(new_tracks(result)) == 1


def test_caption_history_keeps_the_latest_first(world):
    history = json.dumps(["rain", CAPTION, "wind"])
    extstate = h.extstate(world, caption_history=history)
    result = h.run_scenario(world["tmp"], scenario(world, extstate=extstate))
    assert result["dialogs"][0]["defaults"].split("\n")[0] == "rain"  # the last caption is offered
    assert json.loads(result["extstate"]["StepFoley"]["caption_history"]) == [CAPTION, "rain", "wind"]


def test_no_video_under_time_selection(world):
    result = h.run_scenario(world["tmp"], scenario(world, ts=(10.5, 11.5)))
    [msg] = result["messages"]
    assert "no video item" in msg["message"] and "10.500" in msg["message"]
    assert result["exec"] == [] and new_tracks(result) == [] and result["renders"] == []


def test_a_picture_named_in_another_encoding_is_refused_before_the_dialog(world):
    """A video file named in Latin-1 (on Linux) was refused only once the dialog was answered and
    the layers bounced, though its name is known from the start."""
    import os

    video = world["tmp"] / os.fsdecode(b"caf\xe9.mp4")  # the byte 0xE9, as a Latin-1 system names "café"
    video.write_bytes(b"not decoded")
    item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(video), "length": 10.0}]}
    result = h.run_scenario(world["tmp"], scenario(world, video_item=item))
    [msg] = result["messages"]
    assert msg["message"].startswith(f'"{world["tmp"]}/caf?.mp4" is not UTF-8 text'), msg
    assert result["dialogs"] == [] and result["renders"] == [] and result["exec"] == [] and new_tracks(result) == []


def two_cuts(world, how: str) -> tuple[dict, Path]:
    """A scenario with two video items over all of the selection: the old cut first (the top
    track, which wins ties) but silenced `how`, the new cut after it. Returns it and the new cut."""
    old, new = world["tmp"] / "old_cut.mp4", world["tmp"] / "new_cut.mp4"
    for cut in (old, new):
        cut.write_bytes(b"not decoded")
    old_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(old), "length": 10.0}]}
    new_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(new), "length": 10.0}]}
    sc = scenario(world, video_item=old_item)
    picture = sc["tracks"][0]
    if how == "lane-silent":  # fixed lanes: the old cut on lane 0, which does not play; the new on lane 1
        picture.update(freemode=2, items=[{**old_item, "lane_plays": 0}, {**new_item, "lane_plays": 1}])
        return sc, new
    if how == "hidden-lane":  # the track had fixed lanes; the old cut was left on a lane now hidden
        old_item["hidden_lane"] = True
    elif how == "item-muted":
        old_item["mute"] = True
    elif how == "track-muted":
        picture["mute"] = True
    elif how == "folder-muted":  # the old cut's track closes a muted folder
        picture["folderdepth"] = -1
        sc["tracks"].insert(0, {"name": "Old cuts", "mute": True, "folderdepth": 1, "items": []})
    sc["tracks"].insert(sc["tracks"].index(picture) + 1, {"name": "Picture v2", "items": [new_item]})
    return sc, new


@pytest.mark.parametrize("how", ["item-muted", "track-muted", "folder-muted", "lane-silent", "hidden-lane"])
def test_the_picture_that_plays_wins_over_a_silent_one(world, how):
    """An old cut left above the new one, silenced (item or track muted, in a muted folder, on a
    lane that does not play), covers the selection just as much: the new cut, the one that
    plays, is the picture."""
    sc, new = two_cuts(world, how)
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert job_request(result)["region"]["video"] == str(new)


def test_a_picture_on_a_muted_track_is_still_used(world):
    # the picture's only copy on a muted track (its sound is not wanted): it is the picture
    sc = scenario(world)
    sc["tracks"][0]["mute"] = True
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert job_request(result)["region"]["video"] == str(world["video"]) and len(new_tracks(result)) == 1


def test_start_offset_playrate_and_section(world):
    # item at 10 s, plays the section 1.0 .. 9.0 of the file from 0.5 s into it at 1.5x
    video_item = {"position": 10.0, "length": 4.0, "takes": [{
        "file": str(world["video"]), "length": 20.0, "section": {"offs": 1.0, "len": 8.0, "rev": False},
        "startoffs": 0.5, "playrate": 1.5}]}
    result = h.run_scenario(world["tmp"], scenario(world, ts=(11.0, 13.0), video_item=video_item))
    assert result["messages"] == []
    region = job_request(result)["region"]
    assert region["file_in"] == pytest.approx(1.0 + 0.5 + 1.0 * 1.5, abs=1e-12)
    assert region["file_out"] == pytest.approx(1.0 + 0.5 + 3.0 * 1.5, abs=1e-12)
    assert region["playrate"] == 1.5 and region["project_start"] == 11.0 and region["project_end"] == 13.0
    [track] = new_tracks(result)
    assert_exact_placement(track["items"][0], 11.0, 13.0)
    assert len(sf.read(track["items"][0]["takes"][0]["source_file"])[0]) == h.frames(2.0)


def test_region_running_past_the_video_end(world):
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 5.0,
                                                                "startoffs": 1.0}]}
    # picture ends at 2 + (5 - 1) = 6 s although the item runs to 10 s
    result = h.run_scenario(world["tmp"], scenario(world, ts=(4.25, 9.0), video_item=video_item))
    assert result["messages"] == []
    assert "you see the video item picture.mp4 over only 4.250 s to 6.000 s of the range" in result["console"]
    region = job_request(result)["region"]
    assert region["file_out"] == pytest.approx(5.0) and region["project_end"] == pytest.approx(6.0)
    [track] = new_tracks(result)
    assert_exact_placement(track["items"][0], 4.25, 6.0)


def looped_picture(world, position=0.0, length=30.0, **take):
    """The 10 s film on an item that loops it (B_LOOPSRC): REAPER plays it again from its start."""
    return {"position": position, "length": length, "loopsrc": 1,
            "takes": [{"file": str(world["video"]), "length": 10.0, **take}]}


def test_a_looped_picture_in_a_later_pass_is_the_film_from_its_start(world, tmp_path):
    """Film A looped over 0-30 s on the top track, film B below: at 12-16 s REAPER shows A at
    2-6 s. The picture used to end with A's source, so B was sent without a word."""
    other = tmp_path / "other.mp4"
    other.write_bytes(b"not decoded by the stand-in")
    below = {"name": "Picture B", "items": [{"position": 0.0, "length": 30.0,
                                             "takes": [{"file": str(other), "length": 30.0}]}]}
    result = h.run_scenario(world["tmp"], scenario(world, ts=(12.0, 16.0), video_item=looped_picture(world),
                                                   extra_tracks=[below]))
    assert result["messages"] == [] and "over only" not in result["console"]
    region = job_request(result)["region"]
    assert region["video"] == str(world["video"])
    assert (region["file_in"], region["file_out"]) == (pytest.approx(2.0), pytest.approx(6.0))
    assert (region["project_start"], region["project_end"]) == (12.0, 16.0)
    [track] = new_tracks(result, known=("Picture", "Picture B", "wind", "Music"))
    assert_exact_placement(track["items"][0], 12.0, 16.0)


@pytest.mark.parametrize("item, ts, made, file_span", [
    ({}, (8.0, 14.0), (8.0, 10.0), (8.0, 10.0)),                       # across the loop point
    ({"length": 6.0, "startoffs": 8.0}, (0.0, 6.0), (0.0, 2.0), (8.0, 10.0)),   # the film's end, then its start
    ({"length": 6.0, "startoffs": 8.0}, (2.0, 6.0), (2.0, 6.0), (0.0, 4.0)),    # the second pass alone
], ids=["across-the-loop", "offset-to-the-loop", "second-pass"])
def test_a_looped_picture_is_made_one_pass_at_a_time(world, item, ts, made, file_span):
    """A request holds one stretch of the film; where the loop starts it again, the rest is a second
    pass (said in the console, as for a picture that ends). It used to be cut at the source's end
    of the item's first pass, or refused there ("no video item")."""
    video_item = looped_picture(world, length=item.get("length", 30.0),
                                **{k: v for k, v in item.items() if k != "length"})
    result = h.run_scenario(world["tmp"], scenario(world, ts=ts, video_item=video_item))
    assert result["messages"] == []
    region = job_request(result)["region"]
    assert (region["project_start"], region["project_end"]) == (pytest.approx(made[0]), pytest.approx(made[1]))
    assert (region["file_in"], region["file_out"]) == (pytest.approx(file_span[0]), pytest.approx(file_span[1]))
    clipped = made != ts
    assert ("or the looped picture starts again" in result["console"]) == clipped


def test_times_in_messages_are_the_rulers_and_times_sent_are_the_projects(world):
    """A project starting at 01:00:00:00 (Project settings > Project start time): the ruler shows
    3600 s more than the API's project time. The console said 4.250 s for what the user reads as 3604.250 s."""
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 5.0,
                                                                "startoffs": 1.0}]}
    result = h.run_scenario(world["tmp"], scenario(world, ts=(4.25, 9.0), video_item=video_item, time_offset=3600.0))
    assert "you see the video item picture.mp4 over only 3604.250 s to 3606.000 s of the range" in result["console"]
    region = job_request(result)["region"]
    assert (region["project_start"], region["project_end"]) == (4.25, pytest.approx(6.0))
    [track] = new_tracks(result)
    assert_exact_placement(track["items"][0], 4.25, 6.0)
    result = h.run_scenario(world["tmp"], scenario(world, ts=(12.0, 14.0), time_offset=3600.0))
    assert "(3612.000 s to 3614.000 s)" in result["messages"][0]["message"]


def test_stretch_markers_are_refused(world):
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 10.0,
                                                                "stretch_markers": 2}]}
    result = h.run_scenario(world["tmp"], scenario(world, video_item=video_item))
    [msg] = result["messages"]
    assert "stretch markers" in msg["message"] and result["exec"] == []


def test_engine_not_running(world):
    result = h.run_scenario(world["tmp"], scenario(world), env_extra={"STEPFOLEY_STANDIN": "down"})
    [msg] = result["messages"]
    assert "No StepFoley engine" in msg["message"] and "stepfoley serve" in msg["message"]
    # asked again after the dialog, before anything is bounced or sent
    assert result["renders"] == [] and h.generation_commands(result) == []
    assert new_tracks(result) == [] and result["undo"] == []
    assert result["elapsed_s"] < 10  # gave up at once, no hang
    assert json.loads(result["extstate"]["StepFoley"].get("running_status_files", "[]")) == []
    assert_project_untouched(result)


def run_with_client(world, name: str, shell: str) -> tuple[Path, dict]:
    """Generates with a client that is this shell script (and a 1 s start timeout)."""
    client = world["tmp"] / name
    client.write_text("#!/bin/sh\n" + shell)
    client.chmod(0o755)
    sc = scenario(world, extstate={"StepFoley": {"client": str(client), "start_timeout_s": "1"}})
    return client, h.run_scenario(world["tmp"], sc)


def test_client_that_never_starts(world):
    silent, result = run_with_client(world, "stepfoley", "exit 0\n")
    [msg] = result["messages"]
    assert "did not start" in msg["message"] and str(silent) in msg["message"]
    assert new_tracks(result) == [] and result["dialogs"] == [] and result["renders"] == []


def test_an_engine_query_given_up_on_leaves_no_file_behind(world):
    # a client that writes a first status and is heard of no more: the query times out, and
    # its status file (engine-*.json) used to stay in the queries folder for ever
    record = world["tmp"] / "queries.txt"
    _, result = run_with_client(world, "stepfoley", (
        'while [ $# -gt 0 ]; do\n'
        f'  if [ "$1" = "--status" ]; then echo "$2" >> "{record}"; '
        "echo '{\"state\": \"queued\", \"exit_code\": null}' > \"$2\"; fi\n"
        '  shift\n'
        'done\n'
        'exit 0\n'))
    [msg] = result["messages"]
    assert "did not start" in msg["message"]
    queries = record.read_text().splitlines()
    assert queries and all(Path(q).name.startswith("engine-") and not Path(q).exists() for q in queries)


LATE_CLIENT = """\
status=""
while [ $# -gt 0 ]; do
  if [ "$1" = "--status" ]; then status="$2"; fi
  shift
done
[ -n "$status" ] || exit 0
echo "$status" >> "{record}"
if [ ! -e "{first}" ]; then
  : > "{first}"
  # the first query's answer comes once the action stopped waiting (2 s on REAPER's clock)
  while [ "$(cut -d. -f1 "$STEPFOLEY_FAKE_CLOCK")" -lt 2 ]; do sleep 0.05; done
fi
echo '{{"state": "error", "exit_code": 3, "error": {{"code": "engine_not_running", "message": "No engine."}}}}' > "$status"
echo "$status" >> "{written}"
"""


@pytest.mark.parametrize("how", ["given-up", "terminated"])
def test_an_engine_answer_that_comes_too_late_is_removed_by_the_next_query(world, how):
    """The client answers an engine check after the action stopped waiting for it (it gave up
    after the start timeout, or the user terminated it): the file is written after the action
    looked for it, and stayed in the queries folder for ever. The next engine check removes it,
    and never a file StepFoley did not ask for."""
    record, written, first = (world["tmp"] / name for name in ("queries.txt", "written.txt", "first"))
    client = world["tmp"] / "stepfoley"
    client.write_text("#!/bin/sh\n" + LATE_CLIENT.format(record=record, written=written, first=first))
    client.chmod(0o755)
    queries = world["tmp"] / "reaper resource" / "StepFoley" / "queries"
    queries.mkdir(parents=True)
    foreign = queries / "engine-20260101-000000-00000000.json"  # named like StepFoley's, not made by it
    foreign.write_text("{}")
    actions = [{"script": h.MAIN}, {"script": h.STATUS, "at_s": 3.0}]
    if how == "terminated":
        actions.insert(1, {"terminate": h.MAIN, "at_s": 0.5})
    sc = scenario(world, actions=actions, extstate={"StepFoley": {"client": str(client), "start_timeout_s": "1"}})
    result = h.run_scenario(world["tmp"], sc)
    late, second = record.read_text().splitlines()
    assert written.read_text().splitlines() == [late, second]  # the late answer was written
    assert not Path(late).exists() and not Path(second).exists()
    assert foreign.exists()
    assert json.loads(result["extstate"]["StepFoley"]["abandoned_queries"]) == []
    messages = [m["message"] for m in result["messages"]]
    assert ("did not start" in messages[0]) == (how == "given-up")
    assert "NOT answering" in messages[-1]

def test_a_client_that_fails_shows_its_own_error_before_any_bounce(world):
    # a Python without StepFoley: ExecProcess(-2) shows nothing, so its error must be fetched
    broken, result = run_with_client(world, "python3", "echo 'No module named stepfoley' >&2\nexit 1\n")
    [msg] = result["messages"]
    assert "No module named stepfoley" in msg["message"] and "exit code 1" in msg["message"]
    assert f'"{broken}" "-m" "stepfoley" "send" "--help"' in msg["message"]
    assert result["dialogs"] == [] and result["renders"] == [] and h.generation_commands(result) == []
    assert result["elapsed_s"] < 5


def test_missing_client_path(world):
    sc = scenario(world, extstate={"StepFoley": {"client": "/nowhere/stepfoley"}})
    result = h.run_scenario(world["tmp"], sc)
    [msg] = result["messages"]
    assert "/nowhere/stepfoley" in msg["message"] and "Settings" in msg["message"]
    assert result["exec"] == [] and new_tracks(result) == []


def test_every_engine_query_runs_in_the_background(world):
    """Engine status and the engine check before a dialog start the client with ExecProcess(-2)
    and poll its answer: REAPER never waits for a process (the old status action blocked up to 8 s)."""
    sc = scenario(world, actions=[{"script": h.STATUS}, {"script": h.MAIN, "after_idle": True}])
    result = h.run_scenario(world["tmp"], sc)
    assert len(result["exec"]) == 3  # status query, query before the dialog, the generation
    assert result["exec_timeouts"] == [-2, -2, -2]
    assert '"send" "--engine-status" "--status"' in result["exec"][0]


def test_cancel_mid_generation(world):
    sc = scenario(world, dialog=answers(steps="40"),
                  actions=[{"script": h.MAIN}, {"script": h.CANCEL, "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert "cancel" in result["console"]
    [msg] = result["messages"]
    assert "cancelled" in msg["message"].lower()
    assert new_tracks(result) == [] and result["undo"] == []
    status = json.loads(h.status_path(result).read_text())
    assert status["state"] == "cancelled" and 1 <= status["step"] < 40
    assert_project_untouched(result)


@pytest.mark.parametrize("ts, words", [((3.0, 3.02), "The selection covers 0.02 s of picture; StepFoley needs at "
                                                     "least 1 s"),
                                       ((9.5, 11.0), "Only 0.50 s of the selection has picture under it")])
def test_a_selection_with_too_little_picture_is_said_before_the_dialog(world, ts, words):
    result = h.run_scenario(world["tmp"], scenario(world, ts=ts))
    [message] = result["messages"]
    assert words in message["message"]
    assert result["dialogs"] == [] and h.generation_commands(result) == [] and result["undo"] == []
    assert "generating that part" not in result["console"]  # what is refused is not announced


def with_a_newer_cut_above(world, position, length, file_length=10.0):
    """The default scenario with another video item ("Picture v2") on a track above the picture's."""
    newer = world["tmp"] / "picture_v2.mp4"
    newer.write_bytes(b"not decoded by the stand-in")
    sc = scenario(world)
    sc["tracks"].insert(0, {"name": "Picture v2", "items": [
        {"position": position, "length": length, "takes": [{"file": str(newer), "length": file_length}]}]})
    return sc, newer


def test_the_picture_is_the_video_reaper_shows_where_two_play(world):
    """A newer cut on the track above covers 3.0-5.4 s of the 3.0-5.5 s selection; the old cut
    below covers all of it. REAPER shows the top track's video where both play, so the artist
    sees the new cut over 2.4 s of 2.5: that is the picture (it used to be the old cut, which
    covered more of the selection)."""
    sc, newer = with_a_newer_cut_above(world, 3.0, 2.4)
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert h.job_request(result)["region"]["video"] == str(newer)


def test_a_stem_too_long_for_the_engine_is_said_before_the_dialog(world):
    """At 192 kHz a 250 s selection is a 137 MiB stem, past the 128 MiB the engine writes: said
    before the dialog and any bounce, with the longest length at this rate."""
    sc = scenario(world, ts=(2.0, 252.0), video_item={"position": 0.0, "length": 300.0,
                                                     "takes": [{"file": str(world["video"]), "length": 300.0}]})
    sc["render"]["numbers"]["PROJECT_SRATE"] = 192000
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "would last 250.0 s on the timeline; at most 233.0 s can be made at once at this project's 192000 Hz" \
        in message["message"]
    assert result["dialogs"] == [] and h.generation_commands(result) == []


@pytest.mark.parametrize("project_rate, stem_rate", [(64000, 88200), (352800, 192000), (96000, 96000)])
def test_a_project_rate_the_engine_does_not_write_gets_the_next_rate_it_does(world, project_rate, stem_rate):
    """A project at 64 kHz was refused by the engine after the dialog and the bounce: the stem now
    comes at the lowest rate the engine writes above it (REAPER plays any rate), and that is said."""
    sc = scenario(world)
    sc["render"]["numbers"]["PROJECT_SRATE"] = project_rate
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    request = h.job_request(result)
    assert request["sample_rate"] == stem_rate
    assert sf.info(request["existing_mix"]).samplerate == stem_rate
    said = f"the project runs at {project_rate} Hz, a rate StepFoley does not write: the new track comes at {stem_rate} Hz"
    assert (said in result["console"]) == (project_rate != stem_rate)
    assert len(h.new_tracks(result)) == 1


def test_a_new_layer_joins_the_folder_its_earlier_layers_are_in(world):
    """The layers sit in a "FOLEY bus" folder (its volume and FX): the new track goes after the
    last of them and inside the folder, which now ends with it."""
    sc = scenario(world)
    wind = next(t for t in sc["tracks"] if t["name"] == "wind")
    sc["tracks"].insert(sc["tracks"].index(wind), {"name": "FOLEY bus", "folderdepth": 1, "vol": 0.5, "items": []})
    wind["folderdepth"] = -1
    sc["tracks"].append({"name": "Music", "items": []})
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    names = [(t["name"], t["folderdepth"]) for t in result["tracks"]]
    assert names == [("Picture", 0), ("FOLEY bus", 1), ("wind", 0), (h.CAPTION, -1), ("Music", 0)]


@pytest.mark.parametrize("archive", [False, True], ids=["last-layer-muted", "muted-archive-inside-the-bus"])
def test_a_new_layer_stays_in_the_bus_when_the_last_layer_is_muted_or_ends_a_muted_archive(world, archive):
    # the artist muted the last layer to audition the others, or the bus ends with a muted
    # archive folder: the new layer landed outside the bus, its FX and fader
    sc = scenario(world)
    wind = next(t for t in sc["tracks"] if t["name"] == "wind")
    sc["tracks"].insert(sc["tracks"].index(wind), {"name": "FOLEY bus", "folderdepth": 1, "items": []})
    if archive:
        sc["tracks"].append({"name": "Archive", "folderdepth": 1, "mute": True, "items": []})
    last = stepfoley_layer(world, "old layer", {"caption": "old layer", "seed": 1})
    last.update(folderdepth=-2 if archive else -1, mute=not archive)
    sc["tracks"].append(last)
    sc["tracks"].append({"name": "Music", "items": []})
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    names = [(t["name"], t["folderdepth"]) for t in result["tracks"]]
    assert names[-3:] == [("old layer", -1 if archive else 0), (h.CAPTION, -1), ("Music", 0)]


def test_toggling_a_folder_says_its_children_are_chosen_apart(world):
    sc = scenario(world, actions=[{"script": h.TOGGLE}])
    sc["tracks"].append({"name": "Production sound", "folderdepth": 1, "selected": True, "items": []})
    sc["tracks"].append({"name": "Dialogue", "folderdepth": -1, "items": []})
    result = h.run_scenario(world["tmp"], sc)
    assert "Production sound: a negative (its own items only: select its child tracks" in result["console"]


def test_the_picture_is_only_where_it_is_seen(world):
    """A newer cut on the track above shows over 4.0-5.0 s of the 3.0-5.5 s selection: the old
    cut below is seen longest (1.5 s), and the region is its longest stretch seen, 3.0-4.0 s,
    said in the console; a top item whose file ends early shows nothing after its end."""
    sc, _ = with_a_newer_cut_above(world, 4.0, 1.0)
    result = h.run_scenario(world["tmp"], sc)
    region = h.job_request(result)["region"]
    assert region["video"] == str(world["video"]) and (region["project_start"], region["project_end"]) == (3.0, 4.0)
    assert "over only 3.000 s to 4.000 s of the range" in result["console"]
    sc, _ = with_a_newer_cut_above(world, 3.0, 2.5, file_length=0.5)
    region = h.job_request(h.run_scenario(world["tmp"], sc))["region"]
    assert region["video"] == str(world["video"]) and (region["project_start"], region["project_end"]) == (3.5, 5.5)


def split_picture(world, first_end, second_start, second_offset, loopsrc=0):
    """The default scenario with its picture (at 2 s, the file from 0 s) split into two items:
    2 s to `first_end`, and `second_start` to 10 s playing the file from `second_offset`; both
    with "Loop source" as given."""
    take = {"file": str(world["video"]), "length": 10.0}
    sc = scenario(world, video_item={"position": 2.0, "length": first_end - 2.0, "loopsrc": loopsrc, "takes": [take]})
    sc["tracks"][0]["items"].append({"position": second_start, "length": 10.0 - second_start, "loopsrc": loopsrc,
                                     "takes": [{**take, "startoffs": second_offset}]})
    return sc


@pytest.mark.parametrize("loopsrc", [0, 1], ids=["", "loop-source"])
@pytest.mark.parametrize("first_end", [4.0, 4.01], ids=["cut", "crossfaded"])
def test_a_picture_split_into_pieces_is_one_picture(world, first_end, loopsrc):
    """The picture split at 4 s (REAPER's split, with or without its crossfade): the 3.0-5.5 s
    selection is one region over both pieces, as if the item were whole. With "Loop source" on
    (REAPER's default for imported media) too: neither piece plays its file again."""
    sc = split_picture(world, first_end, 4.0, 2.0, loopsrc)
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    region = h.job_request(result)["region"]
    assert (region["file_in"], region["file_out"], region["project_start"], region["project_end"]) == \
        (1.0, 3.5, 3.0, 5.5)
    assert "generating that part" not in result["console"]


def test_a_jump_cut_is_two_pictures(world):
    """The second piece plays the file from 5 s, not from where the first left off: they are two
    shots, and the region is the longer one's stretch (4.0-5.5 s), said in the console."""
    sc = split_picture(world, 4.0, 4.0, 5.0)
    result = h.run_scenario(world["tmp"], sc)
    region = h.job_request(result)["region"]
    assert (region["file_in"], region["file_out"], region["project_start"], region["project_end"]) == \
        (5.0, 6.5, 4.0, 5.5)
    assert "over only 4.000 s to 5.500 s of the range" in result["console"]


def test_a_partial_picture_is_announced_only_when_it_will_be_made(world):
    sc = scenario(world, ts=(1.0, 5.5), dialog=[{"ok": False}])
    result = h.run_scenario(world["tmp"], sc)
    assert h.generation_commands(result) == [] and "generating that part" not in result["console"]


def test_a_new_layer_never_joins_a_muted_folder(world):
    sc = scenario(world)
    sc["tracks"].append({"name": "Rejected", "folderdepth": 1, "mute": True, "items": []})
    old = stepfoley_layer(world, "old layer", {"caption": "old layer", "seed": 1})
    old["folderdepth"] = -1
    sc["tracks"].append(old)
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert [(t["name"], t["folderdepth"]) for t in result["tracks"]][-2:] == [("old layer", -1), (h.CAPTION, 0)]


def muted_archive_tracks(world, nested):
    """Old layers in a muted "Archive" folder whose last track is not a layer ("notes"), or
    (nested) a layer that closes an inner folder of the muted "Archive" still open after it."""
    tracks = [{"name": "Archive", "folderdepth": 1, "mute": True, "items": []}]
    if nested:
        tracks.append({"name": "Inner", "folderdepth": 1, "items": []})
    tracks.append(stepfoley_layer(world, "old layer A", {"caption": "old layer A", "seed": 1}))
    tracks.append(stepfoley_layer(world, "old layer B", {"caption": "old layer B", "seed": 2}))
    tracks[-1]["folderdepth"] = -1 if nested else 0
    tracks.append({"name": "notes", "folderdepth": -1, "items": []})
    return tracks


@pytest.mark.parametrize("nested", [False, True], ids=["last-track-not-a-layer", "nested-folders"])
def test_a_new_layer_never_goes_inside_a_muted_folder_at_any_depth(world, nested):
    """The last layer is in a muted folder that it does not close (or closes only an inner
    folder of it): the new layer goes after the end of the muted folder, where it is heard."""
    sc = scenario(world, extra_tracks=[*muted_archive_tracks(world, nested), {"name": "Music", "items": []}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    names = [(t["name"], t["folderdepth"]) for t in result["tracks"]]
    assert names[-3:] == [("notes", -1), (h.CAPTION, 0), ("Music", 0)]
    assert sum(depth for _, depth in names[:-2]) == 0  # the archive is closed before the new layer


def test_a_new_layer_goes_before_a_muted_folder_that_runs_to_the_end(world):
    sc = scenario(world)
    sc["tracks"].append({"name": "Rejected", "folderdepth": 1, "mute": True, "items": []})
    sc["tracks"].append(stepfoley_layer(world, "old layer", {"caption": "old layer", "seed": 1}))
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert [t["name"] for t in result["tracks"]][-3:] == [h.CAPTION, "Rejected", "old layer"]


def test_a_cancelled_generation_leaves_no_job_files(world):
    """Cancel is the artist's choice, not a failure to keep for support: the job's folder (its
    request, status and the layers' bounce, up to hundreds of MB) goes, as after a success."""
    sc = scenario(world, dialog=answers(steps="40"), extstate=h.extstate(world, keep_job_files="0"),
                  actions=[{"script": h.MAIN}, {"script": h.CANCEL, "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert "cancelled" in result["messages"][0]["message"].lower()
    job_dir = h.status_path(result).parent
    assert job_dir.parent.is_dir() and not job_dir.exists()


def test_escape_in_progress_window_cancels(world):
    sc = scenario(world, dialog=answers(steps="40"), gfx_key_when_running=27)
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert "cancelled" in result["messages"][0]["message"].lower()
    assert new_tracks(result) == [] and not result["gfx_open"]


def test_paths_with_spaces_and_quotes(world, tmp_path):
    proj = tmp_path / "My \"Film\" 'final' cut"
    proj.mkdir()
    video = tmp_path / "picture 'take 2' \"A\".mp4"
    video.write_bytes(b"x")
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(video), "length": 10.0}]}
    sc = scenario(world, video_item=video_item, project_path=str(proj))
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    # the job files (on the command line) moved to REAPER's resource folder; the stem did not
    assert str(tmp_path / "reaper resource" / "StepFoley" / "jobs") in h.generation_commands(result)[0]
    [track] = new_tracks(result)
    take = track["items"][0]["takes"][0]
    assert Path(take["source_file"]).parent == proj / "StepFoley"
    assert h.take_meta(take)["region"]["video"] == str(video)
    assert len(sf.read(take["source_file"])[0]) == h.frames(2.5)


def music_track(world, **track):
    music = world["tmp"] / "music.wav"
    samples = h.write_foley_wav(music, 12.0, SR, seed=9)
    return {"name": "Music", "items": [{"position": 1.0, "length": 11.0, "takes": [{"file": str(music)}]}],
            **track}, samples


def test_a_selected_track_does_not_replace_the_layers(world):
    # issue 16: selecting a Dialogue or Music track used to bounce it instead of every StepFoley layer
    music, _ = music_track(world, selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, extra_tracks=[music]))
    request = job_request(result)
    mix, _ = sf.read(request["existing_mix"])
    np.testing.assert_allclose(mix[:, 0], world["foley_samples"][h.frames(3.0):h.frames(5.5)], atol=1 / 2**22)
    assert request["previous_captions"] == ["wind in the trees"]
    assert [t["selected"] for t in result["tracks"] if t["name"] == "Music"] == [True]  # selection untouched


def test_tracks_included_and_excluded_as_negatives(world):
    music, music_samples = music_track(world, ext={"stepfoley_negative": "1"})
    sc = scenario(world, extra_tracks=[music])
    sc["tracks"][1]["ext"]["stepfoley_negative"] = "0"  # wind: a StepFoley track, excluded
    result = h.run_scenario(world["tmp"], sc)
    request = job_request(result)
    mix, _ = sf.read(request["existing_mix"])
    np.testing.assert_allclose(mix[:, 0], music_samples[h.frames(2.0):h.frames(4.5)], atol=1 / 2**22)
    assert request["previous_captions"] == []
    assert result["dialogs"][0]["captions"][6] == "Negatives: layers (Music) / selection (0 items) / none"


def test_selected_items_and_razor_areas_as_negatives(world):
    """Negatives "selection": only the selected items and the items a razor area touches play in the
    bounce; every item mute is put back."""
    tmp = world["tmp"]
    wav = {n: tmp / f"{n}.wav" for n in ("a", "b", "c")}
    samples = {n: h.write_foley_wav(p, 12.0, SR, seed=30 + i) for i, (n, p) in enumerate(wav.items())}
    meta = lambda c: {"stepfoley_metadata": json.dumps({"caption": c})}  # noqa: E731
    extra = [
        # two items on one track: only the selected one counts
        {"name": "steps", "ext": {"stepfoley": "1"}, "items": [
            {"position": 0.0, "length": 4.0, "selected": True, "takes": [{"file": str(wav["a"]), "ext": meta("a")}]},
            {"position": 4.0, "length": 8.0, "takes": [{"file": str(wav["b"]), "ext": meta("b")}]}]},
        # a razor area over 5.0-5.2 s on this track picks its item
        {"name": "Music", "razor": '5.0 5.2 ""', "items": [
            {"position": 0.0, "length": 12.0, "takes": [{"file": str(wav["c"]), "ext": meta("c")}]}]},
    ]
    result = h.run_scenario(tmp, scenario(world, extra_tracks=extra, dialog=answers(negatives="selection")))
    request = job_request(result)
    assert request["previous_captions"] == ["a", "c"]
    assert h.take_meta(new_tracks(result, known=("Picture", "wind", "steps", "Music"))[0]["items"][0]["takes"][0])[
        "negatives"] == {"mode": "selection", "tracks": ["steps", "Music"]}
    t = 3.0 + np.arange(h.frames(2.5)) / SR
    a_part = np.where(t < 4.0, samples["a"][h.frames(3.0):h.frames(5.5)], 0.0)  # its item ends at 4 s
    expected = a_part + samples["c"][h.frames(3.0):h.frames(5.5)]
    mix, _ = sf.read(request["existing_mix"])
    np.testing.assert_allclose(mix[:, 0], expected, atol=1 / 2**21)
    steps = next(tr for tr in result["tracks"] if tr["name"] == "steps")
    assert [(i["mute"], i["mute_solo"]) for i in steps["items"]] == [(False, 0), (False, 0)]
    assert result["dialogs"][0]["captions"][6] == "Negatives: layers (wind; steps) / selection (2 items) / none"


def test_no_negatives(world):
    result = h.run_scenario(world["tmp"], scenario(world, dialog=answers(negatives="none")))
    request = job_request(result)
    assert "existing_mix" not in request and request["previous_captions"] == [] and result["renders"] == []


def test_toggle_selected_tracks_as_negatives(world):
    music, _ = music_track(world, selected=True)
    sc = scenario(world, extra_tracks=[music], actions=[{"script": h.TOGGLE}])
    sc["tracks"][1]["selected"] = True  # wind, a StepFoley track
    result = h.run_scenario(world["tmp"], sc)
    by_name = {t["name"]: t for t in result["tracks"]}
    assert by_name["Music"]["ext"] == {"stepfoley_negative": "1"}
    assert by_name["wind"]["ext"] == {"stepfoley": "1", "stepfoley_negative": "0"}
    assert "wind: not a negative" in result["console"] and "Music: a negative" in result["console"]
    assert result["undo"] == ["StepFoley: toggle negatives"] and result["undo_depth"] == 0
    # toggled back: the automatic state again, no mark left
    sc2 = scenario(world, extra_tracks=[dict(music, ext={"stepfoley_negative": "1"})], actions=[{"script": h.TOGGLE}])
    result = h.run_scenario(world["tmp"], sc2)
    assert {t["name"]: t["ext"] for t in result["tracks"]}["Music"] == {"stepfoley_negative": ""}


def test_toggling_a_muted_track_says_it_is_not_heard(world):
    """Only what is heard is bounced as a negative: a muted track toggled on was reported as a
    negative, though it never counted."""
    music, _ = music_track(world, selected=True)
    sc = scenario(world, extra_tracks=[dict(music, mute=True)], actions=[{"script": h.TOGGLE}])
    result = h.run_scenario(world["tmp"], sc)
    assert "Music: a negative (muted, or in a muted folder: not heard, so not negated until unmuted)" in \
        result["console"]


def test_toggling_the_pictures_track_says_it_is_not_negated_while_it_is_the_picture(world):
    """The picture's track is left out of the bounce: toggled on, it was reported as a negative."""
    sc = scenario(world, actions=[{"script": h.TOGGLE}])
    sc["tracks"][0]["selected"] = True  # Picture: the video item
    result = h.run_scenario(world["tmp"], sc)
    assert ("Picture: a negative (it holds video: while that is the picture under the time selection, this track "
            "is not negated)") in result["console"]


@pytest.mark.parametrize("script", ["REGENERATE", "REPLACE"])
def test_two_stepfoley_items_selected_are_refused_by_an_action_that_changes_one(world, script):
    """With two StepFoley items selected, Regenerate and Replace changed the first and said nothing
    of the other."""
    first = stepfoley_layer(world, "door", {"caption": "door", "seed": 3}, selected=True)
    second = stepfoley_layer(world, "steps", {"caption": "steps", "seed": 4}, selected=True)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[first, second],
                  actions=[{"script": getattr(h, script)}])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert message["message"].startswith("2 items made by StepFoley are selected; select only the one to change")
    assert h.generation_commands(result) == [] and result["undo"] == []


def test_first_track_has_no_existing_mix(world):
    sc = scenario(world)
    sc["tracks"] = sc["tracks"][:1]
    result = h.run_scenario(world["tmp"], sc)
    request = job_request(result)
    assert "existing_mix" not in request and result["renders"] == []
    assert len(new_tracks(result)) == 1


def test_bad_dialog_value(world):
    result = h.run_scenario(world["tmp"], scenario(world, dialog=answers(alpha="lots")))
    [msg] = result["messages"]
    assert msg["message"] == 'Alpha must be a number between 0 and 100, got "lots".'  # the engine's bounds
    # the dialog comes back with what was typed (then the user cancels it)
    first, again = result["dialogs"]
    assert again["defaults"].split("\n")[0] == CAPTION and again["defaults"].split("\n")[2] == "lots"
    assert h.generation_commands(result) == []


@pytest.mark.parametrize("field,value,words", [
    ("method", "reference", 'Unknown method "reference". Use independent, negative_prompt, nag, text_boost, dual'),
    ("steps", "201", "Steps must be a whole number between 1 and 200"),
    ("seed", "1.5", "Seed must be a whole number"),
    ("negatives", "all", 'Negatives must be layers, selection or none, got "all".'),
])
def test_dialog_values_are_checked_against_the_engine(world, field, value, words):
    result = h.run_scenario(world["tmp"], scenario(world, dialog=answers(**{field: value})))
    assert words in result["messages"][0]["message"]
    assert h.generation_commands(result) == []


def test_an_unavailable_method_is_explained(world):
    result = h.run_scenario(world["tmp"], scenario(world, dialog=answers(method="nag")),
                            env_extra={"STEPFOLEY_STANDIN_CAPS": "no_controlnet"})
    assert result["messages"][0]["message"] == 'Method "nag" is not available: no NAG ControlNet'


def test_an_older_engine_without_capabilities(world):
    result = h.run_scenario(world["tmp"], scenario(world, dialog=answers(method="independent")),
                            env_extra={"STEPFOLEY_STANDIN_CAPS": "none"})
    assert result["messages"] == [] and job_request(result)["method"] == "independent"
    assert result["dialogs"][0]["title"].endswith("(an older engine: its defaults are not shown)")


def test_variations_in_fixed_lanes(world):
    """REAPER 7: one item per fixed lane in the engine's rank order, the first (best) lane plays,
    each lane named after its seed; the variations are one protocol-2 job."""
    sc = scenario(world, dialog=answers(seed="20", count=3), actions=[{"script": h.VARIATIONS}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [track] = new_tracks(result)
    assert track["freemode"] == 2
    # the stand-in scores its takes by seed: the order is the engine's, not the seeds'
    assert track["lanes"] == [{"plays": 1, "name": "seed 22"}, {"plays": 0, "name": "seed 21"},
                              {"plays": 0, "name": "seed 20"}]
    assert [i["fixedlane"] for i in track["items"]] == [0, 1, 2]
    for item, seed, rank in zip(track["items"], (22, 21, 20), (1, 2, 3)):
        assert_exact_placement(item, 3.0, 5.5)
        [take] = item["takes"]
        meta = h.take_meta(take)
        assert (meta["seed"], meta["rank"], meta["engine"]["seed"]) == (seed, rank, seed)
        assert "variations" not in meta and meta["ranking"]["ranked_by"] == "text_fidelity_minus_similarity"
        assert take["markers"] == [{"name": f"seed {seed}", "position": 0}]
        assert len(sf.read(take["source_file"])[0]) == h.frames(2.5) and item["loopsrc"] == 0
    assert len(result["undo"]) == 1 and len(h.generation_commands(result)) == 1
    request = h.job_request(result)
    assert (request["protocol"], request["variations"], request["seed"]) == (2, 3, 20)
    assert_project_untouched(result)


@pytest.mark.parametrize("how", [{"app_version": "6.83/linux-x86_64"}, {"app_version": "7.06/x64"},
                                 {"variations_as": "takes"}])
def test_variations_as_takes(world, how):
    # before REAPER 7.07 (no fixed lanes, or lanes a script cannot name), or when Settings say
    # so: N takes of one item, the best active
    extstate = h.extstate(world, variations_as=how.get("variations_as", "lanes"))
    sc = scenario(world, dialog=answers(seed="20", count=3), actions=[{"script": h.VARIATIONS}], extstate=extstate,
                  app_version=how.get("app_version", "7.27/linux-x86_64"))
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [track] = new_tracks(result)
    [item] = track["items"]
    assert_exact_placement(item, 3.0, 5.5)
    assert track["freemode"] == 0
    seeds = [h.take_meta(t)["seed"] for t in item["takes"]]
    assert seeds == [22, 21, 20] and item["active_take"] == 1
    stems = {t["source_file"] for t in item["takes"]}
    assert len(stems) == 3 and all(len(sf.read(s)[0]) == h.frames(2.5) for s in stems)
    assert len(result["undo"]) == 1 and len(h.generation_commands(result)) == 1
    assert_project_untouched(result)


def test_an_engine_before_protocol_2_gets_one_job_per_variation(world):
    sc = scenario(world, dialog=answers(seed="20", count=3), actions=[{"script": h.VARIATIONS}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN_PROTOCOL": "1"})
    assert result["messages"] == []
    [track] = new_tracks(result)
    assert [lane["name"] for lane in track["lanes"]] == ["seed 20", "seed 21", "seed 22"]
    assert [(r["protocol"], r["seed"], "variations" in r) for r in h.job_requests(result)] == [
        (1, 20, False), (1, 21, False), (1, 22, False)]


@pytest.mark.parametrize("count, jobs", [(10, [(20, 5), (25, 5)]), (9, [(20, 5), (25, 4)])])
def test_more_variations_than_one_job_holds_go_in_batches(world, count, jobs):
    """As even as the jobs can be (never a job of one take, which the engine does not score),
    and best first across them (each job ranked only its own): the engine's scores compare."""
    sc = scenario(world, dialog=answers(seed="20", count=count), actions=[{"script": h.VARIATIONS}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert [(r["seed"], r["variations"]) for r in h.job_requests(result)] == jobs
    [track] = new_tracks(result)
    assert [lane["name"] for lane in track["lanes"]] == [f"seed {s}" for s in range(19 + count, 19, -1)]
    assert [h.take_meta(i["takes"][0])["rank"] for i in track["items"]] == list(range(1, count + 1))
    assert len(result["undo"]) == 1


@pytest.mark.parametrize("count, when, env, finished", [
    (10, "when_running", {"STEPFOLEY_STANDIN": "late"}, 5),
    (3, "when_between_jobs", {"STEPFOLEY_STANDIN_PROTOCOL": "1"}, 1)], ids=["too late for the job", "between jobs"])
def test_a_cancel_at_the_end_of_a_batchs_job_stops_the_batch(world, count, when, env, finished):
    """Cancel while the first of two jobs runs, too late for that one (it ends done): the second
    never starts, and the message counts variations, not jobs. An engine of protocol 1 makes each
    variation a job: between one job's end and the next's start nothing was listed as running, so
    "Cancel running generation" said so and the batch made all the rest."""
    sc = scenario(world, dialog=answers(seed="20", count=count),
                  actions=[{"script": h.VARIATIONS}, {"script": h.CANCEL, when: True}])
    result = h.run_scenario(world["tmp"], sc, env_extra=env)
    assert [r["seed"] for r in h.job_requests(result)] == [20]
    [message] = result["messages"]
    assert message["message"] == f"{finished} of {count} variations finished; Generation cancelled."
    [track] = new_tracks(result)
    assert len(track["items"]) == finished
    variations = "variation" if finished == 1 else "variations"
    assert result["undo"] == [f'StepFoley: add {finished} {variations} of "{h.CAPTION}"']


def stepfoley_layer(world, name, meta, position=3.0, length=2.5, wav=None, **item):
    """A StepFoley track whose one item plays `wav` (default: the wind) with `meta` in its take."""
    take = {"file": str(wav or world["foley"]), "ext": {"stepfoley_metadata": json.dumps(meta)}, "name": name}
    return {"name": name, "ext": {"stepfoley": "1"},
            "items": [{"position": position, "length": length, "takes": [take], **item}]}


def test_regenerate_opens_the_dialog_with_the_stored_parameters(world):
    meta = {"caption": "door slam", "method": "independent", "alpha": 5.0, "seed": 11,
            "negatives": {"mode": "none", "tracks": []}}
    layer = stepfoley_layer(world, "door slam", meta, selected=True)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], actions=[{"script": h.REGENERATE}],
                  extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [dialog] = result["dialogs"]
    assert dialog["title"] == "StepFoley: regenerate (model standin on cpu)"
    assert dialog["defaults"].split("\n") == ["door slam", "independent", "5", "", "", "", "none"]
    [regen] = [t for t in result["tracks"] if t["name"] == "door slam"]
    [it] = regen["items"]
    assert len(it["takes"]) == 2 and it["active_take"] == 2
    new = h.take_meta(it["takes"][1])
    assert new["method"] == "independent" and new["alpha"] == 5.0 and "steps" not in new and new["seed"] != 11
    assert new["negatives"] == {"mode": "none", "tracks": []}
    assert_exact_placement(it, 3.0, 5.5)
    assert result["undo"] == ['StepFoley: regenerate "door slam"']
    # Regenerate does not change what a new generation's dialog offers
    assert "last_params" not in result["extstate"]["StepFoley"]


@pytest.mark.parametrize("position", [3.0, 1.0], ids=["on the picture", "from before it"])
@pytest.mark.parametrize("script", [h.REPLACE, h.REGENERATE, h.SOUND_LIKE])
def test_an_item_over_a_cut_is_refused_before_any_work(world, script, position):
    """An item to 6.0 s over a jump cut at 4.5 s: the new active take was made for the first shot
    alone and the item went silent over 4.5-6.0 s, where there is picture; the console's "make a
    second pass there" cannot be done for an item (helper 199). Extend and repair refused it. An
    item that also starts before the picture (no video over 1.0-2.0 s) was missed (review 200)."""
    layer = stepfoley_layer(world, "steps", {"caption": "steps", "seed": 9}, position=position,
                            length=6.0 - position, selected=True)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[layer], actions=[{"script": script}])
    sc["tracks"][0]["items"] = [
        {"position": 2.0, "length": 2.5, "takes": [{"file": str(world["video"]), "length": 20.0}]},
        {"position": 4.5, "length": 5.5, "takes": [{"file": str(world["video"]), "length": 20.0, "startoffs": 6.0}]}]
    result = h.run_scenario(world["tmp"], sc)
    [message] = [m["message"] for m in result["messages"]]
    assert message == ("The picture under the selected item cuts within picture.mp4: another video item of it shows "
                       "from 4.500 s to 6.000 s. StepFoley follows one stretch of one video file per generation, so "
                       "the new take would be silent where the other plays. Render the picture of this stretch into "
                       "one file, or trim the item to one shot, then try again.")
    assert result["renders"] == [] and h.generation_commands(result) == [] and result["undo"] == []
    [item] = [t for t in result["tracks"] if t["name"] == "steps"][0]["items"]
    assert len(item["takes"]) == 1


def test_extend_speaks_of_its_time_selection(world):
    """Extend's range runs from the item to the end of the time selection: a selection too long
    was blamed on the item, "Trim the item shorter" (review 200)."""
    layer = stepfoley_layer(world, "door creak", {"caption": "door creak", "seed": 9, "method": "nag"}, selected=True)
    video = {"position": 2.0, "length": 700.0, "takes": [{"file": str(world["video"]), "length": 700.0}]}
    result = h.run_scenario(world["tmp"], scenario(world, ts=(4.0, 690.0), video_item=video,
                                                   dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                                                   extra_tracks=[layer]))
    assert [m["message"] for m in result["messages"]] == [
        "The selection covers 687.00 s of picture; at most 600 s can be made at once. Select a shorter range and make "
        "the rest in a second pass."]


@pytest.mark.parametrize("script", [h.REPLACE, h.REGENERATE])
@pytest.mark.parametrize("position, length, words", [
    (3.0, 0.8, "The selected item covers 0.80 s of picture; StepFoley needs at least 1 s to follow. Lengthen the item "
               "over the picture."),
    (10.5, 1.0, "There is no video item under the selected item (10.500 s to 11.500 s).\n\nPut the picture on a "
                "track and move the item over it.")], ids=["trimmed to 0.8 s", "moved off the picture"])
def test_an_item_action_speaks_of_the_item_not_a_time_selection(world, script, position, length, words):
    """A StepFoley item trimmed to a door click, or moved past the picture, was told to "Select a
    longer range" or "make the time selection over it", which these actions do not read (helper 199)."""
    layer = stepfoley_layer(world, "click", {"caption": "door click", "seed": 9}, position=position, length=length,
                            selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, ts=(0, 0), dialog=[{"ok": True, "values": []}],
                                                   extra_tracks=[layer], actions=[{"script": script}]))
    [message] = [m["message"] for m in result["messages"]]
    assert message == words and "selection" not in message


@pytest.mark.parametrize("stored, words", [({"caption": "   "}, "The caption is empty"),
                                           ({"seed": -5}, "Seed must be"), ({"alpha": "five"}, "Alpha")])
def test_replace_reads_the_stored_settings_before_anything_is_bounced(world, stored, words):
    """Values edited by hand in the take's metadata went into the request as they were: the layers
    were bounced and a job started before the engine refused them in its field words (helper 199)."""
    layer = stepfoley_layer(world, "steps", {"caption": "steps", "seed": 9, **stored}, selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, dialog=[], extra_tracks=[layer],
                                                   actions=[{"script": h.REPLACE}]))
    [message] = [m["message"] for m in result["messages"]]
    assert message.startswith("The selected item's stored settings cannot be used: ") and words in message, message
    assert message.endswith('Run "StepFoley: Regenerate selected Foley item", which shows them to correct.')
    assert result["renders"] == [] and h.generation_commands(result) == []


def test_replace_takes_stored_numbers_as_regenerate_reads_them(world):
    layer = stepfoley_layer(world, "steps", {"caption": "steps", "seed": 9.0, "steps": 25.0, "alpha": "5"},
                            selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, dialog=[], extra_tracks=[layer],
                                                   actions=[{"script": h.REPLACE}]))
    assert result["messages"] == []
    request = h.job_request(result)
    assert (request["seed"], request["steps"], request["alpha"]) == (9, 25, 5)


def test_regenerate_where_the_picture_covers_part_of_the_item(world):
    """Item 1.0-5.5 s, picture from 2.0 s: the new take is generated for 2.0-5.5 s and must play
    from 2.0 s (it started 1 s early), with "loop source" off so nothing wraps into 1.0-2.0 s."""
    old = world["tmp"] / "old door.wav"
    h.write_foley_wav(old, 4.5, SR, seed=5)
    layer = stepfoley_layer(world, "door", {"caption": "door"}, position=1.0, length=4.5, wav=old, selected=True,
                            loopsrc=1)
    sc = scenario(world, ts=(2.0, 5.5), extra_tracks=[layer],
                  dialog=[{"ok": True, "values": []}, answers(caption="next")[0]],
                  actions=[{"script": h.REGENERATE}, {"script": h.MAIN, "after_idle": True}])
    sc["tracks"][1]["ext"]["stepfoley_negative"] = "0"  # only the door is negated by the next generation
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [door] = [t for t in result["tracks"] if t["name"] == "door"]
    [item] = door["items"]
    assert item["position"] == 1.0 and item["length"] == 4.5 and item["loopsrc"] == 0
    new_take = item["takes"][1]
    assert new_take["startoffs"] == pytest.approx(-1.0)
    assert h.take_meta(new_take)["region"]["project_start"] == 2.0
    stem, _ = sf.read(new_take["source_file"])
    assert len(stem) == h.frames(3.5)
    # what the next generation hears of the door over 2.0-5.5 s is the new stem from its start
    [_, request] = h.job_requests(result)
    mix, _ = sf.read(request["existing_mix"])
    np.testing.assert_allclose(mix[:, 0], stem, atol=1 / 2**22)


@pytest.mark.parametrize("tracks_moved, added", [((1, 3), True), ((1,), False), ((3,), False)],
                         ids=["rippled together", "picture alone", "item alone"])
def test_a_regenerated_take_follows_a_ripple_edit_and_refuses_a_picture_moved_alone(world, tracks_moved, added):
    """Regenerate puts the new take in the selected item: moved with the picture, the take goes
    where both are now; the picture moved alone, the take would start 1.5 s into the item and
    its end lie past the item's, unheard, so nothing is added and the user is told. The item
    moved alone, the take would keep the picture's sync and leave the item's last 1.5 s silent:
    refused too (it was added, without a word)."""
    meta = {"caption": "door slam", "method": "independent", "seed": 11, "negatives": {"mode": "none", "tracks": []}}
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[
        stepfoley_layer(world, "door slam", meta, selected=True)],
        actions=[{"script": h.REGENERATE}] + [{"move_item": {"track": track, "item": 1, "by": 1.5}, "when_running": True}
                                             for track in tracks_moved])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    [it] = [t for t in result["tracks"] if t["name"] == "door slam"][0]["items"]
    if added:
        assert result["messages"] == []
        assert_exact_placement(it, 4.5, 7.0)
        assert it["active_take"] == 2 and it["takes"][1]["startoffs"] == 0
    else:
        [message] = result["messages"]
        assert "the video item and the selected item were moved apart while generating" in message["message"]
        assert len(it["takes"]) == 1 and result["undo"] == []


def test_a_stem_reaper_cannot_read_leaves_the_item_as_it_was(world):
    """An empty take was added and made active first: the item went silent."""
    meta = {"caption": "door slam", "method": "independent", "seed": 11, "negatives": {"mode": "none", "tracks": []}}
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[
        stepfoley_layer(world, "door slam", meta, selected=True)], actions=[{"script": h.REGENERATE}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "badstem"})
    [message] = result["messages"]
    assert "REAPER cannot read the stem" in message["message"] and ".lua:" not in message["message"]
    [item] = [t for t in result["tracks"] if t["name"] == "door slam"][0]["items"]
    assert len(item["takes"]) == 1 and item["active_take"] == 1


def test_regenerate_needs_a_stepfoley_item(world):
    result = h.run_scenario(world["tmp"], scenario(world, actions=[{"script": h.REGENERATE}]))
    assert "Select an item made by StepFoley" in result["messages"][0]["message"]


def continuation_layer(world, position=3.0, length=2.5, **take):
    meta = {"caption": "door creak", "method": "nag", "seed": 11, "negatives": {"mode": "layers", "tracks": []}}
    layer = stepfoley_layer(world, "door creak", meta, position=position, length=length, selected=True)
    layer["items"][0]["takes"][0].update(take)
    return layer


def test_extend_keeps_the_take_and_continues_it_to_the_selection_end(world):
    """Item 3.0-5.5 s playing its source from 1.5 s; selection 4.0-7.0 s: the take is kept up to
    4.0 s and the engine makes 4.0-7.0 s; the new take covers 3.0-7.0 s and the item grows to it."""
    sc = scenario(world, ts=(4.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[continuation_layer(world, startoffs=1.5)])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    request = h.job_request(result)
    assert (request["protocol"], request["take"], request["take_offset"]) == (2, str(world["foley"]), 1.5)
    assert request["regenerate"] == [1.0, 4.0] and request["region"]["project_start"] == 3.0
    assert request["region"]["project_end"] == 7.0 and "variations" not in request
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    [item] = layer["items"]
    assert_exact_placement(item, 3.0, 7.0)
    assert len(item["takes"]) == 2 and item["active_take"] == 2 and item["takes"][1]["startoffs"] == 0
    assert len(sf.read(item["takes"][1]["source_file"])[0]) == h.frames(4.0)
    assert h.take_meta(item["takes"][1])["regenerate"] == [1.0, 4.0]
    assert result["undo"] == ['StepFoley: extend "door creak"']


@pytest.mark.parametrize("next_shot", [True, False], ids=["a cut to another file", "the end of the video"])
def test_extend_refuses_where_the_picture_ends_with_the_item(world, next_shot):
    """The picture (2-10 s) ends where the item (7.5-10 s) does: the region stopped there, so
    the take's last 1 s was made again under the name "extend" and the item did not grow."""
    sc = scenario(world, ts=(9.0, 12.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[continuation_layer(world, position=7.5, length=2.5)], time_offset=3600.0)
    if next_shot:
        shot_b = world["tmp"] / "shot_b.mp4"
        shot_b.write_bytes(b"x")
        sc["tracks"][0]["items"].append({"position": 10.0, "length": 2.0,
                                         "takes": [{"file": str(shot_b), "length": 5.0}]})
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "The picture ends at 3610.000 s, where the selected item ends" in message["message"]
    assert h.job_requests(result) == [] and result["undo"] == []
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    assert len(layer["items"][0]["takes"]) == 1


@pytest.mark.parametrize("moves, added", [
    ([(1, 1.0, 0.0), (3, 1.0, 0.0)], True), ([(1, 1.0, 0.0)], False),
    ([(3, 0.5, 0.5)], True), ([(3, 0.0, 0.5)], False)],
    ids=["rippled together", "picture alone", "item trimmed", "take slipped"])
def test_an_extension_follows_a_ripple_edit_and_refuses_a_picture_moved_alone(world, moves, added):
    """The take's new part was made for the picture at the take's side. Moved together while
    generating (a ripple edit), the new take goes where both are now; the picture moved alone,
    or the take slipped in its item, leaves nothing to line the kept take up with, so nothing
    is added and the user is told. Trimming the item's start moves neither's sound."""
    actions = [{"script": h.EXTEND}] + [{"move_item": {"track": track, "item": 1, "by": by, "slip": slip},
                                         "when_running": True} for track, by, slip in moves]
    sc = scenario(world, ts=(4.0, 7.0), dialog=[{"ok": True, "values": []}], actions=actions,
                  extra_tracks=[continuation_layer(world, startoffs=1.5)])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    [item] = layer["items"]
    if added:
        assert result["messages"] == []
        moved = moves[0][1] if len(moves) == 2 else 0.0
        assert item["position"] + item["length"] == pytest.approx(7.0 + moved)
        assert item["active_take"] == 2
        new_take_starts = item["position"] - item["takes"][1]["startoffs"]
        assert new_take_starts == pytest.approx(3.0 + moved)
        assert h.take_meta(item["takes"][1])["region"]["project_start"] == pytest.approx(3.0 + moved)
    else:
        [message] = result["messages"]
        assert "the video item and the selected item were moved apart while generating" in message["message"]
        assert len(item["takes"]) == 1 and result["undo"] == []


@pytest.mark.parametrize("script", [h.REGENERATE, h.REPLACE])
@pytest.mark.parametrize("by, slip, added", [(0.5, 0.5, True), (0.5, 0.0, False)], ids=["trimmed", "moved"])
def test_a_new_take_follows_an_item_trimmed_while_generating_and_refuses_one_moved(world, script, by, slip, added):
    """Trimming the item's start while the engine works moves its edge, not its sound, and the new
    take is placed by the picture: it was thrown away as "moved apart", where Extend took it."""
    sc = scenario(world, ts=(0.0, 0.0), dialog=[{"ok": True, "values": []}],
                  actions=[{"script": script}, {"move_item": {"track": 3, "item": 1, "by": by, "slip": slip},
                                                "when_running": True}],
                  extra_tracks=[continuation_layer(world)])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    [item] = layer["items"]
    if added:
        assert result["messages"] == []
        assert (item["position"], item["active_take"]) == (pytest.approx(3.5), 2)
        assert item["position"] - item["takes"][1]["startoffs"] == pytest.approx(3.0)  # where the region starts
    else:
        [message] = result["messages"]
        assert "the video item and the selected item were moved apart while generating" in message["message"]
        assert len(item["takes"]) == 1


def test_a_regenerated_take_that_negated_a_selection_opens_on_the_layers(world):
    """The other layers' items negated then cannot be selected beside the item again (one
    StepFoley item at a time), so "selection" negated nothing: the dialog opens on the layers."""
    layer = continuation_layer(world)
    take = layer["items"][0]["takes"][0]
    meta = json.loads(take["ext"]["stepfoley_metadata"])
    take["ext"]["stepfoley_metadata"] = json.dumps({**meta, "negatives": {"mode": "selection", "tracks": ["wind"]}})
    sc = scenario(world, ts=(0.0, 0.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.REGENERATE}],
                  extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert result["dialogs"][0]["defaults"].split("\n")[-1] == "layers"
    request = h.job_request(result)
    assert request["existing_mix"] and request["previous_captions"] == ["wind in the trees"]  # the wind layer


@pytest.mark.parametrize("take_rate, sent_rate", [(44100, 44100), (50000, 48000)])
def test_extend_asks_for_the_takes_own_rate_so_its_kept_part_comes_back_sample_for_sample(world, take_rate,
                                                                                          sent_rate):
    # a glued take follows the audio device's rate (44.1 kHz) in a project whose rate is not set,
    # which the scripts take as 48 kHz: the kept part came back resampled, not as it was
    take = world["tmp"] / "glued.wav"
    h.write_foley_wav(take, 6.0, take_rate, seed=5)
    sc = scenario(world, ts=(4.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[continuation_layer(world, file=str(take))])
    sc["render"]["numbers"]["PROJECT_SRATE_USE"] = 0
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    request = h.job_request(result)
    assert request["take"] == str(take) and request["sample_rate"] == sent_rate
    said = f"the take is at {take_rate} Hz, a rate StepFoley does not write"
    assert (said in result["console"]) == (take_rate != sent_rate)


def test_extend_into_the_next_shot_stops_at_the_cut_and_an_item_over_the_cut_names_both_files(world):
    """Item 3.0-5.5 s over shot A (picture.mp4, 2-6 s), selection to 12 s over shot B (6-12 s):
    the picture was chosen by the selection, where shot B is seen longer, and the extension was
    refused ("the take would be lost"), though up to 10 s it went to the cut. It now follows the
    picture under the item up to the cut, past an item of the same track in the next shot. An
    item that itself runs over the cut is refused, naming both files."""
    shot_b = world["tmp"] / "shot_b.mp4"
    shot_b.write_bytes(b"x")
    shot_a = {"position": 2.0, "length": 4.0, "takes": [{"file": str(world["video"]), "length": 10.0}]}
    layer = continuation_layer(world)
    layer["items"].append({"position": 7.0, "length": 1.0, "takes": [{"file": str(world["foley"]), "name": "later"}]})
    sc = scenario(world, ts=(5.0, 12.0), video_item=shot_a, dialog=[{"ok": True, "values": []}],
                  actions=[{"script": h.EXTEND}], extra_tracks=[layer])
    sc["tracks"][0]["items"].append({"position": 6.0, "length": 6.0, "takes": [{"file": str(shot_b), "length": 6.0}]})
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    region = h.job_request(result)["region"]
    assert (region["video"], region["project_start"], region["project_end"]) == (str(world["video"]), 3.0, 6.0)
    assert "you see the video item picture.mp4 over only 3.000 s to 6.000 s of the range" in result["console"]
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    assert layer["items"][0]["length"] == pytest.approx(3.0) and layer["items"][0]["active_take"] == 2
    # an item over the cut: its take would be lost where the other file plays
    sc["tracks"][-1] = continuation_layer(world, position=3.0, length=4.0)
    sc["time_selection"] = [6.5, 12.0]
    result = h.run_scenario(world["tmp"], sc)
    [message] = [m["message"] for m in result["messages"]]
    assert message.startswith("The picture under the selected item changes to another video file: shot_b.mp4 "
                              "shows from 6.000 s to 7.000 s, and picture.mp4 over the rest."), message
    assert h.generation_commands(result) == []
    # a jump cut within one file: picture.mp4 again from 8 s into it
    sc["tracks"][0]["items"][1]["takes"][0].update(file=str(world["video"]), startoffs=8.0, length=16.0)
    result = h.run_scenario(world["tmp"], sc)
    [message] = [m["message"] for m in result["messages"]]
    assert message.startswith("The picture under the selected item cuts within picture.mp4: another video item "
                              "of it shows from 6.000 s to 7.000 s."), message


def test_extend_over_a_muted_picture_is_not_refused_as_moved_once_the_dialog_closes(world):
    """The picture under the item is on a muted track (its sound unwanted) and the next shot plays
    on another: the picture was chosen under the item, and chosen again, without the item, when
    the job started; the other one then won and the job was refused as "moved"."""
    shot_b = world["tmp"] / "shot_b.mp4"
    shot_b.write_bytes(b"x")
    shot_a = {"position": 2.0, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 10.0}]}
    sc = scenario(world, ts=(5.0, 8.0), video_item=shot_a, dialog=[{"ok": True, "values": []}],
                  actions=[{"script": h.EXTEND}], extra_tracks=[continuation_layer(world)])
    sc["tracks"][0]["mute"] = True
    sc["tracks"].insert(1, {"name": "Shot B", "items": [
        {"position": 6.0, "length": 6.0, "takes": [{"file": str(shot_b), "length": 6.0}]}]})
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert h.job_request(result)["region"]["video"] == str(world["video"])


def test_a_repair_over_where_a_looped_picture_starts_again_says_so(world):
    # an item outlasting one pass of a looping video item: the same item, starting its loop
    # again, was called "another video item of it"
    looped = {"position": 0.0, "length": 20.0, "loopsrc": 1, "takes": [{"file": str(world["video"]), "length": 10.0}]}
    sc = scenario(world, ts=(8.5, 9.0), video_item=looped, dialog=[{"ok": True, "values": []}],
                  actions=[{"script": h.REPAIR}], extra_tracks=[continuation_layer(world, position=8.0, length=4.0)])
    result = h.run_scenario(world["tmp"], sc)
    [message] = [m["message"] for m in result["messages"]]
    assert message.startswith("The video item under the selected item loops its source, and starts it again from "
                              "10.000 s to 12.000 s."), message
    assert h.generation_commands(result) == []


def test_extend_from_inside_an_items_empty_tail_starts_where_the_takes_audio_ends(world):
    """Item 3.0-5.5 s whose take (the 12 s file from 10.5 s) ends at 4.5 s: the edge was dragged
    out. Extending from 5.0 s makes the silent 4.5-5.0 s new too, instead of asking the engine
    to keep audio that is not there (it refused after the dialog)."""
    sc = scenario(world, ts=(5.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[continuation_layer(world, startoffs=10.5)])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    request = h.job_request(result)
    assert request["regenerate"] == [1.5, 4.0] and request["take_offset"] == 10.5


@pytest.mark.parametrize("shortest, refused", [(0.6, True), (0.4, False)])
def test_the_shortest_part_to_make_new_is_the_engines(world, shortest, refused):
    """A 0.5 s repair against an engine publishing regenerate_seconds: the library checked its
    own copy (0.1 s), so the layers were bounced and the request sent for the engine to refuse."""
    sc = scenario(world, ts=(3.5, 4.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.REPAIR}],
                  extra_tracks=[continuation_layer(world)])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN_BOUNDS": json.dumps(
        {"regenerate_seconds": shortest})})
    if refused:
        [message] = result["messages"]
        assert "The part to make new (3.500 s to 4.000 s) is shorter than 0.6 s" in message["message"], message
        assert h.generation_commands(result) == []
    else:
        assert result["messages"] == [] and h.job_request(result)["regenerate"] == [0.5, 1.0]


def test_a_repair_that_would_keep_audio_past_the_takes_end_is_refused_in_reapers_words(world):
    sc = scenario(world, ts=(3.5, 4.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.REPAIR}],
                  extra_tracks=[continuation_layer(world, startoffs=10.5)])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "runs 1.000 s past the end of its take's audio" in message["message"]
    assert "Extend selected Foley item to time selection" in message["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []


@pytest.mark.parametrize("script, ts, advice", [
    ("EXTEND", (4.0, 7.0), "Select a shorter range and make the rest in a second pass."),  # its range ends with the selection
    ("REPAIR", (3.5, 4.0), "Trim the item shorter."),  # its range is the item, whatever the selection inside it
])
def test_a_take_too_long_at_its_own_rate_is_refused_naming_what_to_shorten(world, script, ts, advice):
    """A 192 kHz take: its continuation is made at the take's rate, where an engine publishing
    864 kB per stem fits 1.5 s (6 s at the project's 48 kHz). A repair, whose stem is the whole
    item, was told to select a shorter range, which changes nothing."""
    take = world["tmp"] / "take_192k.wav"
    sf.write(take, np.zeros(6 * 192000, np.float32), 192000, subtype="PCM_16")
    sc = scenario(world, ts=ts, dialog=[{"ok": True, "values": []}], actions=[{"script": getattr(h, script)}],
                  extra_tracks=[continuation_layer(world, file=str(take))])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN_BOUNDS": json.dumps({"stem_bytes": 3 * 192000 * 3 // 2})})
    [message] = result["messages"]
    assert "can be made at once at the take's 192000 Hz. " + advice in message["message"], message
    assert h.generation_commands(result) == [] and result["undo"] == []


@pytest.mark.parametrize("script, ts", [("EXTEND", (5.0, 7.0)), ("REPAIR", (3.5, 4.0))])
def test_a_continuation_of_an_item_that_loops_its_audio_is_refused_before_the_repeat_is_lost(world, script, ts):
    """Item 3.0-5.5 s whose take ends at 4.5 s and loops: REAPER plays the audio again after
    4.5 s. The new part used to start there, replacing the repeat the user hears, without a word."""
    layer = continuation_layer(world, startoffs=10.5)
    layer["items"][0]["loopsrc"] = 1
    sc = scenario(world, ts=ts, dialog=[{"ok": True, "values": []}], actions=[{"script": getattr(h, script)}],
                  extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "The selected item loops its source: from 4.500 s on it plays its audio again" in message["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []


def test_an_item_that_loops_its_source_but_never_reaches_its_end_is_extended_as_any_other(world):
    layer = continuation_layer(world, startoffs=1.5)
    layer["items"][0]["loopsrc"] = 1
    sc = scenario(world, ts=(4.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and h.job_request(result)["regenerate"] == [1.0, 4.0]


@pytest.mark.parametrize("position, length, ts, script, uncovered", [
    (1.0, 5.0, (3.5, 4.0), "REPAIR", "1.000 s to 2.000 s"),     # the item starts before the picture (2-10 s)
    (8.0, 3.5, (8.5, 9.0), "REPAIR", "10.000 s to 11.500 s"),   # it ends after it
    (1.0, 3.0, (3.5, 6.0), "EXTEND", "1.000 s to 2.000 s"),
    (8.0, 2.5, (9.0, 12.0), "EXTEND", "10.000 s to 10.500 s"),
], ids=["repair-before", "repair-after", "extend-before", "extend-after"])
def test_a_continuation_of_an_item_outside_the_picture_is_refused_before_the_take_is_lost(world, position, length,
                                                                                          ts, script, uncovered):
    # the new take is made over the picture only: the take's audio outside it came back silent
    sc = scenario(world, ts=ts, dialog=[{"ok": True, "values": []}], actions=[{"script": getattr(h, script)}],
                  extra_tracks=[continuation_layer(world, position=position, length=length)])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert f"The selected item reaches outside the picture: {uncovered} has no video under it" in message["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    assert len(layer["items"][0]["takes"]) == 1


def test_a_take_switched_or_slipped_while_the_dialog_is_open_is_no_move_away_from_the_picture(world):
    """The kept take is the item's active one as the job starts; where its sound started was read
    before the dialog, so a slip while it was open threw the finished job away as "moved apart"."""
    sc = scenario(world, ts=(4.0, 7.0), dialog=[], actions=[{"script": h.EXTEND}],
                  extra_tracks=[continuation_layer(world, startoffs=1.5)],
                  imgui=[{"move_item": {"track": 3, "item": 1, "slip": 0.25}}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert h.job_request(result)["take_offset"] == pytest.approx(1.75)
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    assert layer["items"][0]["active_take"] == 2


def test_a_continuation_refused_after_a_tab_switch_gives_times_on_its_projects_ruler(world):
    """The take's project starts at 01:00:00:00; the user switched to a tab starting at 0 while
    the dialog was open: the refusal (said after the dialog) reads the take's ruler."""
    other = {"project_path": str(world["tmp"]), "time_offset": 0.0, "tracks": [{"name": "Other", "items": []}]}
    sc = scenario(world, ts=(3.5, 4.0), dialog=[], actions=[{"script": h.REPAIR}], time_offset=3600.0,
                  projects=[other], extra_tracks=[continuation_layer(world, position=1.0, length=5.0)],
                  imgui=[{"switch_to_project": 2}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "reaches outside the picture: 3601.000 s to 3602.000 s has no video" in message["message"]


def test_an_extension_past_the_pictures_end_of_an_item_inside_it_is_made_up_to_the_picture(world):
    # nothing of the take lies outside the picture (2-10 s): the new part stops where the picture does
    sc = scenario(world, ts=(7.0, 11.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[continuation_layer(world, position=6.0, length=2.5)])
    result = h.run_scenario(world["tmp"], sc)
    request = h.job_request(result)
    assert request["regenerate"] == [1.0, 4.0] and request["region"]["project_end"] == 10.0
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    assert_exact_placement(layer["items"][0], 6.0, 10.0)


def test_extend_over_a_crossfaded_next_item_is_refused(world):
    layer = continuation_layer(world)
    layer["items"].append({"position": 5.4, "length": 2.6, "takes": [{"file": str(world["foley"]), "name": "door slam"}]})
    sc = scenario(world, ts=(4.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[layer])
    [message] = h.run_scenario(world["tmp"], sc)["messages"]
    assert 'would run over "door slam" (from 5.400 s)' in message["message"]


@pytest.mark.parametrize("script", [h.EXTEND, h.REPAIR, h.REGENERATE])
def test_a_locked_item_is_left_as_it_is(world, script):
    layer = continuation_layer(world)
    layer["items"][0]["lock"] = 1
    sc = scenario(world, ts=(3.5, 4.0) if script == h.REPAIR else (4.0, 7.0), dialog=[{"ok": True, "values": []}],
                  actions=[{"script": script}], extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "The selected StepFoley item is locked" in message["message"]
    assert result["dialogs"] == [] and h.generation_commands(result) == [] and result["undo"] == []


def test_extend_over_the_next_item_on_the_track_is_refused_before_the_dialog(world):
    """"door slam" starts at 6.0 s on the same track: extending "door creak" to 7.0 s would play
    over it without having heard it."""
    layer = continuation_layer(world)
    meta = {"caption": "door slam", "seed": 3, "negatives": {"mode": "none", "tracks": []}}
    layer["items"].append({"position": 6.0, "length": 2.0, "takes": [
        {"file": str(world["foley"]), "name": "door slam", "ext": {"stepfoley_metadata": json.dumps(meta)}}]})
    sc = scenario(world, ts=(4.0, 7.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.EXTEND}],
                  extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert 'would run over "door slam" (from 6.000 s) on the same track' in message["message"]
    assert result["dialogs"] == [] and h.generation_commands(result) == [] and result["undo"] == []


TAKE_SOUND = {"vol": 0.5, "pan": -0.25, "panlaw": 0.5, "chanmode": 3, "pitch": 2.0, "ppitch": 1, "pitchmode": 393219,
              "takefx_nch": 4}
DEFAULT_SOUND = {"vol": 1.0, "pan": 0.0, "panlaw": -1.0, "chanmode": 0, "pitch": 0.0, "ppitch": 0, "pitchmode": -1,
                 "takefx_nch": 2}


@pytest.mark.parametrize("script, ts", [(h.EXTEND, (4.0, 7.0)), (h.REPAIR, (3.5, 4.0))], ids=["extend", "repair"])
def test_a_continued_take_sounds_like_the_take_it_keeps(world, script, ts):
    """The new take of Extend and Repair holds the old take's audio sample for sample, so it
    plays with the old take's volume, pan and pan law, channel mode, pitch and take FX channels:
    the kept part sounds as before."""
    sc = scenario(world, ts=ts, dialog=[{"ok": True, "values": []}], actions=[{"script": script}],
                  extra_tracks=[continuation_layer(world, **TAKE_SOUND)])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    [item] = layer["items"]
    old, new = item["takes"]
    assert item["active_take"] == 2
    assert {k: old[k] for k in TAKE_SOUND} == {k: new[k] for k in TAKE_SOUND} == TAKE_SOUND


@pytest.mark.parametrize("script, ts", [(h.EXTEND, (4.0, 7.0)), (h.REPAIR, (3.5, 4.0))], ids=["extend", "repair"])
def test_a_continued_take_keeps_the_take_fx(world, script, ts):
    sc = scenario(world, ts=ts, dialog=[{"ok": True, "values": []}], actions=[{"script": script}],
                  extra_tracks=[continuation_layer(world, fx=["ReaEQ", "ReaComp"])])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    old, new = layer["items"][0]["takes"]
    assert old["fx"] == new["fx"] == ["ReaEQ", "ReaComp"]


def test_a_regenerated_take_is_a_new_sound(world):
    # Regenerate makes the whole take anew: it starts from REAPER's defaults
    meta = {"caption": "door creak", "seed": 11, "negatives": {"mode": "none", "tracks": []}}
    layer = stepfoley_layer(world, "door creak", meta, selected=True)
    layer["items"][0]["takes"][0].update(TAKE_SOUND)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], actions=[{"script": h.REGENERATE}], extra_tracks=[layer])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    new = layer["items"][0]["takes"][1]
    assert {k: new[k] for k in DEFAULT_SOUND} == DEFAULT_SOUND


def test_a_tenth_of_a_second_can_be_regenerated_whatever_the_rounding(world):
    assert 3.3 - 3.2 < 0.1
    sc = scenario(world, ts=(3.2, 3.3), dialog=[{"ok": True, "values": []}], actions=[{"script": h.REPAIR}],
                  extra_tracks=[continuation_layer(world)])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and h.job_request(result)["regenerate"] == pytest.approx([0.2, 0.3])


def test_regenerate_inside_keeps_the_rest_of_the_take(world):
    sc = scenario(world, ts=(3.5, 4.0), dialog=[{"ok": True, "values": []}], actions=[{"script": h.REPAIR}],
                  extra_tracks=[continuation_layer(world)])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    request = h.job_request(result)
    assert (request["take_offset"], request["regenerate"]) == (0.0, [0.5, 1.0])
    assert (request["region"]["project_start"], request["region"]["project_end"]) == (3.0, 5.5)
    [layer] = [t for t in result["tracks"] if t["name"] == "door creak"]
    [item] = layer["items"]
    assert_exact_placement(item, 3.0, 5.5) and item["active_take"] == 2
    assert result["undo"] == ['StepFoley: regenerate part of "door creak"']


@pytest.mark.parametrize("script, ts, take, env, words", [
    (h.EXTEND, (4.0, 5.0), {}, {}, "Make the time selection end after the selected item"),
    (h.EXTEND, (3.0, 7.0), {}, {}, "nothing of the take would be kept"),
    (h.REPAIR, (2.0, 4.0), {}, {}, "Make the time selection inside the selected item"),
    (h.REPAIR, (3.0, 5.5), {}, {}, "Nothing of the take would be kept"),
    (h.REPAIR, (3.5, 4.0), {"playrate": 2.0}, {}, "plays its take at another rate"),
    (h.EXTEND, (4.0, 7.0), {"stretch_markers": 3}, {}, "stretch markers, take envelopes or spectral edits"),
    (h.REPAIR, (3.5, 4.0), {"envelopes": 1}, {}, "stretch markers, take envelopes or spectral edits"),
    (h.EXTEND, (4.0, 7.0), {"spectral_edits": 2}, {}, "stretch markers, take envelopes or spectral edits"),
    (h.REPAIR, (3.5, 4.0), {}, {"STEPFOLEY_STANDIN_PROTOCOL": "1"}, "older than protocol 2"),
], ids=["extend-inside", "extend-all", "repair-outside", "repair-all", "playrate", "stretch-markers",
        "take-envelope", "spectral-edits", "old-engine"])
def test_extend_and_repair_refuse_what_they_cannot_keep(world, script, ts, take, env, words):
    sc = scenario(world, ts=ts, dialog=[{"ok": True, "values": []}], actions=[{"script": script}],
                  extra_tracks=[continuation_layer(world, **take)])
    result = h.run_scenario(world["tmp"], sc, env_extra=env)
    assert words in result["messages"][0]["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []


def test_a_project_folder_with_a_semicolon_still_bounces_the_layers(world, tmp_path):
    """REAPER lists the files a render writes separated by ";": a job folder under "Scene 12;
    take 2" would read as two files, so the job files go to REAPER's resource folder."""
    proj = tmp_path / "Scene 12; take 2"
    proj.mkdir()
    layer = stepfoley_layer(world, "steps", {"caption": "steps on wood"})
    result = h.run_scenario(world["tmp"], scenario(world, project_path=str(proj), extra_tracks=[layer]))
    assert result["messages"] == [] and len(result["renders"]) == 1
    request = job_request(result)
    assert request["existing_mix"].startswith(str(tmp_path / "reaper resource" / "StepFoley" / "jobs"))
    [track] = [t for t in new_tracks(result) if t["name"] != "steps"]
    assert Path(track["items"][0]["takes"][0]["source_file"]).parent == proj / "StepFoley"


@pytest.mark.parametrize("script, ts", [(h.EXTEND, (4.0, 7.0)), (h.REPAIR, (3.5, 4.0))], ids=["extend", "repair"])
def test_extend_and_repair_under_a_picture_at_another_rate_are_refused_before_any_bounce(world, script, ts):
    # a picture conformed from 25 to 24 frames per second: the engine would refuse it after the bounce
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 10.0,
                                                              "playrate": 0.96}]}
    sc = scenario(world, ts=ts, video_item=video_item, dialog=[{"ok": True, "values": []}],
                  actions=[{"script": script}], extra_tracks=[continuation_layer(world)])
    result = h.run_scenario(world["tmp"], sc)
    assert "The video item plays at rate 0.96" in result["messages"][0]["message"]
    assert result["renders"] == [] and h.generation_commands(result) == [] and result["undo"] == []


def test_regenerate_keeps_the_artists_notes_and_a_loop_the_new_take_fills(world):
    """A 2.5 s ambience looped over a 7.5 s item under the picture, with the artist's note: the
    new take fills the item, so loop source stays on (the old take still loops when chosen
    again), and the note stays above StepFoley's block, which a second regenerate replaces."""
    stem = world["tmp"] / "rain_001.wav"
    h.write_foley_wav(stem, 2.5, SR, seed=5)
    note = "DIRECTOR: approved take, keep level -3 dB in reel 2"
    layer = stepfoley_layer(world, "rain", {"caption": "rain on roof", "seed": 11,
                                            "negatives": {"mode": "none", "tracks": []}},
                            position=2.0, length=7.5, wav=stem, selected=True, loopsrc=1, notes=note)
    sc = scenario(world, ts=(0, 0), dialog=[{"ok": True, "values": []}] * 2, extra_tracks=[layer],
                  actions=[{"script": h.REGENERATE}, {"script": h.REGENERATE, "after_idle": True}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [item] = [t for t in result["tracks"] if t["name"] == "rain"][0]["items"]
    assert len(item["takes"]) == 3 and item["loopsrc"] == 1
    head, block = item["notes"].split("\n\n")
    assert head == note and block.startswith("StepFoley: rain on roof\n") and block.count("StepFoley: ") == 1
    assert block.splitlines()[-1] == "stem: " + item["takes"][2]["source_file"]


@pytest.mark.parametrize("muted", ["item", "track"])
def test_make_like_a_muted_item_is_refused_before_sending_silence(world, muted):
    ref = world["tmp"] / "reference.wav"
    h.write_foley_wav(ref, 3.0, SR, seed=40)
    target = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True)
    item = {"position": 7.0, "length": 2.0, "selected": True, "takes": [{"file": str(ref)}]}
    reference = {"name": "Reference", "items": [item]}
    (item if muted == "item" else reference)["mute"] = True
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[target, reference],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    assert 'The reference item "reference.wav" is not heard' in result["messages"][0]["message"]
    assert result["dialogs"] == [] and result["renders"] == [] and h.generation_commands(result) == []


def test_replace_this_layer_negating_all_the_others(world):
    """The first layer, made hearing nothing, is made again hearing every layer made after it:
    same caption, values and seed; its own track is not negated; the method hears the layers."""
    rain = world["tmp"] / "rain.wav"
    rain_samples = h.write_foley_wav(rain, 12.0, SR, seed=21)
    first = stepfoley_layer(world, "steps", {"caption": "steps", "method": "independent", "alpha": 5.0, "seed": 9,
                                             "negatives": {"mode": "none", "tracks": []}}, selected=True)
    later = stepfoley_layer(world, "rain", {"caption": "rain"}, wav=rain)
    music, _ = music_track(world)  # not a StepFoley track: not negated
    sc = scenario(world, dialog=[], extra_tracks=[first, later, music], actions=[{"script": h.REPLACE}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and result["dialogs"] == []
    request = job_request(result)
    assert request["seed"] == 9 and request["alpha"] == 5.0 and request["caption"] == "steps"
    assert request["method"] == "nag"  # independent hears nothing; the model's default nag does
    assert request["previous_captions"] == ["wind in the trees", "rain"]
    mix, _ = sf.read(request["existing_mix"])
    expected = world["foley_samples"][h.frames(3.0):h.frames(5.5)] + rain_samples[:h.frames(2.5)]
    np.testing.assert_allclose(mix[:, 0], expected, atol=1 / 2**21)
    [steps] = [t for t in result["tracks"] if t["name"] == "steps"]
    assert steps["items"][0]["active_take"] == 2
    assert result["undo"] == ['StepFoley: replace layer "steps"']


def test_replace_a_layer_made_with_the_default_method(world):
    """A layer made with the Method field left empty stores no method: Replace uses the model's
    default when it hears the layers (the stand-in's nag), not the first other one that does."""
    first = stepfoley_layer(world, "steps", {"caption": "steps", "seed": 9, "negatives": {"mode": "none", "tracks": []}},
                            selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, dialog=[], extra_tracks=[first],
                                                   actions=[{"script": h.REPLACE}]))
    assert result["messages"] == []
    request = job_request(result)
    assert request["method"] == h.STANDIN_DEFAULTS["method"] == "nag"
    assert request["previous_captions"] == ["wind in the trees"] and request["seed"] == 9


def test_replace_a_layer_made_to_sound_like_a_reference_drops_the_pull_toward_it(world):
    """A take made by "Make selected item sound like this" stored the reference method and, as
    beta, the pull toward that recording: Replace leaves both to the engine (as Regenerate does)
    and keeps the caption, alpha and seed."""
    meta = {"caption": "steps", "method": "reference", "alpha": 5.0, "beta": 6.0, "seed": 9,
            "reference": "my recording.wav", "negatives": {"mode": "none", "tracks": []}}
    first = stepfoley_layer(world, "steps", meta, selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, dialog=[], extra_tracks=[first],
                                                   actions=[{"script": h.REPLACE}]))
    assert result["messages"] == []
    request = job_request(result)
    assert request["method"] == h.STANDIN_DEFAULTS["method"] == "nag" and "beta" not in request
    assert request["alpha"] == 5.0 and request["seed"] == 9 and request["caption"] == "steps"
    assert "reference_audio" not in request


def test_replace_needs_a_method_that_hears_the_layers(world):
    first = stepfoley_layer(world, "steps", {"caption": "steps"}, selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, extra_tracks=[first], actions=[{"script": h.REPLACE}]),
                            env_extra={"STEPFOLEY_STANDIN_CAPS": "no_controlnet"})
    [msg] = result["messages"]
    assert "no method that hears the other layers" in msg["message"]
    assert h.generation_commands(result) == [] and result["renders"] == []


def test_make_selected_item_sound_like_another_item(world):
    ref = world["tmp"] / "reference.wav"
    ref_samples = h.write_foley_wav(ref, 3.0, SR, seed=40)
    target = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True)
    reference = {"name": "Recordings", "items": [{"position": 7.0, "length": 2.0, "selected": True, "vol": 0.5,
                                                  "takes": [{"file": str(ref), "startoffs": 0.5}]}]}
    sc = scenario(world, dialog=[{"ok": True, "values": [None, None, "0.8"]}], extra_tracks=[target, reference],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [dialog] = result["dialogs"]
    assert dialog["captions"] == ["Caption (what you hear)", "Alpha: text guidance (empty = 3)",
                                  "Beta: pull toward the reference (empty = 2)", "Seed (empty = random)",
                                  "Steps (empty = 3)"]
    assert dialog["defaults"].split("\n")[0] == "steps on wood"
    request = job_request(result)
    assert request["method"] == "reference" and request["beta"] == 0.8
    assert "existing_mix" not in request and request["previous_captions"] == []
    # the reference is what is heard of the item: 0.5 s into the file, at half volume, 2 s long
    heard, _ = sf.read(request["reference_audio"])
    np.testing.assert_allclose(heard[:, 0], 0.5 * ref_samples[h.frames(0.5):h.frames(2.5)], atol=1 / 2**22)
    [steps] = [t for t in result["tracks"] if t["name"] == "steps"]
    new = h.take_meta(steps["items"][0]["takes"][1])
    assert new["method"] == "reference" and new["reference"] == "reference.wav" and "reference_audio" not in new
    assert result["undo"] == ['StepFoley: make "steps on wood" sound like reference.wav']


@pytest.mark.parametrize("position, length, heard_from", [
    (0.0, 20.0, 3.0), (30.0, 20.0, 0.0), (5.45, 20.0, 0.0), (0.0, 4.0, 1.5)],
    ids=["under the picture", "elsewhere", "overlapping by 50 ms", "ending inside the picture"])
def test_a_long_reference_item_is_rendered_for_as_long_as_the_picture(world, position, length, heard_from):
    """The production sound of a whole scene as the reference: the engine hears as much of it as
    the picture lasts, from its start, and the whole item was rendered (minutes for a reel, a
    file the engine then refused past 1 GiB) and the sound from its start sent, not the part under
    the picture. A window as long as the picture is now taken within the item, over the picture
    as far as the item lets it (an overlap alone sent 50 ms, which the engine refuses)."""
    ref = world["tmp"] / "production.wav"
    ref_samples = h.write_foley_wav(ref, 20.0, SR, seed=41)
    target = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True)  # 3.0-5.5 s
    reference = {"name": "Production", "items": [{"position": position, "length": length, "selected": True,
                                                  "takes": [{"file": str(ref)}]}]}
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[target, reference],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    heard, _ = sf.read(job_request(result)["reference_audio"])
    assert len(heard) == h.frames(2.5)
    np.testing.assert_allclose(heard[:, 0], ref_samples[h.frames(heard_from):h.frames(heard_from + 2.5)],
                               atol=1 / 2**22)


def test_an_empty_item_as_the_reference_is_said_to_be_empty_not_muted(world):
    target = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True)
    empty = {"name": "Notes", "items": [{"position": 7.0, "length": 2.0, "selected": True, "takes": []}]}
    result = h.run_scenario(world["tmp"], scenario(world, dialog=[{"ok": True, "values": []}],
                                                   extra_tracks=[target, empty], actions=[{"script": h.SOUND_LIKE}]))
    [message] = [m["message"] for m in result["messages"]]
    assert message.startswith("The other selected item is empty: it has no take, so there is nothing to sound like.")
    assert result["renders"] == [] and h.generation_commands(result) == []


def test_no_picture_under_the_item_is_said_before_the_reference_file_is_asked_for(world):
    """The file dialog came first; only after a file was picked was the artist told there is no
    picture under the item (helper 199)."""
    reference = world["tmp"] / "reference.wav"
    h.write_foley_wav(reference, 3.0, SR, seed=40)
    target = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, position=10.5, length=1.0,
                             selected=True)
    result = h.run_scenario(world["tmp"], scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[target],
                                                   file_answers=[str(reference)], actions=[{"script": h.SOUND_LIKE}]))
    [message] = [m["message"] for m in result["messages"]]
    assert "There is no video item under" in message
    assert not any(d.get("file_dialog") for d in result["dialogs"])


def test_make_selected_item_sound_like_a_file(world):
    ref = world["tmp"] / "my reference.wav"
    h.write_foley_wav(ref, 3.0, SR, seed=40)
    target = stepfoley_layer(world, "steps", {"caption": "steps"}, selected=True)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[target], file_answers=[str(ref)],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert job_request(result)["reference_audio"] == str(ref)
    assert result["undo"] == ['StepFoley: make "steps" sound like my reference.wav']


@pytest.mark.parametrize("answer", [6, 7, 2])
def test_make_like_this_with_two_stepfoley_items_asks_which_changes(world, answer):
    """Either of two selected StepFoley layers could be the one to change: the user is asked
    (Yes: the upper one, No: the other, Cancel: nothing happens)."""
    steps = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True)
    gravel = stepfoley_layer(world, "gravel", {"caption": "steps on gravel", "seed": 4}, position=6.0, selected=True)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[steps, gravel], message_answers=[answer],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    [question] = result["messages"]
    assert question["type"] == 3
    assert ('"steps on wood" (track "steps") again to sound like "steps on gravel" (track "gravel")'
            in question["message"])
    if answer == 2:
        assert result["dialogs"] == [] and h.generation_commands(result) == [] and result["undo"] == []
        return
    changed, reference = ("steps", "gravel") if answer == 6 else ("gravel", "steps")
    assert job_request(result)["method"] == "reference"
    layers = {t["name"]: t for t in result["tracks"]}
    assert len(layers[changed]["items"][0]["takes"]) == 2 and len(layers[reference]["items"][0]["takes"]) == 1
    caption = {"steps": "steps on wood", "gravel": "steps on gravel"}
    assert result["undo"] == [f'StepFoley: make "{caption[changed]}" sound like {reference}']


@pytest.mark.parametrize("locked, answer, changed", [("gravel", 7, None), ("gravel", 6, "steps"),
                                                     ("steps", 7, "gravel"), ("steps", 6, None)])
def test_make_like_this_checks_the_lock_of_the_item_that_changes(world, locked, answer, changed):
    """Of two selected StepFoley layers, one locked: the lock refuses only when the user picks
    the locked one to change (Yes: the upper one, "steps"; No: "gravel"), never the other."""
    steps = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True)
    gravel = stepfoley_layer(world, "gravel", {"caption": "steps on gravel", "seed": 4}, position=6.0, selected=True)
    {"steps": steps, "gravel": gravel}[locked]["items"][0]["lock"] = 1
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[steps, gravel], message_answers=[answer],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    question, *refusal = result["messages"]
    assert question["type"] == 3
    takes = {t["name"]: len(t["items"][0]["takes"]) for t in result["tracks"] if t["name"] in ("steps", "gravel")}
    if changed is None:
        [message] = refusal
        assert "The selected StepFoley item is locked" in message["message"]
        assert result["dialogs"] == [] and h.generation_commands(result) == [] and result["undo"] == []
        assert takes == {"steps": 1, "gravel": 1}
        return
    assert refusal == [] and job_request(result)["method"] == "reference"
    assert takes == {changed: 2, locked: 1}


def test_make_like_a_recording_leaves_a_locked_item_as_it_is(world):
    ref = world["tmp"] / "reference.wav"
    h.write_foley_wav(ref, 3.0, SR, seed=40)
    target = stepfoley_layer(world, "steps", {"caption": "steps on wood", "seed": 3}, selected=True, lock=1)
    reference = {"name": "Recordings", "items": [{"position": 7.0, "length": 2.0, "selected": True,
                                                  "takes": [{"file": str(ref)}]}]}
    sc = scenario(world, dialog=[{"ok": True, "values": []}], extra_tracks=[target, reference],
                  actions=[{"script": h.SOUND_LIKE}])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert "The selected StepFoley item is locked" in message["message"]
    assert result["dialogs"] == [] and result["renders"] == [] and h.generation_commands(result) == []


FOLLOW = "StepFoley_Generate Foley track following selected envelope.lua"


def envelope_track(name, chunk):
    """An empty track whose selected envelope REAPER shows as `name`: -6 dB at 3.0 s rising to 0 dB at 5.5 s."""
    return {"name": "Loudness", "items": [], "envelopes": [{
        "name": name, "chunk": chunk, "scaling_mode": 1, "selected": True,
        "points": [[3.0, 10 ** (-6 / 20), 0], [5.5, 1.0, 0]]}]}


@pytest.mark.parametrize("name, chunk", [("Lautst\u00e4rke", "<VOLENV2"), ("Lautst\u00e4rke (Pre-FX)", "<VOLENV"),
                                         ("Trim-Lautst\u00e4rke", "<VOLENV3")], ids=["volume", "pre-fx", "trim"])
def test_a_volume_envelope_is_followed_whatever_reapers_language(world, name, chunk):
    """With a LangPack, REAPER shows a track's Volume envelope under a translated name (German:
    "Lautst\u00e4rke"). It was refused as "not a Volume envelope"; it is one, whatever it is called."""
    sc = scenario(world, actions=[{"script": FOLLOW}], extra_tracks=[envelope_track(name, chunk)])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    curve = job_request(result)["loudness_curve"]
    assert curve[0][1] == pytest.approx(-29.0) and curve[-1][1] == pytest.approx(-23.0)
    assert len(new_tracks(result, known=("Picture", "wind", "Loudness"))) == 1


def test_a_translated_envelope_that_is_not_a_volume_is_refused_by_the_name_the_user_sees(world):
    sc = scenario(world, actions=[{"script": FOLLOW}], extra_tracks=[envelope_track("Panorama", "<PANENV2")])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    assert 'The selected envelope is "Panorama"' in message["message"]
    assert h.generation_commands(result) == [] and result["undo"] == []

def test_settings_saved_and_checked(world):
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", str(world["client"]), "60", "15", "takes", "1",
                                                         "30"]}],
                  actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], sc)
    saved = result["extstate"]["StepFoley"]
    assert (saved["port"], saved["watchdog_s"], saved["start_timeout_s"], saved["variations_as"],
            saved["keep_job_files"], saved["job_days"]) == ("9100", "60", "15", "takes", "1", "30")
    captions = result["dialogs"][0]["captions"]
    assert not any("lpha" in c or "ethod" in c for c in captions)  # the model's, not settings
    bad = scenario(world, dialog=[{"ok": True, "values": ["99999"]}], actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], bad)
    assert "Engine port" in result["messages"][0]["message"]
    assert "port" not in result["extstate"]["StepFoley"]


@pytest.mark.parametrize("older, said", [
    ("StepFoley_lib.lua", "StepFoley_lib.lua is older than this action (0.5.39)"),
    ("StepFoley_lib_engine.lua", "StepFoley's files are from different versions: StepFoley_lib_engine.lua is of an "
                                 "older version, StepFoley_lib.lua is 0.5.39."),
])
def test_an_older_file_left_among_a_releases_files_is_named(world, tmp_path, older, said):
    """A manual install that kept one file of 0.5.14: the library of that release called
    functions the new actions need and did not have (a bare "attempt to call a nil value"), and an
    older part was loaded as if it belonged."""
    import shutil
    import subprocess

    done = subprocess.run(["git", "show", f"f270463:reaper_scripts/{older}"], cwd=h.REPO, capture_output=True)
    if done.returncode != 0:
        pytest.skip("needs the repository's history (0.5.14's files)")
    mixed = tmp_path / "mixed"
    shutil.copytree(h.SCRIPTS, mixed)
    (mixed / older).write_bytes(done.stdout)
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", str(world["client"]), "60", "15", "takes", "1", "30"]}],
                  actions=[{"script": h.SETTINGS}])
    sc["scripts_dir"] = str(mixed)
    (tmp_path / "scenario.json").write_text(json.dumps({**sc, "exec_log": str(tmp_path / "client.log"),
                                                        "resource_path": str(tmp_path / "res")}), encoding="utf-8")
    ran = h.run_lua_file(h.DRIVER, str(tmp_path / "scenario.json"), str(tmp_path / "result.json"),
                         env=dict(os.environ, STEPFOLEY_FAKE_CLOCK=str(tmp_path / "clock")))
    assert ran.returncode == 0, ran.stderr
    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    [error] = result["script_errors"]
    assert said in error and "Install every StepFoley_*.lua file of one release into one folder" in error
    assert "port" not in result["extstate"].get("StepFoley", {})


@pytest.mark.parametrize("name", ["Pro$ Tools/stepfoley", "tools/stepfoley.bat"])
def test_settings_refuse_a_client_path_the_actions_could_not_start(world, name):
    # saved with only a console line, then every Generate, Engine status and Verify refused it
    import shutil

    client = world["tmp"] / name
    client.parent.mkdir()
    shutil.copy2(world["client"], client)
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", str(client), "60", "15", "takes", "1", "30"]}],
                  actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], sc)
    [message] = result["messages"]
    said = "cannot be put on a command line" if "$" in name else "is a batch file (.bat or .cmd)"
    assert said in message["message"] and message["message"].endswith("Nothing was changed."), message
    assert "port" not in result["extstate"].get("StepFoley", {})


def test_settings_take_a_client_path_pasted_with_its_quotes(world):
    # Windows Explorer's "Copy as path" gives "C:\...\stepfoley.exe" with the quotes; it was
    # refused as: No file at ""...stepfoley"", the doubled quotes hiding why
    pasted = f'"{world["client"]}"'
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", pasted, "60", "15", "takes", "1", "30"]}],
                  actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and result["extstate"]["StepFoley"]["client"] == str(world["client"])


def test_settings_take_the_home_relative_path_the_docs_write_and_a_number_in_one_form(world):
    """docs/reaper.md says ~/stepfoley-venv/bin/stepfoley; it was refused as 'No file at "~/..."'.
    "180,5" (a decimal comma) was read as 180.5 under a German number locale only, and
    refused elsewhere without a word on why."""
    home = Path(world["client"]).parent.parent
    relative = "~/" + str(Path(world["client"]).relative_to(home))
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", relative, "60", "15", "takes", "1", "30"]}],
                  actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"HOME": str(home)})
    assert result["messages"] == [] and result["extstate"]["StepFoley"]["client"] == str(world["client"])
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", "", "180,5", "15", "takes", "1", "30"]}],
                  actions=[{"script": h.SETTINGS}])
    [message] = h.run_scenario(world["tmp"], sc)["messages"]
    assert 'got "180,5". Write the decimal point as a dot (180.5). Nothing was changed.' in message["message"]


@pytest.mark.parametrize("folder", ["O'Neil tools", "Jane\u2019s tools", "tools (old"])
def test_settings_confirmed_unchanged_keep_a_client_path_with_quotes_or_a_parenthesis(world, folder):
    """A saved client path with an apostrophe (shown as a look-alike, REAPER's rules would move
    the fields after it), a typographic one typed by the user (kept as it is), or an unclosed
    parenthesis: OK without a change saves it as it was."""
    import shutil

    client = world["tmp"] / folder / world["client"].name
    client.parent.mkdir()
    shutil.copy2(world["client"], client)
    sc = scenario(world, dialog=[{"ok": True, "values": []}], actions=[{"script": h.SETTINGS}],
                  extstate=h.extstate(world, client=str(client), port="9100"))
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    saved = result["extstate"]["StepFoley"]
    assert saved["client"] == str(client) and saved["port"] == "9100"
    assert result["dialogs"][0]["shown"][1] == h.plain_dialog_text(str(client))


def test_a_caption_with_an_unclosed_parenthesis_keeps_the_next_dialogs_fields_in_place(world):
    sc = scenario(world, dialog=answers(caption="footsteps :(", method="independent", alpha="5"), actions=[
        {"script": h.MAIN}, {"script": h.MAIN, "after_idle": True}])
    sc["dialog_answers"] += answers(caption=None, method=None, alpha=None, seed="8")
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    assert result["dialogs"][1]["shown"] == ["footsteps :\uff08", "independent", "5", "", "", "", ""]
    second = h.job_requests(result)[1]
    assert (second["caption"], second["method"], second["alpha"], second["seed"]) == ("footsteps :(", "independent",
                                                                                     5.0, 8)


def test_engine_status_and_cancel_with_nothing_running(world):
    sc = scenario(world, actions=[{"script": h.STATUS}, {"script": h.CANCEL}])
    result = h.run_scenario(world["tmp"], sc)
    cancel, status = result["messages"]  # the status answers from the background
    assert str(world["client"]) in status["message"] and "9017" in status["message"]
    assert "No generation is running" in status["message"]
    assert "No StepFoley generation is running" in cancel["message"]
    assert "Engine: running. Model standin on cpu" in status["message"]
    assert "Model defaults: method nag, alpha 3, beta 2, steps 3." in status["message"]
    assert "  reference: sound like a reference recording" in status["message"]


def test_engine_status_of_an_engine_shutting_down(world):
    # it said "Engine: running", and the next Generate failed with engine_stopping
    result = h.run_scenario(world["tmp"], scenario(world, actions=[{"script": h.STATUS}]),
                            env_extra={"STEPFOLEY_STANDIN": "stopping"})
    [status] = result["messages"]
    assert "Engine: shutting down (it takes no new job: start it again once it has closed)." in status["message"]


def test_engine_status_counts_every_waiting_job_not_those_listed(world):
    """200 waiting: the engine's list is cut to fit its reply (queue_length counts them all), and
    the action said "64 job(s) waiting" (helper 194)."""
    result = h.run_scenario(world["tmp"], scenario(world, actions=[{"script": h.STATUS}]),
                            env_extra={"STEPFOLEY_STANDIN": "long_queue"})
    [status] = result["messages"]
    assert "Engine: running. Model standin on cpu; 200 job(s) waiting, 0 finished." in status["message"]


def test_engine_status_when_engine_is_down(world):
    result = h.run_scenario(world["tmp"], scenario(world, actions=[{"script": h.STATUS}]),
                            env_extra={"STEPFOLEY_STANDIN": "down"})
    [status] = result["messages"]
    assert "NOT answering" in status["message"] and "stepfoley serve --port 9017" in status["message"]
    # a window still open is an engine hung or paused (SIGSTOP), where starting another fails
    assert "if an engine window is open, check its port and token; one that shows no activity may be hung" \
        in status["message"]
