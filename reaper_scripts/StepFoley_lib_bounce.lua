-- @noindex
--[[
StepFoley library, part "bounce": what the user hears of the chosen layers over the region, as
one WAV for the engine. Loaded by StepFoley_lib.lua; adds to its table.
]]

-- Returned by the function below, for StepFoley_lib.lua to check: the files of one release go together
local VERSION = "0.5.39"

return function(M)

--[[
The chosen tracks are soloed in place and the master mix is rendered over the region, so
the file is exactly what the user hears of those layers (item/take/track volume, fades,
mutes, track and folder FX, sends), summed. "Selected tracks via master" cannot be used: it
writes one file per track (User Guide 21.5). For the render, every other track is unsoloed
and loses solo defeat, "solo in front" is switched off (it would let the other tracks
through, dimmed), the master is unmuted and its FX bypassed (the engine wants the layers,
not the mastering). When only some items of those tracks count (negatives picked by item
selection or razor edit), the other items of those tracks that play in the region are muted
for the render (B_MUTE_ACTUAL and C_MUTE_SOLO, which leave item solo alone); so are the items
of the tracks inside a chosen folder that are not chosen themselves, which a soloed folder
parent would let through (a layer being replaced among them). Everything changed is put back afterwards, also when the render fails;
values that already had the wanted state are never touched. The track selection is not
used. The render runs in the generation's project, made the active tab for it (render_in).
REAPER's API cannot mark a project clean again, so a saved project may show as modified
afterwards (docs/reaper.md).
]]

M.RENDER_NUMBERS = { "RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_STARTPOS", "RENDER_ENDPOS",
  "RENDER_SRATE", "RENDER_CHANNELS", "RENDER_TAILFLAG", "RENDER_ADDTOPROJ", "RENDER_DITHER",
  "RENDER_NORMALIZE" }
-- RENDER_FORMAT is last: REAPER can reset it when other keys are set after it
M.RENDER_STRINGS = { "RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT2", "RENDER_FORMAT" }

-- Sets a track value only when it differs, so that untouched state stays untouched.
local function set_track_value(track, key, value)
  if reaper.GetMediaTrackInfo_Value(track, key) ~= value then reaper.SetMediaTrackInfo_Value(track, key, value) end
end

local function set_item_value(item, key, value)
  if reaper.GetMediaItemInfo_Value(item, key) ~= value then reaper.SetMediaItemInfo_Value(item, key, value) end
end

-- Whether a folder above `tr` is one of the `chosen` tracks.
local function inside_chosen(tr, chosen)
  for folder in M.folders_above(tr) do
    if chosen[folder] then return true end
  end
  return false
end

-- The items over [t0, t1] that must be silent for the render: on `tracks`, all but `items`
-- (when given); on a track inside a chosen folder that is not chosen itself, all of them, as
-- soloing a folder parent makes every track inside it heard; and on a folder parent above a
-- chosen track, not chosen itself, its own: whether REAPER plays those when only a track
-- inside is soloed is not documented, and silencing them costs nothing if it does not.
local function items_to_silence(proj, tracks, items, t0, t1)
  local chosen, keep, above, list = {}, {}, {}, {}
  for _, tr in ipairs(tracks) do chosen[tr] = true end
  for _, it in ipairs(items or {}) do keep[it] = true end
  for _, tr in ipairs(tracks) do
    for folder in M.folders_above(tr) do above[folder] = true end
  end
  for t = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, t)
    if (chosen[tr] and items) or (not chosen[tr] and (inside_chosen(tr, chosen) or above[tr])) then
      for i = 0, reaper.CountTrackMediaItems(tr) - 1 do
        local item = reaper.GetTrackMediaItem(tr, i)
        local a, b = M.item_range(item)
        if not keep[item] and b > t0 and a < t1 then list[#list + 1] = item end
      end
    end
  end
  return list
end

-- Everything the bounce may change, as it is now (M.bounce puts it back; "StepFoley: Verify
-- setup" compares it before and after a test bounce).
function M.mix_state(proj, silenced)
  local saved = { numbers = {}, strings = {}, tracks = {} }
  for _, key in ipairs(M.RENDER_NUMBERS) do saved.numbers[key] = reaper.GetSetProjectInfo(proj, key, 0, false) end
  for _, key in ipairs(M.RENDER_STRINGS) do
    local _, value = reaper.GetSetProjectInfo_String(proj, key, "", false)
    saved.strings[key] = value
  end
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    saved.tracks[#saved.tracks + 1] = { track = tr, solo = reaper.GetMediaTrackInfo_Value(tr, "I_SOLO"),
      solo_defeat = reaper.GetMediaTrackInfo_Value(tr, "B_SOLO_DEFEAT") }
  end
  local master = reaper.GetMasterTrack(proj)
  saved.master_fx = reaper.GetMediaTrackInfo_Value(master, "I_FXEN")
  saved.master_mute = reaper.GetMediaTrackInfo_Value(master, "B_MUTE")
  saved.master_vol = reaper.GetMediaTrackInfo_Value(master, "D_VOL")
  saved.solo_in_front = reaper.GetToggleCommandStateEx(0, M.SOLO_IN_FRONT) == 1
  saved.items = {}
  for _, item in ipairs(silenced or {}) do
    saved.items[#saved.items + 1] = { item = item, mute = reaper.GetMediaItemInfo_Value(item, "B_MUTE_ACTUAL"),
      mute_solo = reaper.GetMediaItemInfo_Value(item, "C_MUTE_SOLO") }
  end
  return saved
end

-- Puts back everything M.mix_state read. Each part is restored even if another fails;
-- returns the messages of those that failed.
local function restore_mix_state(proj, saved)
  local problems = {}
  local function try(what, fn)
    local ok, err = pcall(fn)
    if not ok then problems[#problems + 1] = what .. ": " .. tostring(err) end
  end
  for _, key in ipairs(M.RENDER_NUMBERS) do
    try(key, function() reaper.GetSetProjectInfo(proj, key, saved.numbers[key], true) end)
  end
  for _, key in ipairs(M.RENDER_STRINGS) do
    try(key, function() reaper.GetSetProjectInfo_String(proj, key, saved.strings[key], true) end)
  end
  for _, t in ipairs(saved.tracks) do
    try("track solo", function()
      set_track_value(t.track, "I_SOLO", t.solo)
      set_track_value(t.track, "B_SOLO_DEFEAT", t.solo_defeat)
    end)
  end
  local master = reaper.GetMasterTrack(proj)
  try("master", function()
    set_track_value(master, "I_FXEN", saved.master_fx)
    set_track_value(master, "B_MUTE", saved.master_mute)
    set_track_value(master, "D_VOL", saved.master_vol)
  end)
  for _, it in ipairs(saved.items) do
    try("item mute", function()
      set_item_value(it.item, "C_MUTE_SOLO", it.mute_solo)
      set_item_value(it.item, "B_MUTE_ACTUAL", it.mute)
    end)
  end
  try("solo in front", function()
    if saved.solo_in_front and reaper.GetToggleCommandStateEx(0, M.SOLO_IN_FRONT) ~= 1 then
      reaper.Main_OnCommand(M.SOLO_IN_FRONT, 0)
    end
  end)
  return problems
end

M.SILENT_MASTER_FADER = 0.01 -- -40 dB: a master fader below this is taken as pulled down to silence

local function solo_only(proj, tracks, silenced)
  local chosen = {}
  for _, tr in ipairs(tracks) do chosen[tr] = true end
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    set_track_value(tr, "I_SOLO", chosen[tr] and M.SOLO_IN_PLACE or 0)
    if not chosen[tr] then set_track_value(tr, "B_SOLO_DEFEAT", 0) end
  end
  if reaper.GetToggleCommandStateEx(0, M.SOLO_IN_FRONT) == 1 then reaper.Main_OnCommand(M.SOLO_IN_FRONT, 0) end
  local master = reaper.GetMasterTrack(proj)
  set_track_value(master, "I_FXEN", 0)
  set_track_value(master, "B_MUTE", 0)
  -- the engine hears the layers at its own level, so the fader matters only pulled all the way
  -- down, where it silenced them and the track was made negating nothing; above that it stays,
  -- as a master turned down to keep the sum from clipping must stay for the 24-bit render
  if reaper.GetMediaTrackInfo_Value(master, "D_VOL") < M.SILENT_MASTER_FADER then set_track_value(master, "D_VOL", 1) end
  for _, item in ipairs(silenced) do
    set_item_value(item, "C_MUTE_SOLO", 0)
    set_item_value(item, "B_MUTE_ACTUAL", 1)
  end
end

local function set_master_mix_render(proj, t0, t1, dir, name, sample_rate)
  local numbers = { RENDER_SETTINGS = M.RENDER_MASTER_MIX, RENDER_BOUNDSFLAG = 0, -- custom time bounds
    RENDER_STARTPOS = t0, RENDER_ENDPOS = t1, RENDER_SRATE = sample_rate, RENDER_CHANNELS = 2,
    RENDER_TAILFLAG = 0, RENDER_ADDTOPROJ = 0, RENDER_DITHER = 0, RENDER_NORMALIZE = 0 }
  for _, key in ipairs(M.RENDER_NUMBERS) do reaper.GetSetProjectInfo(proj, key, numbers[key], true) end
  local strings = { RENDER_FILE = dir, RENDER_PATTERN = name, RENDER_FORMAT2 = "", RENDER_FORMAT = M.WAV24_RENDER_FORMAT }
  for _, key in ipairs(M.RENDER_STRINGS) do reaper.GetSetProjectInfo_String(proj, key, strings[key], true) end
end

-- The one file REAPER says it will write, or an error.
local function single_render_target(proj)
  local _, targets = reaper.GetSetProjectInfo_String(proj, "RENDER_TARGETS", "", false)
  local list = {}
  for path in (targets or ""):gmatch("[^;]+") do list[#list + 1] = path end
  if #list ~= 1 then
    error(string.format("REAPER would write %d files instead of one (%s)", #list, tostring(targets)), 0)
  end
  return list[1]
end

--[[
Runs the render action in `proj`. REAPER's actions act on the active project tab whatever
project Main_OnCommandEx is given, and the dialog and the jobs leave REAPER usable, so the user
may be looking at another tab: `proj` is made the active tab for the render and the user's
tab is given back afterwards, also when the render fails.
]]
local function render_in(proj)
  local active = reaper.EnumProjects(-1, "")
  local switch = proj ~= 0 and proj ~= nil and active ~= proj
  if switch then reaper.SelectProjectInstance(proj) end
  local ok, err = pcall(reaper.Main_OnCommandEx, M.RENDER_AND_CLOSE, 0, proj)
  if switch then reaper.SelectProjectInstance(active) end
  if not ok then error(err, 0) end
end

-- How much shorter than asked a bounce may be: a render rounds its length to whole samples
-- (stepfoley's engine allows its inputs as much, engine.audio_io.SHORT_INPUT_TOLERANCE_S).
M.SHORT_BOUNCE_S = 0.01

-- Renders what the user hears of `tracks` (only `items` of them, when given) over [t0, t1]
-- to dir/name.wav (24-bit stereo). Returns the WAV path, or nil and a message. Every setting
-- touched is restored.
function M.bounce(proj, tracks, t0, t1, dir, name, sample_rate, items)
  -- the bounce is a render, and the render settings and solos it sets would be heard by (or
  -- end) a recording under way: the dialog may have been answered a moment before one started
  if reaper.GetPlayStateEx(proj) & 4 ~= 0 then
    return nil, "REAPER is recording. Stop the recording, then run the action again: StepFoley bounces the " ..
      "layers it needs with a render, which must not run during a recording."
  end
  if dir:find(";", 1, true) then -- REAPER lists the files it will render separated by ";"
    return nil, "Could not bounce: REAPER cannot render into a folder whose path holds \";\" (it separates the " ..
      "files it renders with it):\n" .. dir
  end
  local silenced = items_to_silence(proj, tracks, items, t0, t1)
  local saved = M.mix_state(proj, silenced)
  reaper.PreventUIRefresh(1)
  local ok, result = pcall(function()
    solo_only(proj, tracks, silenced)
    set_master_mix_render(proj, t0, t1, dir, name, sample_rate)
    local target = single_render_target(proj)
    os.remove(target) -- an existing file would open a modal overwrite prompt
    render_in(proj)
    -- REAPER may return before the file is whole (a full disk): the engine would refuse it as
    -- cut short, in words about the file, not the render
    local info = M.wav_info(target)
    if not info then error("the render produced no WAV file at " .. target, 0) end
    if info.seconds < t1 - t0 - M.SHORT_BOUNCE_S then
      error(string.format("the render holds %.3f s of the %.3f s asked for (is the disk full?): %s", info.seconds,
        t1 - t0, target), 0)
    end
    return target
  end)
  local problems = restore_mix_state(proj, saved)
  reaper.PreventUIRefresh(-1)
  if #problems > 0 then
    local msg = "Could not restore every render/solo setting after the bounce:\n" .. table.concat(problems, "\n")
    if ok then M.alert(msg) else result = tostring(result) .. "\n\n" .. msg end
  end
  if ok then return result end
  return nil, (name == "existing_mix" and "Could not bounce the layers to negate: " or "Could not bounce: ") ..
    tostring(result)
end

-- The format of a WAV file: {sample_rate, channels, bits, seconds}, or nil.
function M.wav_info(path)
  local data = M.read_file(path)
  if not data or data:sub(1, 4) ~= "RIFF" or data:sub(9, 12) ~= "WAVE" then return nil end
  local pos, info, data_bytes = 13, nil, nil
  while pos + 8 <= #data do
    local id, size = data:sub(pos, pos + 3), string.unpack("<I4", data, pos + 4)
    if id == "fmt " then
      local _, channels, rate, _, _, bits = string.unpack("<I2I2I4I4I2I2", data, pos + 8)
      info = { sample_rate = rate, channels = channels, bits = bits }
    elseif id == "data" then
      data_bytes = math.min(size, #data - pos - 7)
    end
    pos = pos + 8 + size + (size % 2)
  end
  if not info or not data_bytes or info.channels == 0 or info.bits == 0 then return nil end
  info.seconds = data_bytes / (info.channels * info.bits // 8) / info.sample_rate
  return info
end

return VERSION
end
