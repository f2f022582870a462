"""The Python ReaScript, loaded with a stand-in `reaper_python` module (REAPER provides the
real one): its file-time mapping and constants agree with the Lua library's; without a time
selection it says so and starts nothing; its bounce solos the heard layers and renders the
master mix, restoring everything; the result goes to the generation's project tab; stopping
the script cancels the job."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

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


# --- the same constants as the Lua library -----------------------------------------------

LUA_CONSTANTS = {  # Python name -> the Lua library's expression
    "SECTION": "SF.SECTION", "TAKE_META": "SF.TAKE_META", "TRACK_MARK": "SF.TRACK_MARK",
    "WAV24_RENDER_FORMAT": "SF.WAV24_RENDER_FORMAT", "RENDER_NUMBERS": "SF.RENDER_NUMBERS",
    "RENDER_STRINGS": "SF.RENDER_STRINGS", "RENDER_AND_CLOSE": "SF.RENDER_AND_CLOSE",
    "BUILD_MISSING_PEAKS": "SF.BUILD_MISSING_PEAKS", "SOLO_IN_FRONT": "SF.SOLO_IN_FRONT",
    "RENDER_MASTER_MIX": "SF.RENDER_MASTER_MIX", "SOLO_IN_PLACE": "SF.SOLO_IN_PLACE",
    "DEFAULT_WATCHDOG_S": "SF.DEFAULT_SETTINGS.watchdog_s",
}


@pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed")
def test_constants_agree_with_the_lua_library(loaded):
    namespace, _ = loaded
    lib = h.SCRIPTS / "StepFoley_lib.lua"
    table = ", ".join(f"{name} = {expr}" for name, expr in LUA_CONSTANTS.items())
    code = (f"reaper = {{GetOS = function() return 'Other' end}}; SF = dofile({json.dumps(str(lib))}); "
            "local ext = {}; for k in pairs(SF.VIDEO_EXTENSIONS) do ext[#ext + 1] = k end; "
            f"io.write(SF.json_encode({{{table}, VIDEO_EXTENSIONS = ext}}))")
    done = subprocess.run([h.LUA, "-e", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    lua_values = json.loads(done.stdout)
    for name in LUA_CONSTANTS:
        assert namespace[name] == lua_values[name], name
    assert namespace["VIDEO_EXTENSIONS"] == set(lua_values["VIDEO_EXTENSIONS"])


# --- bounce, insert and stop against a stub of REAPER's Python API -------------------------

NULL_TRACK = "(MediaTrack*)0x0000000000000000"


class StubReaper:
    """Just enough of REAPER's Python API (pointers are strings, output parameters come back
    in tuples) for the bounce: tracks with solo/mute/folders, items, render settings, solo in
    front, several project tabs. A render records the state REAPER renders in."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.projects = {"(ReaProject*)0x0000000000000001": [], "(ReaProject*)0x0000000000000002": []}
        self.active = "(ReaProject*)0x0000000000000001"
        self.tracks, self.items = {}, {}
        self.numbers = {k: 1.0 for k in ("RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_STARTPOS", "RENDER_ENDPOS",
                                         "RENDER_SRATE", "RENDER_CHANNELS", "RENDER_TAILFLAG", "RENDER_ADDTOPROJ",
                                         "RENDER_DITHER", "RENDER_NORMALIZE")}
        self.numbers["RENDER_SETTINGS"] = 128.0
        self.strings = {"RENDER_FILE": "/renders", "RENDER_PATTERN": "$project", "RENDER_FORMAT2": "",
                        "RENDER_FORMAT": "bDNwbQ=="}
        self.solo_in_front = 1
        self.master = {"I_FXEN": 1.0, "B_MUTE": 1.0}
        self.renders = []

    def add_track(self, name, proj=None, parent=None, items=(), **values):
        proj = proj or self.active
        ptr = "(MediaTrack*)0x%016x" % (len(self.tracks) + 1)
        track = {"name": name, "parent": parent, "items": [], "selected": False, "mark": "",
                 "I_SOLO": 0.0, "B_SOLO_DEFEAT": 0.0, "B_MUTE": 0.0, "I_FREEMODE": 0.0}
        track.update(values)
        for position, length, caption, mute in items:
            item_ptr = "(MediaItem*)0x%016x" % (len(self.items) + 1)
            self.items[item_ptr] = {"track": ptr, "D_POSITION": position, "D_LENGTH": length, "B_MUTE": mute,
                                    "C_LANEPLAYS": 0.0, "meta": json.dumps({"caption": caption})}
            track["items"].append(item_ptr)
        self.tracks[ptr] = track
        self.projects[proj].append(ptr)
        return ptr

    def api(self) -> dict:
        s = self

        def info_string(proj, key, value, is_set):
            if key == "RENDER_TARGETS":
                pattern = s.strings["RENDER_FILE"] + "/" + s.strings["RENDER_PATTERN"]
                if int(s.numbers["RENDER_SETTINGS"]) & 128:  # one file per selected track
                    n = sum(1 for t in s.tracks.values() if t["selected"])
                    return True, proj, key, ";".join(f"{pattern}-{i}.wav" for i in range(n)), is_set
                return True, proj, key, pattern + ".wav", is_set
            if is_set:
                s.strings[key] = value
            return True, proj, key, s.strings[key], is_set

        def info_value(proj, key, value, is_set):
            if is_set:
                s.numbers[key] = float(value)
            return s.numbers[key]

        def track_value(tr, key):
            return s.master[key] if tr == "(MediaTrack*)master" else s.tracks[tr][key]

        def set_track_value(tr, key, value):
            (s.master if tr == "(MediaTrack*)master" else s.tracks[tr])[key] = float(value)
            return True

        def command(cmd, flag, proj=None):
            if cmd == 40745:
                s.solo_in_front = 1 - s.solo_in_front
            elif cmd == 42230:
                target = info_string(proj, "RENDER_TARGETS", "", False)[3]
                s.renders.append({"targets": target, "settings": dict(s.numbers), "master": dict(s.master),
                                  "solo_in_front": s.solo_in_front,
                                  "solo": {t["name"]: t["I_SOLO"] for t in s.tracks.values()},
                                  "defeat": {t["name"]: t["B_SOLO_DEFEAT"] for t in s.tracks.values()}})
                for path in target.split(";"):
                    Path(path).write_bytes(b"\0" * 100)

        def insert_at(proj, index):
            ptr = s.add_track("", proj)
            s.projects[proj].remove(ptr)
            s.projects[proj].insert(index, ptr)

        def enum_projects(i, buf, size):
            keys = list(s.projects)
            p = s.active if i == -1 else (keys[i] if i < len(keys) else "(ReaProject*)0x0000000000000000")
            return p, i, buf, size

        return {
            "RPR_GetSetProjectInfo": info_value, "RPR_GetSetProjectInfo_String": info_string,
            "RPR_CountTracks": lambda p: len(s.projects[p]), "RPR_GetTrack": lambda p, i: s.projects[p][i],
            "RPR_GetMasterTrack": lambda p: "(MediaTrack*)master",
            "RPR_GetMediaTrackInfo_Value": track_value, "RPR_SetMediaTrackInfo_Value": set_track_value,
            "RPR_GetParentTrack": lambda tr: s.tracks[tr]["parent"] or NULL_TRACK,
            "RPR_IsTrackSelected": lambda tr: s.tracks[tr]["selected"],
            "RPR_GetSetMediaTrackInfo_String": lambda tr, key, v, is_set: (True, tr, key, s.tracks[tr]["mark"], is_set),
            "RPR_CountTrackMediaItems": lambda tr: len(s.tracks[tr]["items"]),
            "RPR_GetTrackMediaItem": lambda tr, k: s.tracks[tr]["items"][k],
            "RPR_GetMediaItemInfo_Value": lambda item, key: s.items[item][key],
            "RPR_GetMediaItem_Track": lambda item: s.items[item]["track"],
            "RPR_GetActiveTake": lambda item: item.replace("MediaItem*", "MediaItem_Take*"),
            "RPR_GetSetMediaItemTakeInfo_String": lambda take, key, v, is_set: (
                True, take, key, s.items[take.replace("MediaItem_Take*", "MediaItem*")]["meta"], is_set),
            "RPR_GetToggleCommandStateEx": lambda section, cmd: s.solo_in_front,
            "RPR_Main_OnCommand": lambda cmd, flag: command(cmd, flag),
            "RPR_Main_OnCommandEx": command,
            "RPR_PreventUIRefresh": lambda n: None,
            "RPR_EnumProjects": enum_projects,
            "RPR_SelectProjectInstance": lambda p: setattr(s, "active", p),
            "RPR_InsertTrackAtIndex": lambda i, defaults: insert_at(s.active, i),
            "RPR_InsertTrackInProject": lambda p, i, flags: insert_at(p, i),
        }


@pytest.fixture
def stub(loaded, tmp_path):
    namespace, _ = loaded
    reaper = StubReaper(tmp_path)
    namespace["bounce"].__globals__.update(reaper.api())
    return namespace, reaper


def test_python_bounce_solos_the_heard_layers_and_restores_everything(stub, tmp_path):
    ns, r = stub
    proj = r.active
    video = r.add_track("Picture", items=[(0.0, 10.0, "picture", 0.0)])
    wind = r.add_track("wind", items=[(0.0, 10.0, "wind", 0.0), (3.5, 1.0, "muted gust", 1.0)], mark="1")
    r.add_track("steps", items=[(0.0, 10.0, "muted steps", 0.0)], mark="1", B_MUTE=1.0)
    folder = r.add_track("Muted folder", B_MUTE=1.0)
    r.add_track("door", parent=folder, items=[(0.0, 10.0, "door", 0.0)], mark="1")
    r.add_track("Music", items=[(0.0, 10.0, "music", 0.0)], I_SOLO=1.0)
    r.add_track("Dialog", items=[(0.0, 10.0, "dialog", 0.0)], B_SOLO_DEFEAT=1.0)
    rain = r.add_track("rain", items=[(3.0, 1.0, "rain", 0.0)], mark="1")
    tracks = ns["foley_tracks"](proj, 3.0, 5.5, video)
    assert tracks == [wind, rain]
    assert ns["previous_captions"](tracks, 3.0, 5.5) == ["wind", "rain"]
    before = (dict(r.numbers), dict(r.strings), dict(r.master), r.solo_in_front,
              {t["name"]: (t["I_SOLO"], t["B_SOLO_DEFEAT"]) for t in r.tracks.values()})
    target = ns["bounce"](proj, tracks, 3.0, 5.5, str(tmp_path), 48000)
    [render] = r.renders
    assert render["targets"] == target == str(tmp_path / "existing_mix.wav")
    assert render["settings"]["RENDER_SETTINGS"] == 0 and render["settings"]["RENDER_BOUNDSFLAG"] == 0
    assert (render["settings"]["RENDER_STARTPOS"], render["settings"]["RENDER_ENDPOS"]) == (3.0, 5.5)
    assert render["solo"] == {"Picture": 0, "wind": 2, "steps": 0, "Muted folder": 0, "door": 0, "Music": 0,
                              "Dialog": 0, "rain": 2}
    assert set(render["defeat"].values()) == {0}
    assert render["master"] == {"I_FXEN": 0, "B_MUTE": 0} and render["solo_in_front"] == 0
    after = (r.numbers, r.strings, r.master, r.solo_in_front,
             {t["name"]: (t["I_SOLO"], t["B_SOLO_DEFEAT"]) for t in r.tracks.values()})
    assert after == before


def test_python_result_goes_to_the_generations_tab(stub):
    ns, r = stub
    proj, other = list(r.projects)
    r.add_track("wind", proj)
    r.add_track("Other A", other)
    r.active = other  # the user switched tabs while generating
    for with_insert_in_project in (True, False):
        g = ns["insert_track_in"].__globals__
        if not with_insert_in_project:
            g.pop("RPR_InsertTrackInProject")  # REAPER before 7.18
        track = ns["insert_track_in"](proj, 1)
        assert r.projects[proj][1] == track and len(r.projects[other]) == 1
        assert r.active == other
        r.projects[proj].remove(track)


def test_python_action_cancels_its_job_when_stopped(loaded):
    namespace, _ = loaded
    calls = []

    class Job:
        finished = False

        def cancel(self):
            calls.append("cancel")

        def poll(self, wait=0.0):
            calls.append("poll")
            self.finished = True
            return {"state": "cancelled"}

    class Client:
        def close(self):
            calls.append("close")

    namespace["on_exit"].__globals__["STATE"].update(job=Job(), client=Client())
    namespace["on_exit"]()
    assert calls == ["cancel", "poll", "close"]
