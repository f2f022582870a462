--[[
A fake `reaper` (and `gfx`) for running the StepFoley ReaScripts under plain Lua 5.4.

It models, faithfully for what the scripts use, the parts of the ReaScript API
(reaper.fm/sdk/reascript/reascripthelp.html) below; anything else is absent, so a script
calling an unmodelled function fails loudly instead of silently passing.

Model:
- one project (ReaProject*): tracks in order, a master track, a time selection, project
  info (render settings, sample rate), a project path, undo blocks;
- tracks (MediaTrack*): name, selection, P_EXT values, I_FXEN, items;
- items (MediaItem*): D_POSITION, D_LENGTH, P_NOTES, takes, the active take, selection;
- takes (MediaItem_Take*): P_NAME, P_EXT values, D_STARTOFFS, D_PLAYRATE, stretch-marker
  count, MIDI flag, a source;
- sources (PCM_source*): a file (WAV: sample rate, channels and length read from the
  header; video: length given by the scenario) or a section of a parent source (offset,
  length, reversed), as REAPER makes for trimmed/reversed takes;
- global ExtState (persist flag recorded), dialogs answered from a queue, message boxes
  recorded, defer callbacks queued for the driver's loop, time_precise a clock the driver
  advances;
- ExecProcess really starts the command (through /bin/sh, in the background for -1/-2);
- action 42230 (render with the most recent settings) renders "selected tracks via master"
  (RENDER_SETTINGS 128) over custom bounds to RENDER_FILE/RENDER_PATTERN.wav as a real WAV:
  the sum of the active takes' WAV sources of unmuted selected tracks (nearest sample, no
  resampling filter), times the master's FX gain when master FX are enabled; the bit depth
  comes from RENDER_FORMAT ("evaw" + bits). Like REAPER it refuses (modal prompt, recorded)
  to overwrite an existing file or to render when nothing is in range.
The fake's own helpers live in `fake` (returned by this file), never in `reaper`.
]]

local fake = {
  clock = 1000.0, deferred = {}, messages = {}, console = {}, dialogs = {}, dialog_answers = {},
  exec = {}, undo = {}, undo_depth = 0, edits_outside_undo = {}, ui_refresh = 0, commands = {},
  modal_prompts = {}, extstate = {}, extstate_persist = {}, gfx_text = {}, gfx_key = 0,
  exec_log = "/dev/null", resource_path = "/tmp/reaper-resource",
}

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
fake.sh_quote = sh_quote

------------------------------------------------------------------------------------------
-- WAV files
------------------------------------------------------------------------------------------

-- Returns {sr, channels, frames, bits, float, data = {interleaved samples in [-1, 1]}}.
function fake.read_wav(path, header_only)
  local f = assert(io.open(path, "rb"), "fake: cannot open " .. path)
  local bytes = f:read("a")
  f:close()
  assert(bytes:sub(1, 4) == "RIFF" and bytes:sub(9, 12) == "WAVE", "fake: not a WAV file: " .. path)
  local pos, fmt, data_at, data_len = 13, nil, nil, nil
  while pos + 8 <= #bytes do
    local id, size = bytes:sub(pos, pos + 3), string.unpack("<I4", bytes, pos + 4)
    if id == "fmt " then
      local tag, ch, sr, _, _, bits = string.unpack("<I2I2I4I4I2I2", bytes, pos + 8)
      if tag == 0xFFFE then tag = string.unpack("<I2", bytes, pos + 8 + 24) end
      fmt = { tag = tag, channels = ch, sr = sr, bits = bits }
    elseif id == "data" then
      data_at, data_len = pos + 8, math.min(size, #bytes - pos - 7)
    end
    pos = pos + 8 + size + (size % 2)
  end
  assert(fmt and data_at, "fake: WAV without fmt or data: " .. path)
  local width = fmt.bits // 8
  local w = { sr = fmt.sr, channels = fmt.channels, bits = fmt.bits, float = fmt.tag == 3 }
  w.frames = data_len // (width * fmt.channels)
  if header_only then return w end
  local data, n = {}, w.frames * fmt.channels
  local code, scale
  if w.float then code, scale = (width == 4 and "<f" or "<d"), 1
  elseif width == 2 then code, scale = "<i2", 32768
  elseif width == 3 then code, scale = "<i3", 8388608
  elseif width == 4 then code, scale = "<i4", 2147483648
  else error("fake: unsupported WAV sample width " .. fmt.bits) end
  local at = data_at
  for i = 1, n do
    data[i] = string.unpack(code, bytes, at) / scale
    at = at + width
  end
  w.data = data
  return w
end

function fake.write_wav(path, sr, channels, bits, float, data)
  local width = bits // 8
  local parts = {}
  local code, scale, top
  if float then code, scale = "<f", 1
  elseif width == 2 then code, scale, top = "<i2", 32768, 32767
  else code, scale, top = "<i3", 8388608, 8388607 end
  for i = 1, #data do
    local x = data[i]
    if float then parts[i] = string.pack(code, x)
    else
      local q = math.floor(x * scale + 0.5)
      if q > top then q = top elseif q < -top - 1 then q = -top - 1 end
      parts[i] = string.pack(code, q)
    end
  end
  local body = table.concat(parts)
  local header = "RIFF" .. string.pack("<I4", 36 + #body) .. "WAVE" .. "fmt " ..
    string.pack("<I4I2I2I4I4I2I2", 16, float and 3 or 1, channels, sr, sr * channels * width, channels * width, bits) ..
    "data" .. string.pack("<I4", #body)
  local f = assert(io.open(path, "wb"))
  f:write(header, body)
  f:close()
end

------------------------------------------------------------------------------------------
-- Objects
------------------------------------------------------------------------------------------

local VIDEO_TYPES = { mp4 = true, mov = true, mkv = true, avi = true, webm = true, m4v = true }

function fake.file_source(path, length)
  local ext = (path:match("%.([^./\\]+)$") or ""):lower()
  local src = { kind = "PCM_source*", file = path }
  if ext == "wav" then
    local w = fake.read_wav(path, true)
    src.type, src.sr, src.channels, src.length = "WAVE", w.sr, w.channels, w.frames / w.sr
  else
    src.type = VIDEO_TYPES[ext] and "VIDEO" or "UNKNOWN"
    src.length = assert(length, "fake: a non-WAV source needs a length: " .. path)
  end
  return src
end

function fake.section_source(parent, offs, len, rev)
  return { kind = "PCM_source*", type = "SECTION", parent = parent, offs = offs, length = len, rev = rev and true or false }
end

local function new_track(name)
  return { kind = "MediaTrack*", name = name or "", selected = false, ext = {}, items = {}, fxen = 1, mute = false }
end

local project = {
  kind = "ReaProject*", tracks = {}, master = new_track("MASTER"), ts0 = 0, ts1 = 0, path = "/tmp",
  numbers = { PROJECT_SRATE = 48000, PROJECT_SRATE_USE = 1, RENDER_SETTINGS = 0, RENDER_BOUNDSFLAG = 1,
    RENDER_STARTPOS = 0, RENDER_ENDPOS = 0, RENDER_SRATE = 44100, RENDER_CHANNELS = 2, RENDER_TAILFLAG = 0,
    RENDER_ADDTOPROJ = 0, RENDER_DITHER = 0, RENDER_NORMALIZE = 0 },
  strings = { RENDER_FILE = "", RENDER_PATTERN = "$project", RENDER_FORMAT = "bDNwbQ==", RENDER_FORMAT2 = "" },
  master_fx_gain = 1.0,
}
fake.project = project

function fake.add_track(name)
  local tr = new_track(name)
  project.tracks[#project.tracks + 1] = tr
  return tr
end

function fake.add_item(track, position, length)
  local item = { kind = "MediaItem*", track = track, position = position, length = length, notes = "", takes = {},
    active = nil, selected = false }
  track.items[#track.items + 1] = item
  return item
end

function fake.add_take(item, source, startoffs, playrate)
  local take = { kind = "MediaItem_Take*", item = item, source = source, startoffs = startoffs or 0,
    playrate = playrate or 1, name = "", ext = {}, stretch_markers = 0, midi = false }
  item.takes[#item.takes + 1] = take
  item.active = item.active or take
  return take
end

local function edit(what)
  if fake.undo_depth == 0 then fake.edits_outside_undo[#fake.edits_outside_undo + 1] = what end
end

local function all_items()
  local list = {}
  for _, tr in ipairs(project.tracks) do for _, it in ipairs(tr.items) do list[#list + 1] = it end end
  return list
end

local function check(obj, kind, fn)
  if type(obj) ~= "table" or obj.kind ~= kind then
    error(string.format("fake reaper: %s expects a %s, got %s", fn, kind, tostring(obj)), 3)
  end
end

local function proj_of(p)
  if p == 0 or p == nil or p == project then return project end
  error("fake reaper: unknown project " .. tostring(p), 3)
end

------------------------------------------------------------------------------------------
-- The API
------------------------------------------------------------------------------------------

reaper = {}

function reaper.GetOS() return "Other" end
function reaper.time_precise() return fake.clock end
function reaper.defer(fn) fake.deferred[#fake.deferred + 1] = fn end
function reaper.atexit(fn) fake.atexit = fn end
function reaper.ShowConsoleMsg(msg) fake.console[#fake.console + 1] = msg end
function reaper.ShowMessageBox(msg, title, kind)
  fake.messages[#fake.messages + 1] = { message = msg, title = title, type = kind }
  return 1
end
function reaper.GetResourcePath() return fake.resource_path end
function reaper.file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end
function reaper.RecursiveCreateDirectory(path, _)
  os.execute("mkdir -p " .. sh_quote(path))
  return 1
end

function reaper.EnumProjects(idx, _)
  if idx == -1 or idx == 0 then return project, project.path .. "/fake.rpp" end
  return nil, ""
end
function reaper.GetProjectPathEx(p, _) return proj_of(p).path end
function reaper.ValidatePtr2(p, ptr, kind)
  proj_of(p)
  if type(ptr) ~= "table" or ptr.kind ~= kind then return false end
  if kind == "MediaItem*" then
    for _, it in ipairs(all_items()) do if it == ptr then return true end end
    return false
  elseif kind == "MediaTrack*" then
    for _, tr in ipairs(project.tracks) do if tr == ptr then return true end end
    return ptr == project.master
  end
  return true
end

function reaper.GetSet_LoopTimeRange2(p, is_set, _, t0, t1, _)
  local pr = proj_of(p)
  if is_set then pr.ts0, pr.ts1 = t0, t1 end
  return pr.ts0, pr.ts1
end

function reaper.GetSetProjectInfo(p, key, value, set)
  local pr = proj_of(p)
  assert(pr.numbers[key] ~= nil, "fake reaper: GetSetProjectInfo key not modelled: " .. key)
  if set then pr.numbers[key] = value end
  return pr.numbers[key]
end

local function render_target()
  return project.strings.RENDER_FILE .. "/" .. project.strings.RENDER_PATTERN .. ".wav"
end

function reaper.GetSetProjectInfo_String(p, key, value, set)
  local pr = proj_of(p)
  if key == "RENDER_TARGETS" then
    assert(not set, "fake reaper: RENDER_TARGETS is read-only")
    assert(not project.strings.RENDER_PATTERN:find("%$"), "fake reaper: render wildcards are not modelled")
    return true, render_target()
  end
  assert(pr.strings[key] ~= nil, "fake reaper: GetSetProjectInfo_String key not modelled: " .. key)
  if set then pr.strings[key] = value end
  return true, pr.strings[key]
end

-- ExtState (global)
function reaper.GetExtState(section, key) return (fake.extstate[section] or {})[key] or "" end
function reaper.SetExtState(section, key, value, persist)
  fake.extstate[section] = fake.extstate[section] or {}
  fake.extstate[section][key] = value
  fake.extstate_persist[section .. "/" .. key] = persist and true or false
end
function reaper.HasExtState(section, key) return (fake.extstate[section] or {})[key] ~= nil end
function reaper.DeleteExtState(section, key, _) if fake.extstate[section] then fake.extstate[section][key] = nil end end

-- Dialogs
function reaper.GetUserInputs(title, n, captions_csv, defaults_csv)
  local sep = captions_csv:match(",separator=(.)") or ","
  local captions = captions_csv:gsub(",extrawidth=%d+", ""):gsub(",separator=.", "")
  local list = {}
  for c in (captions .. ","):gmatch("(.-),") do list[#list + 1] = c end
  assert(#list == n, string.format("fake reaper: GetUserInputs got %d captions for %d fields", #list, n))
  assert(n <= 16, "fake reaper: GetUserInputs takes at most 16 fields")
  fake.dialogs[#fake.dialogs + 1] = { title = title, captions = list, separator = sep, defaults = defaults_csv }
  local answer = table.remove(fake.dialog_answers, 1)
  if not answer or not answer.ok then return false, "" end
  local defaults = {}
  for v in (defaults_csv .. sep):gmatch("(.-)" .. sep:gsub("%p", "%%%0")) do defaults[#defaults + 1] = v end
  local values = {}
  for i = 1, n do values[i] = answer.values[i] or defaults[i] or "" end
  return true, table.concat(values, sep)
end

-- Processes
function reaper.ExecProcess(cmd, timeout)
  fake.exec[#fake.exec + 1] = cmd
  if timeout < 0 then
    os.execute(cmd .. " >>" .. sh_quote(fake.exec_log) .. " 2>&1 &")
    return ""
  end
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  return tostring(code) .. "\n" .. out
end

-- Undo and UI
function reaper.Undo_BeginBlock2(p) proj_of(p); fake.undo_depth = fake.undo_depth + 1 end
function reaper.Undo_EndBlock2(p, desc, _)
  proj_of(p)
  assert(fake.undo_depth > 0, "fake reaper: Undo_EndBlock2 without Undo_BeginBlock2")
  fake.undo_depth = fake.undo_depth - 1
  fake.undo[#fake.undo + 1] = desc
end
function reaper.PreventUIRefresh(n) fake.ui_refresh = fake.ui_refresh + n end
function reaper.UpdateArrange() end

-- Tracks
function reaper.CountTracks(p) return #proj_of(p).tracks end
function reaper.GetTrack(p, i) return proj_of(p).tracks[i + 1] end
function reaper.GetMasterTrack(p) return proj_of(p).master end
function reaper.InsertTrackAtIndex(i, _)
  edit("InsertTrackAtIndex")
  table.insert(project.tracks, math.min(i, #project.tracks) + 1, new_track(""))
end
function reaper.IsTrackSelected(tr) check(tr, "MediaTrack*", "IsTrackSelected"); return tr.selected end
function reaper.SetTrackSelected(tr, sel) check(tr, "MediaTrack*", "SetTrackSelected"); tr.selected = sel and true or false end
function reaper.GetMediaTrackInfo_Value(tr, key)
  check(tr, "MediaTrack*", "GetMediaTrackInfo_Value")
  if key == "I_FXEN" then return tr.fxen end
  if key == "B_MUTE" then return tr.mute and 1 or 0 end
  error("fake reaper: track value not modelled: " .. key)
end
function reaper.SetMediaTrackInfo_Value(tr, key, v)
  check(tr, "MediaTrack*", "SetMediaTrackInfo_Value")
  if key == "I_FXEN" then tr.fxen = v; return true end
  error("fake reaper: track value not modelled: " .. key)
end
function reaper.GetSetMediaTrackInfo_String(tr, key, value, set)
  check(tr, "MediaTrack*", "GetSetMediaTrackInfo_String")
  if set then edit("track " .. key) end
  if key == "P_NAME" then
    if set then tr.name = value end
    return true, tr.name
  end
  local ext = key:match("^P_EXT:(.+)$")
  assert(ext, "fake reaper: track string not modelled: " .. key)
  if set then tr.ext[ext] = value end
  return tr.ext[ext] ~= nil, tr.ext[ext] or ""
end
function reaper.CountTrackMediaItems(tr) check(tr, "MediaTrack*", "CountTrackMediaItems"); return #tr.items end
function reaper.GetTrackMediaItem(tr, i) check(tr, "MediaTrack*", "GetTrackMediaItem"); return tr.items[i + 1] end

-- Items
function reaper.CountMediaItems(p) proj_of(p); return #all_items() end
function reaper.GetMediaItem(p, i) proj_of(p); return all_items()[i + 1] end
function reaper.GetSelectedMediaItem(p, i)
  proj_of(p)
  local n = 0
  for _, it in ipairs(all_items()) do
    if it.selected then
      if n == i then return it end
      n = n + 1
    end
  end
  return nil
end
function reaper.GetMediaItem_Track(item) check(item, "MediaItem*", "GetMediaItem_Track"); return item.track end
function reaper.AddMediaItemToTrack(tr)
  check(tr, "MediaTrack*", "AddMediaItemToTrack")
  edit("AddMediaItemToTrack")
  return fake.add_item(tr, 0, 0)
end
local ITEM_VALUES = { D_POSITION = "position", D_LENGTH = "length" }
function reaper.GetMediaItemInfo_Value(item, key)
  check(item, "MediaItem*", "GetMediaItemInfo_Value")
  if key == "B_MUTE" then return 0 end
  return assert(item[ITEM_VALUES[key] or ""], "fake reaper: item value not modelled: " .. key)
end
function reaper.SetMediaItemInfo_Value(item, key, v)
  check(item, "MediaItem*", "SetMediaItemInfo_Value")
  assert(ITEM_VALUES[key], "fake reaper: item value not modelled: " .. key)
  edit("item " .. key)
  item[ITEM_VALUES[key]] = v
  return true
end
function reaper.GetSetMediaItemInfo_String(item, key, value, set)
  check(item, "MediaItem*", "GetSetMediaItemInfo_String")
  assert(key == "P_NOTES", "fake reaper: item string not modelled: " .. key)
  if set then edit("item P_NOTES"); item.notes = value end
  return true, item.notes
end
function reaper.CountTakes(item) check(item, "MediaItem*", "CountTakes"); return #item.takes end
function reaper.GetActiveTake(item) check(item, "MediaItem*", "GetActiveTake"); return item.active end
function reaper.AddTakeToMediaItem(item)
  check(item, "MediaItem*", "AddTakeToMediaItem")
  edit("AddTakeToMediaItem")
  -- REAPER makes the new take active
  local take = fake.add_take(item, nil, 0, 1)
  item.active = take
  return take
end
function reaper.SetActiveTake(take)
  check(take, "MediaItem_Take*", "SetActiveTake")
  edit("SetActiveTake")
  take.item.active = take
end

-- Takes
function reaper.TakeIsMIDI(take) check(take, "MediaItem_Take*", "TakeIsMIDI"); return take.midi end
function reaper.GetTakeNumStretchMarkers(take) check(take, "MediaItem_Take*", "GetTakeNumStretchMarkers"); return take.stretch_markers end
local TAKE_VALUES = { D_STARTOFFS = "startoffs", D_PLAYRATE = "playrate" }
function reaper.GetMediaItemTakeInfo_Value(take, key)
  check(take, "MediaItem_Take*", "GetMediaItemTakeInfo_Value")
  return assert(take[TAKE_VALUES[key] or ""], "fake reaper: take value not modelled: " .. key)
end
function reaper.SetMediaItemTakeInfo_Value(take, key, v)
  check(take, "MediaItem_Take*", "SetMediaItemTakeInfo_Value")
  assert(TAKE_VALUES[key], "fake reaper: take value not modelled: " .. key)
  edit("take " .. key)
  take[TAKE_VALUES[key]] = v
  return true
end
function reaper.GetSetMediaItemTakeInfo_String(take, key, value, set)
  check(take, "MediaItem_Take*", "GetSetMediaItemTakeInfo_String")
  if set then edit("take " .. key) end
  if key == "P_NAME" then
    if set then take.name = value end
    return true, take.name
  end
  local ext = key:match("^P_EXT:(.+)$")
  assert(ext, "fake reaper: take string not modelled: " .. key)
  if set then take.ext[ext] = value end
  return take.ext[ext] ~= nil, take.ext[ext] or ""
end
function reaper.GetMediaItemTake_Source(take) check(take, "MediaItem_Take*", "GetMediaItemTake_Source"); return take.source end
function reaper.SetMediaItemTake_Source(take, src)
  check(take, "MediaItem_Take*", "SetMediaItemTake_Source")
  check(src, "PCM_source*", "SetMediaItemTake_Source")
  edit("SetMediaItemTake_Source")
  take.source = src
  return true
end

-- Sources
function reaper.PCM_Source_CreateFromFile(path) return fake.file_source(path) end
function reaper.GetMediaSourceParent(src) check(src, "PCM_source*", "GetMediaSourceParent"); return src.parent end
function reaper.GetMediaSourceType(src, _) check(src, "PCM_source*", "GetMediaSourceType"); return src.type end
function reaper.GetMediaSourceFileName(src, _) check(src, "PCM_source*", "GetMediaSourceFileName"); return src.file or "" end
function reaper.GetMediaSourceLength(src) check(src, "PCM_source*", "GetMediaSourceLength"); return src.length, false end
function reaper.PCM_Source_GetSectionInfo(src)
  check(src, "PCM_source*", "PCM_Source_GetSectionInfo")
  if src.parent then return true, src.offs, src.length, src.rev end
  return false, 0, src.length, false
end

------------------------------------------------------------------------------------------
-- Actions
------------------------------------------------------------------------------------------

-- Time in the file behind `take` for project time t (the same chain REAPER applies).
local function file_time(take, t)
  local s = take.startoffs + (t - take.item.position) * take.playrate
  local src = take.source
  while src.parent do
    if src.rev then s = src.offs + (src.length - s) else s = src.offs + s end
    src = src.parent
  end
  return s, src
end

local function render()
  local n = project.numbers
  assert(n.RENDER_SETTINGS == 128, "fake reaper: only 'selected tracks via master' (128) is modelled")
  assert(n.RENDER_BOUNDSFLAG == 0, "fake reaper: only custom time bounds are modelled")
  local format = project.strings.RENDER_FORMAT
  local cfg = fake.base64_decode(format)
  assert(cfg:sub(1, 4) == "evaw", "fake reaper: only WAV render formats are modelled, got " .. format)
  local bits = cfg:byte(5)
  local target = render_target()
  if reaper.file_exists(target) then
    fake.modal_prompts[#fake.modal_prompts + 1] = "overwrite " .. target
    return
  end
  local t0, t1, sr, channels = n.RENDER_STARTPOS, n.RENDER_ENDPOS, math.floor(n.RENDER_SRATE), math.floor(n.RENDER_CHANNELS)
  local frames = math.floor((t1 - t0) * sr + 0.5)
  local out, any = {}, false
  for i = 1, frames * channels do out[i] = 0.0 end
  local gain = (project.master.fxen ~= 0) and project.master_fx_gain or 1.0
  for _, tr in ipairs(project.tracks) do
    if tr.selected and not tr.mute then
      for _, item in ipairs(tr.items) do
        local take = item.active
        if take and item.position < t1 and item.position + item.length > t0 then
          any = true
          local _, root = file_time(take, t0)
          local w = fake.wav_cache[root.file] or fake.read_wav(root.file)
          fake.wav_cache[root.file] = w
          for f = 0, frames - 1 do
            local t = t0 + f / sr
            if t >= item.position and t < item.position + item.length then
              local s = file_time(take, t)
              local k = math.floor(s * w.sr + 1e-9)
              if k >= 0 and k < w.frames then
                for c = 1, channels do
                  local sc = math.min(c, w.channels)
                  out[f * channels + c] = out[f * channels + c] + w.data[k * w.channels + sc] * gain
                end
              end
            end
          end
        end
      end
    end
  end
  if not any then
    fake.modal_prompts[#fake.modal_prompts + 1] = "nothing to render"
    return
  end
  fake.write_wav(target, sr, channels, bits == 32 and 32 or bits, bits == 32, out)
  fake.renders[#fake.renders + 1] = target
end
fake.wav_cache, fake.renders = {}, {}

function reaper.Main_OnCommand(cmd, _)
  fake.commands[#fake.commands + 1] = cmd
  if cmd == 42230 then render()
  elseif cmd == 40047 then -- build missing peaks: nothing to model
  else error("fake reaper: action " .. cmd .. " is not modelled") end
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function fake.base64_decode(s)
  s = s:gsub("[^%w%+/]", "")
  local bits = s:gsub(".", function(c)
    local v = B64:find(c, 1, true) - 1
    local r = ""
    for i = 5, 0, -1 do r = r .. ((v >> i) & 1) end
    return r
  end)
  return (bits:gsub("%d%d%d%d%d%d%d%d", function(b) return string.char(tonumber(b, 2)) end))
end

------------------------------------------------------------------------------------------
-- gfx (progress window)
------------------------------------------------------------------------------------------

gfx = { w = 0, h = 0, x = 0, y = 0 }
function gfx.init(title, w, h) gfx.w, gfx.h, fake.gfx_open = w, h, title end
function gfx.set() end
function gfx.rect() end
function gfx.drawstr(s) fake.gfx_text[#fake.gfx_text + 1] = s end
function gfx.update() end
function gfx.getchar()
  if not fake.gfx_open then return -1 end
  local k = fake.gfx_key
  fake.gfx_key = 0
  return k
end
function gfx.quit() fake.gfx_open = nil end

return fake
