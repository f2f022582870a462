"""Runs the StepFoley ReaScripts under a real Lua 5.4 with the fake reaper module
(tests/reaper_fake/reaper_fake.lua) and hands back the resulting project as a dict."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "reaper_scripts"
DRIVER = Path(__file__).resolve().parent / "run_scenario.lua"
STANDIN = Path(__file__).resolve().parent / "standin_send.py"
LUA = shutil.which("lua5.4")

MAIN = "StepFoley_Generate Foley track for time selection.lua"
VARIATIONS = "StepFoley_Generate variations as takes.lua"
REGENERATE = "StepFoley_Regenerate selected Foley item.lua"
EXTEND = "StepFoley_Extend selected Foley item to time selection.lua"
REPAIR = "StepFoley_Regenerate time selection inside selected item.lua"
REPLACE = "StepFoley_Replace this layer, negating all the others.lua"
SOUND_LIKE = "StepFoley_Make selected item sound like this.lua"
TOGGLE = "StepFoley_Toggle selected tracks as negatives.lua"
CANCEL = "StepFoley_Cancel running generation.lua"
STATUS = "StepFoley_Engine status.lua"
VERIFY = "StepFoley_Verify setup.lua"
SETTINGS = "StepFoley_Settings.lua"
# the stand-in engine's model defaults (tests/reaper_fake/standin_send.py)
STANDIN_DEFAULTS = {"method": "nag", "alpha": 3.0, "beta": 2.0, "steps": 3}


def run_lua_file(path: Path, *args: str, timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LUA, str(path), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(REPO))


def make_standin_client(folder: Path) -> Path:
    """An executable named `stepfoley` that runs the stand-in client with this Python."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "stepfoley"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def write_foley_wav(path: Path, seconds: float, sr: int = 48000, seed: int = 0) -> np.ndarray:
    """A mono 16-bit WAV of reproducible noise; returns the samples as read back (floats)."""
    rng = np.random.default_rng(seed)
    data = (rng.uniform(-0.5, 0.5, int(round(seconds * sr))) * 32767).astype(np.int16)
    sf.write(path, data, sr, subtype="PCM_16")
    return data.astype(np.float64) / 32768.0


def run_scenario(tmp: Path, scenario: dict, env_extra: dict | None = None, timeout: float = 60.0) -> dict:
    scenario = dict(scenario)
    scenario.setdefault("scripts_dir", str(SCRIPTS))
    scenario.setdefault("exec_log", str(tmp / "client.log"))
    scenario.setdefault("resource_path", str(tmp / "reaper resource"))
    scenario_path = tmp / "scenario.json"
    result_path = tmp / "result.json"
    scenario_path.write_text(json.dumps(scenario), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", STEPFOLEY_FAKE_CLOCK=str(tmp / "fake_clock"), **(env_extra or {}))
    done = run_lua_file(DRIVER, str(scenario_path), str(result_path), timeout=timeout, env=env)
    assert done.returncode == 0, f"driver failed:\n{done.stdout}\n{done.stderr}"
    # a file name that is not UTF-8 comes back as its bytes: read as Python names such a file
    result = json.loads(result_path.read_bytes().decode("utf-8", "surrogateescape"))
    assert result["script_errors"] == [], result["script_errors"]
    assert not result["timed_out"], "the defer loop never ended"
    return result


def frames(seconds: float, sr: int = 48000) -> int:
    return round(Fraction(seconds) * sr)


# --- a standard scenario: a picture, one Foley track ("wind"), the stand-in client ----------

SR = 48000
CAPTION = 'glass "clink", then footsteps, on \\ gravel'
# the user's own render settings: each left on would change the bounce (normalize, tail, dither)
# or add it to the project, so the bounce must turn them off and give them back
RENDER_NUMBERS = {"RENDER_SRATE": 44100, "RENDER_CHANNELS": 1, "RENDER_SETTINGS": 0, "RENDER_BOUNDSFLAG": 1,
                  "RENDER_NORMALIZE": 1, "RENDER_TAILFLAG": 1, "RENDER_DITHER": 1, "RENDER_ADDTOPROJ": 1}
RENDER_STRINGS = {"RENDER_FILE": "/home/user/renders", "RENDER_PATTERN": "$project-final",
                  "RENDER_FORMAT": "bDNwbQ==", "RENDER_FORMAT2": ""}


def answers(caption=CAPTION, method="", alpha="", beta="", seed="7", steps="", negatives="", count=None):
    """The generate dialog's fields in order: caption, method, alpha, beta, seed, steps,
    negatives, [count]. Empty: the model's default (the stand-in's: 3 steps)."""
    values = [caption, method, alpha, beta, seed, steps, negatives]
    if count is not None:
        values.append(str(count))
    return [{"ok": True, "values": values}]


def plain_dialog_text(text: str) -> str:
    """What the plain dialog shows for `text` (StepFoley_lib_dialog.lua, plain_dialog_text)."""
    if text.count("'") % 2:
        text = text.replace("'", "\u2019")
    if text.count('"') % 2:
        text = text.replace('"', "\u201d")
    if text.count("(") > text.count(")"):
        text = text.replace("(", "\uff08")
    return text


def extstate(world: dict, **settings: str) -> dict:
    """The ExtState of a scenario: the stand-in client, job files kept (so that tests can read
    the request and the bounce), and `settings`."""
    return {"StepFoley": {"client": str(world["client"]), "keep_job_files": "1", **settings}}


def make_world(tmp_path: Path) -> dict:
    """A project folder, a picture, a Foley WAV and the stand-in client."""
    proj = tmp_path / "project"
    proj.mkdir()
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"not decoded by the stand-in")
    foley = tmp_path / "wind.wav"
    samples = write_foley_wav(foley, 12.0, SR, seed=3)
    client = make_standin_client(tmp_path / "bin dir")
    return {"tmp": tmp_path, "proj": proj, "video": video, "foley": foley, "foley_samples": samples,
            "client": client}


def foley_track(name: str, wav: Path, caption: str | None = None, position: float = 0.0, length: float = 12.0,
                **track) -> dict:
    """A track with one item playing `wav` from its start; marked as StepFoley's when it has a caption."""
    take = {"file": str(wav)}
    if caption is not None:
        take["ext"] = {"stepfoley_metadata": json.dumps({"caption": caption})}
        track.setdefault("ext", {"stepfoley": "1"})
    item = {"position": position, "length": length, "takes": [take]}
    item.update(track.pop("item", {}))
    return {"name": name, "items": [item], **track}


def scenario(world, *, ts=(3.0, 5.5), video_item=None, dialog=None, actions=None, extra_tracks=(), **kw):
    video_item = video_item or {"position": 2.0, "length": 8.0,
                                "takes": [{"file": str(world["video"]), "length": 10.0}]}
    sc = {
        "project_path": str(world["proj"]),
        "time_selection": list(ts),
        "master_fx_gain": 0.5,
        "render": {"numbers": dict(RENDER_NUMBERS), "strings": dict(RENDER_STRINGS)},
        "extstate": extstate(world),
        "dialog_answers": answers() if dialog is None else dialog,
        "tracks": [
            {"name": "Picture", "items": [video_item]},
            foley_track("wind", world["foley"], "wind in the trees"),
            *extra_tracks,
        ],
        "actions": actions or [{"script": MAIN}],
    }
    sc.update(kw)
    return sc


def generation_commands(result) -> list[str]:
    """The command lines that started a generation (not an engine query), in order."""
    return [cmd for cmd in result["exec"] if '"--request" "' in cmd]


def job_requests(result) -> list[dict]:
    """The request of every job the actions started, in order (needs keep_job_files)."""
    out = []
    for cmd in generation_commands(result):
        request_path = cmd.split('"--request" "')[1].split('"')[0]
        out.append(json.loads(Path(request_path).read_text(encoding="utf-8")))
    return out


def job_request(result) -> dict:
    return job_requests(result)[0]


def status_path(result, i: int = 0) -> Path:
    return Path(generation_commands(result)[i].split('"--status" "')[1].split('"')[0])


def take_meta(take: dict) -> dict:
    return json.loads(take["ext"]["stepfoley_metadata"])


def new_tracks(result, known=("Picture", "wind", "Music")):
    return [t for t in result["tracks"] if t["name"] not in known]


def assert_render_settings_restored(result):
    r = result["render"]
    for key, value in RENDER_NUMBERS.items():
        assert r["numbers"][key] == value, key
    assert r["strings"] == RENDER_STRINGS
    assert result["master_fxen"] == 1
    assert result["modal_prompts"] == []


def assert_project_untouched(result):
    assert_render_settings_restored(result)
    assert result["undo_depth"] == 0 and result["ui_refresh"] == 0
    assert result["edits_outside_undo"] == []
