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

M.VERSION = "0.1.0"
M.SECTION = "StepFoley"            -- ExtState section
M.TRACK_MARK = "P_EXT:stepfoley"   -- set to "1" on tracks StepFoley created
M.TAKE_META = "P_EXT:stepfoley_metadata"
M.RENDER_AND_CLOSE = 42230         -- File: Render project, using the most recent render settings, auto-close render dialog
M.BUILD_MISSING_PEAKS = 40047
M.WAV24_RENDER_FORMAT = "ZXZhdxgAAQ==" -- REAPER's render config for 24-bit WAV: "evaw", 0x18, 0, 1
M.POLL_INTERVAL_S = 0.3
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

-- Characters that mean the same inside double quotes to cmd.exe/CreateProcess, to a POSIX
-- shell and to REAPER's own argument splitter. Anything else is kept off the command line.
function M.is_command_line_safe(s)
  return s:find('^[%w%s_%.%-/\\:~+,=@()]+$') ~= nil and not s:find("[\r\n]")
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

local function track_has_items_in(track, t0, t1)
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local a, b = M.item_range(reaper.GetTrackMediaItem(track, i))
    if b > t0 and a < t1 then return true end
  end
  return false
end

-- The Foley tracks to bounce: the selected tracks, or else every StepFoley track; never the
-- picture's track or `exclude`; only those with items in [t0, t1].
function M.foley_tracks(proj, t0, t1, exclude)
  local selected, marked = {}, {}
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    if not exclude[tr] and track_has_items_in(tr, t0, t1) then
      if reaper.IsTrackSelected(tr) then selected[#selected + 1] = tr end
      if M.is_stepfoley_track(tr) then marked[#marked + 1] = tr end
    end
  end
  if #selected > 0 then return selected end
  return marked
end

-- Captions of the StepFoley takes playing in [t0, t1] on `tracks` (for negative_prompt).
function M.previous_captions(tracks, t0, t1)
  local captions = M.array({})
  for _, tr in ipairs(tracks) do
    for i = 0, reaper.CountTrackMediaItems(tr) - 1 do
      local item = reaper.GetTrackMediaItem(tr, i)
      local a, b = M.item_range(item)
      local take = reaper.GetActiveTake(item)
      if take and b > t0 and a < t1 then
        local ok, meta = reaper.GetSetMediaItemTakeInfo_String(take, M.TAKE_META, "", false)
        local decoded = ok and meta ~= "" and M.json_decode(meta)
        if decoded and type(decoded.caption) == "string" then captions[#captions + 1] = decoded.caption end
      end
    end
  end
  return captions
end

------------------------------------------------------------------------------------------
-- Bouncing the existing Foley tracks (render settings saved and restored)
------------------------------------------------------------------------------------------

local RENDER_NUMBERS = { "RENDER_SETTINGS", "RENDER_BOUNDSFLAG", "RENDER_STARTPOS", "RENDER_ENDPOS",
  "RENDER_SRATE", "RENDER_CHANNELS", "RENDER_TAILFLAG", "RENDER_ADDTOPROJ", "RENDER_DITHER",
  "RENDER_NORMALIZE" }
local RENDER_STRINGS = { "RENDER_FILE", "RENDER_PATTERN", "RENDER_FORMAT", "RENDER_FORMAT2" }

local function save_render_state(proj)
  local saved = { numbers = {}, strings = {}, selection = {} }
  for _, key in ipairs(RENDER_NUMBERS) do saved.numbers[key] = reaper.GetSetProjectInfo(proj, key, 0, false) end
  for _, key in ipairs(RENDER_STRINGS) do
    local _, value = reaper.GetSetProjectInfo_String(proj, key, "", false)
    saved.strings[key] = value
  end
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    saved.selection[#saved.selection + 1] = { tr, reaper.IsTrackSelected(tr) }
  end
  saved.master_fx = reaper.GetMediaTrackInfo_Value(reaper.GetMasterTrack(proj), "I_FXEN")
  return saved
end

local function restore_render_state(proj, saved)
  for key, value in pairs(saved.numbers) do reaper.GetSetProjectInfo(proj, key, value, true) end
  for _, key in ipairs(RENDER_STRINGS) do
    if key ~= "RENDER_FORMAT" then reaper.GetSetProjectInfo_String(proj, key, saved.strings[key], true) end
  end
  -- REAPER quirk: RENDER_FORMAT must be set last or later keys can reset it
  reaper.GetSetProjectInfo_String(proj, "RENDER_FORMAT", saved.strings.RENDER_FORMAT, true)
  for _, pair in ipairs(saved.selection) do reaper.SetTrackSelected(pair[1], pair[2]) end
  reaper.SetMediaTrackInfo_Value(reaper.GetMasterTrack(proj), "I_FXEN", saved.master_fx)
end

-- Renders `tracks` over [t0, t1] (via the master, master FX bypassed) to dir/name.wav.
-- Returns the WAV path, or nil and a message. Every setting touched is restored.
function M.bounce(proj, tracks, t0, t1, dir, name, sample_rate)
  local saved = save_render_state(proj)
  local ok, result = pcall(function()
    for i = 0, reaper.CountTracks(proj) - 1 do
      local tr = reaper.GetTrack(proj, i)
      reaper.SetTrackSelected(tr, false)
    end
    for _, tr in ipairs(tracks) do reaper.SetTrackSelected(tr, true) end
    reaper.SetMediaTrackInfo_Value(reaper.GetMasterTrack(proj), "I_FXEN", 0)
    reaper.GetSetProjectInfo(proj, "RENDER_SETTINGS", 128, true) -- selected tracks via master
    reaper.GetSetProjectInfo(proj, "RENDER_BOUNDSFLAG", 0, true)  -- custom time bounds
    reaper.GetSetProjectInfo(proj, "RENDER_STARTPOS", t0, true)
    reaper.GetSetProjectInfo(proj, "RENDER_ENDPOS", t1, true)
    reaper.GetSetProjectInfo(proj, "RENDER_SRATE", sample_rate, true)
    reaper.GetSetProjectInfo(proj, "RENDER_CHANNELS", 2, true)
    reaper.GetSetProjectInfo(proj, "RENDER_TAILFLAG", 0, true)
    reaper.GetSetProjectInfo(proj, "RENDER_ADDTOPROJ", 0, true)
    reaper.GetSetProjectInfo(proj, "RENDER_DITHER", 0, true)
    reaper.GetSetProjectInfo(proj, "RENDER_NORMALIZE", 0, true)
    reaper.GetSetProjectInfo_String(proj, "RENDER_FILE", dir, true)
    reaper.GetSetProjectInfo_String(proj, "RENDER_PATTERN", name, true)
    reaper.GetSetProjectInfo_String(proj, "RENDER_FORMAT2", "", true)
    reaper.GetSetProjectInfo_String(proj, "RENDER_FORMAT", M.WAV24_RENDER_FORMAT, true)
    local _, targets = reaper.GetSetProjectInfo_String(proj, "RENDER_TARGETS", "", false)
    local target = (targets or ""):match("^[^;]+")
    if not target or target == "" then error("REAPER did not say where it would render") end
    os.remove(target) -- an existing file would open a modal overwrite prompt
    reaper.Main_OnCommand(M.RENDER_AND_CLOSE, 0)
    local data = M.read_file(target)
    if not data or #data <= 44 then error("the render produced no file at " .. target) end
    return target
  end)
  restore_render_state(proj, saved)
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

function M.running_status_files()
  local list = M.json_decode(reaper.GetExtState(M.SECTION, RUNNING_KEY) or "")
  if type(list) ~= "table" then return {} end
  return list
end

local function set_running(path, on)
  local list, out = M.running_status_files(), M.array({})
  for _, p in ipairs(list) do if p ~= path then out[#out + 1] = p end end
  if on then out[#out + 1] = path end
  reaper.SetExtState(M.SECTION, RUNNING_KEY, M.json_encode(out), false)
end

-- Asks every running generation to stop. Returns how many were asked.
function M.request_cancel_all()
  local n = 0
  for _, status_path in ipairs(M.running_status_files()) do
    local f = io.open(status_path .. ".cancel", "wb")
    if f then f:write("cancel\n"); f:close(); n = n + 1 end
  end
  return n
end

function M.read_status(path)
  local text = M.read_file(path)
  if not text then return nil end
  local status = M.json_decode(text)
  if type(status) ~= "table" then return nil end -- a half-written file cannot happen (rename), but be safe
  return status
end

local TERMINAL = { done = true, error = true, cancelled = true }

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

--[[
Runs `jobs` one after the other. Each job: {request=table, folders=..., label=string}.
`on_finished(results)` runs once at the end, in the defer context; results[i] =
{state="done"|"error"|"cancelled"|"not_started", stem_path=, metadata=, message=}.
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
    local argv = {}
    for _, a in ipairs(prefix) do argv[#argv + 1] = a end
    for _, a in ipairs({ "send", "--request", job.request_path, "--status", job.status_path,
      "--port", tostring(math.tointeger(settings.port) or settings.port) }) do argv[#argv + 1] = a end
    local cmd_ok, cmd = pcall(M.command_line, argv)
    if not cmd_ok then
      return false, "The StepFoley program path cannot be put on a command line (quotes or special " ..
        "characters): " .. prefix[1] .. "\nMove it to a folder without such characters and update Settings."
    end
    job.command = cmd
    local now = reaper.time_precise()
    job.started, job.last_change, job.last_signature, job.next_poll = now, now, "", now + M.POLL_INTERVAL_S
    set_running(job.status_path, true)
    reaper.ExecProcess(cmd, -2)
    return true
  end

  local function cancel_job()
    local f = io.open(job.status_path .. ".cancel", "wb")
    if f then f:write("cancel\n"); f:close() end
    job.cancel_asked = job.cancel_asked or reaper.time_precise()
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
      local status = M.read_status(job.status_path)
      if status then
        local signature = tostring(status.state) .. ":" .. tostring(status.step) .. ":" .. tostring(status.total)
        if signature ~= job.last_signature then job.last_signature, job.last_change = signature, now end
        if status.state == "done" then
          if type(status.stem_path) ~= "string" or not reaper.file_exists(status.stem_path) then
            end_job({ state = "error", message = "The engine said it finished but its file is missing: " ..
              tostring(status.stem_path) })
          else
            end_job({ state = "done", stem_path = status.stem_path, metadata = status.metadata or {},
              job_id = status.job_id })
          end
        elseif status.state == "error" then
          local e = type(status.error) == "table" and status.error or {}
          end_job({ state = "error", code = e.code, message = e.message or "The engine reported an error." })
        elseif status.state == "cancelled" then
          end_job({ state = "cancelled", message = "Generation cancelled." })
        end
      elseif now - job.started > settings.start_timeout_s then
        cancel_job()
        end_job({ state = "error", message = string.format(
          "The StepFoley client did not start (no status after %d s).\n\nCommand:\n%s\n\n" ..
          "Check the program path in \"StepFoley: Settings\" and that StepFoley is installed there.",
          math.floor(settings.start_timeout_s), job.command) })
      end
      if job and now - job.last_change > settings.watchdog_s then
        cancel_job()
        end_job({ state = "error", message = string.format(
          "The engine made no progress for %d s, so StepFoley stopped waiting (and asked it to cancel).\n\n" ..
          "Check the engine window or run \"StepFoley: Engine status\".", math.floor(settings.watchdog_s)) })
      end
      if job and job.cancel_asked and now - job.cancel_asked > 15 then
        end_job({ state = "cancelled", message = "Cancelled (the client did not confirm; it may still be stopping)." })
      end
      if job then
        local label = jobs[index].label or ""
        local text, fraction
        if status and status.state == "running" and tonumber(status.total) and status.total > 0 then
          fraction = status.step / status.total
          text = string.format("%s: step %d of %d", label, math.floor(status.step), math.floor(status.total))
        else
          text = string.format("%s: %s", label, status and status.state or "starting the client")
        end
        if #jobs > 1 then text = string.format("[%d/%d] %s", index, #jobs, text) end
        if progress:show(text .. "   (Esc cancels)", fraction) then cancel_job() end
      end
    end
    reaper.defer(poll)
  end

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

-- Runs `edit()` as one undo point named `description`, with the UI frozen meanwhile, then
-- builds the peaks of the new media.
function M.undoable_edit(proj, description, edit)
  reaper.Undo_BeginBlock2(proj)
  reaper.PreventUIRefresh(1)
  edit()
  reaper.Main_OnCommand(M.BUILD_MISSING_PEAKS, 0)
  reaper.PreventUIRefresh(-1)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock2(proj, description, -1)
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

-- One new track named after the caption, one item over the region, one take per result.
function M.insert_track(proj, region, takes)
  local index = new_track_index(proj)
  reaper.InsertTrackAtIndex(index, true)
  local track = reaper.GetTrack(proj, index)
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
