-- @noindex
--[[
StepFoley shared library for the REAPER actions.

REAPER's Lua has no sockets, so the actions talk to the engine only through the
`stepfoley send` client (docs/osc-protocol.md): the request goes in a JSON file written
here, the client is started with reaper.ExecProcess(cmd, -2) (returns at once) and keeps a
status JSON file up to date, which a reaper.defer loop polls. Cancelling = creating
STATUS.json.cancel.

Everything is local; loading this file has no side effects. It never uses os.execute or
io.popen (a shell would mangle quotes and open console windows on Windows).
]]

local M = {}

M.VERSION = "0.2.0"
M.SECTION = "StepFoley"            -- ExtState section
M.TRACK_MARK = "P_EXT:stepfoley"   -- set to "1" on tracks StepFoley created
M.TAKE_META = "P_EXT:stepfoley_metadata"
M.RENDER_AND_CLOSE = 42230         -- File: Render project, using the most recent render settings, auto-close render dialog
M.BUILD_MISSING_PEAKS = 40047
M.SOLO_IN_FRONT = 40745            -- Options: Solo in front (toggle: non-soloed tracks play dimmed instead of silent)
M.WAV24_RENDER_FORMAT = "ZXZhdxgAAQ==" -- REAPER's render config for 24-bit WAV: "evaw", 0x18, 0, 1
M.RENDER_MASTER_MIX = 0            -- RENDER_SETTINGS: master mix, one file
M.SOLO_IN_PLACE = 2                -- I_SOLO: soloed in place (heard through its folders and sends)
M.POLL_INTERVAL_S = 0.3
-- The client watches the engine itself (`send --timeout`) and writes "timed_out" when the
-- engine goes silent; REAPER's own watchdog waits this much longer, so that it only fires
-- when the client itself is gone or hung (its status file no longer changes).
M.CLIENT_REPORT_GRACE_S = 10
M.VIDEO_EXTENSIONS = { mp4 = true, mov = true, m4v = true, mkv = true, avi = true, webm = true,
  mpg = true, mpeg = true, mxf = true, wmv = true, ogv = true, flv = true }

------------------------------------------------------------------------------------------
-- JSON (UTF-8 passes through untouched; only quotes, backslashes and control chars escaped)
------------------------------------------------------------------------------------------

local array_mt = { __jsontype = "array" }

-- Marks a Lua table as a JSON array, so that an empty list encodes as [] and not {}.
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

local function is_array(t)
  if getmetatable(t) == array_mt then return true end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  if n == 0 then return false end
  for i = 1, n do if t[i] == nil then return false end end
  return true
end

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(x)
  if x ~= x or x == math.huge or x == -math.huge then
    error("JSON cannot hold the number " .. tostring(x))
  end
  if math.type(x) == "integer" then return string.format("%d", x) end
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then return string.format("%.1f", x) end
  -- shortest form that reads back as the same double
  for digits = 15, 17 do
    local s = string.format("%." .. digits .. "g", x)
    if tonumber(s) == x then return s end
  end
  return string.format("%.17g", x)
end

local function encode(v, out)
  local kind = type(v)
  if v == nil or v == M.null then
    out[#out + 1] = "null"
  elseif kind == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif kind == "number" then
    out[#out + 1] = encode_number(v)
  elseif kind == "string" then
    out[#out + 1] = encode_string(v)
  elseif kind == "table" then
    if is_array(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then error("JSON object keys must be strings, got " .. type(k)) end
        keys[#keys + 1] = k
      end
      table.sort(keys) -- stable files: easier to read and to diff
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  else
    error("JSON cannot hold a " .. kind)
  end
end

M.null = setmetatable({}, { __tostring = function() return "null" end })

function M.json_encode(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

local function utf8_of(code)
  return utf8.char(code)
end

-- Returns the decoded value, or nil and a message. JSON null becomes nil (absent key).
function M.json_decode(text)
  if type(text) ~= "string" then return nil, "no text" end
  local pos = 1
  local function fail(msg)
    error({ json = msg .. " at character " .. pos }, 0)
  end
  local function skip()
    pos = text:find("[^ \t\r\n]", pos) or (#text + 1)
  end
  local value
  local function string_at()
    pos = pos + 1 -- opening quote
    local parts = {}
    while true do
      local a, b = text:find('[%c"\\]', pos)
      if not a then fail("unterminated string") end
      parts[#parts + 1] = text:sub(pos, a - 1)
      local c = text:sub(a, a)
      if c == '"' then pos = a + 1; break end
      if c ~= "\\" then fail("control character in string") end
      local e = text:sub(a + 1, a + 1)
      local simple = ({ ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' })[e]
      if simple then
        parts[#parts + 1] = simple
        pos = a + 2
      elseif e == "u" then
        local hex = text:match("^%x%x%x%x", a + 2)
        if not hex then fail("bad \\u escape") end
        local code = tonumber(hex, 16)
        pos = a + 6
        if code >= 0xD800 and code <= 0xDBFF then
          local low = text:match("^\\u(%x%x%x%x)", pos)
          low = low and tonumber(low, 16)
          if low and low >= 0xDC00 and low <= 0xDFFF then
            code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
            pos = pos + 6
          end
        end
        parts[#parts + 1] = utf8_of(code)
      else
        fail("bad escape \\" .. e)
      end
    end
    return table.concat(parts)
  end
  value = function()
    skip()
    local c = text:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local obj = {}
      skip()
      if text:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        skip()
        if text:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = string_at()
        skip()
        if text:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        obj[k] = value()
        skip()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return obj end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      pos = pos + 1
      local arr = M.array({})
      skip()
      if text:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      local n = 0
      while true do
        n = n + 1
        arr[n] = value()
        skip()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return arr end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return string_at()
    elseif text:find("^true", pos) then
      pos = pos + 4; return true
    elseif text:find("^false", pos) then
      pos = pos + 5; return false
    elseif text:find("^null", pos) then
      pos = pos + 4; return nil
    else
      local num = text:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail("unexpected character") end
      pos = pos + #num
      local x = math.tointeger(tonumber(num)) or tonumber(num)
      if not x then fail("bad number") end
      if num:find("[.eE]") then x = tonumber(num) + 0.0 end
      return x
    end
  end
  local ok, result = pcall(function()
    local v = value()
    skip()
    if pos <= #text then fail("extra text after the value") end
    return v
  end)
  if ok then return result end
  if type(result) == "table" and result.json then return nil, result.json end
  return nil, tostring(result)
end

------------------------------------------------------------------------------------------
-- Files
------------------------------------------------------------------------------------------

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data
end

-- Writes to a temporary name, then renames, so a reader never sees half a file.
function M.write_file_atomic(path, data)
  local tmp = path .. ".part"
  local f, err = io.open(tmp, "wb")
  if not f then return false, err end
  f:write(data)
  f:close()
  os.remove(path) -- rename does not replace on Windows
  local ok, rename_err = os.rename(tmp, path)
  if not ok then return false, rename_err end
  return true
end

function M.is_windows()
  return reaper.GetOS():find("Win") ~= nil
end

function M.path_sep()
  return M.is_windows() and "\\" or "/"
end

function M.join(a, b)
  if a:sub(-1) == "/" or a:sub(-1) == "\\" then return a .. b end
  return a .. M.path_sep() .. b
end

function M.basename(path)
  return path:match("([^/\\]+)$") or path
end

function M.extension(path)
  local ext = M.basename(path):match("%.([^.]+)$")
  return ext and ext:lower() or ""
end

------------------------------------------------------------------------------------------
-- Settings (global ExtState, persisted)
------------------------------------------------------------------------------------------

M.DEFAULT_SETTINGS = {
  port = 9017,
  client = "",       -- path of `stepfoley`, or of a Python that has StepFoley installed; "" = search
  method = "nag",
  alpha = 4.5,
  beta = 1.5,
  steps = 25,
  watchdog_s = 180,  -- give up when the status file shows no progress for this long
  start_timeout_s = 20, -- give up when the client has not written its status file after this long
}

local NUMERIC_SETTINGS = { port = true, alpha = true, beta = true, steps = true, watchdog_s = true,
  start_timeout_s = true }

function M.load_settings()
  local s = {}
  for key, default in pairs(M.DEFAULT_SETTINGS) do
    local stored = reaper.GetExtState(M.SECTION, key)
    if stored ~= nil and stored ~= "" then
      s[key] = NUMERIC_SETTINGS[key] and (tonumber(stored) or default) or stored
    else
      s[key] = default
    end
  end
  return s
end

function M.save_settings(s)
  for key in pairs(M.DEFAULT_SETTINGS) do
    if s[key] ~= nil then reaper.SetExtState(M.SECTION, key, tostring(s[key]), true) end
  end
end

------------------------------------------------------------------------------------------
-- Messages
------------------------------------------------------------------------------------------

function M.alert(message, title)
  reaper.ShowMessageBox(message, title or "StepFoley", 0)
end

function M.log(message)
  reaper.ShowConsoleMsg("StepFoley: " .. message .. "\n")
end

------------------------------------------------------------------------------------------
-- Finding and quoting the client
------------------------------------------------------------------------------------------

local function is_python(path)
  local name = M.basename(path):lower()
  return name:match("^python[%d%.]*w?%.exe$") ~= nil or name:match("^python[%d%.]*$") ~= nil
    or name == "py.exe" or name == "py"
end

local function search_path(names)
  local sep = M.is_windows() and ";" or ":"
  for dir in (os.getenv("PATH") or ""):gmatch("[^" .. sep .. "]+") do
    for _, name in ipairs(names) do
      local candidate = M.join(dir, name)
      if reaper.file_exists(candidate) then return candidate end
    end
  end
  return nil
end

-- The argv prefix that runs `stepfoley`: {exe} or {python, "-m", "stepfoley"}; nil, message
-- when nothing is found.
function M.client_prefix(settings)
  local configured = settings.client or ""
  if configured ~= "" then
    if not reaper.file_exists(configured) then
      return nil, "The StepFoley program set in Settings was not found:\n" .. configured ..
        "\n\nRun \"StepFoley: Settings\" and enter the full path of `stepfoley` " ..
        "(or of the Python that has StepFoley installed)."
    end
    if is_python(configured) then return { configured, "-m", "stepfoley" } end
    return { configured }
  end
  local win = M.is_windows()
  local exe = search_path(win and { "stepfoley.exe" } or { "stepfoley" })
  if exe then return { exe } end
  local py = search_path(win and { "python.exe", "py.exe" } or { "python3", "python" })
  if py then return { py, "-m", "stepfoley" } end
  return nil, "Could not find the `stepfoley` program (searched PATH for stepfoley and Python).\n\n" ..
    "Run \"StepFoley: Settings\" and enter the full path of `stepfoley`, for example\n" ..
    (win and "C:\\Users\\you\\stepfoley-venv\\Scripts\\stepfoley.exe" or "/home/you/stepfoley-venv/bin/stepfoley")
end

-- Whether `s` can travel as one double-quoted argument of ExecProcess's command line. REAPER
-- starts the program without a shell: on Windows the program splits the line by the
-- CommandLineToArgvW rules, elsewhere REAPER splits it at spaces outside ' " or ` quotes.
-- Inside double quotes everything is then literal except: a double quote (ends the
-- argument), ` (a quote character for REAPER's splitter), a backslash before the closing
-- quote (Windows: it escapes the quote), control characters, and - refused only to be safe
-- should a shell or cmd.exe ever see the line - $ and %. Spaces, ' & [ ] ( ) ! and any
-- UTF-8 text (José, Geräusche, 足音) pass unchanged.
function M.is_command_line_safe(s)
  if s == "" or utf8.len(s) == nil then return false end -- empty, or not UTF-8
  if s:find("[\0-\31\127\"`$%%]") then return false end
  return s:sub(-1) ~= "\\"
end

function M.quote_arg(s)
  if not M.is_command_line_safe(s) then
    error("cannot put this on a command line safely: " .. s)
  end
  return '"' .. s .. '"'
end

function M.command_line(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = M.quote_arg(tostring(a)) end
  return table.concat(parts, " ")
end

------------------------------------------------------------------------------------------
-- Project, tracks, items
------------------------------------------------------------------------------------------

function M.time_selection(proj)
  local t0, t1 = reaper.GetSet_LoopTimeRange2(proj, false, false, 0, 0, false)
  if t1 > t0 then return t0, t1 end
  return nil
end

-- The time selection, or nil after asking the user to make one.
function M.require_time_selection(proj)
  local t0, t1 = M.time_selection(proj)
  if not t0 then
    M.alert("Make a time selection over the picture first: StepFoley generates Foley for the selected time.")
    return nil
  end
  return t0, t1
end

function M.project_sample_rate(proj)
  local use = reaper.GetSetProjectInfo(proj, "PROJECT_SRATE_USE", 0, false)
  local sr = math.floor(reaper.GetSetProjectInfo(proj, "PROJECT_SRATE", 0, false) + 0.5)
  if use ~= 0 and sr > 0 then return sr end
  return 48000
end

function M.item_range(item)
  local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  return pos, pos + reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
end

-- The chain of sources from the take's source up to the file: each level is
-- {src=, section=bool, offs=, len=, rev=}. The last level is the file.
function M.source_chain(take)
  local levels = {}
  local src = reaper.GetMediaItemTake_Source(take)
  while src do
    local is_section, offs, len, rev = reaper.PCM_Source_GetSectionInfo(src)
    local parent = reaper.GetMediaSourceParent(src)
    levels[#levels + 1] = { src = src, section = (parent ~= nil) and is_section or false,
      offs = offs or 0, len = len or 0, rev = rev or false }
    src = parent
  end
  return levels
end

function M.is_video_source(src)
  local kind = (reaper.GetMediaSourceType(src, "") or ""):upper()
  if kind == "VIDEO" then return true end
  return M.VIDEO_EXTENSIONS[M.extension(reaper.GetMediaSourceFileName(src, "") or "")] == true
end

-- Pure: project time -> time in the take's own source (k-diffusion-style small function).
function M.take_source_time(t, item_pos, startoffs, playrate)
  return startoffs + (t - item_pos) * playrate
end

-- Pure: time in a section level -> time in its parent.
function M.section_to_parent_time(s, level)
  if level.rev then return level.offs + (level.len - s) end
  return level.offs + s
end

-- Maps a project-time interval through the take and its section/reverse levels to file time.
-- Returns file_a, file_b (file time of t0 and t1) and whether time runs backwards in the file.
function M.map_interval(t0, t1, item_pos, startoffs, playrate, levels)
  local a = M.take_source_time(t0, item_pos, startoffs, playrate)
  local b = M.take_source_time(t1, item_pos, startoffs, playrate)
  local reversed = false
  for i = 1, #levels - 1 do -- the last level is the file itself
    local level = levels[i]
    if level.section then
      a = M.section_to_parent_time(a, level)
      b = M.section_to_parent_time(b, level)
      if level.rev then reversed = not reversed end
    end
  end
  return a, b, reversed
end

-- The video item to use under [t0, t1]: the one covering most of it (top track wins ties).
function M.find_video_item(proj, t0, t1)
  local best, best_overlap = nil, 0
  for i = 0, reaper.CountMediaItems(proj) - 1 do
    local item = reaper.GetMediaItem(proj, i)
    local take = reaper.GetActiveTake(item)
    if take and not reaper.TakeIsMIDI(take) then
      local a, b = M.item_range(item)
      local overlap = math.min(b, t1) - math.max(a, t0)
      if overlap > best_overlap then
        local levels = M.source_chain(take)
        if #levels > 0 and M.is_video_source(levels[#levels].src) then
          best, best_overlap = item, overlap
        end
      end
    end
  end
  return best
end

-- Turns a time selection into the request's region. Returns region, nil or nil, message.
-- The region is the part of [t0, t1] that has picture; `clipped` says whether it shrank.
function M.region_for(proj, t0, t1)
  local item = M.find_video_item(proj, t0, t1)
  if not item then
    return nil, string.format("There is no video item under the time selection (%.3f s to %.3f s).\n\n" ..
      "Put the picture on a track and make the time selection over it.", t0, t1)
  end
  local take = reaper.GetActiveTake(item)
  if reaper.GetTakeNumStretchMarkers(take) > 0 then
    return nil, "The video item has stretch markers, which StepFoley cannot follow.\n\n" ..
      "Remove them (Item > Stretch markers > Remove) or render the stretched video to a new file first."
  end
  local levels = M.source_chain(take)
  local file = reaper.GetMediaSourceFileName(levels[#levels].src, "")
  local pos, item_end = M.item_range(item)
  local startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  local playrate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  local take_src_len = reaper.GetMediaSourceLength(levels[1].src)
  -- where the take's source starts and ends in project time; outside it there is no picture
  local src_start = pos - startoffs / playrate
  local src_end = pos + (take_src_len - startoffs) / playrate
  local a = math.max(t0, pos, src_start)
  local b = math.min(t1, item_end, src_end)
  if b - a <= 1e-6 then
    return nil, "The time selection does not overlap the picture of the video item (" ..
      M.basename(file) .. ")."
  end
  local file_a, file_b, reversed = M.map_interval(a, b, pos, startoffs, playrate, levels)
  if reversed then
    return nil, "The video item plays its picture in reverse; StepFoley reads the video forwards.\n\n" ..
      "Turn off reverse for the item, or render the reversed video to a new file first."
  end
  local region = {
    video = file,
    file_in = math.max(0.0, file_a) + 0.0,
    file_out = file_b + 0.0,
    playrate = playrate + 0.0,
    project_start = a + 0.0,
    project_end = b + 0.0,
  }
  return region, nil, (a > t0 + 1e-9 or b < t1 - 1e-9), item
end

function M.is_stepfoley_track(track)
  local _, mark = reaper.GetSetMediaTrackInfo_String(track, M.TRACK_MARK, "", false)
  return mark == "1"
end

-- Whether the track is heard at all: neither it nor a folder above it is muted.
function M.track_is_heard(track)
  local t = track
  while t do
    if reaper.GetMediaTrackInfo_Value(t, "B_MUTE") ~= 0 then return false end
    t = reaper.GetParentTrack(t)
  end
  return true
end

-- Whether the item plays: not muted (B_MUTE includes item solo), on a lane that plays (fixed
-- lanes, REAPER 7), with an active take. Only the active take of an item plays.
function M.item_plays(item)
  if reaper.GetMediaItemInfo_Value(item, "B_MUTE") ~= 0 then return false end
  local track = reaper.GetMediaItem_Track(item)
  if reaper.GetMediaTrackInfo_Value(track, "I_FREEMODE") == 2 and
    reaper.GetMediaItemInfo_Value(item, "C_LANEPLAYS") <= 0 then
    return false
  end
  return reaper.GetActiveTake(item) ~= nil
end

-- The items of `track` that play somewhere in [t0, t1].
local function playing_items_in(track, t0, t1)
  local list = {}
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local item = reaper.GetTrackMediaItem(track, i)
    local a, b = M.item_range(item)
    if b > t0 and a < t1 and M.item_plays(item) then list[#list + 1] = item end
  end
  return list
end

-- The layers the next generation must complement: the selected tracks, or else every
-- StepFoley track; never the picture's track or `exclude`; only tracks that are heard and
-- have playing items in [t0, t1] (muted material is not part of what the user hears).
function M.foley_tracks(proj, t0, t1, exclude)
  local selected, marked = {}, {}
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    if not exclude[tr] and M.track_is_heard(tr) and #playing_items_in(tr, t0, t1) > 0 then
      if reaper.IsTrackSelected(tr) then selected[#selected + 1] = tr end
      if M.is_stepfoley_track(tr) then marked[#marked + 1] = tr end
    end
  end
  if #selected > 0 then return selected end
  return marked
end

-- Captions of the StepFoley takes that play in [t0, t1] on `tracks` (for negative_prompt),
-- in track order: the same material the bounce contains.
function M.previous_captions(tracks, t0, t1)
  local captions = M.array({})
  for _, tr in ipairs(tracks) do
    for _, item in ipairs(playing_items_in(tr, t0, t1)) do
      local take = reaper.GetActiveTake(item)
      local ok, meta = reaper.GetSetMediaItemTakeInfo_String(take, M.TAKE_META, "", false)
      local decoded = ok and meta ~= "" and M.json_decode(meta)
      if type(decoded) == "table" and type(decoded.caption) == "string" then captions[#captions + 1] = decoded.caption end
    end
  end
  return captions
end

------------------------------------------------------------------------------------------
-- Bouncing the chosen layers: what the user hears of them, as one file
------------------------------------------------------------------------------------------

--[[
The chosen tracks are soloed in place and the master mix is rendered over the region, so
the file is exactly what the user hears of those layers (item/take/track volume, fades,
mutes, track and folder FX, sends), summed. "Selected tracks via master" cannot be used: it
writes one file per track (User Guide 21.5). For the render, every other track is unsoloed
and loses solo defeat, "solo in front" is switched off (it would let the other tracks
through, dimmed), the master is unmuted and its FX bypassed (the engine wants the layers,
not the mastering). Everything changed is put back afterwards, also when the render fails;
values that already had the wanted state are never touched. The track selection is not
used. REAPER's API cannot mark a project clean again, so a saved project may show as
modified afterwards (docs/reaper.md).
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

local function save_mix_state(proj)
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
  saved.solo_in_front = reaper.GetToggleCommandStateEx(0, M.SOLO_IN_FRONT) == 1
  return saved
end

-- Puts back everything save_mix_state read. Each part is restored even if another fails;
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
  end)
  try("solo in front", function()
    if saved.solo_in_front and reaper.GetToggleCommandStateEx(0, M.SOLO_IN_FRONT) ~= 1 then
      reaper.Main_OnCommand(M.SOLO_IN_FRONT, 0)
    end
  end)
  return problems
end

local function solo_only(proj, tracks)
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
    error(string.format("REAPER would write %d files instead of one (%s)", #list, tostring(targets)))
  end
  return list[1]
end

-- Renders what the user hears of `tracks` over [t0, t1] to dir/name.wav (24-bit stereo).
-- Returns the WAV path, or nil and a message. Every setting touched is restored.
function M.bounce(proj, tracks, t0, t1, dir, name, sample_rate)
  local saved = save_mix_state(proj)
  reaper.PreventUIRefresh(1)
  local ok, result = pcall(function()
    solo_only(proj, tracks)
    set_master_mix_render(proj, t0, t1, dir, name, sample_rate)
    local target = single_render_target(proj)
    os.remove(target) -- an existing file would open a modal overwrite prompt
    reaper.Main_OnCommandEx(M.RENDER_AND_CLOSE, 0, proj)
    local data = M.read_file(target)
    if not data or #data <= 44 then error("the render produced no file at " .. target) end
    return target
  end)
  local problems = restore_mix_state(proj, saved)
  reaper.PreventUIRefresh(-1)
  if #problems > 0 then
    local msg = "Could not restore every render/solo setting after the bounce:\n" .. table.concat(problems, "\n")
    if ok then M.alert(msg) else result = tostring(result) .. "\n\n" .. msg end
  end
  if ok then return result end
  return nil, "Could not bounce the existing Foley tracks: " .. tostring(result)
end

------------------------------------------------------------------------------------------
-- Where files go
------------------------------------------------------------------------------------------

function M.new_job_id()
  return os.date("%Y%m%d-%H%M%S") .. string.format("-%04x%04x", math.random(0, 0xffff), math.random(0, 0xffff))
end

-- The project's StepFoley folder (stems) and a job folder (request, status, bounce). The job
-- folder's path goes on a command line, so it falls back to REAPER's resource folder when
-- the project path has characters a command line cannot carry safely.
function M.folders(proj, job_id)
  local project_dir = reaper.GetProjectPathEx(proj, "")
  if project_dir == nil or project_dir == "" then project_dir = reaper.GetResourcePath() end
  local output_dir = M.join(project_dir, "StepFoley")
  local jobs_root = M.join(output_dir, "jobs")
  if not M.is_command_line_safe(jobs_root) then
    jobs_root = M.join(M.join(reaper.GetResourcePath(), "StepFoley"), "jobs")
  end
  if not M.is_command_line_safe(jobs_root) then
    return nil, "Neither the project folder nor REAPER's resource folder can be passed to the " ..
      "StepFoley client (they contain quotes or other special characters):\n" .. jobs_root
  end
  local job_dir = M.join(jobs_root, job_id)
  reaper.RecursiveCreateDirectory(output_dir, 0)
  reaper.RecursiveCreateDirectory(job_dir, 0)
  return { output_dir = output_dir, job_dir = job_dir }
end

------------------------------------------------------------------------------------------
-- Building a request
------------------------------------------------------------------------------------------

local METHODS = { nag = true, independent = true, negative_prompt = true }

-- Parses the dialog's text fields. Returns params or nil, message.
function M.parse_params(fields, settings)
  local p = {}
  p.caption = (fields[1] or ""):match("^%s*(.-)%s*$")
  if p.caption == "" then return nil, "The caption is empty: describe the sound to generate, e.g. \"footsteps on gravel\"." end
  p.method = (fields[2] or ""):match("^%s*(.-)%s*$"):lower()
  if p.method == "" then p.method = settings.method end
  if not METHODS[p.method] then
    return nil, "Unknown method \"" .. p.method .. "\". Use nag, independent or negative_prompt."
  end
  local function number(text, name, default, low, high, integer)
    text = (text or ""):match("^%s*(.-)%s*$")
    if text == "" then return default end
    local x = tonumber(text)
    if not x or x < low or x > high or (integer and math.type(x) ~= "integer" and x ~= math.floor(x)) then
      error({ msg = string.format("%s must be %s between %s and %s, got \"%s\".", name,
        integer and "a whole number" or "a number", low, high, text) }, 0)
    end
    if integer then return math.tointeger(x) or math.floor(x) end
    return x + 0.0
  end
  local ok, err = pcall(function()
    p.alpha = number(fields[3], "Alpha", settings.alpha + 0.0, 0, 100)
    p.beta = number(fields[4], "Beta", settings.beta + 0.0, 0, 100)
    p.seed = number(fields[5], "Seed", M.random_seed(), 0, 2 ^ 31 - 1, true)
    p.steps = number(fields[6], "Steps", math.tointeger(settings.steps) or 25, 1, 1000, true)
    p.count = number(fields[7], "Number of variations", 1, 1, 16, true)
  end)
  if not ok then return nil, type(err) == "table" and err.msg or tostring(err) end
  return p
end

function M.random_seed()
  return math.random(1, 2 ^ 31 - 1)
end

-- Asks for the caption and options; nil when the user cancels. `with_count` adds the
-- "Number of variations" field. GetUserInputs separates values with the separator given in
-- captions_csv: a newline, so captions may contain commas. A bad value is explained and the
-- dialog comes back with everything the user typed, so nothing is lost.
function M.ask_params(title, settings, defaults, with_count)
  local captions = "Caption (what you hear),Method (nag / independent / negative_prompt)," ..
    "Alpha (text guidance),Beta (audio guidance),Seed (empty = random),Steps"
  local values = { defaults.caption or "", defaults.method or settings.method, tostring(settings.alpha),
    tostring(settings.beta), "", tostring(math.tointeger(settings.steps) or settings.steps) }
  if with_count then
    captions = captions .. ",Number of variations"
    values[#values + 1] = tostring(defaults.count or 4)
  end
  while true do
    local ok, answer = reaper.GetUserInputs(title, #values, captions .. ",extrawidth=320,separator=\n",
      table.concat(values, "\n"))
    if not ok then return nil end
    local fields = {}
    for field in (answer .. "\n"):gmatch("(.-)\n") do fields[#fields + 1] = field end
    for i = 1, #values do values[i] = fields[i] or "" end
    if not with_count then fields[7] = "1" end
    local params, err = M.parse_params(fields, settings)
    if params then return params end
    M.alert(err)
  end
end

function M.build_request(region, params, seed, folders, existing_mix, previous, sample_rate)
  local request = {
    protocol = 1,
    region = region,
    caption = params.caption,
    method = params.method,
    alpha = params.alpha,
    beta = params.beta,
    seed = seed,
    steps = params.steps,
    negative_caption = "",
    previous_captions = previous or M.array({}),
    output_dir = folders.output_dir,
    sample_rate = sample_rate,
    format = "wav24",
    name_hint = params.caption,
  }
  if existing_mix then request.existing_mix = existing_mix end
  return request
end

------------------------------------------------------------------------------------------
-- Running jobs: start the client, poll its status file from reaper.defer
------------------------------------------------------------------------------------------

local RUNNING_KEY = "running_status_files" -- non-persistent ExtState: JSON list, for Cancel

local FINAL_STATES = { done = true, error = true, cancelled = true }

-- Returns the status table and the file's text, or nil and why it could not be used. A read
-- can fail for a moment while nothing is wrong (on Windows the client may be replacing the
-- file just then), so no caller acts on a single failed read.
function M.read_status(path)
  local f, open_err = io.open(path, "rb")
  if not f then return nil, "cannot be opened (" .. tostring(open_err) .. ")" end
  local text = f:read("a")
  f:close()
  if not text or text == "" then return nil, "is empty" end
  local status, err = M.json_decode(text)
  if type(status) ~= "table" then return nil, "cannot be read (" .. tostring(err) .. ")" end
  return status, text
end

local function is_final(status)
  return status ~= nil and (status.exit_code ~= nil or FINAL_STATES[status.state] == true)
end

-- The status files of generations still running. Entries whose job has ended are left out,
-- so a generation whose action was stopped never shows up as running.
function M.running_status_files()
  local list = M.json_decode(reaper.GetExtState(M.SECTION, RUNNING_KEY) or "")
  local live = {}
  if type(list) ~= "table" then return live end
  for _, path in ipairs(list) do
    if type(path) == "string" and not is_final((M.read_status(path))) then live[#live + 1] = path end
  end
  return live
end

local function set_running(path, on)
  local list, out = M.running_status_files(), M.array({})
  for _, p in ipairs(list) do if p ~= path then out[#out + 1] = p end end
  if on then out[#out + 1] = path end
  reaper.SetExtState(M.SECTION, RUNNING_KEY, M.json_encode(out), false)
end

function M.request_cancel(status_path)
  local f = io.open(status_path .. ".cancel", "wb")
  if not f then return false end
  f:write("cancel\n")
  f:close()
  return true
end

-- Asks every running generation to stop. Returns how many were asked.
function M.request_cancel_all()
  local n = 0
  for _, status_path in ipairs(M.running_status_files()) do
    if M.request_cancel(status_path) then n = n + 1 end
  end
  return n
end

-- What the engine is doing, in words. Newer engines send `phase` ("features", "sampling",
-- ...) with step/total counting within it; older ones send no phase and count sampling steps.
M.PHASE_WORDS = { queued = "waiting for the engine", features = "reading the picture",
  sampling = "generating", decoding = "decoding the audio" }

-- One line for a status, and the fraction done of the current phase (nil when unknown).
function M.describe_progress(status)
  local step, total = tonumber(status.step), tonumber(status.total)
  local counted = step ~= nil and total ~= nil and total > 0
  if type(status.phase) == "string" and status.phase ~= "" and not FINAL_STATES[status.state] then
    local words = M.PHASE_WORDS[status.phase] or status.phase
    if counted then return string.format("%s: %d of %d", words, math.floor(step), math.floor(total)), step / total end
    return words, nil
  end
  if status.state == "running" and counted then
    return string.format("step %d of %d", math.floor(step), math.floor(total)), step / total
  end
  return tostring(status.state or "starting"), nil
end

-- A small progress window; Esc in it cancels. Closing it only hides it.
local Progress = {}
Progress.__index = Progress

function M.progress_window(title)
  local self = setmetatable({ title = title, open = false, text = "" }, Progress)
  if gfx and gfx.init then
    gfx.init(title, 460, 70)
    self.open = true
  end
  return self
end

function Progress:show(text, fraction)
  self.text = text
  if not self.open then return false end
  gfx.set(0.15, 0.15, 0.15, 1); gfx.rect(0, 0, gfx.w, gfx.h, 1)
  gfx.set(0.3, 0.7, 0.4, 1); gfx.rect(10, 42, math.floor((gfx.w - 20) * (fraction or 0)), 14, 1)
  gfx.set(0.9, 0.9, 0.9, 1); gfx.x, gfx.y = 10, 12; gfx.drawstr(text)
  gfx.update()
  local key = gfx.getchar()
  if key < 0 then self.open = false; return false end
  return key == 27
end

function Progress:close()
  if self.open then gfx.quit(); self.open = false end
end

local function number_arg(x)
  return tostring(math.tointeger(x) or x)
end

-- The argv that runs one job: `stepfoley send` with the request, the status file, the port
-- and the watchdog (seconds without a sign of life from the engine before the client stops).
function M.send_argv(prefix, settings, request_path, status_path)
  local argv = {}
  for _, a in ipairs(prefix) do argv[#argv + 1] = a end
  for _, a in ipairs({ "send", "--request", request_path, "--status", status_path,
    "--port", number_arg(settings.port), "--timeout", number_arg(settings.watchdog_s) }) do
    argv[#argv + 1] = a
  end
  return argv
end

local function timed_out_message(settings, engine_message)
  return (engine_message or string.format("The engine showed no progress for %s s.", number_arg(settings.watchdog_s))) ..
    "\n\nIf the engine is only slow (on a CPU the first track of a region spends minutes reading the " ..
    "picture), raise \"Give up after no progress for (s)\" in \"StepFoley: Settings\". Otherwise check " ..
    "the engine window or run \"StepFoley: Engine status\"."
end

-- The job's result from a status in a final state.
local function final_result(status, settings)
  if status.state == "done" then
    if type(status.stem_path) ~= "string" or not reaper.file_exists(status.stem_path) then
      return { state = "error", message = "The engine said it finished but its file is missing: " ..
        tostring(status.stem_path) }
    end
    return { state = "done", stem_path = status.stem_path, metadata = status.metadata or {}, job_id = status.job_id }
  elseif status.state == "cancelled" then
    return { state = "cancelled", message = "Generation cancelled." }
  end
  local e = type(status.error) == "table" and status.error or {}
  local message = e.message or "The engine reported an error."
  if e.code == "timed_out" then message = timed_out_message(settings, e.message) end
  return { state = "error", code = e.code, message = message }
end

--[[
Runs `jobs` one after the other. Each job: {request=table, folders=..., label=string}.
`on_finished(results)` runs once at the end, in the defer context; results[i] =
{state="done"|"error"|"cancelled"|"not_started", stem_path=, metadata=, message=}.

Watchdogs, all measured as silence: before the status file was ever read, the client must
write it within settings.start_timeout_s; after that, the job is given up only when the
status file has not changed for settings.watchdog_s + CLIENT_REPORT_GRACE_S (any change,
including `updated`, is a sign of life; an unreadable or half-written read is not a change
and not a failure either). The client itself stops after settings.watchdog_s without a sign
of life from the engine and says so in the status file.
]]
function M.run_jobs(settings, jobs, title, on_finished)
  local prefix, err = M.client_prefix(settings)
  if not prefix then
    on_finished({ { state = "error", message = err } })
    return
  end
  local results = {}
  local progress = M.progress_window(title)
  local index = 0
  local job -- the one running now

  local function finish()
    progress:close()
    for i = #results + 1, #jobs do results[i] = { state = "not_started" } end
    on_finished(results)
  end

  local function end_job(result)
    set_running(job.status_path, false)
    results[#results + 1] = result
    job = nil
  end

  local function start_next()
    index = index + 1
    local spec = jobs[index]
    local dir = spec.folders.job_dir
    job = { spec = spec, request_path = M.join(dir, "request.json"), status_path = M.join(dir, "status.json") }
    os.remove(job.status_path)
    os.remove(job.status_path .. ".cancel")
    local ok, write_err = M.write_file_atomic(job.request_path, M.json_encode(spec.request))
    if not ok then return false, "Could not write the request file " .. job.request_path .. ": " .. tostring(write_err) end
    local cmd_ok, cmd = pcall(M.command_line, M.send_argv(prefix, settings, job.request_path, job.status_path))
    if not cmd_ok then
      return false, "The StepFoley program path cannot be put on a command line (it contains \" ` $ % or " ..
        "control characters): " .. prefix[1] .. "\nMove it to a folder without such characters and update Settings."
    end
    job.command = cmd
    local now = reaper.time_precise()
    job.started, job.last_change, job.next_poll = now, now, now + M.POLL_INTERVAL_S
    set_running(job.status_path, true)
    reaper.ExecProcess(cmd, -2)
    return true
  end

  local function cancel_job()
    M.request_cancel(job.status_path)
    job.cancel_asked = job.cancel_asked or reaper.time_precise()
  end

  -- Gives up on a job whose client went silent; true when it did.
  local function check_silence(now)
    local problem = job.read_problem and (" (the status file " .. job.read_problem .. ")") or ""
    if job.last_text == nil then
      if now - job.started <= settings.start_timeout_s then return false end
      cancel_job()
      end_job({ state = "error", message = string.format(
        "The StepFoley client did not start (no status after %d s)%s.\n\nCommand:\n%s\n\n" ..
        "Check the program path in \"StepFoley: Settings\" and that StepFoley is installed there.",
        math.floor(settings.start_timeout_s), problem, job.command) })
      return true
    end
    local limit = settings.watchdog_s + M.CLIENT_REPORT_GRACE_S
    if now - job.last_change <= limit then return false end
    cancel_job()
    end_job({ state = "error", message = string.format(
      "No sign of life from the StepFoley client for %d s: its status file did not change%s, so StepFoley " ..
      "stopped waiting (and asked it to cancel).\n\nCheck the engine window or run \"StepFoley: Engine status\".",
      math.floor(limit), problem) })
    return true
  end

  local function show_progress()
    local label = jobs[index].label or ""
    local words, fraction = "starting the client", nil
    if job.last_status then words, fraction = M.describe_progress(job.last_status) end
    local text = label .. ": " .. words
    if #jobs > 1 then text = string.format("[%d/%d] %s", index, #jobs, text) end
    if progress:show(text .. "   (Esc cancels)", fraction) then cancel_job() end
  end

  local function poll()
    local now = reaper.time_precise()
    if job == nil then
      if #results >= #jobs or (results[#results] and results[#results].state ~= "done") then
        finish()
        return
      end
      local ok, start_err = start_next()
      if not ok then
        results[#results + 1] = { state = "error", message = start_err }
        job = nil
        finish()
        return
      end
    end
    if now >= job.next_poll then
      job.next_poll = now + M.POLL_INTERVAL_S
      local status, text_or_problem = M.read_status(job.status_path)
      if status then
        job.read_problem = nil
        if text_or_problem ~= job.last_text then job.last_text, job.last_change = text_or_problem, now end
        job.last_status = status
        if is_final(status) then end_job(final_result(status, settings)) end
      elseif reaper.file_exists(job.status_path) or job.last_text ~= nil then
        job.read_problem = text_or_problem
      end
      if job then check_silence(now) end
      if job and job.cancel_asked and now - job.cancel_asked > 15 then
        end_job({ state = "cancelled", message = "Cancelled (the client did not confirm; it may still be stopping)." })
      end
      if job then show_progress() end
    end
    reaper.defer(poll)
  end

  -- REAPER runs this when the script ends, also when the user stops it while it polls (by
  -- running the action again and choosing to terminate it): the engine job must not keep
  -- running unseen, nor stay listed for Cancel and Engine status.
  reaper.atexit(function()
    if job then
      cancel_job()
      set_running(job.status_path, false)
      job = nil
    end
    progress:close()
  end)
  reaper.defer(poll)
end

------------------------------------------------------------------------------------------
-- Inserting the result
------------------------------------------------------------------------------------------

function M.describe(meta)
  local r = meta.region or {}
  return string.format("StepFoley: %s\nmethod %s, alpha %s, beta %s, seed %s, steps %s\n" ..
    "video: %s (file %.3f s to %.3f s, playrate %s)\nstem: %s",
    tostring(meta.caption), tostring(meta.method), tostring(meta.alpha), tostring(meta.beta),
    tostring(meta.seed), tostring(meta.steps), tostring(r.video), tonumber(r.file_in) or 0,
    tonumber(r.file_out) or 0, tostring(r.playrate), tostring(meta.stem_path))
end

-- The metadata stored in a take: the request (without paths that only mattered for the job)
-- plus what the engine returned.
function M.take_metadata(request, result)
  local meta = {}
  for k, v in pairs(request) do meta[k] = v end
  meta.stem_path = result.stem_path
  meta.job_id = result.job_id
  meta.engine = result.metadata
  meta.stepfoley_scripts = M.VERSION
  return meta
end

function M.add_take(item, stem_path, meta)
  local take = reaper.AddTakeToMediaItem(item)
  local src = reaper.PCM_Source_CreateFromFile(stem_path)
  reaper.SetMediaItemTake_Source(take, src)
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", 0)
  reaper.SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", 1)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", string.format("%s (seed %s)", meta.caption, tostring(meta.seed)), true)
  reaper.GetSetMediaItemTakeInfo_String(take, M.TAKE_META, M.json_encode(meta), true)
  return take
end

-- The index after the last StepFoley track (or the end), so new tracks stack in order.
local function new_track_index(proj)
  local index = reaper.CountTracks(proj)
  for i = 0, reaper.CountTracks(proj) - 1 do
    if M.is_stepfoley_track(reaper.GetTrack(proj, i)) then index = i + 1 end
  end
  return index
end

-- Runs `edit()` as one undo point named `description` in `proj` (which need not be the
-- active tab), with the UI frozen meanwhile, then builds the peaks of the new media. The undo
-- block is closed even if the edit fails; the failure is shown to the user. Returns whether
-- the edit succeeded.
function M.undoable_edit(proj, description, edit)
  reaper.Undo_BeginBlock2(proj)
  reaper.PreventUIRefresh(1)
  local ok, err = pcall(edit)
  if ok then reaper.Main_OnCommandEx(M.BUILD_MISSING_PEAKS, 0, proj) end
  reaper.PreventUIRefresh(-1)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock2(proj, description, -1)
  if not ok then M.alert("StepFoley could not add the result: " .. tostring(err)) end
  return ok
end

function M.project_is_open(proj)
  local i = 0
  while true do
    local p = reaper.EnumProjects(i, "")
    if not p then return false end
    if p == proj then return true end
    i = i + 1
  end
end

-- A new track at `index` of `proj`. InsertTrackAtIndex acts on the ACTIVE project tab, which
-- may be another project by the time a generation ends, so InsertTrackInProject (REAPER
-- 7.18+) is used; older REAPER gets `proj` made active for the insert and the user's tab back.
local function insert_track_in(proj, index)
  local before = reaper.CountTracks(proj)
  if reaper.InsertTrackInProject then
    reaper.InsertTrackInProject(proj, index, 1) -- 1: default envelopes/FX, like wantDefaults
  else
    local active = reaper.EnumProjects(-1, "")
    if active ~= proj then reaper.SelectProjectInstance(proj) end
    reaper.InsertTrackAtIndex(index, true)
    if active ~= proj then reaper.SelectProjectInstance(active) end
  end
  if reaper.CountTracks(proj) ~= before + 1 then
    error("REAPER did not add the new track to the generation's project")
  end
  return reaper.GetTrack(proj, index)
end

-- One new track named after the caption, one item over the region, one take per result.
function M.insert_track(proj, region, takes)
  local track = insert_track_in(proj, new_track_index(proj))
  reaper.GetSetMediaTrackInfo_String(track, "P_NAME", takes[1].meta.caption, true)
  reaper.GetSetMediaTrackInfo_String(track, M.TRACK_MARK, "1", true)
  local item = reaper.AddMediaItemToTrack(track)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", region.project_start)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", region.project_end - region.project_start)
  local first
  for _, t in ipairs(takes) do
    local take = M.add_take(item, t.stem_path, t.meta)
    first = first or take
  end
  reaper.SetActiveTake(first)
  reaper.GetSetMediaItemInfo_String(item, "P_NOTES", M.describe(takes[1].meta), true)
  return track, item
end

------------------------------------------------------------------------------------------
-- The whole "generate" flow shared by the actions
------------------------------------------------------------------------------------------

-- Everything up to the jobs: region, bounce, requests. `opts`: {t0, t1, params, seeds,
-- exclude_tracks}. Returns jobs, region or nil, message.
function M.prepare_jobs(proj, settings, opts)
  local region, err, clipped, video_item = M.region_for(proj, opts.t0, opts.t1)
  if not region then return nil, err end
  if clipped then
    M.log(string.format("the time selection runs past the picture; generating %.3f s to %.3f s.",
      region.project_start, region.project_end))
  end
  local job_id = M.new_job_id()
  local folders, folder_err = M.folders(proj, job_id)
  if not folders then return nil, folder_err end
  local exclude = {}
  for tr in pairs(opts.exclude_tracks or {}) do exclude[tr] = true end
  exclude[reaper.GetMediaItem_Track(video_item)] = true
  local tracks = M.foley_tracks(proj, region.project_start, region.project_end, exclude)
  local sample_rate = M.project_sample_rate(proj)
  local mix = nil
  if #tracks > 0 then
    local bounce_err
    mix, bounce_err = M.bounce(proj, tracks, region.project_start, region.project_end,
      folders.job_dir, "existing_mix", sample_rate)
    if not mix then return nil, bounce_err end
  end
  local previous = M.previous_captions(tracks, region.project_start, region.project_end)
  local jobs = {}
  for i, seed in ipairs(opts.seeds) do
    local job_folders = folders
    if i > 1 then -- each job gets its own status file
      job_folders = { output_dir = folders.output_dir, job_dir = M.join(folders.job_dir, "take" .. i) }
      reaper.RecursiveCreateDirectory(job_folders.job_dir, 0)
    end
    jobs[i] = {
      request = M.build_request(region, opts.params, seed, folders, mix, previous, sample_rate),
      folders = job_folders,
      label = opts.params.caption,
    }
  end
  return jobs, region
end

-- Reports failures of a finished batch; returns the done results.
function M.report(results, what)
  local done, problems = {}, {}
  for i, r in ipairs(results) do
    if r.state == "done" then done[#done + 1] = r
    elseif r.state == "error" then problems[#problems + 1] = r.message or "unknown error"
    elseif r.state == "cancelled" then problems[#problems + 1] = r.message or "Generation cancelled."
    end
  end
  if #problems > 0 then
    local prefix = (#done > 0) and string.format("%d of %d %s finished; ", #done, #results, what) or ""
    M.alert(prefix .. table.concat(problems, "\n\n"))
  end
  return done
end

return M
