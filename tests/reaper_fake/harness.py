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
CANCEL = "StepFoley_Cancel running generation.lua"
STATUS = "StepFoley_Engine status.lua"
SETTINGS = "StepFoley_Settings.lua"


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
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    done = run_lua_file(DRIVER, str(scenario_path), str(result_path), timeout=timeout, env=env)
    assert done.returncode == 0, f"driver failed:\n{done.stdout}\n{done.stderr}"
    result = json.loads(result_path.read_text(encoding="utf-8"))
    assert result["script_errors"] == [], result["script_errors"]
    assert not result["timed_out"], "the defer loop never ended"
    return result


def frames(seconds: float, sr: int = 48000) -> int:
    return round(Fraction(seconds) * sr)
