"""The Python ReaScript, loaded with a stand-in `reaper_python` module (REAPER provides the
real one): its file-time mapping agrees with the Lua library's, and without a time selection
it says so and starts nothing."""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "reaper_scripts" / "StepFoley_Generate Foley track for time selection (Python).py"


@pytest.fixture
def loaded(monkeypatch):
    messages = []
    calls = {
        "RPR_GetExtState": lambda section, key: "",
        "RPR_ShowMessageBox": lambda msg, title, kind: messages.append(msg) or 1,
        "RPR_EnumProjects": lambda idx, buf, size: ("proj", "", 0),
        "RPR_GetSet_LoopTimeRange2": lambda p, s, l, a, b, seek: (p, s, l, 0.0, 0.0, seek),
        "RPR_defer": lambda code: pytest.fail("nothing should be deferred"),
    }
    module = types.ModuleType("reaper_python")
    module.__dict__.update(calls)
    module.__all__ = list(calls)
    monkeypatch.setitem(sys.modules, "reaper_python", module)
    namespace = runpy.run_path(str(SCRIPT))
    return namespace, messages


def test_without_time_selection_says_so(loaded):
    _, messages = loaded
    assert messages == ["Make a time selection over the picture first."]


def test_map_interval_matches_lua_rule(loaded):
    namespace, _ = loaded
    a, b, rev = namespace["map_interval"](11.0, 12.0, 10.0, 0.5, 2.0, [(3.0, 6.0, False)])
    assert (a, b, rev) == (3 + 0.5 + 2.0, 3 + 0.5 + 4.0, False)
    a, b, rev = namespace["map_interval"](0.0, 1.0, 0.0, 0.0, 1.0, [(2.0, 4.0, True)])
    assert (a, b, rev) == (6.0, 5.0, True)
