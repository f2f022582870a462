# @noindex
"""StepFoley: Generate Foley track for time selection, as a Python ReaScript.

Does what the Lua action of the same name does, but talks to the engine with StepFoley's
client library (stepfoley.bridge.client.EngineClient) inside REAPER instead of starting
`stepfoley send`: submit() returns at once and poll() is called from an RPR_defer loop.

Needs ReaScript Python enabled (Options > Preferences > Plug-ins > ReaScript) and the
StepFoley package importable from REAPER's Python: set the ExtState
StepFoley/package_dir to the site-packages folder of a Python where StepFoley is installed
(the one holding `stepfoley/`), or install StepFoley into the Python REAPER uses.

The existing layers are bounced exactly as in the Lua version: the chosen tracks soloed in
place, the master mix rendered (one file: what the user hears of them), every render, solo
and preference setting restored. The constants below are the Lua library's; a test
(tests/test_reaper_python.py) checks that they agree.
"""

import json
import os
import random
import sys

from reaper_python import *  # noqa: F401,F403  (RPR_* functions, provided by REAPER)

SECTION = "StepFoley"
TAKE_META = "P_EXT:stepfoley_metadata"
TRACK_MARK = "P_EXT:stepfoley"
WAV24_RENDER_FORMAT = "ZXZhdxgAAQ=="
VIDEO_EXTENSIONS = {"mp4", "mov", "m4v", "mkv", "avi", "webm", "mpg", "mpeg", "mxf", "wmv", "ogv", "flv"}
RENDER_NUMBERS = ["RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_STARTPOS", "RENDER_ENDPOS", "RENDER_SRATE",
                  "RENDER_CHANNELS", "RENDER_TAILFLAG", "RENDER_ADDTOPROJ", "RENDER_DITHER", "RENDER_NORMALIZE"]
RENDER_STRINGS = ["RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT2", "RENDER_FORMAT"]  # FORMAT last
RENDER_AND_CLOSE = 42230  # File: Render project, using the most recent render settings, auto-close
BUILD_MISSING_PEAKS = 40047
SOLO_IN_FRONT = 40745  # Options: Solo in front (non-soloed tracks play dimmed instead of silent)
RENDER_MASTER_MIX = 0
SOLO_IN_PLACE = 2
DEFAULT_WATCHDOG_S = 180  # the Lua library's DEFAULT_SETTINGS.watchdog_s


def alert(message):
    RPR_ShowMessageBox(message, "StepFoley", 0)


def ext(key, default):
    value = RPR_GetExtState(SECTION, key)
    return value if value else default


# --- pure mapping (same as StepFoley_lib.lua) -------------------------------------------

def map_interval(t0, t1, item_pos, startoffs, playrate, sections):
    """Project times -> file times through the take and its (offs, len, rev) sections."""
    a = startoffs + (t0 - item_pos) * playrate
    b = startoffs + (t1 - item_pos) * playrate
    reversed_ = False
    for offs, length, rev in sections:
        a, b = (offs + (length - a), offs + (length - b)) if rev else (offs + a, offs + b)
        reversed_ ^= bool(rev)
    return a, b, reversed_


# --- project ----------------------------------------------------------------------------

def source_chain(take):
    sections, src = [], RPR_GetMediaItemTake_Source(take)
    first = src
    while True:
        parent = RPR_GetMediaSourceParent(src)
        if not parent:
            return first, src, sections
        ok, _, offs, length, rev = RPR_PCM_Source_GetSectionInfo(src, 0, 0, False)
        if ok:
            sections.append((offs, length, rev))
        src = parent


def find_video(proj, t0, t1):
    best, best_overlap = None, 0.0
    for i in range(RPR_CountMediaItems(proj)):
        item = RPR_GetMediaItem(proj, i)
        take = RPR_GetActiveTake(item)
        if not take or RPR_TakeIsMIDI(take):
            continue
        pos = RPR_GetMediaItemInfo_Value(item, "D_POSITION")
        end = pos + RPR_GetMediaItemInfo_Value(item, "D_LENGTH")
        overlap = min(end, t1) - max(pos, t0)
        if overlap > best_overlap:
            _, root, _ = source_chain(take)
            name = RPR_GetMediaSourceFileName(root, "", 4096)[1]
            kind = RPR_GetMediaSourceType(root, "", 64)[1]
            if kind.upper() == "VIDEO" or name.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS:
                best, best_overlap = item, overlap
    return best


def region_for(proj, t0, t1):
    item = find_video(proj, t0, t1)
    if item is None:
        raise ValueError(f"There is no video item under the time selection ({t0:.3f} s to {t1:.3f} s).")
    take = RPR_GetActiveTake(item)
    if RPR_GetTakeNumStretchMarkers(take) > 0:
        raise ValueError("The video item has stretch markers, which StepFoley cannot follow. Remove them first.")
    first, root, sections = source_chain(take)
    pos = RPR_GetMediaItemInfo_Value(item, "D_POSITION")
    end = pos + RPR_GetMediaItemInfo_Value(item, "D_LENGTH")
    startoffs = RPR_GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
    playrate = RPR_GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
    src_len = RPR_GetMediaSourceLength(first, False)[0]
    a = max(t0, pos, pos - startoffs / playrate)
    b = min(t1, end, pos + (src_len - startoffs) / playrate)
    if b - a <= 1e-6:
        raise ValueError("The time selection does not overlap the picture of the video item.")
    fa, fb, rev = map_interval(a, b, pos, startoffs, playrate, sections)
    if rev:
        raise ValueError("The video item plays its picture in reverse; un-reverse it or render it first.")
    video = RPR_GetMediaSourceFileName(root, "", 4096)[1]
    region = {"video": video, "file_in": max(0.0, fa), "file_out": fb, "playrate": playrate,
              "project_start": a, "project_end": b}
    return region, RPR_GetMediaItem_Track(item)


def is_null(ptr):
    """REAPER's Python API gives pointers as strings such as "(MediaTrack*)0x000..."."""
    return not ptr or str(ptr).rsplit("0x", 1)[-1].strip("0") == ""


def track_is_heard(track):
    while not is_null(track):
        if RPR_GetMediaTrackInfo_Value(track, "B_MUTE") != 0:
            return False
        track = RPR_GetParentTrack(track)
    return True


def item_plays(item):
    if RPR_GetMediaItemInfo_Value(item, "B_MUTE") != 0:
        return False
    track = RPR_GetMediaItem_Track(item)
    if RPR_GetMediaTrackInfo_Value(track, "I_FREEMODE") == 2 and RPR_GetMediaItemInfo_Value(item, "C_LANEPLAYS") <= 0:
        return False  # a fixed lane that does not play
    return not is_null(RPR_GetActiveTake(item))


def playing_items_in(track, t0, t1):
    items = []
    for k in range(RPR_CountTrackMediaItems(track)):
        item = RPR_GetTrackMediaItem(track, k)
        pos = RPR_GetMediaItemInfo_Value(item, "D_POSITION")
        if pos < t1 and pos + RPR_GetMediaItemInfo_Value(item, "D_LENGTH") > t0 and item_plays(item):
            items.append(item)
    return items


def foley_tracks(proj, t0, t1, video_track):
    """The selected tracks, or else the StepFoley tracks, that are heard and play in [t0, t1]."""
    selected, marked = [], []
    for i in range(RPR_CountTracks(proj)):
        tr = RPR_GetTrack(proj, i)
        if tr == video_track or not track_is_heard(tr) or not playing_items_in(tr, t0, t1):
            continue
        if RPR_IsTrackSelected(tr):
            selected.append(tr)
        if RPR_GetSetMediaTrackInfo_String(tr, TRACK_MARK, "", False)[3] == "1":
            marked.append(tr)
    return selected or marked


def previous_captions(tracks, t0, t1):
    captions = []
    for tr in tracks:
        for item in playing_items_in(tr, t0, t1):
            text = RPR_GetSetMediaItemTakeInfo_String(RPR_GetActiveTake(item), TAKE_META, "", False)[3]
            try:
                caption = json.loads(text).get("caption") if text else None
            except (ValueError, AttributeError):
                caption = None
            if isinstance(caption, str):
                captions.append(caption)
    return captions


def set_track_value(track, key, value):
    """Only when it differs: what already has the wanted state stays untouched."""
    if RPR_GetMediaTrackInfo_Value(track, key) != value:
        RPR_SetMediaTrackInfo_Value(track, key, value)


def bounce(proj, tracks, t0, t1, folder, sample_rate):
    """What the user hears of `tracks` over [t0, t1] as one WAV: the tracks soloed in place, the
    master mix rendered (master unmuted, its FX bypassed, solo in front off); all restored."""
    saved_n = {k: RPR_GetSetProjectInfo(proj, k, 0, False) for k in RENDER_NUMBERS}
    saved_s = {k: RPR_GetSetProjectInfo_String(proj, k, "", False)[3] for k in RENDER_STRINGS}
    all_tracks = [RPR_GetTrack(proj, i) for i in range(RPR_CountTracks(proj))]
    saved_solo = [(tr, RPR_GetMediaTrackInfo_Value(tr, "I_SOLO"), RPR_GetMediaTrackInfo_Value(tr, "B_SOLO_DEFEAT"))
                  for tr in all_tracks]
    master = RPR_GetMasterTrack(proj)
    saved_fx = RPR_GetMediaTrackInfo_Value(master, "I_FXEN")
    saved_mute = RPR_GetMediaTrackInfo_Value(master, "B_MUTE")
    solo_in_front = RPR_GetToggleCommandStateEx(0, SOLO_IN_FRONT) == 1
    RPR_PreventUIRefresh(1)
    try:
        for tr in all_tracks:
            set_track_value(tr, "I_SOLO", SOLO_IN_PLACE if tr in tracks else 0)
            if tr not in tracks:
                set_track_value(tr, "B_SOLO_DEFEAT", 0)
        if solo_in_front:
            RPR_Main_OnCommand(SOLO_IN_FRONT, 0)
        set_track_value(master, "I_FXEN", 0)
        set_track_value(master, "B_MUTE", 0)
        for key, value in (("RENDER_SETTINGS", RENDER_MASTER_MIX), ("RENDER_BOUNDSFLAG", 0), ("RENDER_STARTPOS", t0),
                           ("RENDER_ENDPOS", t1), ("RENDER_SRATE", sample_rate), ("RENDER_CHANNELS", 2),
                           ("RENDER_TAILFLAG", 0), ("RENDER_ADDTOPROJ", 0), ("RENDER_DITHER", 0),
                           ("RENDER_NORMALIZE", 0)):
            RPR_GetSetProjectInfo(proj, key, value, True)
        for key, value in (("RENDER_FILE", folder), ("RENDER_PATTERN", "existing_mix"), ("RENDER_FORMAT2", ""),
                           ("RENDER_FORMAT", WAV24_RENDER_FORMAT)):
            RPR_GetSetProjectInfo_String(proj, key, value, True)
        targets = [t for t in RPR_GetSetProjectInfo_String(proj, "RENDER_TARGETS", "", False)[3].split(";") if t]
        if len(targets) != 1:
            raise RuntimeError(f"REAPER would write {len(targets)} files instead of one: {targets}")
        target = targets[0]
        if os.path.exists(target):
            os.remove(target)  # an existing file would open a modal overwrite prompt
        RPR_Main_OnCommandEx(RENDER_AND_CLOSE, 0, proj)
        if not os.path.exists(target) or os.path.getsize(target) <= 44:
            raise RuntimeError("the render produced no file at " + target)
        return target
    finally:
        for key, value in saved_n.items():
            RPR_GetSetProjectInfo(proj, key, value, True)
        for key in RENDER_STRINGS:
            RPR_GetSetProjectInfo_String(proj, key, saved_s[key], True)
        for tr, solo, defeat in saved_solo:
            set_track_value(tr, "I_SOLO", solo)
            set_track_value(tr, "B_SOLO_DEFEAT", defeat)
        set_track_value(master, "I_FXEN", saved_fx)
        set_track_value(master, "B_MUTE", saved_mute)
        if solo_in_front and RPR_GetToggleCommandStateEx(0, SOLO_IN_FRONT) != 1:
            RPR_Main_OnCommand(SOLO_IN_FRONT, 0)
        RPR_PreventUIRefresh(-1)


def insert_track_in(proj, index):
    """A new track in `proj`, which may no longer be the active tab: InsertTrackAtIndex acts on
    the active one, so InsertTrackInProject (REAPER 7.18+) is used, or else `proj` is made
    active for the insert and the user's tab comes back."""
    before = RPR_CountTracks(proj)
    if "RPR_InsertTrackInProject" in globals():
        RPR_InsertTrackInProject(proj, index, 1)
    else:
        active = RPR_EnumProjects(-1, "", 0)[0]
        if active != proj:
            RPR_SelectProjectInstance(proj)
        RPR_InsertTrackAtIndex(index, True)
        if active != proj:
            RPR_SelectProjectInstance(active)
    if RPR_CountTracks(proj) != before + 1:
        raise RuntimeError("REAPER did not add the new track to the generation's project")
    return RPR_GetTrack(proj, index)


# --- the action -------------------------------------------------------------------------

STATE = {}


def ask():
    captions = ("Caption (what you hear),Method (nag / independent / negative_prompt),Alpha,Beta,"
                "Seed (empty = random),Steps,extrawidth=320,separator=\n")
    defaults = "\n".join(["", ext("method", "nag"), ext("alpha", "4.5"), ext("beta", "1.5"), "", ext("steps", "25")])
    result = RPR_GetUserInputs("StepFoley: generate Foley track (Python)", 6, captions, defaults, 4096)
    if not result[0]:
        return None
    fields = (result[4].split("\n") + [""] * 6)[:6]
    caption = fields[0].strip()
    if not caption:
        raise ValueError("The caption is empty: describe the sound to generate.")
    method = fields[1].strip().lower() or ext("method", "nag")
    if method not in ("nag", "independent", "negative_prompt"):
        raise ValueError(f'Unknown method "{method}". Use nag, independent or negative_prompt.')
    try:
        alpha = float(fields[2] or ext("alpha", "4.5"))
        beta = float(fields[3] or ext("beta", "1.5"))
        seed = int(fields[4]) if fields[4].strip() else random.randint(1, 2**31 - 1)
        steps = int(fields[5] or ext("steps", "25"))
    except ValueError:
        raise ValueError("Alpha and beta must be numbers, seed and steps whole numbers.") from None
    return {"caption": caption, "method": method, "alpha": alpha, "beta": beta, "seed": seed, "steps": steps}


def poll():
    job = STATE["job"]
    status = job.poll()
    if not job.finished:
        RPR_defer("poll()")
        return
    STATE["client"].close()
    if status["state"] != "done":
        err = status.get("error") or {}
        alert(err.get("message") or "Generation " + status["state"] + ".")
        return
    proj, region, request = STATE["proj"], STATE["region"], STATE["request"]
    if not project_is_open(proj):
        alert("The project was closed while generating; the stem is at\n" + status["stem_path"])
        return
    meta = dict(request, stem_path=status["stem_path"], job_id=status["job_id"], engine=status.get("metadata"))
    RPR_Undo_BeginBlock2(proj)
    RPR_PreventUIRefresh(1)
    try:
        add_track(proj, region, request, status, meta)
        RPR_Main_OnCommandEx(BUILD_MISSING_PEAKS, 0, proj)
    except RuntimeError as e:
        alert("StepFoley could not add the result: " + str(e))
    finally:
        RPR_PreventUIRefresh(-1)
        RPR_UpdateArrange()
        RPR_Undo_EndBlock2(proj, f'StepFoley: add Foley track "{request["caption"]}"', -1)


def project_is_open(proj):
    i = 0
    while True:
        p = RPR_EnumProjects(i, "", 0)[0]
        if is_null(p):
            return False
        if p == proj:
            return True
        i += 1


def on_exit():
    """REAPER runs this when the script ends, also when the user stops it mid-generation:
    the engine job must not keep running unseen."""
    job = STATE.get("job")
    if job is None or job.finished:
        return
    job.cancel()
    for _ in range(5):  # give the cancel a moment to reach the engine
        if job.poll(0.1) and job.finished:
            break
    STATE["client"].close()


def add_track(proj, region, request, status, meta):
    track = insert_track_in(proj, RPR_CountTracks(proj))
    RPR_GetSetMediaTrackInfo_String(track, "P_NAME", request["caption"], True)
    RPR_GetSetMediaTrackInfo_String(track, TRACK_MARK, "1", True)
    item = RPR_AddMediaItemToTrack(track)
    RPR_SetMediaItemInfo_Value(item, "D_POSITION", region["project_start"])
    RPR_SetMediaItemInfo_Value(item, "D_LENGTH", region["project_end"] - region["project_start"])
    take = RPR_AddTakeToMediaItem(item)
    RPR_SetMediaItemTake_Source(take, RPR_PCM_Source_CreateFromFile(status["stem_path"]))
    RPR_GetSetMediaItemTakeInfo_String(take, "P_NAME", f"{request['caption']} (seed {request['seed']})", True)
    RPR_GetSetMediaItemTakeInfo_String(take, TAKE_META, json.dumps(meta), True)
    RPR_GetSetMediaItemInfo_String(item, "P_NOTES", f"StepFoley: {request['caption']}\n{json.dumps(meta, indent=1)}", True)


def main():
    package_dir = RPR_GetExtState(SECTION, "package_dir")
    if package_dir and package_dir not in sys.path:
        sys.path.insert(0, package_dir)
    try:
        from stepfoley.bridge.client import EngineClient
    except ImportError:
        alert("REAPER's Python cannot import StepFoley's client library.\n\nSet the StepFoley package folder "
              "(the site-packages folder holding stepfoley/) in ExtState StepFoley/package_dir, or use the Lua action instead.")
        return
    proj = RPR_EnumProjects(-1, "", 0)[0]
    _, _, _, t0, t1, _ = RPR_GetSet_LoopTimeRange2(proj, False, False, 0, 0, False)
    if t1 <= t0:
        alert("Make a time selection over the picture first.")
        return
    try:
        params = ask()
        if params is None:
            return
        region, video_track = region_for(proj, t0, t1)
        project_dir = RPR_GetProjectPathEx(proj, "", 4096)[1] or RPR_GetResourcePath()
        output_dir = os.path.join(project_dir, "StepFoley")
        job_dir = os.path.join(output_dir, "jobs", "py-%d" % random.randint(0, 1 << 30))
        os.makedirs(job_dir, exist_ok=True)
        sample_rate = int(RPR_GetSetProjectInfo(proj, "PROJECT_SRATE", 0, False)) or 48000
        t0, t1 = region["project_start"], region["project_end"]
        tracks = foley_tracks(proj, t0, t1, video_track)
        request = dict(protocol=1, region=region, negative_caption="", previous_captions=previous_captions(tracks, t0, t1),
                       output_dir=output_dir, sample_rate=sample_rate, format="wav24", name_hint=params["caption"],
                       **params)
        if tracks:
            request["existing_mix"] = bounce(proj, tracks, t0, t1, job_dir, sample_rate)
        watchdog_s = float(ext("watchdog_s", str(DEFAULT_WATCHDOG_S)))
    except (ValueError, RuntimeError, OSError) as e:
        alert(str(e))
        return
    client = EngineClient(port=int(ext("port", "9017")))
    # the client gives up after this long without any sign of life from the engine
    STATE.update(proj=proj, region=region, request=request, client=client, job=client.submit(request, timeout=watchdog_s))
    if "RPR_atexit" in globals():
        RPR_atexit("on_exit()")
    RPR_defer("poll()")


main()
