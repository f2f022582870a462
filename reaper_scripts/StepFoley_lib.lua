-- @noindex
--[[
StepFoley shared library for the REAPER actions: this file holds what every part needs
(constants, JSON, files, settings, messages) and loads the parts, one per concern, from the
same folder; every part adds its functions to the one table returned here:

  StepFoley_lib_engine.lua   finding and starting the `stepfoley` client, engine queries,
                             running jobs (status files polled from reaper.defer)
  StepFoley_lib_project.lua  time selection, picture and file time, project folders, which
                             layers count as negatives
  StepFoley_lib_bounce.lua   rendering what the user hears of the chosen layers to one WAV
  StepFoley_lib_dialog.lua   the parameters dialog (GetUserInputs, or ReaImGui when installed)
  StepFoley_lib_controls.lua a loudness curve from a volume envelope, a part of the picture
  StepFoley_lib_results.lua  inserting results (tracks, takes, lanes) and the generate flow

REAPER's Lua has no sockets, so the actions talk to the engine only through the
`stepfoley send` client (docs/osc-protocol.md): the request goes in a JSON file, the client is
started with reaper.ExecProcess(cmd, -2) (returns at once) and keeps a status JSON file up to
date, which a reaper.defer loop polls. Cancelling = creating STATUS.json.cancel.

Everything is local; loading this file has no side effects. It never uses os.execute or
io.popen (a shell would mangle quotes and open console windows on Windows).
]]

local M = {}

M.VERSION = "0.5.39"
M.SECTION = "StepFoley"            -- ExtState section
M.TRACK_MARK = "P_EXT:stepfoley"   -- set to "1" on tracks StepFoley created
M.TAKE_META = "P_EXT:stepfoley_metadata"
-- A track's role as a negative: "1" include (even if StepFoley did not make it), "0" exclude
-- (even if it did), absent = StepFoley's tracks count, others do not.
M.NEGATIVE_ROLE = "P_EXT:stepfoley_negative"
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
-- A client that writes `client_alive` rewrites its status file every 2 s, whatever the engine
-- does: silent this long (or the usual limit, when shorter), it died or was closed, and the job
-- is cancelled in the engine.
M.CLIENT_SILENCE_S = 30
-- Bytes for patterns, spelled out: Lua's %s and %c ask the C library, which follows the
-- host's locale. Under a Latin-1 one %c also matches 0x80-0x9F, bytes inside UTF-8 characters
-- (ł, ’, Cyrillic, kana); a Windows code page counts 0xA0, the end of à, as a space.
M.SPACE = " \t\n\v\f\r"           -- the C locale's %s, for inside [...]
local ESCAPED = '[\0-\31\127"\\]'   -- the C locale's %c, quote and backslash

local SPACE_BYTE = {}
for c in M.SPACE:gmatch(".") do SPACE_BYTE[c:byte()] = true end
-- Spaces outside ASCII that keyboards type: no-break (macOS Option+Space), narrow no-break (a
-- French keyboard before : and ;), figure, ideographic.
local WIDE_SPACES = { "\u{A0}", "\u{202F}", "\u{2007}", "\u{3000}" }

-- The length in bytes of the space starting at byte i of s (ending there when `backward`), or 0.
local function space_at(s, i, backward)
  if SPACE_BYTE[s:byte(i)] then return 1 end
  for _, w in ipairs(WIDE_SPACES) do
    local a = backward and i - #w + 1 or i
    if a >= 1 and s:sub(a, a + #w - 1) == w then return #w end
  end
  return 0
end

-- Text without the spaces around it ("" for nil), walked byte by byte from each end: linear
-- however long a run of spaces.
function M.trim(s)
  s = s or ""
  local a, b = 1, #s
  while a <= b do
    local n = space_at(s, a)
    if n == 0 then break end
    a = a + n
  end
  while b >= a do
    local n = space_at(s, b, true)
    if n == 0 then break end
    b = b - n
  end
  return s:sub(a, b)
end

-- Whether the text is empty or spaces only.
function M.is_blank(s)
  return M.trim(s) == ""
end

-- string.format's %f and %g and tostring write the C library's decimal point, which follows
-- LC_NUMERIC (under a German one 4.5 is "4,5"): what a program reads (JSON, a command line)
-- gets a dot whatever the host's locale.
function M.with_dot(text)
  local point = string.format("%.1f", 0.5):match("^0(.+)5$") or "."
  local at = point ~= "." and text:find(point, 1, true)
  if not at then return text end
  return text:sub(1, at - 1) .. "." .. text:sub(at + #point)
end

-- A number as the engine's requests, the command line and the settings write it: a dot,
-- whatever the locale, and no ".0" on a whole number.
function M.number_text(x)
  return M.with_dot(tostring(math.tointeger(x) or x))
end

-- Text that starts a sentence ("the selected item" -> "The selected item").
function M.capitalized(text)
  return text:sub(1, 1):upper() .. text:sub(2)
end

--[[
A number as the user typed it, or nil and why not, for the message. Only the C form is read,
whatever REAPER's locale: a decimal comma (4,5) is not a number (REAPER writes a dot in its own
fields) and a whole number takes digits only (10.000 is not ten thousand, nor ten).
]]
function M.parse_number(text, integer)
  local form = integer and "^[+-]?%d+$" or "^[+-]?[%d.]+[eE]?[+-]?%d*$"
  local x = text:match(form) and tonumber(text) or nil
  if x then return x end
  if not integer and text:find(",") and tonumber((text:gsub(",", "."))) then
    return nil, " Write the decimal point as a dot (" .. text:gsub(",", ".") .. ")."
  end
  if integer and M.digits_in_groups(text) then return nil, " Give the digits only, without separators." end
  return nil, ""
end

-- Whether the text is a whole number written in groups of three digits (10.000, 1,000, 1'000).
function M.digits_in_groups(text)
  local rest = text:match("^%d%d?%d?(.*)$")
  if not rest or rest == "" then return false end
  while rest ~= "" do
    rest = rest:match("^[.,']%d%d%d(.*)$")
    if not rest then return false end
  end
  return true
end

-- string.lower for A-Z only: string.lower follows the locale too, and under a Latin-1 one
-- changes the bytes of UTF-8 characters (É's lead byte 0xC3 into 0xE3).
function M.lower_ascii(s)
  return (s:gsub("[A-Z]", function(c) return string.char(c:byte() + 32) end))
end

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
  return '"' .. s:gsub(ESCAPED, function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(x)
  if x ~= x or x == math.huge or x == -math.huge then
    error("JSON cannot hold the number " .. tostring(x))
  end
  if math.type(x) == "integer" then return string.format("%d", x) end
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then return M.with_dot(string.format("%.1f", x)) end
  -- shortest form that reads back as the same double
  for digits = 15, 17 do
    local s = M.with_dot(string.format("%." .. digits .. "g", x))
    if tonumber(s) == x then return s end
  end
  return M.with_dot(string.format("%.17g", x))
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
      local a, b = text:find(ESCAPED, pos)
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
  -- a full disk fails the write or the close (the last block is written there): the cut-off
  -- file was renamed into place and read as a broken request, not as the disk being full
  local wrote, write_err = f:write(data)
  local closed, close_err = f:close()
  if not (wrote and closed) then
    os.remove(tmp)
    return false, write_err or close_err
  end
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

-- The folder holding `path` ("" when it has none).
function M.dirname(path)
  return path:match("^(.*)[/\\][^/\\]*$") or ""
end

function M.extension(path)
  local ext = M.basename(path):match("%.([^.]+)$")
  return ext and ext:lower() or ""
end

-- Deletes a folder that StepFoley made (files and sub-folders). Lua can only remove empty
-- folders through os.remove where the C library allows it (not on Windows): there an empty
-- folder may stay.
function M.remove_tree(dir)
  local files, dirs = {}, {}
  reaper.EnumerateFiles(dir, -1) -- re-read the folder, not REAPER's cached listing
  for i = 0, math.huge do
    local name = reaper.EnumerateFiles(dir, i)
    if not name then break end
    files[#files + 1] = M.join(dir, name)
  end
  reaper.EnumerateSubdirectories(dir, -1)
  for i = 0, math.huge do
    local name = reaper.EnumerateSubdirectories(dir, i)
    if not name then break end
    dirs[#dirs + 1] = M.join(dir, name)
  end
  for _, f in ipairs(files) do os.remove(f) end
  for _, d in ipairs(dirs) do M.remove_tree(d) end
  os.remove(dir)
end

------------------------------------------------------------------------------------------
-- ExtState
------------------------------------------------------------------------------------------

-- A JSON value kept in the global ExtState (nil when absent or unreadable).
function M.get_json_state(key)
  local text = reaper.GetExtState(M.SECTION, key)
  if text == nil or text == "" then return nil end
  return (M.json_decode(text))
end

function M.set_json_state(key, value, persist)
  reaper.SetExtState(M.SECTION, key, M.json_encode(value), persist)
end

------------------------------------------------------------------------------------------
-- Settings (global ExtState, persisted). The guidance parameters are not settings: they are
-- the loaded model's (the engine publishes them) unless the user types their own in the
-- dialog, which then remembers them (StepFoley_lib_dialog.lua).
------------------------------------------------------------------------------------------

M.DEFAULT_SETTINGS = {
  port = 9017,
  client = "",          -- path of `stepfoley`, or of a Python that has StepFoley installed; "" = search
  watchdog_s = 180,     -- the client gives up when the engine shows no sign of life for this long
  start_timeout_s = 20, -- give up when the client has not written its status file after this long
  variations_as = "lanes", -- "lanes" (REAPER 7 fixed lanes, where available) or "takes"
  keep_job_files = 0,   -- 1: keep request, status and bounce of finished jobs (for support)
  job_days = 7,         -- job folders older than this are deleted when a new job starts
}

local NUMERIC_SETTINGS = { port = true, watchdog_s = true, start_timeout_s = true, keep_job_files = true,
  job_days = true }
-- Written by versions before 0.3.0, which persisted the dialog's defaults (always 4.5 ...):
-- the model's own defaults apply instead.
local LEGACY_SETTINGS = { "method", "alpha", "beta", "steps" }

function M.load_settings()
  for _, key in ipairs(LEGACY_SETTINGS) do
    if reaper.HasExtState(M.SECTION, key) then reaper.DeleteExtState(M.SECTION, key, true) end
  end
  local s = {}
  for key, default in pairs(M.DEFAULT_SETTINGS) do
    local stored = reaper.GetExtState(M.SECTION, key)
    if stored ~= nil and stored ~= "" then
      -- a comma: written by 0.5.14 or earlier under a number locale with a decimal comma
      s[key] = NUMERIC_SETTINGS[key] and (tonumber((stored:gsub(",", "."))) or default) or stored
    else
      s[key] = default
    end
  end
  return s
end

function M.save_settings(s)
  for key in pairs(M.DEFAULT_SETTINGS) do
    if s[key] ~= nil then
      reaper.SetExtState(M.SECTION, key, NUMERIC_SETTINGS[key] and M.number_text(s[key]) or tostring(s[key]), true)
    end
  end
end

------------------------------------------------------------------------------------------
-- The engine's bounds
------------------------------------------------------------------------------------------

-- A bound the engine publishes in its capabilities (`bounds`, docs/osc-protocol.md), or
-- `default` (the library's copy of stepfoley.request's value) when it publishes none.
function M.published(caps, key, default)
  local value = type(caps) == "table" and type(caps.bounds) == "table" and caps.bounds[key]
  if value == nil or value == false then return default end
  return value
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
-- The parts
------------------------------------------------------------------------------------------

M.DIR = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
M.PARTS = { "engine", "project", "bounce", "dialog", "controls", "results" }

-- What a user who copied only some of a release's files is told (REAPER shows it as the
-- action's error): which file is of which version, and what to do.
function M.mixed_versions(file, version)
  return string.format("StepFoley's files are from different versions: %s is %s, StepFoley_lib.lua is %s. "
    .. "Install every StepFoley_*.lua file of one release into one folder (ReaPack does this), then run "
    .. "the action again.", file, version or "of an older version", M.VERSION)
end

for _, part in ipairs(M.PARTS) do
  local file = "StepFoley_lib_" .. part .. ".lua"
  local loaded, install = pcall(dofile, M.DIR .. file)
  if not loaded or type(install) ~= "function" then
    error(file .. " could not be loaded (" .. tostring(install) .. "). Install every StepFoley_*.lua file "
      .. "of one release into one folder (ReaPack does this).", 0)
  end
  local version = install(M)  -- nil from a part older than 0.5.16
  if version ~= M.VERSION then
    error(M.mixed_versions(file, type(version) == "string" and version or nil), 0)
  end
end

return M
