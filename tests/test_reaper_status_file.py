"""The status file that REAPER polls (bridge.client.write_status): on Windows, replacing it
fails with a sharing violation (PermissionError) while REAPER's reader has it open. A
sharing violation for a moment must not end the job, and no temporary file may stay."""

from __future__ import annotations

import json
import os

import pytest

from stepfoley.bridge import client as bc


def flaky_replace(failures: int):
    """os.replace that fails `failures` times with a sharing violation, then works."""
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) <= failures:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        return real(src, dst)

    return replace, calls


def test_write_status_retries_a_sharing_violation(tmp_path, monkeypatch):
    path = str(tmp_path / "status.json")
    bc.write_status(path, {"state": "queued"})
    replace, calls = flaky_replace(2)
    monkeypatch.setattr(bc.os, "replace", replace)
    bc.write_status(path, {"state": "running", "step": 3})
    assert len(calls) == 3
    assert json.loads((tmp_path / "status.json").read_text(encoding="utf-8")) == {"state": "running", "step": 3}
    assert os.listdir(tmp_path) == ["status.json"]


def test_write_status_gives_up_on_a_lasting_violation_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = str(tmp_path / "status.json")
    bc.write_status(path, {"state": "queued"})
    replace, calls = flaky_replace(10**6)
    monkeypatch.setattr(bc.os, "replace", replace)
    monkeypatch.setattr(bc.time, "sleep", lambda s: None)
    with pytest.raises(PermissionError):
        bc.write_status(path, {"state": "running"})
    assert len(calls) > 1
    assert json.loads((tmp_path / "status.json").read_text(encoding="utf-8")) == {"state": "queued"}
    assert os.listdir(tmp_path) == ["status.json"]
