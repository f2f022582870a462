"""Setup that finds itself and files that go where the docs say: the client found outside PATH,
"Verify setup", stems in <project folder>/StepFoley whatever the recording path, job folders
cleaned, and an edit that fails still closing its undo block. The Lua actions under the fake
`reaper` (tests/reaper_fake/) against the stand-in `stepfoley send`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")


@pytest.fixture
def world(tmp_path):
    return h.make_world(tmp_path)


# --- finding the client ----------------------------------------------------------------------

def test_the_documented_venv_is_found_without_path(world):
    """REAPER started from the macOS Dock sees PATH=/usr/bin:/bin; ~/stepfoley-venv/bin/stepfoley
    (docs/reaper.md, step 1) must still be found."""
    home = world["tmp"] / "home"
    client = h.make_standin_client(home / "stepfoley-venv" / "bin")
    sc = h.scenario(world, extstate={"StepFoley": {"keep_job_files": "1"}})
    result = h.run_scenario(world["tmp"], sc, env_extra={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert result["messages"] == [] and len(h.new_tracks(result)) == 1
    assert h.generation_commands(result)[0].startswith(f'"{client}" "send"')


def test_verify_setup_reports_what_it_found(world):
    home = world["tmp"] / "home"
    client = h.make_standin_client(home / "stepfoley-venv" / "bin")
    sc = h.scenario(world, extstate={"StepFoley": {}}, actions=[{"script": h.VERIFY}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    [msg] = result["messages"]
    assert msg["message"].startswith("Everything is ready.")
    console = result["console"]
    assert "[  -  ] /usr/bin/stepfoley (PATH)" in console
    assert f"[found] {client} (the venv of docs/reaper.md)" in console
    assert f"Using: {client} (from the venv of docs/reaper.md)" in console
    assert "Engine: running. Model standin on cpu" in console
    assert f"Stems go to {world['proj'] / 'StepFoley'} (writable)." in console
    assert "Layers counted as negatives there: wind" in console
    assert "OK: 1.000 s, 48000 Hz, 2 channels, 1 layer(s)." in console
    assert "Every render, solo and master setting is back as it was." in console
    assert result["exec_timeouts"] == [-2]  # the engine was asked in the background
    assert len(result["renders"]) == 1 and not Path(result["renders"][0]).exists()  # the test bounce is deleted
    h.assert_project_untouched(result)


def test_verify_setup_leaves_out_the_pictures_track_as_generate_does(world):
    """The picture's track toggled as a negative (its production sound): Generate leaves it out
    while it is the picture, so the check and the test bounce do too (they counted it)."""
    sc = h.scenario(world, actions=[{"script": h.VERIFY}])
    sc["tracks"][0]["ext"] = {"stepfoley_negative": "1"}
    console = h.run_scenario(world["tmp"], sc)["console"]
    assert "Layers counted as negatives there: wind" in console
    assert "1 layer(s)." in console


def test_verify_setup_says_what_to_do(world):
    sc = h.scenario(world, project_file="", record_path=str(world["tmp"]), actions=[{"script": h.VERIFY}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN": "down"})
    [msg] = result["messages"]
    text = msg["message"]
    assert text.startswith("2 problem(s) found:")
    assert "The engine does not answer on port 9017.\n   What to do: start it in a terminal: stepfoley serve --port 9017" in text
    assert "The project is not saved" in text and "save the project" in text


def test_verify_setup_in_a_resource_folder_with_a_semicolon_says_why_it_cannot_bounce(world):
    # REAPER separates the files it will render with ";": the test bounce used to fail as
    # "REAPER would write 2 files instead of one", with a Lua source position and the advice
    # to close the render window
    resource = world["tmp"] / "REAPER;portable"
    sc = h.scenario(world, resource_path=str(resource), actions=[{"script": h.VERIFY}])
    result = h.run_scenario(world["tmp"], sc)
    [msg] = result["messages"]
    assert "REAPER cannot render into a folder whose path holds \";\"" in msg["message"]
    assert "move REAPER's resource folder to a path without \";\"" in msg["message"]
    assert ".lua:" not in msg["message"] and "render window" not in msg["message"]
    assert result["renders"] == []
    h.assert_project_untouched(result)


def test_verify_setup_without_any_client(world):
    # REAPER on Windows with nothing installed (on this Linux machine no C:\\ path exists)
    sc = h.scenario(world, extstate={"StepFoley": {}}, os_name="Win64", actions=[{"script": h.VERIFY}])
    result = h.run_scenario(world["tmp"], sc, env_extra={"USERPROFILE": "C:\\Users\\ana"})
    assert "No StepFoley client was found." in result["messages"][0]["message"]
    assert "[  -  ] C:\\Users\\ana\\stepfoley-venv\\Scripts\\stepfoley.exe (the venv of docs/reaper.md)" in result["console"]
    assert result["exec"] == []


# --- where files go --------------------------------------------------------------------------

def test_stems_go_to_the_project_folder_not_the_recording_path(world):
    # media recorded into <project>/Audio: the stems still go to <project>/StepFoley (docs/reaper.md)
    sc = h.scenario(world, record_path=str(world["proj"] / "Audio"))
    result = h.run_scenario(world["tmp"], sc)
    take = h.new_tracks(result)[0]["items"][0]["takes"][0]
    assert Path(take["source_file"]).parent == world["proj"] / "StepFoley"
    assert h.status_path(result).parent.parent == world["proj"] / "StepFoley" / "jobs"


def test_an_unsaved_project_uses_the_default_recording_path_and_says_so(world):
    media = world["tmp"] / "REAPER Media"
    result = h.run_scenario(world["tmp"], h.scenario(world, project_file="", record_path=str(media)))
    take = h.new_tracks(result)[0]["items"][0]["takes"][0]
    assert Path(take["source_file"]).parent == media / "StepFoley"
    assert "the project is not saved yet" in result["console"]


def test_job_folders_are_cleaned(world):
    jobs = world["proj"] / "StepFoley" / "jobs"
    old, recent, other = jobs / "20200101-000000-0000abcd", jobs / time.strftime("%Y%m%d-%H%M%S-00001111"), jobs / "notes"
    for folder in (old / "take2", recent, other):
        folder.mkdir(parents=True)
        (folder / "status.json").write_text("{}")
    result = h.run_scenario(world["tmp"], h.scenario(world, extstate={"StepFoley": {"client": str(world["client"])}}))
    assert result["messages"] == [] and len(h.new_tracks(result)) == 1
    assert not h.status_path(result).parent.exists()  # finished: its request, status and bounce are gone
    assert not old.exists()  # older than 7 days
    assert recent.exists() and other.exists()
    stem = Path(h.new_tracks(result)[0]["items"][0]["takes"][0]["source_file"])
    assert stem.exists()


def test_a_failed_job_keeps_its_folder(world):
    sc = h.scenario(world, dialog=h.answers(method="bogus"), extstate={"StepFoley": {"client": str(world["client"])}})
    result = h.run_scenario(world["tmp"], sc, env_extra={"STEPFOLEY_STANDIN_CAPS": "none"})
    assert "bogus" in result["messages"][0]["message"]
    folder = h.status_path(result).parent
    assert (folder / "request.json").exists() and (folder / "status.json").exists()


# --- an edit that fails ----------------------------------------------------------------------

def test_a_failing_edit_closes_its_undo_block_and_restores_refresh(world):
    """A stem REAPER cannot read is found before anything is edited: a new track with an empty
    item was left behind, and the message began with the script's path and line."""
    before = len(h.scenario(world)["tracks"])
    result = h.run_scenario(world["tmp"], h.scenario(world), env_extra={"STEPFOLEY_STANDIN": "badstem"})
    [msg] = result["messages"]
    assert msg["message"].startswith(f'StepFoley could not complete "StepFoley: add Foley track "{h.CAPTION}"": '
                                     "REAPER cannot read the stem ")
    assert ".lua:" not in msg["message"] and len(result["tracks"]) == before
    assert result["undo_depth"] == 0 and result["ui_refresh"] == 0
    assert result["undo"] == [f'StepFoley: add Foley track "{h.CAPTION}"']  # closed: one Ctrl+Z removes the rest
    assert result["edits_outside_undo"] == []
    assert json.loads(result["extstate"]["StepFoley"]["running_status_files"]) == []
