"""A generation survives project tabs, stops, slow engines, flaky status reads and real paths:
the Lua actions under the fake `reaper` (several tabs, per-script atexit, REAPER's command-line
splitting) against the stand-in `stepfoley send` (tests/reaper_fake/standin_send.py)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")

SR = h.SR


@pytest.fixture
def world(tmp_path):
    return h.make_world(tmp_path)


def other_tab(world) -> dict:
    return {"project_path": str(world["tmp"]), "tracks": [
        h.foley_track("Other A", world["foley"], None), {"name": "Other B", "items": []}]}


def other_tab_untouched(result):
    [_, other] = result["projects"]
    assert [t["name"] for t in other["tracks"]] == ["Other A", "Other B"]
    assert [len(t["items"]) for t in other["tracks"]] == [1, 0]


def wait_for_state(path: Path, state: str, seconds: float = 60.0) -> dict:
    """The stand-in runs on after the driver ends; wait for it to reach `state`."""
    end = time.time() + seconds
    while True:
        status = json.loads(path.read_text(encoding="utf-8"))
        if status["state"] == state or time.time() > end:
            return status
        time.sleep(0.05)


# --- 2. the result goes to the generation's project, whatever tab is active -----------------

@pytest.mark.parametrize("missing_api", [[], ["InsertTrackInProject"]])
def test_switching_tabs_while_generating(world, missing_api):
    # missing_api: REAPER before 7.18 has no InsertTrackInProject
    sc = h.scenario(world, dialog=h.answers(steps="6"), projects=[other_tab(world)], missing_api=missing_api,
                    actions=[{"script": h.MAIN}, {"switch_to_project": 2, "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert result["messages"] == []
    assert [t["name"] for t in result["tracks"]] == ["Picture", "wind", h.CAPTION]
    [track] = h.new_tracks(result)
    assert track["ext"] == {"stepfoley": "1"} and len(track["items"]) == 1
    other_tab_untouched(result)
    assert result["active_project"] == 2  # the user's tab stays the active one
    assert result["undo"] == [f'StepFoley: add Foley track "{h.CAPTION}"'] and result["undo_depth"] == 0
    assert result["peaks_built"] == []  # the action would run in the user's tab, not the generation's


def slow_to_answer_client(world, seconds: float = 2.0) -> Path:
    """The stand-in client, taking `seconds` of the fake REAPER's clock to answer --engine-status
    (a slow Python start). That clock, not the machine's, so the scenario's timed actions
    happen before the answer however loaded the machine is (a wall-clock wait of 2 s could
    end before a busy driver's 0.8 s); two minutes of the machine's clock end it regardless."""
    import os
    import stat

    exe = world["tmp"] / "slow bin" / "stepfoley"
    exe.parent.mkdir()
    wait = (f'n=0; until awk -v at={seconds} \'{{exit !($1 >= at)}}\' "$STEPFOLEY_FAKE_CLOCK" 2>/dev/null'
            ' || [ $n -ge 6000 ]; do sleep 0.02; n=$((n + 1)); done')
    exe.write_text(f'#!/bin/sh\ncase " $* " in *" --engine-status "*) {wait};; esac\n'
                   f'exec "{world["client"]}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    assert os.access(exe, os.X_OK)
    return exe


@pytest.mark.parametrize("script, words", [(h.MAIN, "project was closed while StepFoley asked the engine"),
                                           (h.VERIFY, "The project was closed during the check")])
def test_closing_the_tab_while_the_engine_is_asked(world, script, words):
    """The user closes the generation's tab while the client starts: nothing is done to the
    closed project (REAPER refuses its pointer) and the user is told, not left with a script
    error."""
    world["client"] = slow_to_answer_client(world)
    sc = h.scenario(world, projects=[other_tab(world)],
                    actions=[{"script": script}, {"switch_to_project": 2, "at_s": 0.5}, {"close_project": 1, "at_s": 0.8}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["script_errors"] == [] and any(words in m["message"] for m in result["messages"]), result["messages"]


def test_switching_tabs_while_the_dialog_is_open(world):
    """The ReaImGui window leaves REAPER usable: the user clicks another project tab before
    Generate. REAPER renders the ACTIVE tab whatever project an action is given, so the bounce
    must render the generation's project (and give the user's tab back afterwards)."""
    sc = h.scenario(world, dialog=[], projects=[other_tab(world)], imgui=[
        {"type": "caption", "text": "steps"}, {"switch_to_project": 2}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    mix, _ = sf.read(h.job_request(result)["existing_mix"])
    np.testing.assert_allclose(mix[:, 0], world["foley_samples"][h.frames(3.0):h.frames(5.5)], atol=1 / 2**22)
    assert [t["name"] for t in result["tracks"]] == ["Picture", "wind", "steps"]
    other_tab_untouched(result)
    assert result["active_project"] == 2  # the user's tab stays the active one
    h.assert_render_settings_restored(result)


def test_times_said_after_a_tab_switch_are_on_the_generations_ruler(world):
    """The generation's project starts at 01:00:00:00, the tab the user switched to while the
    dialog was open at 0: the note that only part of the range has picture reads the
    generation's ruler (it read the active tab's: 4.250 s for 3604.250 s)."""
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(world["video"]), "length": 5.0,
                                                                "startoffs": 1.0}]}
    sc = h.scenario(world, ts=(4.25, 9.0), video_item=video_item, time_offset=3600.0, dialog=[],
                    projects=[{**other_tab(world), "time_offset": 0.0}],
                    imgui=[{"type": "caption", "text": "steps"}, {"switch_to_project": 2}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and result["active_project"] == 2
    assert "over only 3604.250 s to 3606.000 s of the range" in result["console"]


@pytest.mark.parametrize("move, shift", [({"by": 1.5}, 1.5), ({"slip": 0.5}, -0.5), ({"by": 1.0, "slip": 0.25}, 0.75)])
def test_the_new_track_follows_the_picture_moved_while_generating(world, move, shift):
    """REAPER stays usable while the engine works: the editor drags the picture (a ripple edit)
    or slips it in its item. The stem was made for the picture's frames, so it goes where those
    frames play now (it went to the old place, off picture by the move)."""
    sc = h.scenario(world, dialog=h.answers(steps="6"), actions=[
        {"script": h.MAIN}, {"move_item": {"track": 1, "item": 1, **move}, "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert result["messages"] == []
    region = h.job_request(result)["region"]
    [item] = h.new_tracks(result)[0]["items"]
    assert item["position"] == pytest.approx(region["project_start"] + shift)
    assert item["length"] == pytest.approx(region["project_end"] - region["project_start"])
    meta = h.take_meta(item["takes"][0])["region"]
    assert meta["project_start"] == pytest.approx(region["project_start"] + shift)
    assert meta["file_in"] == region["file_in"]
    assert f"the picture moved {shift:+.3f} s while generating" in result["console"]


def test_a_ripple_edit_at_a_cut_inside_the_region_while_generating_gets_nothing(world):
    """The picture split at 4 s (one shot, one region over both pieces); while the engine works, the
    editor ripple-inserts 1 s at the cut, moving only the second piece: the stem, made for the
    picture as it ran on, would play its second part 1 s early over no picture (it was added
    with nothing said)."""
    take = {"file": str(world["video"]), "length": 10.0}
    sc = h.scenario(world, dialog=h.answers(steps="6"), video_item={"position": 2.0, "length": 2.0, "takes": [take]},
                    actions=[{"script": h.MAIN}, {"move_item": {"track": 1, "item": 2, "by": 1.0}, "when_running": True}])
    sc["tracks"][0]["items"].append({"position": 4.0, "length": 6.0, "takes": [{**take, "startoffs": 2.0}]})
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert h.job_request(result)["region"]["file_out"] == 3.5  # over both pieces
    [message] = result["messages"]
    assert "Nothing was added: the picture under the time selection was cut, moved in part" in message["message"]
    assert h.new_tracks(result) == []


def test_a_picture_whose_takes_were_deleted_while_generating_gets_nothing(world):
    sc = h.scenario(world, dialog=h.answers(steps="6"), actions=[
        {"script": h.MAIN}, {"move_item": {"track": 1, "item": 1, "delete_takes": True}, "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert result["script_errors"] == []
    [message] = result["messages"]
    assert "Nothing was added: the video item now plays another take" in message["message"]
    assert [t["name"] for t in result["tracks"]] == ["Picture", "wind"]


def test_another_project_opened_in_the_tab_while_generating_gets_nothing(world):
    """File > Open project in the generation's tab: REAPER keeps the tab's ReaProject*, so the
    project looked open still and the stem went into the other project at the first one's times."""
    sc = h.scenario(world, dialog=h.answers(steps="6"), actions=[
        {"script": h.MAIN}, {"open_project": other_tab(world), "when_running": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert [t["name"] for t in result["tracks"]] == ["Other A", "Other B"]
    [message] = result["messages"]
    assert "Nothing was added: the video item was deleted, or another project was opened in its tab" in message["message"]
    assert str(world["proj"]) in message["message"]  # where the stems are
    assert result["undo"] == []


@pytest.mark.parametrize("item_mode, track_mode, expected", [(0, -1, 0), (-1, 2, 2), (-1, -1, -1), (1, 0, 1)])
def test_the_new_item_keeps_time_as_the_picture_does(world, item_mode, track_mode, expected):
    """A new item follows the project's timebase, Beats unless changed: a picture kept in Time
    stayed put through a tempo edit while its Foley moved. The new item takes the picture's."""
    video_item = {"position": 2.0, "length": 8.0, "timebase": item_mode, "autostretch": 1 if item_mode == 1 else 0,
                  "takes": [{"file": str(world["video"]), "length": 10.0}]}
    sc = h.scenario(world, dialog=h.answers(steps="6"), video_item=video_item)
    sc["tracks"][0]["timebase"] = track_mode
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    [item] = h.new_tracks(result)[0]["items"]
    assert item["timebase"] == expected
    assert item["autostretch"] == (1 if item_mode == 1 else 0)


# --- 3. stopping the script cancels its job --------------------------------------------------

def test_stopping_the_script_cancels_its_job(world):
    sc = h.scenario(world, dialog=h.answers(steps="40"), actions=[
        {"script": h.MAIN}, {"terminate": h.MAIN, "when_running": True},
        {"script": h.CANCEL, "after_idle": True}, {"script": h.STATUS, "after_idle": True}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "slow"})
    cancel, status = result["messages"]
    assert cancel["message"] == "No StepFoley generation is running."
    assert "No generation is running." in status["message"]
    assert h.new_tracks(result) == [] and result["undo"] == [] and not result["gfx_open"]
    assert json.loads(result["extstate"]["StepFoley"]["running_status_files"]) == []
    final = wait_for_state(h.status_path(result), "cancelled")
    assert final["state"] == "cancelled" and final["step"] < 40  # the engine job was stopped too


def test_finished_jobs_are_not_listed_as_running(world):
    # a status file left from a generation whose action was stopped without cleaning up
    stale = world["tmp"] / "stale"
    stale.mkdir()
    (stale / "status.json").write_text(json.dumps({"state": "done", "exit_code": 0}), encoding="utf-8")
    extstate = {"StepFoley": {"client": str(world["client"]),
                              "running_status_files": json.dumps([str(stale / "status.json")])}}
    result = h.run_scenario(world["tmp"], h.scenario(world, extstate=extstate, actions=[{"script": h.CANCEL}]))
    assert [m["message"] for m in result["messages"]] == ["No StepFoley generation is running."]
    assert not (stale / "status.json.cancel").exists()


# --- 4. the watchdog measures silence, the client gets --timeout, progress shows the phase ---

def test_watchdog_setting_reaches_the_client(world):
    extstate = h.extstate(world, watchdog_s="600")
    result = h.run_scenario(world["tmp"], h.scenario(world, extstate=extstate))
    assert result["messages"] == [] and len(h.new_tracks(result)) == 1
    assert '"--timeout" "600"' in h.generation_commands(result)[0]
    argv = json.loads((h.status_path(result).parent / "standin_argv.json").read_text(encoding="utf-8"))
    assert argv[argv.index("--timeout") + 1] == "600"


def test_progress_shows_phase_and_count(world):
    result = h.run_scenario(world["tmp"], h.scenario(world), env_extra={"STEPFOLEY_STANDIN": "phases"})
    assert result["messages"] == [] and len(h.new_tracks(result)) == 1
    shown = "\n".join(result["gfx_text"])
    # the window is redrawn every 0.3 s, so which counts it caught varies
    assert re.search(re.escape(h.CAPTION) + r": reading the picture: [1-4] of 4   \(Esc cancels\)", shown)
    assert re.search(re.escape(h.CAPTION) + r": generating: [1-3] of 3   \(Esc cancels\)", shown)


def test_progress_without_phase_counts_steps(world):
    result = h.run_scenario(world["tmp"], h.scenario(world, dialog=h.answers(steps="6")),
                            env_extra={"STEPFOLEY_STANDIN": "slow"})
    assert re.search(re.escape(h.CAPTION) + r": step [1-6] of 6   \(Esc cancels\)", "\n".join(result["gfx_text"]))


def test_any_change_of_the_status_file_is_a_sign_of_life(world):
    # waiting in the engine's queue: only queue_position changes, every 4 s (fake time), for
    # 24 s; the watchdog allows 2 s + the client's grace of 10 s of silence (a client without
    # `client_alive`: with it, the limit is no longer than that either)
    extstate = h.extstate(world, watchdog_s="2")
    sc = h.scenario(world, extstate=extstate, clock_rate=4, max_s=240)
    for client in ("old", "new"):
        result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "queue",
                                                             "STEPFOLEY_STANDIN_CLIENT": client})
        assert result["messages"] == [] and len(h.new_tracks(result)) == 1, client
        assert result["elapsed_s"] > 12  # longer than the whole watchdog


def test_silent_engine_is_reported_by_the_client(world):
    extstate = h.extstate(world, watchdog_s="1")
    result = h.run_scenario(world["tmp"], h.scenario(world, extstate=extstate), env_extra={"STEPFOLEY_STANDIN": "stall"})
    [msg] = result["messages"]
    assert "The engine showed no progress for 1 s" in msg["message"]
    assert "Give up after no progress for (s)" in msg["message"]
    assert h.new_tracks(result) == []
    assert json.loads(result["extstate"]["StepFoley"]["running_status_files"]) == []


def test_hung_client_is_given_up_after_the_grace(world):
    # a client from before `client_alive`: it writes only while the engine shows life, so its
    # silence counts only past the engine's watchdog (the silence after the start is tested:
    # the stand-in, a real process, may start late)
    extstate = h.extstate(world, watchdog_s="1", start_timeout_s="600")
    sc = h.scenario(world, extstate=extstate, clock_rate=10, max_s=600)
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "hung", "STEPFOLEY_STANDIN_CLIENT": "old"})
    [msg] = result["messages"]
    assert "No sign of life from the StepFoley client for 11 s" in msg["message"]
    assert h.new_tracks(result) == []
    assert result["elapsed_s"] > 11
    assert (h.status_path(result).parent / "status.json.cancel").exists()


def test_a_client_gone_mid_job_is_told_in_seconds_and_its_job_cancelled_in_the_engine(world):
    """A client that says it is alive every 2 s (its window closed, a crash) stops: the job went
    on in the engine, which nobody asked to stop (the cancel file is the client's), and REAPER
    waited for the engine's watchdog and more, 190 s by default, then named no folder where the
    stem the engine made anyway went."""
    extstate = h.extstate(world, start_timeout_s="600")  # the default watchdog, 180 s
    sc = h.scenario(world, extstate=extstate, clock_rate=10, max_s=600)
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "hung"})
    [msg] = result["messages"]
    assert "No sign of life from the StepFoley client for 30 s" in msg["message"]
    assert "asked the engine to cancel the job" in msg["message"]
    assert str(world["proj"] / "StepFoley") in msg["message"]  # where a stem finished anyway goes
    assert 30 < result["elapsed_s"] < 120 and h.new_tracks(result) == []  # the old limit was 190 s
    status = json.loads(h.status_path(result).read_text())
    cancels = world["tmp"] / "engine_cancels.txt"
    for _ in range(200):  # `send --cancel` runs in the background, as REAPER's ExecProcess(-2) leaves it
        if cancels.exists() and cancels.read_text().endswith("\n"):
            break
        time.sleep(0.05)
    assert cancels.read_text() == status["job_id"] + "\n"


@pytest.mark.parametrize("mode, words", [
    ("lost", "The engine was restarted while it worked on this job and no longer knows it; nothing was made."),
    ("stopped", "The engine was stopped while this job waited or ran; nothing was made."),
    ("gone", "The engine stopped answering while it worked on this job (its window was closed, or it crashed)"),
    ("loading", "raise \"Give up after no progress for (s)\" in \"StepFoley: Settings\""),  # not "--timeout"
])
def test_an_engine_gone_mid_job_is_said_in_reaper_s_words(world, mode, words):
    """The client's words are a command line's: "Resend the request", "check that host, port and
    token match" (the engine had taken the job at that port)."""
    result = h.run_scenario(world["tmp"], h.scenario(world), env_extra={"STEPFOLEY_STANDIN": mode})
    [msg] = result["messages"]
    assert words in msg["message"] and "run the action again" in msg["message"].lower()
    assert "Resend" not in msg["message"] and "host, port" not in msg["message"] and "--timeout" not in msg["message"]
    assert h.new_tracks(result) == []


# --- 5. a status read that fails for a moment is not a failure ------------------------------

def test_half_written_status_for_a_moment_is_tolerated(world):
    # unreadable from 4.5 s to 6 s after the client's first status, so after its start timeout
    # (4 s: the stand-in, a real process, may take seconds to start on a loaded machine)
    extstate = h.extstate(world, start_timeout_s="4")
    result = h.run_scenario(world["tmp"], h.scenario(world, extstate=extstate), env_extra={"STEPFOLEY_STANDIN": "flaky"})
    assert result["messages"] == []
    assert len(h.new_tracks(result)) == 1


def test_status_unreadable_for_too_long(world):
    # the silence after the start is tested: the stand-in, a real process, may start late
    extstate = h.extstate(world, watchdog_s="1", start_timeout_s="600")
    sc = h.scenario(world, extstate=extstate, clock_rate=10, max_s=600)
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "garbled"})
    [msg] = result["messages"]
    assert "No sign of life from the StepFoley client" in msg["message"]
    assert "the status file cannot be read" in msg["message"]
    assert h.new_tracks(result) == []


# --- 6. real paths: non-ASCII, & ' [ ] ----------------------------------------------------

def test_non_ascii_and_punctuation_in_paths(world):
    tmp = world["tmp"]
    proj = tmp / "José" / "Geräusche & Töne [v2]" / "l'été 足音"
    proj.mkdir(parents=True)
    video = proj / "Bild (Szene 1) – 画.mp4"
    video.write_bytes(b"x")
    client = h.make_standin_client(tmp / "Programme für José [py] & Co")
    video_item = {"position": 2.0, "length": 8.0, "takes": [{"file": str(video), "length": 10.0}]}
    sc = h.scenario(world, video_item=video_item, project_path=str(proj),
                    extstate=h.extstate(world, client=str(client)))
    result = h.run_scenario(tmp, sc)
    assert result["messages"] == []
    status = h.status_path(result)
    jobs = proj / "StepFoley" / "jobs"
    assert status.parent.parent == jobs  # in the project, not moved to the resource folder
    argv = json.loads((status.parent / "standin_argv.json").read_text(encoding="utf-8"))
    assert argv[:5] == ["send", "--request", str(status.parent / "request.json"), "--status", str(status)]
    [track] = h.new_tracks(result)
    take = track["items"][0]["takes"][0]
    assert Path(take["source_file"]).parent == proj / "StepFoley"
    assert json.loads(take["ext"]["stepfoley_metadata"])["region"]["video"] == str(video)
    assert len(sf.read(take["source_file"])[0]) == h.frames(2.5)


@pytest.mark.parametrize("os_name", ["Win64", "Linux-x86_64"])
def test_a_project_folder_too_deep_for_windows_keeps_its_jobs_in_the_resource_folder(world, os_name):
    # a project 170+ characters deep (OneDrive, a company's Documents): REAPER could write the
    # request, the client (Python, held to 259 characters) could not write its status, and the
    # user was told the client did not start. The stems still go to the project's folder.
    tmp = world["tmp"]
    proj = tmp / ("Foley session " + "x" * (200 - len(str(tmp))))
    proj.mkdir()
    result = h.run_scenario(tmp, h.scenario(world, project_path=str(proj), os_name=os_name))
    assert result["messages"] == []
    status = str(h.status_path(result))
    resource = str(tmp / "reaper resource")
    if os_name == "Win64":
        assert status.startswith(resource) and len(str(proj)) + len("\\StepFoley\\jobs") + 90 > 259
    else:  # no such limit: the job stays with the project
        assert status.startswith(str(proj))
    [track] = h.new_tracks(result)
    assert track["items"][0]["takes"][0]["source_file"].startswith(str(proj))


def test_windows_command_line_with_a_non_ascii_project(world):
    # REAPER on Windows: paths are joined with backslashes and the command line is split by
    # the CommandLineToArgvW rules. (On this Linux machine a backslash is just a character of
    # a file name, so the "folders" below are plain names; the point is the command line.)
    tmp = world["tmp"]
    proj = tmp / "José's Geräusche & Co [v2]"
    proj.mkdir()
    result = h.run_scenario(tmp, h.scenario(world, project_path=str(proj), os_name="Win64"))
    assert result["messages"] == []
    cmd = h.generation_commands(result)[0]
    assert "\\StepFoley\\jobs\\" in cmd and str(proj) + "\\StepFoley\\jobs\\" in cmd
    status = h.status_path(result)
    argv = json.loads(status.with_name("standin_argv.json").read_text(encoding="utf-8"))
    assert argv[1:5] == ["--request", str(status).replace("status.json", "request.json"), "--status", str(status)]
    [track] = h.new_tracks(result)
    assert track["items"][0]["takes"][0]["source_file"].startswith(str(proj) + "\\StepFoley")


def test_the_stand_in_says_a_file_that_is_not_a_request_as_the_real_client_does(tmp_path):
    """The scripts read what the client writes: the stand-in crashed on such a file (no status,
    so the scripts said the client did not start) where `stepfoley send` writes bad_request_file."""
    import subprocess

    request = tmp_path / "request.json"
    request.write_text('{"alpha":4,5}')  # what a German number locale made of a request
    said = {}
    for name, command in (("stand-in", [str(h.make_standin_client(tmp_path / "bin"))]),
                          ("real", [sys.executable, "-m", "stepfoley.cli"])):
        status = tmp_path / f"{name}.json"
        done = subprocess.run([*command, "send", "--request", str(request), "--status", str(status), "--port", "9"],
                              capture_output=True, timeout=60)
        written = json.loads(status.read_text())
        said[name] = (done.returncode, written["state"], written["error"]["code"])
    assert said["stand-in"] == said["real"] == (2, "error", "bad_request_file")
