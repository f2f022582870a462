"""The REAPER actions, run under a real Lua 5.4 with the fake reaper module
(tests/reaper_fake/) against the stand-in `stepfoley send` (same arguments, status file,
cancel file and exit codes as docs/osc-protocol.md; it validates requests with
bridge.protocol). The same cases against a real `stepfoley serve` are in
tests/test_reaper_engine.py."""

from __future__ import annotations

import json
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
    meta = json.loads(take["ext"]["stepfoley_metadata"])
    assert meta["caption"] == CAPTION and meta["seed"] == 7 and meta["steps"] == 3
    assert meta["method"] == "nag" and meta["alpha"] == 4.5 and meta["beta"] == 1.5
    assert meta["region"] == {"video": str(world["video"]), "file_in": 1.0, "file_out": 3.5, "playrate": 1.0,
                              "project_start": 3.0, "project_end": 5.5}
    assert meta["previous_captions"] == ["wind in the trees"]
    assert meta["engine"]["model"] == "standin"
    assert CAPTION in item["notes"] and "seed 7" in item["notes"]
    # the stem: in the project's StepFoley folder, exactly the region long
    stem = Path(take["source_file"])
    assert stem.parent == world["proj"] / "StepFoley" and meta["stem_path"] == str(stem)
    wave, sr = sf.read(stem)
    assert sr == SR and len(wave) == h.frames(2.5)
    expected = 0.25 * np.sin(2 * np.pi * (100.0 + 7) * np.arange(len(wave)) / SR)
    np.testing.assert_allclose(wave, expected, atol=2 / 2**23)
    # the bounce: the Foley track over the region, master FX bypassed (gain 0.5 not applied)
    mix, mix_sr = sf.read(meta["existing_mix"])
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


def test_no_video_under_time_selection(world):
    result = h.run_scenario(world["tmp"], scenario(world, ts=(10.5, 11.5)))
    [msg] = result["messages"]
    assert "no video item" in msg["message"] and "10.500" in msg["message"]
    assert result["exec"] == [] and new_tracks(result) == [] and result["renders"] == []


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
    assert "runs past the picture" in result["console"]
    region = job_request(result)["region"]
    assert region["file_out"] == pytest.approx(5.0) and region["project_end"] == pytest.approx(6.0)
    [track] = new_tracks(result)
    assert_exact_placement(track["items"][0], 4.25, 6.0)


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
    assert new_tracks(result) == [] and result["undo"] == []
    assert result["elapsed_s"] < 10  # gave up at once, no hang
    assert json.loads(result["extstate"]["StepFoley"]["running_status_files"]) == []
    assert_project_untouched(result)


def test_client_that_never_starts(world):
    silent = world["tmp"] / "stepfoley"
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    sc = scenario(world, extstate={"StepFoley": {"client": str(silent), "start_timeout_s": "1"}})
    result = h.run_scenario(world["tmp"], sc)
    [msg] = result["messages"]
    assert "did not start" in msg["message"] and str(silent) in msg["message"]
    assert new_tracks(result) == []


def test_missing_client_path(world):
    sc = scenario(world, extstate={"StepFoley": {"client": "/nowhere/stepfoley"}})
    result = h.run_scenario(world["tmp"], sc)
    [msg] = result["messages"]
    assert "/nowhere/stepfoley" in msg["message"] and "Settings" in msg["message"]
    assert result["exec"] == [] and new_tracks(result) == []


def test_cancel_mid_generation(world):
    sc = scenario(world, dialog=answers(steps="40"),
                  actions=[{"script": h.MAIN}, {"script": h.CANCEL, "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert "cancel" in result["console"]
    [msg] = result["messages"]
    assert "cancelled" in msg["message"].lower()
    assert new_tracks(result) == [] and result["undo"] == []
    status_path = result["exec"][0].split('"--status" "')[1].split('"')[0]
    status = json.loads(Path(status_path).read_text())
    assert status["state"] == "cancelled" and 1 <= status["step"] < 40
    assert_project_untouched(result)


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
    assert str(tmp_path / "reaper resource" / "StepFoley" / "jobs") in result["exec"][0]
    [track] = new_tracks(result)
    take = track["items"][0]["takes"][0]
    assert Path(take["source_file"]).parent == proj / "StepFoley"
    assert json.loads(take["ext"]["stepfoley_metadata"])["region"]["video"] == str(video)
    assert len(sf.read(take["source_file"])[0]) == h.frames(2.5)


def test_selected_tracks_are_bounced_instead_of_marked_ones(world):
    music = world["tmp"] / "music.wav"
    music_samples = h.write_foley_wav(music, 12.0, SR, seed=9)
    extra = [{"name": "Music", "selected": True, "items": [{"position": 1.0, "length": 11.0,
                                                               "takes": [{"file": str(music)}]}]}]
    result = h.run_scenario(world["tmp"], scenario(world, extra_tracks=extra))
    meta = json.loads(new_tracks(result)[0]["items"][0]["takes"][0]["ext"]["stepfoley_metadata"])
    mix, _ = sf.read(meta["existing_mix"])
    src = music_samples[h.frames(2.0):h.frames(4.5)]  # item at 1 s: project 3.0 = file 2.0
    np.testing.assert_allclose(mix[:, 0], src, atol=1 / 2**22)
    assert meta["previous_captions"] == []
    assert [t["selected"] for t in result["tracks"] if t["name"] == "Music"] == [True]  # selection restored


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
    assert "Alpha" in msg["message"] and "lots" in msg["message"]
    # the dialog comes back with what was typed (then the user cancels it)
    first, again = result["dialogs"]
    assert again["defaults"].split("\n")[0] == CAPTION and again["defaults"].split("\n")[2] == "lots"
    assert result["exec"] == []


def test_variations_as_takes(world):
    sc = scenario(world, dialog=answers(seed="20", count=3), actions=[{"script": h.VARIATIONS}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [track] = new_tracks(result)
    [item] = track["items"]
    assert_exact_placement(item, 3.0, 5.5)
    seeds = [json.loads(t["ext"]["stepfoley_metadata"])["seed"] for t in item["takes"]]
    assert seeds == [20, 21, 22] and item["active_take"] == 1
    stems = {t["source_file"] for t in item["takes"]}
    assert len(stems) == 3 and all(len(sf.read(s)[0]) == h.frames(2.5) for s in stems)
    assert len(result["undo"]) == 1 and len(result["exec"]) == 3
    assert_project_untouched(result)


def test_regenerate_selected_item(world):
    first = h.run_scenario(world["tmp"], scenario(world))
    made = new_tracks(first)[0]
    item = dict(made["items"][0], selected=True)
    take = item["takes"][0]
    track = {"name": made["name"], "ext": made["ext"], "items": [{
        "position": item["position"], "length": item["length"], "selected": True,
        "takes": [{"file": take["source_file"], "ext": take["ext"], "name": take["name"]}]}]}
    sc = scenario(world, dialog=[], actions=[{"script": h.REGENERATE}], extra_tracks=[track])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and result["dialogs"] == []
    [regen] = [t for t in result["tracks"] if t["name"] == CAPTION]
    [it] = regen["items"]
    assert len(it["takes"]) == 2 and it["active_take"] == 2
    old, new = (json.loads(t["ext"]["stepfoley_metadata"]) for t in it["takes"])
    assert new["caption"] == old["caption"] and new["seed"] != old["seed"] and new["steps"] == 3
    assert new["previous_captions"] == ["wind in the trees"]  # its own track is not bounced
    assert_exact_placement(it, 3.0, 5.5)
    assert result["undo"] == [f'StepFoley: regenerate "{CAPTION}"']


def test_regenerate_needs_a_stepfoley_item(world):
    result = h.run_scenario(world["tmp"], scenario(world, actions=[{"script": h.REGENERATE}]))
    assert "Select a StepFoley item" in result["messages"][0]["message"]


def test_settings_saved_and_checked(world):
    sc = scenario(world, dialog=[{"ok": True, "values": ["9100", str(world["client"]), "independent", "3",
                                                         "0", "10", "60"]}],
                  actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], sc)
    saved = result["extstate"]["StepFoley"]
    assert saved["port"] == "9100" and saved["method"] == "independent" and saved["steps"] == "10"
    bad = scenario(world, dialog=[{"ok": True, "values": ["99999"]}], actions=[{"script": h.SETTINGS}])
    result = h.run_scenario(world["tmp"], bad)
    assert "Engine port" in result["messages"][0]["message"]
    assert "port" not in result["extstate"]["StepFoley"]


def test_engine_status_and_cancel_with_nothing_running(world):
    sc = scenario(world, actions=[{"script": h.STATUS}, {"script": h.CANCEL}])
    result = h.run_scenario(world["tmp"], sc)
    status, cancel = result["messages"]
    assert str(world["client"]) in status["message"] and "9017" in status["message"]
    assert "No generation is running" in status["message"]
    assert "No StepFoley generation is running" in cancel["message"]
    assert "Engine: running" in status["message"] and "standin" in status["message"]


def test_engine_status_when_engine_is_down(world):
    result = h.run_scenario(world["tmp"], scenario(world, actions=[{"script": h.STATUS}]),
                            env_extra={"STEPFOLEY_STANDIN": "down"})
    [status] = result["messages"]
    assert "NOT answering" in status["message"] and "stepfoley serve --port 9017" in status["message"]
