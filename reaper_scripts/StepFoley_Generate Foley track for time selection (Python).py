# @noindex
"""StepFoley: Generate Foley track for time selection, as a Python ReaScript.

Does what the Lua action of the same name does, but talks to the engine with StepFoley's
client library (stepfoley.bridge.client.EngineClient) inside REAPER instead of starting
`stepfoley send`: submit() returns at once and poll() is called from an RPR_defer loop.

Needs ReaScript Python enabled (Options > Preferences > Plug-ins > ReaScript) and the
StepFoley package importable from REAPER's Python: set the ExtState
StepFoley/package_dir to the site-packages folder of a Python where StepFoley is installed
(the one holding `stepfoley/`), or install StepFoley into the Python REAPER uses. Render settings are saved and restored
exactly as in the Lua version (same keys).
"""

import json
import os
import random
import sys

from reaper_python import *  # noqa: F401,F403  (RPR_* functions, provided by REAPER)

SECTION = "StepFoley"
TAKE_META = "P_EXT:stepfoley_metadata"
TRACK_MARK = "P_EXT:stepfoley"
WAV24 = "ZXZhdxgAAQ=="
VIDEO_EXT = {"mp4", "mov", "m4v", "mkv", "avi", "webm", "mpg", "mpeg", "mxf", "wmv", "ogv", "flv"}
RENDER_NUMBERS = ["RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_STARTPOS", "RENDER_ENDPOS", "RENDER_SRATE",
                  "RENDER_CHANNELS", "RENDER_TAILFLAG", "RENDER_ADDTOPROJ", "RENDER_DITHER", "RENDER_NORMALIZE"]
RENDER_STRINGS = ["RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT2", "RENDER_FORMAT"]  # FORMAT last


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
            if kind.upper() == "VIDEO" or name.rsplit(".", 1)[-1].lower() in VIDEO_EXT:
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


def foley_tracks(proj, t0, t1, video_track):
    selected, marked = [], []
    for i in range(RPR_CountTracks(proj)):
        tr = RPR_GetTrack(proj, i)
        if tr == video_track:
            continue
        in_range = False
        for k in range(RPR_CountTrackMediaItems(tr)):
            it = RPR_GetTrackMediaItem(tr, k)
            p = RPR_GetMediaItemInfo_Value(it, "D_POSITION")
            in_range |= p < t1 and p + RPR_GetMediaItemInfo_Value(it, "D_LENGTH") > t0
        if not in_range:
            continue
        if RPR_IsTrackSelected(tr):
            selected.append(tr)
        if RPR_GetSetMediaTrackInfo_String(tr, TRACK_MARK, "", False)[3] == "1":
            marked.append(tr)
    return selected or marked


def bounce(proj, tracks, t0, t1, folder, sample_rate):
    saved_n = {k: RPR_GetSetProjectInfo(proj, k, 0, False) for k in RENDER_NUMBERS}
    saved_s = {k: RPR_GetSetProjectInfo_String(proj, k, "", False)[3] for k in RENDER_STRINGS}
    all_tracks = [RPR_GetTrack(proj, i) for i in range(RPR_CountTracks(proj))]
    saved_sel = [(tr, RPR_IsTrackSelected(tr)) for tr in all_tracks]
    master = RPR_GetMasterTrack(proj)
    saved_fx = RPR_GetMediaTrackInfo_Value(master, "I_FXEN")
    try:
        for tr in all_tracks:
            RPR_SetTrackSelected(tr, tr in tracks)
        RPR_SetMediaTrackInfo_Value(master, "I_FXEN", 0)
        for key, value in (("RENDER_SETTINGS", 128), ("RENDER_BOUNDSFLAG", 0), ("RENDER_STARTPOS", t0),
                           ("RENDER_ENDPOS", t1), ("RENDER_SRATE", sample_rate), ("RENDER_CHANNELS", 2),
                           ("RENDER_TAILFLAG", 0), ("RENDER_ADDTOPROJ", 0), ("RENDER_DITHER", 0),
                           ("RENDER_NORMALIZE", 0)):
            RPR_GetSetProjectInfo(proj, key, value, True)
        for key, value in (("RENDER_FILE", folder), ("RENDER_PATTERN", "existing_mix"), ("RENDER_FORMAT2", ""),
                           ("RENDER_FORMAT", WAV24)):
            RPR_GetSetProjectInfo_String(proj, key, value, True)
        target = RPR_GetSetProjectInfo_String(proj, "RENDER_TARGETS", "", False)[3].split(";")[0]
        if os.path.exists(target):
            os.remove(target)  # an existing file would open a modal overwrite prompt
        RPR_Main_OnCommand(42230, 0)
        if not os.path.exists(target) or os.path.getsize(target) <= 44:
            raise RuntimeError("the render produced no file at " + target)
        return target
    finally:
        for key, value in saved_n.items():
            RPR_GetSetProjectInfo(proj, key, value, True)
        for key in RENDER_STRINGS:
            RPR_GetSetProjectInfo_String(proj, key, saved_s[key], True)
        for tr, sel in saved_sel:
            RPR_SetTrackSelected(tr, sel)
        RPR_SetMediaTrackInfo_Value(master, "I_FXEN", saved_fx)


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
    meta = dict(request, stem_path=status["stem_path"], job_id=status["job_id"], engine=status.get("metadata"))
    RPR_Undo_BeginBlock2(proj)
    RPR_PreventUIRefresh(1)
    index = RPR_CountTracks(proj)
    RPR_InsertTrackAtIndex(index, True)
    track = RPR_GetTrack(proj, index)
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
    RPR_Main_OnCommand(40047, 0)
    RPR_PreventUIRefresh(-1)
    RPR_UpdateArrange()
    RPR_Undo_EndBlock2(proj, f'StepFoley: add Foley track "{request["caption"]}"', -1)


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
        tracks = foley_tracks(proj, region["project_start"], region["project_end"], video_track)
        request = dict(protocol=1, region=region, negative_caption="", previous_captions=[], output_dir=output_dir,
                       sample_rate=sample_rate, format="wav24", name_hint=params["caption"], **params)
        if tracks:
            request["existing_mix"] = bounce(proj, tracks, region["project_start"], region["project_end"], job_dir,
                                             sample_rate)
    except (ValueError, RuntimeError, OSError) as e:
        alert(str(e))
        return
    client = EngineClient(port=int(ext("port", "9017")))
    STATE.update(proj=proj, region=region, request=request, client=client, job=client.submit(request))
    RPR_defer("poll()")


main()
