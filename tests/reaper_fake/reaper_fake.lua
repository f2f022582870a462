--[[
A fake `reaper` (and `gfx`) for running the StepFoley ReaScripts under plain Lua 5.4.

It models, faithfully for what the scripts use, the parts of the ReaScript API
(reaper.fm/sdk/reascript/reascripthelp.html) and of the REAPER User Guide (chapter 21,
rendering) below; anything else is absent, so a script calling an unmodelled function or key
fails loudly instead of silently passing.

Model:
- several projects (ReaProject*, the project tabs), one of them active. Like REAPER, calls
  that take no project (InsertTrackAtIndex, Main_OnCommand, ...) or get 0 act on the ACTIVE
  tab; calls given a project act on that project, except actions: Main_OnCommandEx runs the
  action on the ACTIVE tab whatever project it is given. SelectProjectInstance switches tabs;
  InsertTrackInProject (REAPER 7.18+) inserts into a given project. A scenario can remove
  API functions (`missing_api`) to play an older REAPER.
- per project: tracks in order (folders through I_FOLDERDEPTH), a master track, a time
  selection, project info (render settings, sample rate), the project file (EnumProjects;
  "" for a project never saved) and, apart from it, the recording path (GetProjectPathEx:
  the project folder, or a media subfolder such as <project>/Audio, or for an unsaved
  project REAPER's default path), undo blocks;
- tracks (MediaTrack*): name, selection, P_EXT values, B_MUTE, I_SOLO, B_SOLO_DEFEAT, D_VOL,
  I_FXEN, I_FOLDERDEPTH, razor-edit areas (P_RAZOREDITS), fixed item lanes (REAPER 7:
  I_FREEMODE 2, I_NUMFIXEDLANES, C_LANEPLAYS:N per lane, P_LANENAME:n), items; the track's FX
  are modelled as one gain (`fx_gain`, applied while I_FXEN is on);
- items (MediaItem*): D_POSITION, D_LENGTH, D_VOL, linear fades (D_FADEINLEN, D_FADEOUTLEN,
  C_FADEINSHAPE/C_FADEOUTSHAPE 0), mute as REAPER has it (B_MUTE_ACTUAL the item's own mute,
  C_MUTE_SOLO the item-solo override -1/0/1, B_MUTE the resulting mute; setting B_MUTE clears
  C_MUTE_SOLO), B_LOOPSRC, I_FIXEDLANE and C_LANEPLAYS (read-only: its lane's state), P_NOTES,
  takes, the active take, selection;
- takes (MediaItem_Take*): P_NAME, P_EXT values, D_STARTOFFS (negative: silence before the
  source starts, when the item does not loop), D_PLAYRATE, D_VOL, D_PAN, D_PANLAW, I_CHANMODE,
  D_PITCH, B_PPITCH, I_PITCHMODE, I_TAKEFX_NCH (a new take has REAPER's defaults: 0, -1
  project default, 0 normal, 0, 0, -1 project default, 2; pan, pan law, channel mode, pitch
  and take FX channels are stored only: a render refuses a take that plays with other values),
  IP_SPECEDIT:CNT (read-only: the count of spectral edits; a render refuses a take with one),
  take markers, stretch-marker count, MIDI flag, a source;
- sources (PCM_source*): a file (WAV: sample rate, channels and length read from the
  header; video: length given by the scenario) or a section of a parent source (offset,
  length, reversed), as REAPER makes for trimmed/reversed takes;
- track envelopes (TrackEnvelope*): a name as REAPER shows it (GetEnvelopeName: "Volume",
  "Pan", ..., or a LangPack's translation such as "Lautstärke"), the name of its
  configuration chunk, which no language changes ("<VOLENV2" the track's Volume, "<VOLENV"
  Volume (Pre-FX), "<VOLENV3" Trim Volume, "<PANENV2" Pan ...; GetTrackEnvelopeByChunkName
  finds a track's envelope by it, nil when the track has none; a scenario that gives no chunk
  name has REAPER's English names, from which it is known), points (time, value,
  shape 0 linear or 1 square; other shapes are refused), a scaling mode (1: fader scaling,
  as REAPER's volume envelopes have by default) and a value where it has no points; at most
  one selected (GetSelectedEnvelope). A point's value is stored as REAPER stores it, in the
  envelope's mode: ScaleToEnvelopeMode/ScaleFromEnvelopeMode convert. REAPER's own fader
  curve is not modelled: mode 1 here is an invertible stand-in (amplitude^(1/4)), so a script
  is right only if it converts through those calls. Envelope_Evaluate: the value at a time
  (the first point's before it, the last point's after it). Envelopes do not act on renders
  here (the actions read them, they never bounce through them);
- global ExtState (persist flag recorded), dialogs (GetUserInputs, GetUserFileNameForRead)
  answered from queues, message boxes recorded, action toggle states (40745 "Options: Solo in
  front"), time_precise a clock the driver advances, GetAppVersion, folder listings
  (EnumerateFiles/EnumerateSubdirectories, index -1 re-reads and returns nil);
- ReaImGui only when a scenario installs it: ImGui_GetBuiltinPath then points at
  tests/reaper_fake/imgui/, whose imgui.lua is a stand-in for the functions StepFoley uses
  (see that file);
- scripts: each action runs as its own script; reaper.defer callbacks and reaper.atexit
  functions belong to the script that registered them. A script ends when it has no
  deferred callback left, or when the user terminates it (the driver's `terminate`); then
  its atexit functions run, as in REAPER ("when the script finishes or is ended by the
  user"), and its gfx window closes;
- ExecProcess splits the command line the way REAPER does and starts the program without a
  shell (in the background for -1/-2): on Windows by the CommandLineToArgvW rules that
  CreateProcess'ed programs use, elsewhere on whitespace outside ' " or ` quotes with every
  other character literal (REAPER passes the arguments to the program directly; the
  splitting rule is the one ReaSpeech documented, TeamAudio/reaspeech PR #187). With a
  positive timeout it waits (at most that long) and returns "<exit code>\n<output>"; nil
  when the program cannot be started at all ("returns NULL on total failure");
- action 42230 (render with the most recent settings) renders over custom bounds to
  RENDER_FILE/RENDER_PATTERN as real WAV files (bit depth from RENDER_FORMAT "evaw" + bits;
  RENDER_NORMALIZE, RENDER_TAILFLAG, RENDER_DITHER and RENDER_ADDTOPROJ must be 0):
  * RENDER_SETTINGS 0, "master mix" (User Guide 21.5): ONE file, the master's output. A
    track's own media plays unless the track or a folder above it is muted; when any track
    is soloed, only soloed tracks, the tracks inside a soloed folder and unmuted
    solo-defeat tracks play (with "solo in front" on, the others play dimmed by
    SOLO_IN_FRONT_DIM instead of silent). Item: not muted, on a playing lane, active take,
    item volume x take volume x linear fades; with B_LOOPSRC the source repeats (also
    before its start), without it there is silence outside it. Track: D_VOL x FX gain, then each folder
    above it, then the master: D_VOL x FX gain, silent when the master is muted.
  * RENDER_SETTINGS 128, "selected tracks via master": ONE FILE PER SELECTED TRACK (User
    Guide 21.5), each the track (and the tracks inside it) through its folders and the
    master; solo states do not matter. RENDER_TARGETS lists them all, separated by ";".
  Solo and solo in place are the same here (the fake has no sends). Like REAPER it refuses
  (modal prompt, recorded) to overwrite an existing file, and to render stems when no track
  is selected; a scenario can have the user cancel the render (nothing is written).
  Assumptions (not confirmed by the API text): a master-mix render with custom bounds writes
  a file even when nothing plays (silence); a folder parent's own media stays silent when
  only a track inside it is soloed (fake.parent_plays_with_soloed_child: it plays, the other
  reading, which the scripts must survive too); stem files are named RENDER_PATTERN, RENDER_PATTERN-001,
  ... unless the pattern contains $track; WAV sources are read by nearest sample, no
  resampling filter; a mono source plays at full level on both channels; an item made by
  AddMediaItemToTrack loops its source (B_LOOPSRC 1, REAPER's default for new items) and its
  lanes' play states start as lane 0 playing; lanes beyond I_NUMFIXEDLANES do not exist.
The fake's own helpers live in `fake` (returned by this file), never in `reaper`.
]]

local fake = {
  clock = 1000.0, deferred = {}, messages = {}, console = {}, dialogs = {}, dialog_answers = {},
  exec = {}, undo = {}, undo_depth = 0, edits_outside_undo = {}, ui_refresh = 0, commands = {},
  modal_prompts = {}, extstate = {}, extstate_persist = {}, gfx_text = {}, gfx_key = 0,
  exec_log = "/dev/null", resource_path = "/tmp/reaper-resource", os_name = "Other",
  app_version = "7.27/linux-x86_64", exec_timeouts = {}, file_answers = {}, message_answers = {}, peaks_built = {},
  projects = {}, active = 1, toggles = { [40745] = 0 }, scripts = {}, current_script = nil,
  SOLO_IN_FRONT_DIM = 10 ^ (-18 / 20), -- REAPER's default solo-in-front dim (-18 dB)
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

local function new_track(project, name)
  return { kind = "MediaTrack*", project = project, name = name or "", selected = false, ext = {}, items = {},
    fxen = 1, fx_gain = 1.0, mute = false, solo = 0, solo_defeat = false, vol = 1.0, folderdepth = 0, freemode = 0,
    numlanes = 1, lane_plays = { [0] = 1 }, lane_names = {}, razor = "", envelopes = {}, timebase = -1 }
end

local function render_defaults()
  return {
    numbers = { PROJECT_SRATE = 48000, PROJECT_SRATE_USE = 1, RENDER_SETTINGS = 0, RENDER_BOUNDSFLAG = 1,
      RENDER_STARTPOS = 0, RENDER_ENDPOS = 0, RENDER_SRATE = 44100, RENDER_CHANNELS = 2, RENDER_TAILFLAG = 0,
      RENDER_ADDTOPROJ = 0, RENDER_DITHER = 0, RENDER_NORMALIZE = 0 },
    strings = { RENDER_FILE = "", RENDER_PATTERN = "$project", RENDER_FORMAT = "bDNwbQ==", RENDER_FORMAT2 = "" },
  }
end

function fake.add_project(path)
  local defaults = render_defaults()
  local pr = { kind = "ReaProject*", tracks = {}, ts0 = 0, ts1 = 0, path = path or "/tmp",
    numbers = defaults.numbers, strings = defaults.strings }
  pr.file, pr.record_path = pr.path .. "/fake.rpp", pr.path
  pr.master = new_track(pr, "MASTER")
  fake.projects[#fake.projects + 1] = pr
  return pr
end

-- The first project exists from the start (REAPER always has one tab).
fake.project = fake.add_project("/tmp")

function fake.active_project() return fake.projects[fake.active] end

function fake.add_track(name, project)
  project = project or fake.project
  local tr = new_track(project, name)
  project.tracks[#project.tracks + 1] = tr
  return tr
end

-- scaling mode 1 (fader): an invertible stand-in for REAPER's curve, see the model above
local function to_envelope_mode(mode, amplitude)
  if mode == 1 then return math.max(amplitude, 0) ^ 0.25 end
  return amplitude
end
local function from_envelope_mode(mode, value)
  if mode == 1 then return math.max(value, 0) ^ 4 end
  return value
end

-- The configuration chunk of each of REAPER's built-in track envelopes, by its English name
-- (the names an English REAPER shows); a translated name is not in here, its chunk is given.
local ENGLISH_ENVELOPE_CHUNKS = { ["Volume"] = "<VOLENV2", ["Volume (Pre-FX)"] = "<VOLENV",
  ["Trim Volume"] = "<VOLENV3", ["Pan"] = "<PANENV2", ["Pan (Pre-FX)"] = "<PANENV", ["Width"] = "<WIDTHENV2",
  ["Width (Pre-FX)"] = "<WIDTHENV", ["Mute"] = "<MUTEENV" }

-- points: {{time, value (amplitude for volume envelopes), shape}} in time order; chunk: the
-- envelope's configuration chunk name (default: from its English name)
function fake.add_envelope(track, name, points, mode, default, chunk)
  chunk = chunk or ENGLISH_ENVELOPE_CHUNKS[name]
  assert(chunk, "fake reaper: give the chunk name of envelope " .. tostring(name))
  for _, other in ipairs(track.envelopes) do
    assert(other.chunk ~= chunk, "fake reaper: a track has one envelope of each kind: " .. chunk)
  end
  local env = { kind = "TrackEnvelope*", track = track, name = name, chunk = chunk, mode = mode or 0,
    selected = false, points = {} }
  env.default = to_envelope_mode(env.mode, default or 1.0)
  for _, p in ipairs(points or {}) do
    local shape = p[3] or 0
    assert(shape == 0 or shape == 1, "fake reaper: only linear (0) and square (1) envelope shapes are modelled")
    assert(#env.points == 0 or p[1] >= env.points[#env.points].time, "fake reaper: envelope points out of order")
    env.points[#env.points + 1] = { time = p[1], value = to_envelope_mode(env.mode, p[2]), shape = shape }
  end
  track.envelopes[#track.envelopes + 1] = env
  return env
end

function fake.add_item(track, position, length)
  local item = { kind = "MediaItem*", track = track, position = position, length = length, notes = "", takes = {},
    active = nil, selected = false, mute = false, mute_solo = 0, vol = 1.0, fadein = 0.0, fadeout = 0.0,
    fadein_shape = 0, fadeout_shape = 0, fixedlane = 0, loopsrc = 0, timebase = -1, autostretch = 0 }
  track.items[#track.items + 1] = item
  return item
end

function fake.add_take(item, source, startoffs, playrate)
  local take = { kind = "MediaItem_Take*", item = item, source = source, startoffs = startoffs or 0,
    playrate = playrate or 1, name = "", ext = {}, stretch_markers = 0, midi = false, vol = 1.0, markers = {},
    pan = 0.0, panlaw = -1.0, chanmode = 0, pitch = 0.0, ppitch = 0, pitchmode = -1, takefx_nch = 2, fx = {},
    envelopes = 0, spectral_edits = 0 }
  item.takes[#item.takes + 1] = take
  item.active = item.active or take
  return take
end

-- The user drags an item (`by` s), slips its active take (`slip` s of its start offset) or
-- deletes its takes, in the active tab: {track, item} 1-based.
function fake.move_item(m)
  local item = fake.projects[fake.active].tracks[m.track].items[m.item]
  item.position = item.position + (m.by or 0)
  item.active.startoffs = item.active.startoffs + (m.slip or 0)
  if m.delete_takes then item.takes, item.active = {}, nil end
end

-- REAPER's item mute: the item-solo override wins over the item's own mute.
local function item_muted(item)
  if item.mute_solo == -1 then return false end
  if item.mute_solo == 1 then return true end
  return item.mute
end
fake.item_muted = item_muted

-- An item's lane state on a fixed-lane track; elsewhere 0, or -1 for an item left on a hidden
-- lane when the track's fixed lanes were switched off (`hidden_lane`).
local function lane_plays(item)
  if item.track.freemode ~= 2 then return item.hidden_lane and -1 or 0 end
  return item.track.lane_plays[item.fixedlane] or 0
end

local function edit(what)
  if fake.undo_depth == 0 then fake.edits_outside_undo[#fake.edits_outside_undo + 1] = what end
end

local function items_of(pr)
  local list = {}
  for _, tr in ipairs(pr.tracks) do for _, it in ipairs(tr.items) do list[#list + 1] = it end end
  return list
end

local function check(obj, kind, fn)
  if type(obj) ~= "table" or obj.kind ~= kind then
    error(string.format("fake reaper: %s expects a %s, got %s", fn, kind, tostring(obj)), 3)
  end
end

-- REAPER: a project of 0 (or nil) means the active tab.
local function proj_of(p)
  if p == 0 or p == nil then return fake.active_project() end
  for _, pr in ipairs(fake.projects) do if pr == p then return pr end end
  error("fake reaper: unknown or closed project " .. tostring(p), 3)
end

-- The folder parent of `tr` (I_FOLDERDEPTH: 1 opens a folder, -n closes n levels).
local function parent_of(tr)
  local pr = tr.project
  local stack = {}
  for _, t in ipairs(pr.tracks) do
    if t == tr then return stack[#stack] end
    if t.folderdepth > 0 then stack[#stack + 1] = t
    elseif t.folderdepth < 0 then for _ = 1, -t.folderdepth do stack[#stack] = nil end end
  end
  return nil
end
fake.parent_of = parent_of

------------------------------------------------------------------------------------------
-- Command lines (how REAPER's ExecProcess splits them)
------------------------------------------------------------------------------------------

-- POSIX REAPER: whitespace separates arguments outside quotes; ' " and ` quote (a span ends
-- at the same quote character; other quote characters inside it are literal); nothing is
-- escaped and no shell sees the line.
local function split_posix(cmd)
  local args, cur, quote, started = {}, {}, nil, false
  for _, c in utf8.codes(cmd) do
    local ch = utf8.char(c)
    if quote then
      if ch == quote then quote = nil else cur[#cur + 1] = ch end
    elseif ch == '"' or ch == "'" or ch == "`" then
      quote, started = ch, true
    elseif ch:match("^%s$") then
      if started then args[#args + 1] = table.concat(cur); cur, started = {}, false end
    else
      cur[#cur + 1] = ch
      started = true
    end
  end
  assert(not quote, "fake reaper: unterminated quote in command line: " .. cmd)
  if started then args[#args + 1] = table.concat(cur) end
  return args
end

-- Windows: CommandLineToArgvW / MSVCRT rules. 2n backslashes + quote = n backslashes and a
-- quote toggle; 2n+1 backslashes + quote = n backslashes and a literal quote; backslashes
-- elsewhere are literal; "" inside quotes is a literal quote.
local function split_windows(cmd)
  local args, cur, inq, started = {}, {}, false, false
  local i, n = 1, #cmd
  while i <= n do
    local ch = cmd:sub(i, i)
    if ch == "\\" then
      local j = i
      while j <= n and cmd:sub(j, j) == "\\" do j = j + 1 end
      local count = j - i
      if cmd:sub(j, j) == '"' then
        cur[#cur + 1] = string.rep("\\", count // 2)
        if count % 2 == 1 then cur[#cur + 1] = '"'; j = j + 1 end
      else
        cur[#cur + 1] = string.rep("\\", count)
      end
      started = true
      i = j
    elseif ch == '"' then
      if inq and cmd:sub(i + 1, i + 1) == '"' then cur[#cur + 1] = '"'; i = i + 2
      else inq = not inq; i = i + 1 end
      started = true
    elseif (ch == " " or ch == "\t") and not inq then
      if started then args[#args + 1] = table.concat(cur); cur, started = {}, false end
      i = i + 1
    else
      cur[#cur + 1] = ch
      started = true
      i = i + 1
    end
  end
  if started then args[#args + 1] = table.concat(cur) end
  return args
end

function fake.split_command_line(cmd, windows)
  if windows then return split_windows(cmd) end
  return split_posix(cmd)
end

------------------------------------------------------------------------------------------
-- The API
------------------------------------------------------------------------------------------

reaper = {}

function reaper.GetOS() return fake.os_name end
function reaper.GetAppVersion() return fake.app_version end
function reaper.time_precise() return fake.clock end
function reaper.defer(fn)
  assert(type(fn) == "function", "fake reaper: defer takes a function")
  fake.deferred[#fake.deferred + 1] = { fn = fn, script = fake.current_script }
  return true
end
function reaper.atexit(fn)
  assert(type(fn) == "function", "fake reaper: atexit takes a function")
  local s = assert(fake.current_script, "fake reaper: atexit outside a script")
  s.atexit[#s.atexit + 1] = fn
  return true
end
function reaper.ShowConsoleMsg(msg) fake.console[#fake.console + 1] = msg end
-- A message (type 0) is answered OK (1); a question (any other type) takes the scenario's next
-- answer (REAPER's codes: 6 yes, 7 no, 2 cancel ...) and must have one.
function reaper.ShowMessageBox(msg, title, kind)
  fake.messages[#fake.messages + 1] = { message = msg, title = title, type = kind }
  if kind == 0 then return 1 end
  return assert(table.remove(fake.message_answers, 1), "fake reaper: a question was asked with no answer given")
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
-- Folder listings: REAPER caches a folder's listing; index -1 re-reads it (and returns nil).
local function listing(path, dirs)
  local out = {}
  local p = io.popen("find " .. sh_quote(path) .. " -mindepth 1 -maxdepth 1 -type " .. (dirs and "d" or "f") ..
    " -printf '%f\\n' 2>/dev/null | sort")
  for line in p:read("a"):gmatch("[^\n]+") do out[#out + 1] = line end
  p:close()
  return out
end
function reaper.EnumerateFiles(path, i)
  if i < 0 then return nil end
  return listing(path, false)[i + 1]
end
function reaper.EnumerateSubdirectories(path, i)
  if i < 0 then return nil end
  return listing(path, true)[i + 1]
end

-- Projects (tabs)
function reaper.EnumProjects(idx, _)
  local pr
  if idx == -1 then pr = fake.active_project() else pr = fake.projects[idx + 1] end
  if not pr then return nil, "" end
  return pr, pr.file
end
function reaper.SelectProjectInstance(p)
  for i, pr in ipairs(fake.projects) do
    if pr == p then fake.active = i; return end
  end
  error("fake reaper: SelectProjectInstance with an unknown project")
end
function reaper.GetProjectPathEx(p, _) return proj_of(p).record_path end
function reaper.ValidatePtr2(p, ptr, kind)
  local pr = proj_of(p)
  if type(ptr) ~= "table" or ptr.kind ~= kind then return false end
  if kind == "MediaItem*" then
    for _, it in ipairs(items_of(pr)) do if it == ptr then return true end end
    return false
  elseif kind == "MediaTrack*" then
    for _, tr in ipairs(pr.tracks) do if tr == ptr then return true end end
    return ptr == pr.master
  elseif kind == "MediaItem_Take*" then
    if not reaper.ValidatePtr2(p, ptr.item, "MediaItem*") then return false end
    for _, take in ipairs(ptr.item.takes) do if take == ptr then return true end end
    return false
  elseif kind == "TrackEnvelope*" then
    if not reaper.ValidatePtr2(p, ptr.track, "MediaTrack*") then return false end
    for _, env in ipairs(ptr.track.envelopes) do if env == ptr then return true end end
    return false
  end
  return true
end

-- The ruler's start (Project settings > Project start time): what the ruler shows at project time 0.
-- Every position the API takes or returns is project time; only what is shown is offset.
-- &1 playing, &2 paused, &4 recording
function reaper.GetPlayStateEx(p) return proj_of(p).play_state or 0 end

function reaper.GetProjectTimeOffset(p, rndframe)
  assert(rndframe == false, "fake reaper: rounding to frames is not modelled")
  return proj_of(p).time_offset or 0
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

-- The files a render with the current settings would write (stems: one per selected track).
local function render_targets(pr)
  local dir, pattern = pr.strings.RENDER_FILE, pr.strings.RENDER_PATTERN
  local sep = (fake.os_name:find("Win") and "\\" or "/")
  if (pr.numbers.RENDER_SETTINGS & 128) ~= 0 then
    local list = {}
    for _, tr in ipairs(pr.tracks) do
      if tr.selected then
        local name
        if pattern:find("$track", 1, true) then name = pattern:gsub("%$track", function() return tr.name end)
        elseif #list == 0 then name = pattern
        else name = string.format("%s-%03d", pattern, #list) end
        list[#list + 1] = { path = dir .. sep .. name .. ".wav", track = tr }
      end
    end
    return list
  end
  return { { path = dir .. sep .. pattern .. ".wav" } }
end

function reaper.GetSetProjectInfo_String(p, key, value, set)
  local pr = proj_of(p)
  if key == "RENDER_TARGETS" then
    assert(not set, "fake reaper: RENDER_TARGETS is read-only")
    local pattern = pr.strings.RENDER_PATTERN:gsub("%$track", "")
    assert(not pattern:find("%$"), "fake reaper: render wildcards other than $track are not modelled")
    local paths = {}
    for i, t in ipairs(render_targets(pr)) do paths[i] = t.path end
    return true, table.concat(paths, ";")
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

-- How REAPER splits the initial text of GetUserInputs into fields (the Ultraschall API's notes
-- on retvals_csv): a separator is skipped while the field so far holds an odd number of ' or
-- of ", or an unclosed (, so the later fields' text lands in the wrong fields.
local function split_initial_text(text, sep)
  local fields, start, single, double, depth = {}, 1, 0, 0, 0
  for i = 1, #text do
    local c = text:sub(i, i)
    if c == "'" then single = single + 1
    elseif c == '"' then double = double + 1
    elseif c == "(" then depth = depth + 1
    elseif c == ")" then depth = depth - 1
    elseif c == sep and single % 2 == 0 and double % 2 == 0 and depth <= 0 then
      fields[#fields + 1] = text:sub(start, i - 1)
      start, single, double, depth = i + 1, 0, 0, 0
    end
  end
  fields[#fields + 1] = text:sub(start)
  return fields
end

-- A script's answer buffer (retvals_csv, not a "NeedBig" parameter) holds 1,024 bytes.
local ANSWER_BYTES = 1023

function reaper.GetUserInputs(title, n, captions_csv, defaults_csv)
  local sep = captions_csv:match(",separator=(.)") or ","
  local captions = captions_csv:gsub(",extrawidth=%d+", ""):gsub(",separator=.", "")
  local list = {}
  for c in (captions .. ","):gmatch("(.-),") do list[#list + 1] = c end
  assert(#list == n, string.format("fake reaper: GetUserInputs got %d captions for %d fields", #list, n))
  assert(n <= 16, "fake reaper: GetUserInputs takes at most 16 fields")
  local defaults = split_initial_text(defaults_csv, sep)
  fake.dialogs[#fake.dialogs + 1] = { title = title, captions = list, separator = sep, defaults = defaults_csv,
                                      shown = defaults }
  local answer = table.remove(fake.dialog_answers, 1)
  if not answer or not answer.ok then return false, "" end
  local values = {}
  for i = 1, n do values[i] = answer.values[i] or defaults[i] or "" end
  return true, table.concat(values, sep):sub(1, ANSWER_BYTES)
end

function reaper.GetUserFileNameForRead(_, title, ext)
  fake.dialogs[#fake.dialogs + 1] = { title = title, file_dialog = true, extension = ext }
  local answer = table.remove(fake.file_answers, 1)
  if not answer then return false, "" end
  return true, answer
end

-- Processes: the program gets exactly the arguments REAPER's splitter produces (each passed
-- single-quoted to /bin/sh here, which is only how this fake starts a program on Linux).
function reaper.ExecProcess(cmd, timeout)
  fake.exec[#fake.exec + 1] = cmd
  fake.exec_timeouts[#fake.exec_timeouts + 1] = timeout
  local argv = fake.split_command_line(cmd, fake.os_name:find("Win") ~= nil)
  local quoted = {}
  for i, a in ipairs(argv) do quoted[i] = sh_quote(a) end
  local line = table.concat(quoted, " ")
  if timeout < 0 then
    os.execute(line .. " >>" .. sh_quote(fake.exec_log) .. " 2>&1 &")
    return ""
  end
  local program = io.open(argv[1] or "", "rb")
  if not program then return nil end -- cannot be started at all
  program:close()
  local limit = timeout > 0 and string.format("timeout %.3f ", timeout / 1000) or ""
  local p = io.popen(limit .. line .. " 2>&1")
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
function reaper.UpdateTimeline() end
function reaper.GetToggleCommandStateEx(section, cmd)
  assert(section == 0, "fake reaper: only the main section's toggle states are modelled")
  local state = fake.toggles[cmd]
  if state == nil then return -1 end
  return state
end
function reaper.GetToggleCommandState(cmd) return reaper.GetToggleCommandStateEx(0, cmd) end

-- Tracks
function reaper.CountTracks(p) return #proj_of(p).tracks end
function reaper.GetTrack(p, i) return proj_of(p).tracks[i + 1] end
function reaper.GetMasterTrack(p) return proj_of(p).master end
function reaper.GetParentTrack(tr) check(tr, "MediaTrack*", "GetParentTrack"); return parent_of(tr) end
local function insert_track(pr, i)
  edit("insert track")
  table.insert(pr.tracks, math.max(0, math.min(i, #pr.tracks)) + 1, new_track(pr, ""))
end
-- Acts on the ACTIVE project tab (it takes no project).
function reaper.InsertTrackAtIndex(i, _) insert_track(fake.active_project(), i) end
-- REAPER 7.18+.
function reaper.InsertTrackInProject(p, i, _) insert_track(proj_of(p), i) end
function reaper.IsTrackSelected(tr) check(tr, "MediaTrack*", "IsTrackSelected"); return tr.selected end
local function selected_tracks(p)
  local list = {}
  for _, tr in ipairs(proj_of(p).tracks) do if tr.selected then list[#list + 1] = tr end end
  return list
end
function reaper.CountSelectedTracks(p) return #selected_tracks(p) end
function reaper.GetSelectedTrack(p, i) return selected_tracks(p)[i + 1] end
function reaper.SetTrackSelected(tr, sel) check(tr, "MediaTrack*", "SetTrackSelected"); tr.selected = sel and true or false end

-- Track numbers: getter and setter per key (booleans are 0/1 numbers, as in REAPER).
local TRACK_VALUES = {
  I_FXEN = { function(tr) return tr.fxen end, function(tr, v) tr.fxen = v end },
  B_MUTE = { function(tr) return tr.mute and 1 or 0 end, function(tr, v) tr.mute = v ~= 0 end },
  I_SOLO = { function(tr) return tr.solo end, function(tr, v) tr.solo = math.tointeger(v) or v end },
  B_SOLO_DEFEAT = { function(tr) return tr.solo_defeat and 1 or 0 end, function(tr, v) tr.solo_defeat = v ~= 0 end },
  D_VOL = { function(tr) return tr.vol end, function(tr, v) tr.vol = v end },
  I_FOLDERDEPTH = { function(tr) return tr.folderdepth end, function(tr, v) tr.folderdepth = math.tointeger(v) or v end },
  I_FREEMODE = { function(tr) return tr.freemode end, function(tr, v) tr.freemode = math.tointeger(v) or v end },
  -- timebase: -1 the project's default, 0 time, 1 beats (position, length, rate), 2 beats (position only)
  C_BEATATTACHMODE = { function(tr) return tr.timebase end, function(tr, v) tr.timebase = math.tointeger(v) or v end },
  I_NUMFIXEDLANES = { function(tr) return tr.numlanes end, function(tr, v)
    tr.numlanes = math.tointeger(v)
    for lane = 0, tr.numlanes - 1 do tr.lane_plays[lane] = tr.lane_plays[lane] or 0 end
  end },
  IP_TRACKNUMBER = { function(tr)
    for i, t in ipairs(tr.project.tracks) do if t == tr then return i end end
    return 0
  end, nil },
}
-- C_LANEPLAYS:N, per lane of a fixed-lane track (setting it to 1 "plays exclusively": the
-- other lanes stop playing).
local function lane_key(tr, key)
  local lane = key:match("^C_LANEPLAYS:(%d+)$")
  if not lane then return nil end
  lane = tonumber(lane)
  assert(tr.freemode == 2 and lane < tr.numlanes, "fake reaper: no fixed lane " .. lane .. " on this track")
  return lane
end

function reaper.GetMediaTrackInfo_Value(tr, key)
  check(tr, "MediaTrack*", "GetMediaTrackInfo_Value")
  local lane = lane_key(tr, key)
  if lane then return tr.lane_plays[lane] end
  local accessors = assert(TRACK_VALUES[key], "fake reaper: track value not modelled: " .. key)
  return accessors[1](tr)
end
function reaper.SetMediaTrackInfo_Value(tr, key, v)
  check(tr, "MediaTrack*", "SetMediaTrackInfo_Value")
  local lane = lane_key(tr, key)
  if lane then
    edit("track " .. key)
    if v == 1 then for l = 0, tr.numlanes - 1 do tr.lane_plays[l] = 0 end end
    tr.lane_plays[lane] = math.tointeger(v) or v
    return true
  end
  local accessors = TRACK_VALUES[key]
  assert(accessors and accessors[2], "fake reaper: setting this track value is not modelled: " .. key)
  accessors[2](tr, v)
  return true
end
function reaper.GetSetMediaTrackInfo_String(tr, key, value, set)
  check(tr, "MediaTrack*", "GetSetMediaTrackInfo_String")
  if set then edit("track " .. key) end
  if key == "P_NAME" then
    if set then tr.name = value end
    return true, tr.name
  end
  if key == "P_RAZOREDITS" then
    if set then tr.razor = value end
    return true, tr.razor
  end
  local lane = key:match("^P_LANENAME:(%d+)$")
  if lane then
    lane = tonumber(lane)
    if tr.freemode ~= 2 or lane >= tr.numlanes then return false, "" end -- NULL for non-fixed-lane tracks
    if set then tr.lane_names[lane] = value end
    return true, tr.lane_names[lane] or ""
  end
  local ext = key:match("^P_EXT:(.+)$")
  assert(ext, "fake reaper: track string not modelled: " .. key)
  if set then tr.ext[ext] = value end
  return tr.ext[ext] ~= nil, tr.ext[ext] or ""
end
function reaper.CountTrackMediaItems(tr) check(tr, "MediaTrack*", "CountTrackMediaItems"); return #tr.items end
function reaper.GetTrackMediaItem(tr, i) check(tr, "MediaTrack*", "GetTrackMediaItem"); return tr.items[i + 1] end

-- Envelopes
function reaper.GetSelectedEnvelope(p)
  local pr = proj_of(p)
  for _, tr in ipairs({ pr.master, table.unpack(pr.tracks) }) do
    for _, env in ipairs(tr.envelopes) do if env.selected then return env end end
  end
  return nil
end
function reaper.GetEnvelopeName(env) check(env, "TrackEnvelope*", "GetEnvelopeName"); return true, env.name end
-- By configuration chunk name ("<VOLENV2"); nil when the track has no such envelope. REAPER
-- also takes an envelope's GUID here: the fake's envelopes have none, so that is refused.
function reaper.GetTrackEnvelopeByChunkName(tr, chunk)
  check(tr, "MediaTrack*", "GetTrackEnvelopeByChunkName")
  assert(type(chunk) == "string" and chunk:match("^<%u[%u%d]*$"),
    "fake reaper: GetTrackEnvelopeByChunkName takes a chunk name like \"<VOLENV2\": " .. tostring(chunk))
  for _, env in ipairs(tr.envelopes) do if env.chunk == chunk then return env end end
  return nil
end
function reaper.Envelope_GetParentTrack(env)
  check(env, "TrackEnvelope*", "Envelope_GetParentTrack"); return env.track, -1, -1
end
-- The fake has no take envelopes: every envelope belongs to a track.
function reaper.Envelope_GetParentTake(env)
  check(env, "TrackEnvelope*", "Envelope_GetParentTake"); return nil, -1, -1
end
function reaper.GetEnvelopeScalingMode(env) check(env, "TrackEnvelope*", "GetEnvelopeScalingMode"); return env.mode end
function reaper.ScaleToEnvelopeMode(mode, value) return to_envelope_mode(mode, value) end
function reaper.ScaleFromEnvelopeMode(mode, value) return from_envelope_mode(mode, value) end
-- Returns: samples the value stays valid for, value (in the envelope's mode), dVdS, ddVdS, dddVdS.
function reaper.Envelope_Evaluate(env, time, samplerate, samples_requested)
  check(env, "TrackEnvelope*", "Envelope_Evaluate")
  local pts, value, slope = env.points, env.default, 0.0
  if #pts > 0 then
    value = pts[1].value
    for i, p in ipairs(pts) do
      if time >= p.time then
        value, slope = p.value, 0.0
        local q = pts[i + 1]
        if q and time < q.time and p.shape == 0 and q.time > p.time then
          local f = (time - p.time) / (q.time - p.time)
          value = p.value + (q.value - p.value) * f
          if samplerate > 0 then slope = (q.value - p.value) / ((q.time - p.time) * samplerate) end
        end
      end
    end
  end
  return math.max(1, samples_requested), value, slope, 0.0, 0.0
end

-- Items
function reaper.CountMediaItems(p) return #items_of(proj_of(p)) end
function reaper.GetMediaItem(p, i) return items_of(proj_of(p))[i + 1] end
function reaper.GetSelectedMediaItem(p, i)
  local n = 0
  for _, it in ipairs(items_of(proj_of(p))) do
    if it.selected then
      if n == i then return it end
      n = n + 1
    end
  end
  return nil
end
function reaper.IsMediaItemSelected(item) check(item, "MediaItem*", "IsMediaItemSelected"); return item.selected end
function reaper.CountSelectedMediaItems(p)
  local n = 0
  for _, it in ipairs(items_of(proj_of(p))) do if it.selected then n = n + 1 end end
  return n
end
function reaper.GetMediaItem_Track(item) check(item, "MediaItem*", "GetMediaItem_Track"); return item.track end
function reaper.GetItemProjectContext(item) check(item, "MediaItem*", "GetItemProjectContext"); return item.track.project end
function reaper.AddMediaItemToTrack(tr)
  check(tr, "MediaTrack*", "AddMediaItemToTrack")
  edit("AddMediaItemToTrack")
  local item = fake.add_item(tr, 0, 0)
  item.loopsrc = 1 -- REAPER's default: new items loop their source
  return item
end
local ITEM_VALUES = {
  D_POSITION = { "position", true }, D_LENGTH = { "length", true }, D_VOL = { "vol", true },
  D_FADEINLEN = { "fadein", true }, D_FADEOUTLEN = { "fadeout", true },
  C_FADEINSHAPE = { "fadein_shape", true }, C_FADEOUTSHAPE = { "fadeout_shape", true },
  C_MUTE_SOLO = { "mute_solo", true }, B_LOOPSRC = { "loopsrc", true }, C_LOCK = { "lock", true },
  -- -1: the track's timebase (or the project's), else as the track's C_BEATATTACHMODE
  C_BEATATTACHMODE = { "timebase", true }, C_AUTOSTRETCH = { "autostretch", true },
}
function reaper.GetMediaItemInfo_Value(item, key)
  check(item, "MediaItem*", "GetMediaItemInfo_Value")
  if key == "B_MUTE" then return item_muted(item) and 1 or 0 end
  if key == "B_MUTE_ACTUAL" then return item.mute and 1 or 0 end
  if key == "D_FADEINLEN_AUTO" or key == "D_FADEOUTLEN_AUTO" then return -1 end -- auto-fades not modelled
  if key == "C_LANEPLAYS" then return lane_plays(item) end
  if key == "I_FIXEDLANE" then return item.fixedlane end
  local spec = assert(ITEM_VALUES[key], "fake reaper: item value not modelled: " .. key)
  return item[spec[1]]
end
function reaper.SetMediaItemInfo_Value(item, key, v)
  check(item, "MediaItem*", "SetMediaItemInfo_Value")
  edit("item " .. key)
  if key == "B_MUTE" then item.mute, item.mute_solo = v ~= 0, 0; return true end -- clears C_MUTE_SOLO
  if key == "B_MUTE_ACTUAL" then item.mute = v ~= 0; return true end
  if key == "I_FIXEDLANE" then
    local tr = item.track
    assert(tr.freemode == 2 and v >= 0 and v < tr.numlanes, "fake reaper: I_FIXEDLANE beyond the track's lanes")
    item.fixedlane = math.tointeger(v)
    return true
  end
  local spec = assert(ITEM_VALUES[key], "fake reaper: item value not modelled: " .. key)
  item[spec[1]] = v
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
function reaper.CountTakeEnvelopes(take) check(take, "MediaItem_Take*", "CountTakeEnvelopes"); return take.envelopes end
-- Take FX: each a name; the render does not apply them.
function reaper.TakeFX_GetCount(take) check(take, "MediaItem_Take*", "TakeFX_GetCount"); return #take.fx end
function reaper.TakeFX_CopyToTake(src, src_fx, dest, dest_fx, is_move)
  check(src, "MediaItem_Take*", "TakeFX_CopyToTake"); check(dest, "MediaItem_Take*", "TakeFX_CopyToTake")
  assert(src.fx[src_fx + 1] and dest_fx >= 0 and dest_fx <= #dest.fx, "fake reaper: TakeFX_CopyToTake index out of range")
  edit("TakeFX_CopyToTake")
  table.insert(dest.fx, dest_fx + 1, src.fx[src_fx + 1])
  if is_move then table.remove(src.fx, src_fx + 1) end
end
local TAKE_VALUES = { D_STARTOFFS = "startoffs", D_PLAYRATE = "playrate", D_VOL = "vol", D_PAN = "pan",
  D_PANLAW = "panlaw", I_CHANMODE = "chanmode", D_PITCH = "pitch", B_PPITCH = "ppitch", I_PITCHMODE = "pitchmode",
  I_TAKEFX_NCH = "takefx_nch" }
local TAKE_READ_ONLY = { ["IP_SPECEDIT:CNT"] = "spectral_edits" }
function reaper.GetMediaItemTakeInfo_Value(take, key)
  check(take, "MediaItem_Take*", "GetMediaItemTakeInfo_Value")
  return assert(take[TAKE_VALUES[key] or TAKE_READ_ONLY[key] or ""], "fake reaper: take value not modelled: " .. key)
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
function reaper.SetTakeMarker(take, idx, name, srcpos, _)
  check(take, "MediaItem_Take*", "SetTakeMarker")
  edit("SetTakeMarker")
  if idx < 0 then
    take.markers[#take.markers + 1] = { name = name, position = srcpos or 0 }
    return #take.markers - 1
  end
  take.markers[idx + 1] = { name = name, position = srcpos or take.markers[idx + 1].position }
  return idx
end
function reaper.GetNumTakeMarkers(take) check(take, "MediaItem_Take*", "GetNumTakeMarkers"); return #take.markers end
function reaper.GetMediaItemTake_Source(take) check(take, "MediaItem_Take*", "GetMediaItemTake_Source"); return take.source end
function reaper.SetMediaItemTake_Source(take, src)
  check(take, "MediaItem_Take*", "SetMediaItemTake_Source")
  check(src, "PCM_source*", "SetMediaItemTake_Source")
  edit("SetMediaItemTake_Source")
  take.source = src
  return true
end

-- Sources
-- nil for a file it cannot read (assumption: REAPER gives no source for a file that is not
-- media; the fake reads WAV only).
function reaper.PCM_Source_CreateFromFile(path)
  local ok, src = pcall(fake.file_source, path)
  if ok then return src end
  return nil
end
function reaper.PCM_Source_Destroy(src) check(src, "PCM_source*", "PCM_Source_Destroy"); src.destroyed = true end
function reaper.GetMediaSourceParent(src) check(src, "PCM_source*", "GetMediaSourceParent"); return src.parent end
function reaper.GetMediaSourceType(src, _) check(src, "PCM_source*", "GetMediaSourceType"); return src.type end
function reaper.GetMediaSourceFileName(src, _) check(src, "PCM_source*", "GetMediaSourceFileName"); return src.file or "" end
-- 0 for a source without audio (assumption: as for a video file with no sound)
function reaper.GetMediaSourceSampleRate(src)
  check(src, "PCM_source*", "GetMediaSourceSampleRate")
  return (src.parent or src).sr or 0
end
-- 0 for a source without audio, as GetMediaSourceSampleRate
function reaper.GetMediaSourceNumChannels(src)
  check(src, "PCM_source*", "GetMediaSourceNumChannels")
  return (src.parent or src).channels or 0
end
function reaper.GetMediaSourceLength(src) check(src, "PCM_source*", "GetMediaSourceLength"); return src.length, false end
function reaper.PCM_Source_GetSectionInfo(src)
  check(src, "PCM_source*", "PCM_Source_GetSectionInfo")
  if src.parent then return true, src.offs, src.length, src.rev end
  return false, 0, src.length, false
end

------------------------------------------------------------------------------------------
-- Rendering (action 42230)
------------------------------------------------------------------------------------------

-- Time in the file behind `take` for project time t (the same chain REAPER applies). `loops`:
-- the item loops its source, and a section repeats itself, not the file around it.
local function file_time(take, t, loops)
  local s = take.startoffs + (t - take.item.position) * take.playrate
  local src = take.source
  if loops and src.parent then s = s % src.length end
  while src.parent do
    if src.rev then s = src.offs + (src.length - s) else s = src.offs + s end
    src = src.parent
  end
  return s, src
end

local function fade_gain(item, t)
  assert(item.fadein_shape == 0 and item.fadeout_shape == 0, "fake reaper: only linear fades are modelled")
  local g = 1.0
  local into, left = t - item.position, item.position + item.length - t
  if item.fadein > 0 and into < item.fadein then g = g * (into / item.fadein) end
  if item.fadeout > 0 and left < item.fadeout then g = g * (left / item.fadeout) end
  return g
end

local function item_plays(item)
  if item_muted(item) then return false end
  if lane_plays(item) < 0 or (item.track.freemode == 2 and lane_plays(item) == 0) then return false end -- a lane that does not play
  return item.active ~= nil and item.active.source ~= nil
end

local function track_gain(tr) return tr.vol * ((tr.fxen ~= 0) and tr.fx_gain or 1.0) end

-- Gain from a track's output to the master's input (its folders' faders and FX), or 0 when
-- it or a folder above it is muted.
local function path_gain(tr)
  local g = track_gain(tr)
  local p = tr
  while p do
    if p.mute then return 0.0 end
    p = parent_of(p)
    if p then g = g * track_gain(p) end
  end
  return g
end

local function master_gain(pr)
  local m = pr.master
  if m.mute then return 0.0 end
  return m.vol * ((m.fxen ~= 0) and m.fx_gain or 1.0)
end

-- How loud a track's own media plays in the master mix given the solo states (0 = silent).
local function solo_factor(pr, tr)
  local any = false
  for _, t in ipairs(pr.tracks) do if t.solo ~= 0 then any = true end end
  if not any then return 1.0 end
  local p = tr
  while p do
    if p.solo ~= 0 then return 1.0 end -- soloed, or inside a soloed folder
    p = parent_of(p)
  end
  if fake.parent_plays_with_soloed_child then -- the other reading of REAPER (see the header)
    for _, t in ipairs(pr.tracks) do
      if t.solo ~= 0 then
        local up = parent_of(t)
        while up do
          if up == tr then return 1.0 end
          up = parent_of(up)
        end
      end
    end
  end
  if tr.solo_defeat and not tr.mute then return 1.0 end
  if fake.toggles[40745] == 1 then return fake.SOLO_IN_FRONT_DIM end
  return 0.0
end

-- Adds gain x (the active takes of tr's playing items) over [t0, t0 + frames/sr) into out.
local function mix_track_media(out, tr, gain, t0, frames, sr, channels)
  if gain == 0 then return end
  for _, item in ipairs(tr.items) do
    local take = item.active
    if item_plays(item) and item.position < t0 + frames / sr and item.position + item.length > t0 then
      assert(take.pan == 0 and take.panlaw == -1 and take.chanmode == 0 and take.pitch == 0
        and take.takefx_nch == 2 and take.spectral_edits == 0,
        "fake reaper: a take's pan, pan law, channel mode, pitch, take FX channels and spectral edits are not " ..
        "modelled in renders")
      local _, root = file_time(take, t0)
      local w = fake.wav_cache[root.file] or fake.read_wav(root.file)
      fake.wav_cache[root.file] = w
      local g_item = gain * item.vol * take.vol
      for f = 0, frames - 1 do
        local t = t0 + f / sr
        if t >= item.position and t < item.position + item.length then
          local s = file_time(take, t, item.loopsrc ~= 0)
          local k = math.floor(s * w.sr + 1e-9)
          if item.loopsrc ~= 0 then k = k % w.frames end -- the file repeats, also before its start
          if k >= 0 and k < w.frames then
            local g = g_item * fade_gain(item, t)
            for c = 1, channels do
              local sc = math.min(c, w.channels)
              out[f * channels + c] = out[f * channels + c] + w.data[k * w.channels + sc] * g
            end
          end
        end
      end
    end
  end
end

local function is_inside(tr, folder)
  local p = parent_of(tr)
  while p do
    if p == folder then return true end
    p = parent_of(p)
  end
  return false
end

local function render(pr)
  local n = pr.numbers
  local settings = math.tointeger(n.RENDER_SETTINGS) or n.RENDER_SETTINGS
  assert(settings == 0 or settings == 128,
    "fake reaper: only master mix (0) and selected tracks via master (128) are modelled, got " .. tostring(settings))
  assert(n.RENDER_BOUNDSFLAG == 0, "fake reaper: only custom time bounds are modelled")
  -- each would make the file other than the mix as heard (normalized or limited, a tail past
  -- the bounds, dither noise) or add it to the project: only their "off" is modelled
  for _, key in ipairs({ "RENDER_NORMALIZE", "RENDER_TAILFLAG", "RENDER_DITHER", "RENDER_ADDTOPROJ" }) do
    assert(n[key] == 0, "fake reaper: " .. key .. " " .. tostring(n[key]) .. " is not modelled (only 0)")
  end
  local format = pr.strings.RENDER_FORMAT
  local cfg = fake.base64_decode(format)
  assert(cfg:sub(1, 4) == "evaw", "fake reaper: only WAV render formats are modelled, got " .. format)
  local bits = cfg:byte(5)
  if fake.render_cancelled then -- the user pressed Cancel in REAPER's render window
    fake.modal_prompts[#fake.modal_prompts + 1] = "render cancelled"
    return
  end
  local targets = render_targets(pr)
  if #targets == 0 then
    fake.modal_prompts[#fake.modal_prompts + 1] = "nothing to render"
    return
  end
  for _, t in ipairs(targets) do
    if reaper.file_exists(t.path) then
      fake.modal_prompts[#fake.modal_prompts + 1] = "overwrite " .. t.path
      return
    end
  end
  local t0, t1, sr, channels = n.RENDER_STARTPOS, n.RENDER_ENDPOS, math.floor(n.RENDER_SRATE), math.floor(n.RENDER_CHANNELS)
  local frames = math.floor((t1 - t0) * sr + 0.5)
  if fake.render_cut_short then frames = math.floor(frames * fake.render_cut_short) end
  local mg = master_gain(pr)
  for _, target in ipairs(targets) do
    local out = {}
    for i = 1, frames * channels do out[i] = 0.0 end
    for _, tr in ipairs(pr.tracks) do
      local gain
      if target.track then -- a stem: the track and what is inside it, solo ignored
        gain = (tr == target.track or is_inside(tr, target.track)) and path_gain(tr) or 0.0
      else
        gain = path_gain(tr) * solo_factor(pr, tr)
      end
      mix_track_media(out, tr, gain * mg, t0, frames, sr, channels)
    end
    fake.write_wav(target.path, sr, channels, bits == 32 and 32 or bits, bits == 32, out)
    fake.renders[#fake.renders + 1] = target.path
  end
end
fake.wav_cache, fake.renders = {}, {}

local function run_command(cmd, pr)
  fake.commands[#fake.commands + 1] = cmd
  if cmd == 42230 then render(pr)
  elseif cmd == 40047 then -- build missing peaks: of the tab it ran in (the active one)
    fake.peaks_built[#fake.peaks_built + 1] = pr.path
  elseif cmd == 40745 then fake.toggles[40745] = 1 - fake.toggles[40745] -- Options: Solo in front
  else error("fake reaper: action " .. cmd .. " is not modelled") end
end
-- Both act on the ACTIVE project tab: REAPER's actions (42230 among them) work on the project
-- the user sees, whatever project Main_OnCommandEx is given. The project given must still exist.
function reaper.Main_OnCommand(cmd, _) run_command(cmd, fake.active_project()) end
function reaper.Main_OnCommandEx(cmd, _, p)
  proj_of(p)
  run_command(cmd, fake.active_project())
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
-- Scripts: defer callbacks and atexit functions belong to the script that made them
------------------------------------------------------------------------------------------

function fake.start_script(name)
  local s = { name = name, atexit = {}, finished = false }
  fake.scripts[#fake.scripts + 1] = s
  return s
end

local function run_in(script, fn)
  local before = fake.current_script
  fake.current_script = script
  local ok, err = pcall(fn)
  fake.current_script = before
  if not ok then fake.script_errors = fake.script_errors or {}; table.insert(fake.script_errors, script.name .. ": " .. tostring(err)) end
end
fake.run_in = run_in

local function pending(script)
  for _, d in ipairs(fake.deferred) do if d.script == script then return true end end
  return false
end

-- Ends `script` the way REAPER does: its atexit functions run, its gfx window closes.
function fake.finish_script(script)
  if script.finished then return end
  script.finished = true
  for _, fn in ipairs(script.atexit) do run_in(script, fn) end
  if fake.gfx_owner == script then gfx.quit() end
end

-- Scripts with no deferred callback left have ended.
function fake.finish_idle_scripts()
  for _, s in ipairs(fake.scripts) do
    if not s.finished and not pending(s) then fake.finish_script(s) end
  end
end

-- The user ends a running script (REAPER's "terminate instances" / toolbar toggle).
function fake.terminate(name)
  local n = 0
  for _, s in ipairs(fake.scripts) do
    if not s.finished and (name == nil or s.name:sub(-#name) == name) then
      local keep = {}
      for _, d in ipairs(fake.deferred) do if d.script ~= s then keep[#keep + 1] = d end end
      fake.deferred = keep
      fake.finish_script(s)
      n = n + 1
    end
  end
  return n
end

function fake.run_deferred_once()
  local now = fake.deferred
  fake.deferred = {}
  for _, d in ipairs(now) do run_in(d.script, d.fn) end
  fake.finish_idle_scripts()
end

------------------------------------------------------------------------------------------
-- gfx (progress window)
------------------------------------------------------------------------------------------

gfx = { w = 0, h = 0, x = 0, y = 0 }
function gfx.init(title, w, h) gfx.w, gfx.h, fake.gfx_open, fake.gfx_owner = w, h, title, fake.current_script end
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
function gfx.quit() fake.gfx_open, fake.gfx_owner = nil, nil end

return fake
