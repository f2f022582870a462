-- @noindex
--[[
StepFoley library, part "engine": finding the `stepfoley` client, putting it on a command line,
asking the engine what it offers (non-blocking), running generation jobs and following their
status files from reaper.defer. Loaded by StepFoley_lib.lua; adds to its table.
]]

-- Returned by the function below, for StepFoley_lib.lua to check: the files of one release go together
local VERSION = "0.5.39"

return function(M)

------------------------------------------------------------------------------------------
-- Finding the client
------------------------------------------------------------------------------------------

local function is_python(path)
  local name = M.basename(path):lower()
  return name:match("^python[%d%.]*w?%.exe$") ~= nil or name:match("^python[%d%.]*$") ~= nil
    or name == "py.exe" or name == "py"
end

-- The Microsoft Store's `python.exe` "app execution alias" (in ...\WindowsApps\) is a stub
-- that opens the Store instead of running Python.
function M.is_store_alias(path)
  return path:lower():find("[/\\]windowsapps[/\\]") ~= nil
end

local function add(list, path, kind, where)
  for _, c in ipairs(list) do if c.path == path then return end end
  list[#list + 1] = { path = path, kind = kind, where = where }
end

--[[
A path as a shell would read it (docs/reaper.md writes ~/stepfoley-venv/... and
%USERPROFILE%\...): a leading ~ is the home folder (HOME; USERPROFILE on Windows) and, on
Windows, %NAME% the variable's value. A name that is not set is left as typed. Pure apart from
`getenv(name)`, which the caller gives (os.getenv).
]]
function M.expand_home(path, windows, getenv)
  getenv = getenv or os.getenv
  if windows == nil then windows = M.is_windows() end
  local home = getenv(windows and "USERPROFILE" or "HOME") or getenv("HOME")
  if home and (path == "~" or path:match("^~[/\\]")) then path = home .. path:sub(2) end
  if windows then
    path = path:gsub("%%([%w_()]+)%%", function(name) return getenv(name) end)
  end
  return path
end

--[[
Where `stepfoley` (kind "exe") or a Python that may have StepFoley (kind "python") is looked
for, in order, for REAPER on Windows or elsewhere. REAPER started from the macOS Dock or the
Windows Start menu has a short PATH (/usr/bin:/bin on macOS), so the usual install places
are searched too: the venv docs/reaper.md installs (~/stepfoley-venv), pip --user and pipx
(~/.local/bin, %APPDATA%\Python\Python3*\Scripts), Homebrew and /usr/local, python.org's
installer (%LOCALAPPDATA%\Programs\Python\Python3*). Pure apart from `getenv(name)` and
`subdirs(path)` (a list of folder names), which the caller gives.
]]
function M.client_candidates(windows, getenv, subdirs)
  local list = {}
  local sep = windows and "\\" or "/"
  local function join(...) return table.concat({ ... }, sep) end
  local path_dirs = {}
  for dir in (getenv("PATH") or ""):gmatch("[^" .. (windows and ";" or ":") .. "]+") do
    path_dirs[#path_dirs + 1] = dir:gsub("[/\\]$", "")
  end
  if windows then
    local home, appdata, local_appdata = getenv("USERPROFILE"), getenv("APPDATA"), getenv("LOCALAPPDATA")
    local python_dirs = {} -- python.org installs, per version (newest first)
    if local_appdata then
      local root = join(local_appdata, "Programs", "Python")
      local names = subdirs(root)
      -- by version, not as text: Python312 before Python39
      local function version(name) return tonumber(name:match("^[Pp]ython(%d+)")) or -1 end
      table.sort(names, function(a, b)
        if version(a) ~= version(b) then return version(a) > version(b) end
        return a > b
      end)
      for _, name in ipairs(names) do python_dirs[#python_dirs + 1] = join(root, name) end
    end
    for _, dir in ipairs(path_dirs) do add(list, join(dir, "stepfoley.exe"), "exe", "PATH") end
    if home then
      add(list, join(home, "stepfoley-venv", "Scripts", "stepfoley.exe"), "exe", "the venv of docs/reaper.md")
      add(list, join(home, ".local", "bin", "stepfoley.exe"), "exe", "pipx")
    end
    if appdata then
      local root = join(appdata, "Python")
      for _, name in ipairs(subdirs(root)) do
        add(list, join(root, name, "Scripts", "stepfoley.exe"), "exe", "pip install --user")
      end
    end
    for _, dir in ipairs(python_dirs) do add(list, join(dir, "Scripts", "stepfoley.exe"), "exe", "python.org install") end
    for _, dir in ipairs(path_dirs) do
      if not M.is_store_alias(dir .. "\\") then
        add(list, join(dir, "py.exe"), "python", "PATH")
        add(list, join(dir, "python.exe"), "python", "PATH")
      end
    end
    for _, dir in ipairs(python_dirs) do add(list, join(dir, "python.exe"), "python", "python.org install") end
    local windir = getenv("SystemRoot")
    if windir then add(list, join(windir, "py.exe"), "python", "the Python launcher") end
  else
    local home = getenv("HOME")
    for _, dir in ipairs(path_dirs) do add(list, join(dir, "stepfoley"), "exe", "PATH") end
    if home then
      add(list, join(home, "stepfoley-venv", "bin", "stepfoley"), "exe", "the venv of docs/reaper.md")
      add(list, join(home, ".local", "bin", "stepfoley"), "exe", "pip install --user / pipx")
      -- macOS: python.org's and Homebrew's Pythons put `pip install --user` here, per version
      local root = join(home, "Library", "Python")
      local names = subdirs(root)
      local function version(name)
        local major, minor = name:match("^(%d+)%.(%d+)$")
        return major and tonumber(major) * 1000 + tonumber(minor) or -1
      end
      table.sort(names, function(a, b) return version(a) > version(b) end) -- 3.12 before 3.9
      for _, name in ipairs(names) do add(list, join(root, name, "bin", "stepfoley"), "exe", "pip install --user") end
    end
    for _, dir in ipairs({ "/opt/homebrew/bin", "/usr/local/bin" }) do add(list, join(dir, "stepfoley"), "exe", dir) end
    for _, dir in ipairs(path_dirs) do
      add(list, join(dir, "python3"), "python", "PATH")
      add(list, join(dir, "python"), "python", "PATH")
    end
    for _, dir in ipairs({ "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin" }) do
      add(list, join(dir, "python3"), "python", dir)
    end
  end
  return list
end

local function subdirs(path)
  local names = {}
  reaper.EnumerateSubdirectories(path, -1) -- re-read, not REAPER's cached listing
  for i = 0, math.huge do
    local name = reaper.EnumerateSubdirectories(path, i)
    if not name then break end
    names[#names + 1] = name
  end
  return names
end

local function prefix_for(path, kind)
  if kind == "python" then return { path, "-m", "stepfoley" } end
  return { path }
end

local function example_path()
  return M.is_windows() and "C:\\Users\\you\\stepfoley-venv\\Scripts\\stepfoley.exe"
    or "/home/you/stepfoley-venv/bin/stepfoley"
end

--[[
The argv prefix that runs `stepfoley`: {exe} or {python, "-m", "stepfoley"}, and how it was
found: {path, where, searched = the candidates with found = true/false}. nil, a message and
{searched} when nothing usable is found. A path set in Settings is used as it is (or refused
with the reason); otherwise the first candidate that exists.
]]
function M.client_prefix(settings)
  local configured = settings.client or ""
  if configured ~= "" then
    if not reaper.file_exists(configured) then
      return nil, "The StepFoley program set in Settings was not found:\n" .. configured ..
        "\n\nRun \"StepFoley: Settings\" and enter the full path of `stepfoley` " ..
        "(or of the Python that has StepFoley installed), or leave it empty to search the usual places."
    end
    if M.is_store_alias(configured) then
      return nil, "The program set in Settings is the Microsoft Store's python.exe alias, which opens the " ..
        "Store instead of running Python:\n" .. configured .. "\n\nEnter the path of `stepfoley.exe` in your " ..
        "StepFoley venv instead, for example\n" .. example_path()
    end
    if configured:lower():match("%.bat$") or configured:lower():match("%.cmd$") then
      -- Windows runs a batch file through cmd.exe, whose parsing changes "!" and "^" even
      -- inside quotes (delayed expansion, CALL): a project path like "Wow! Foley" would arrive
      -- changed. Only programs are started as they are.
      return nil, "The program set in Settings is a batch file (.bat or .cmd):\n" .. configured ..
        "\n\nWindows runs it through cmd.exe, which can change \"!\" and \"^\" in the paths StepFoley " ..
        "passes. Enter the path of `stepfoley.exe` in your StepFoley venv instead, for example\n" .. example_path()
    end
    local kind = is_python(configured) and "python" or "exe"
    return prefix_for(configured, kind), { path = configured, where = "Settings", searched = {} }
  end
  local searched = {}
  local found
  for _, c in ipairs(M.client_candidates(M.is_windows(), os.getenv, subdirs)) do
    local exists = reaper.file_exists(c.path)
    searched[#searched + 1] = { path = c.path, where = c.where, found = exists }
    if exists and not found then found = c end
  end
  if found then
    return prefix_for(found.path, found.kind), { path = found.path, where = found.where, searched = searched }
  end
  return nil, "Could not find the `stepfoley` program (searched PATH, ~/stepfoley-venv and the usual " ..
    "install places; run \"StepFoley: Verify setup\" for the list).\n\n" ..
    "Run \"StepFoley: Settings\" and enter the full path of `stepfoley`, for example\n" .. example_path(),
    { searched = searched }
end

------------------------------------------------------------------------------------------
-- Command lines
------------------------------------------------------------------------------------------

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

local function concat(a, b)
  local out = {}
  for _, x in ipairs(a) do out[#out + 1] = x end
  for _, x in ipairs(b) do out[#out + 1] = x end
  return out
end

-- The argv that runs one job: `stepfoley send` with the request, the status file, the port
-- and the watchdog (seconds without a sign of life from the engine before the client stops).
-- No --token: `send` reads the user's token ($STEPFOLEY_TOKEN) itself.
function M.send_argv(prefix, settings, request_path, status_path)
  return concat(prefix, { "send", "--request", request_path, "--status", status_path,
    "--port", M.number_text(settings.port), "--timeout", M.number_text(settings.watchdog_s) })
end

-- The argv that asks the engine itself to cancel job `job_id`, for a job whose client is gone
-- (nothing else would: the cancel file is read by the client only).
function M.cancel_argv(prefix, settings, job_id)
  return concat(prefix, { "send", "--cancel", job_id, "--port", M.number_text(settings.port),
    "--timeout", M.number_text(settings.watchdog_s) })
end

local UNSAFE_PROGRAM = "The StepFoley program path cannot be put on a command line (it contains \" ` $ %% or " ..
  "control characters): %s\nMove it to a folder without such characters and update Settings."

-- Why the program `path` (Settings' client, not empty) cannot start StepFoley, or nil: said
-- when it is set, not at the next generation.
function M.client_problem(path)
  local prefix, why = M.client_prefix({ client = path })
  if not prefix then return why end
  for _, part in ipairs(prefix) do
    if not M.is_command_line_safe(part) then return string.format(UNSAFE_PROGRAM, prefix[1]) end
  end
  return nil
end

------------------------------------------------------------------------------------------
-- Status files
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
  local list = M.get_json_state(RUNNING_KEY)
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
  M.set_json_state(RUNNING_KEY, out, false)
end

-- The cancel files of the runs (M.run_jobs) still going, a run of several jobs included while
-- one has ended and the next not begun, when no status file of it is running: a cancel then
-- found nothing to stop, and the run went on with the rest.
local BATCHES_KEY = "running_batches" -- non-persistent ExtState: JSON list
local function set_batch(path, on)
  local list, out = M.get_json_state(BATCHES_KEY), M.array({})
  for _, p in ipairs(type(list) == "table" and list or {}) do
    if type(p) == "string" and p ~= path then out[#out + 1] = p end
  end
  if on then out[#out + 1] = path end
  M.set_json_state(BATCHES_KEY, out, false)
end

function M.request_cancel(status_path)
  local f = io.open(status_path .. ".cancel", "wb")
  if not f then return false end
  f:write("cancel\n")
  f:close()
  return true
end

-- Asks every running generation to stop: each run's job that runs, and the run itself, which
-- then starts no more. Returns how many runs were asked (or, of none listed, running jobs).
function M.request_cancel_all()
  local jobs, runs = 0, 0
  for _, status_path in ipairs(M.running_status_files()) do
    if M.request_cancel(status_path) then jobs = jobs + 1 end
  end
  local batches = M.get_json_state(BATCHES_KEY)
  for _, path in ipairs(type(batches) == "table" and batches or {}) do
    if type(path) == "string" and M.request_cancel(path) then runs = runs + 1 end
  end
  return math.max(runs, jobs)
end

-- What the engine is doing, in words. Newer engines send `phase` ("features", "sampling",
-- ...) with step/total counting within it; older ones send no phase and count sampling steps.
-- Finishing counts two steps a stem (older engines: one), so it is shown by the bar alone.
M.PHASE_WORDS = { queued = "waiting for the engine", features = "reading the picture",
  sampling = "generating", decoding = "decoding the audio", finishing = "finishing the stems",
  engine_loading = "waiting for the engine to load its model" }

-- One line for a status, and the fraction done of the current phase (nil when unknown).
function M.describe_progress(status)
  local step, total = tonumber(status.step), tonumber(status.total)
  local counted = step ~= nil and total ~= nil and total > 0
  if type(status.phase) == "string" and status.phase ~= "" and not FINAL_STATES[status.state] then
    local words = M.PHASE_WORDS[status.phase] or status.phase
    if counted and status.phase == "finishing" then return words, step / total end
    if counted then return string.format("%s: %d of %d", words, math.floor(step), math.floor(total)), step / total end
    return words, nil
  end
  if status.state == "running" and counted then
    return string.format("step %d of %d", math.floor(step), math.floor(total)), step / total
  end
  return tostring(status.state or "starting"), nil
end

------------------------------------------------------------------------------------------
-- A small progress window; Esc in it cancels. Closing it only hides it.
------------------------------------------------------------------------------------------

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

------------------------------------------------------------------------------------------
-- Asking the engine (without waiting: the client runs in the background, its answer is
-- polled from reaper.defer, so REAPER never freezes)
------------------------------------------------------------------------------------------

-- Where query answers are written: REAPER's resource folder (always there, even before a
-- project is saved). nil and a message when it cannot go on a command line.
local function queries_dir()
  local dir = M.join(M.join(reaper.GetResourcePath(), "StepFoley"), "queries")
  if not M.is_command_line_safe(dir) then
    return nil, "REAPER's resource folder cannot be passed to the StepFoley client (it contains quotes or " ..
      "other special characters):\n" .. dir
  end
  reaper.RecursiveCreateDirectory(dir, 0)
  return dir
end

-- Query files given up on: the client started for one may still write it after StepFoley
-- stopped waiting (a slow start, or REAPER closed meanwhile), so each is listed here
-- (persisted) and removed by a later query once it is there. Only names listed here are
-- ever removed: other files in the folder are not StepFoley's to delete.
local ABANDONED_KEY = "abandoned_queries"
-- A client that has not written after this long never will (it asks the engine with a
-- timeout of seconds); the list also stays short whatever happens.
local ABANDONED_FOR_S = 24 * 3600
local MAX_ABANDONED = 50

local function abandoned_queries()
  local list, out = M.get_json_state(ABANDONED_KEY), {}
  if type(list) ~= "table" then return out end
  for _, entry in ipairs(list) do
    if type(entry) == "table" and type(entry.path) == "string" and type(entry.at) == "number" then
      out[#out + 1] = entry
    end
  end
  return out
end

local function save_abandoned(list)
  local out = M.array({})
  for i = math.max(1, #list - MAX_ABANDONED + 1), #list do out[#out + 1] = list[i] end
  M.set_json_state(ABANDONED_KEY, out, true)
end

-- Removes the query files given up on that their client has written since, and forgets
-- those that will not come any more.
local function sweep_abandoned_queries()
  local list = abandoned_queries()
  if #list == 0 then return end
  local keep, now = {}, os.time()
  for _, entry in ipairs(list) do
    if reaper.file_exists(entry.path) then
      os.remove(entry.path)
    elseif now - entry.at < ABANDONED_FOR_S then
      keep[#keep + 1] = entry
    end
  end
  save_abandoned(keep)
end

-- Stops waiting for a query: its file goes now if it is there, and is listed in case the
-- client writes it later.
local function give_up_query(path)
  os.remove(path)
  local list = abandoned_queries()
  list[#list + 1] = { path = path, at = os.time() }
  save_abandoned(list)
end

-- A name for a new query's file that no file has yet: one already there is not this
-- query's, and StepFoley removes only its own.
local function new_query_path(dir)
  for _ = 1, 10 do
    local path = M.join(dir, "engine-" .. M.new_job_id() .. ".json")
    if not reaper.file_exists(path) then return path end
  end
  return nil, "Could not choose a new file name for the engine's answer in\n" .. dir ..
    "\n\nRemove the old engine-*.json files there and try again."
end

local function last_lines(text, n)
  local lines = {}
  for line in (text or ""):gmatch("[^\r\n]+") do lines[#lines + 1] = line end
  return table.concat(lines, "\n", math.max(1, #lines - n + 1))
end

--[[
Why the client wrote nothing: ExecProcess(-2) shows none of its output, so `stepfoley send
--help` is run once more, waiting for it (at most 3 s, only on this failure path), to show
what it says (e.g. "No module named stepfoley" from a Python without StepFoley).
]]
function M.diagnose_client(prefix, seconds)
  local ok, cmd = pcall(M.command_line, concat(prefix, { "send", "--help" }))
  if not ok then return string.format(UNSAFE_PROGRAM, prefix[1]) end
  local intro = string.format("The StepFoley client did not start (no answer after %d s).\n\nCommand:\n%s\n\n",
    math.floor(seconds), cmd)
  local out = reaper.ExecProcess(cmd, 3000)
  local code, text = (out or ""):match("^(%-?%d+)\n(.*)$")
  if not code then
    return intro .. "REAPER could not run it at all. Check that the file is a program (on macOS and Linux: " ..
      "executable) and set its full path in \"StepFoley: Settings\"."
  elseif code == "0" then
    return intro .. "The program runs, but it did not answer in time. If the computer is busy, raise \"Client " ..
      "start timeout (s)\" in \"StepFoley: Settings\"; check that REAPER's resource folder is writable."
  end
  return intro .. "It stopped with exit code " .. code .. " and said:\n" .. last_lines(text, 12) ..
    "\n\nInstall StepFoley into that Python, or set the path of `stepfoley` from your StepFoley venv in " ..
    "\"StepFoley: Settings\" (\"StepFoley: Verify setup\" lists the places searched)."
end

-- An engine query's answer, as the actions use it.
local function engine_info(status)
  if status.state == "done" and type(status.answer) == "table" then
    local a = status.answer
    local caps = type(a.capabilities) == "table" and a.capabilities or nil
    local state = (a.state == "loading" or a.state == "stopping") and a.state or "running"
    return { ok = true, client_ok = true, state = state, model = a.model, device = a.device, capabilities = caps,
      answer = a }
  end
  local e = type(status.error) == "table" and status.error or {}
  local not_running = e.code == "engine_not_running" or status.exit_code == 3
  return { ok = false, client_ok = true, state = not_running and "not_running" or "error",
    message = e.message or "The engine did not answer." }
end

-- Whether the engine answers requests of protocol `version` (an engine before protocol 2
-- lists no `protocols` and speaks only 1).
function M.engine_speaks(engine, version)
  local answer = engine and engine.answer
  if type(answer) ~= "table" or type(answer.protocols) ~= "table" then return version == 1 end
  for _, v in ipairs(answer.protocols) do
    if v == version then return true end
  end
  return false
end

--[[
Runs `stepfoley send --engine-status` in the background and calls on_done(info) from the
defer loop once it answered:
  {ok = true, client_ok = true, state = "running"|"loading"|"stopping", model, device, capabilities (the
   engine's, docs/osc-protocol.md; nil from an engine that publishes none), answer}
  {ok = false, client_ok = true, state = "not_running"|"error", message}
  {ok = false, client_ok = false, state = "no_client", message (with what the client said)}
]]
function M.query_engine(settings, prefix, on_done)
  local dir, dir_err = queries_dir()
  if not dir then return on_done({ ok = false, client_ok = false, state = "no_client", message = dir_err }) end
  sweep_abandoned_queries()
  local path, path_err = new_query_path(dir)
  if not path then return on_done({ ok = false, client_ok = false, state = "no_client", message = path_err }) end
  local ok, cmd = pcall(M.command_line, concat(prefix, { "send", "--engine-status", "--status", path,
    "--port", M.number_text(settings.port) }))
  if not ok then
    return on_done({ ok = false, client_ok = false, state = "no_client", message = string.format(UNSAFE_PROGRAM, prefix[1]) })
  end
  local started = reaper.time_precise()
  local window
  local finished = false
  -- Every way out of the wait goes through here, so the query file never outlives it.
  local function finish(info, answered)
    finished = true
    if answered then os.remove(path) else give_up_query(path) end
    if window then window:close() end
    return on_done(info)
  end
  reaper.ExecProcess(cmd, -2)
  local function poll()
    local now = reaper.time_precise()
    local status = M.read_status(path)
    if status and is_final(status) then return finish(engine_info(status), true) end
    if now - started > settings.start_timeout_s then
      return finish({ ok = false, client_ok = false, state = "no_client",
        message = M.diagnose_client(prefix, settings.start_timeout_s) })
    end
    if now - started > 1 then -- a slow start: say what is going on
      window = window or M.progress_window("StepFoley")
      window:show("Starting the StepFoley client and asking the engine...")
    end
    reaper.defer(poll)
  end
  -- The script can also end while it waits (an error, the user terminating it, REAPER
  -- closing): REAPER runs this then, and the client may still answer.
  reaper.atexit(function()
    if not finished then
      finished = true
      give_up_query(path)
    end
  end)
  reaper.defer(poll)
end

-- The engine's answer in words (Engine status, Verify setup).
function M.describe_engine(engine, settings)
  if not engine.client_ok then return "Engine: unknown: the client did not run.\n" .. engine.message end
  if not engine.ok then
    return "Engine: NOT answering. " .. tostring(engine.message) ..
      string.format("\nStart it in a terminal with: stepfoley serve --port %d (if an engine window is open, check " ..
        "its port and token; one that shows no activity may be hung or paused: close it, then start it again)",
        math.floor(settings.port))
  end
  local a = engine.answer
  -- queue_length counts every waiting job; the listed queue is cut to fit one reply (an older
  -- engine sends the count alone by the list)
  local waiting = math.tointeger(a.queue_length) or (type(a.queue) == "table" and #a.queue) or 0
  local state = engine.state == "loading" and "running, still loading its model"
    or engine.state == "stopping" and "shutting down (it takes no new job: start it again once it has closed)"
    or "running"
  local lines = { string.format("Engine: %s. Model %s on %s; %d job(s) waiting, %s finished.", state, tostring(a.model),
    tostring(a.device), waiting, tostring(a.jobs_finished or 0)) }
  local caps = engine.capabilities
  if not caps then
    lines[#lines + 1] = "It publishes no defaults or methods (an older engine, or still loading)."
    return table.concat(lines, "\n")
  end
  local d = caps.defaults or {}
  lines[#lines + 1] = string.format("Model defaults: method %s, alpha %s, beta %s, steps %s.", tostring(d.method),
    M.default_text(caps, "alpha"), M.default_text(caps, "beta"), M.default_text(caps, "steps"))
  lines[#lines + 1] = "Methods:"
  for _, m in ipairs(caps.methods or {}) do
    local line = "  " .. m.name .. ": " .. tostring(m.summary)
    if m.available == false then line = "  " .. m.name .. ": NOT available: " .. tostring(m.unavailable_reason) end
    lines[#lines + 1] = line
  end
  return table.concat(lines, "\n")
end

------------------------------------------------------------------------------------------
-- Running jobs: start the client, poll its status file from reaper.defer
------------------------------------------------------------------------------------------

local function timed_out_message(settings, engine_message)
  return (engine_message or string.format("The engine showed no progress for %s s.", M.number_text(settings.watchdog_s))) ..
    "\n\nIf the engine is only slow (on a CPU the first track of a region spends minutes reading the " ..
    "picture), raise \"Give up after no progress for (s)\" in \"StepFoley: Settings\". Otherwise check " ..
    "the engine window or run \"StepFoley: Engine status\"."
end

-- What a REAPER user is told when the engine went away during a job the engine had taken
-- (engine_not_running then: it answered before).
local ENGINE_GONE = {
  engine_not_running = "The engine stopped answering while it worked on this job (its window was closed, or it " ..
    "crashed); nothing was made. Start it again (`stepfoley serve`), then run the action again.",
  job_lost = "The engine was restarted while it worked on this job and no longer knows it; nothing was made. " ..
    "Run the action again.",
  engine_stopped = "The engine was stopped while this job waited or ran; nothing was made. Start it again " ..
    "(`stepfoley serve`), then run the action again.",
}

-- The job's result from a status in a final state.
local function final_result(status, settings)
  if status.state == "done" then
    if type(status.stem_path) ~= "string" or not reaper.file_exists(status.stem_path) then
      return { state = "error", message = "The engine said it finished but its file is missing: " ..
        tostring(status.stem_path) }
    end
    -- A protocol-2 job names every stem it wrote, best first.
    local stems
    if type(status.stems) == "table" and #status.stems > 0 then
      stems = {}
      for i, s in ipairs(status.stems) do
        local path = type(s) == "table" and s.stem_path or nil
        if type(path) ~= "string" or not reaper.file_exists(path) then
          return { state = "error", message = "The engine said it finished but one of its files is missing: " ..
            tostring(path) }
        end
        stems[i] = { stem_path = path, metadata = type(s.metadata) == "table" and s.metadata or {} }
      end
    end
    return { state = "done", stem_path = status.stem_path, metadata = status.metadata or {}, job_id = status.job_id,
      stems = stems, ranking = type(status.ranking) == "table" and status.ranking or nil }
  elseif status.state == "cancelled" then
    return { state = "cancelled", message = "Generation cancelled." }
  end
  local e = type(status.error) == "table" and status.error or {}
  local message = e.message or "The engine reported an error."
  if e.code == "timed_out" then
    message = timed_out_message(settings, e.message)
  elseif ENGINE_GONE[e.code] and (e.code ~= "engine_not_running" or type(status.job_id) == "string") then
    message = ENGINE_GONE[e.code] -- the client's words are a command line's ("resend the request")
  elseif e.code == "engine_loading" then
    message = string.format("The engine was still loading its model after %s s; nothing was made. Wait until its " ..
      "window says \"StepFoley engine ready\", then run the action again (or raise \"Give up after no progress " ..
      "for (s)\" in \"StepFoley: Settings\").", M.number_text(settings.watchdog_s))
  end
  return { state = "error", code = e.code, message = message }
end

--[[
Runs `jobs` one after the other with the client `prefix`. Each job: {request=table,
folders=..., label=string}. `on_finished(results)` runs once at the end, in the defer
context; results[i] = {state="done"|"error"|"cancelled"|"not_started", stem_path=,
metadata=, message=}. When every job is done, the batch's job folder is deleted (unless
Settings keep job files); a failed batch keeps it, for support.

Watchdogs, all measured as silence: before the status file was ever read, the client must
write it within settings.start_timeout_s; after that, the job is given up only when the
status file has not changed for settings.watchdog_s + CLIENT_REPORT_GRACE_S, or for
CLIENT_SILENCE_S where the client writes `client_alive` and that is shorter (any change,
including `updated`, is a sign of life; an unreadable or half-written read is not a change and
not a failure either), and the engine is then asked to cancel the job itself. The client itself
stops after settings.watchdog_s without a sign of life from the engine and says so in the
status file.
]]
function M.run_jobs(settings, prefix, jobs, title, on_finished)
  local results = {}
  local progress = M.progress_window(title)
  local index = 0
  local job -- the one running now
  local cancelled = false -- the batch: a cancel the running job finished before it could take
  local batch = M.join(jobs[1].folders.job_dir, "run") -- its cancel file stops the run (set_batch)
  os.remove(batch .. ".cancel")
  set_batch(batch, true)
  local function batch_cancelled() return reaper.file_exists(batch .. ".cancel") end

  local function finish()
    progress:close()
    set_batch(batch, false)
    for i = #results + 1, #jobs do results[i] = { state = "not_started" } end
    -- a job's files (the request, its status, the bounce of the layers: up to hundreds of MB)
    -- are kept for support only where something failed, or a client may still be writing
    local clean = true
    for _, r in ipairs(results) do
      clean = clean and (r.state == "done" or r.state == "not_started" or (r.state == "cancelled" and not r.unconfirmed))
    end
    if clean and settings.keep_job_files == 0 then M.remove_tree(jobs[1].folders.job_dir) end
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
    local ok, write_err = M.write_file_atomic(job.request_path, M.json_encode(spec.request)) -- fit_request encoded it
    if not ok then return false, "Could not write the request file " .. job.request_path .. ": " .. tostring(write_err) end
    local cmd_ok, cmd = pcall(M.command_line, M.send_argv(prefix, settings, job.request_path, job.status_path))
    if not cmd_ok then return false, string.format(UNSAFE_PROGRAM, prefix[1]) end
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

  -- A client that is gone reads no cancel file: the engine is asked itself (in the background),
  -- so that it does not go on with a job nobody collects while other jobs wait behind it.
  -- True when the engine was asked (now or before): it knows the job by the id its status gave.
  local function cancel_in_engine()
    local id = job.last_status and job.last_status.job_id
    if job.engine_cancelled then return true end
    if type(id) ~= "string" or not id:match("^[%w%-_]+$") then return false end
    local ok, cmd = pcall(M.command_line, M.cancel_argv(prefix, settings, id))
    if not ok then return false end
    reaper.ExecProcess(cmd, -2)
    job.engine_cancelled = true
    return true
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
    -- a client that says it is alive every 2 s is gone once it stops; an older one only
    -- writes while the engine works, and times the engine out itself after watchdog_s
    local limit = settings.watchdog_s + M.CLIENT_REPORT_GRACE_S
    if job.last_status ~= nil and job.last_status.client_alive ~= nil then
      limit = math.min(limit, M.CLIENT_SILENCE_S)
    end
    if now - job.last_change <= limit then return false end
    cancel_job()
    local asked = cancel_in_engine() and "asked the engine to cancel the job" or
      "could not ask the engine to cancel the job (it had not named it yet)"
    end_job({ state = "error", message = string.format(
      "No sign of life from the StepFoley client for %d s: its status file did not change%s (was its window " ..
      "closed?), so StepFoley stopped waiting and %s. Should the engine make it all the same, its stem goes " ..
      "to\n%s\n\nCheck the engine window or run \"StepFoley: Engine status\".",
      math.floor(limit), problem, asked, job.spec.folders.output_dir) })
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
      cancelled = cancelled or batch_cancelled()
      if cancelled or #results >= #jobs or (results[#results] and results[#results].state ~= "done") then
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
        if is_final(status) then
          -- Esc here, or "Cancel running generation" (its cancel file), also stops the jobs after this one
          cancelled = job.cancel_asked ~= nil or reaper.file_exists(job.status_path .. ".cancel") or batch_cancelled()
          end_job(final_result(status, settings))
        end
      elseif reaper.file_exists(job.status_path) or job.last_text ~= nil then
        job.read_problem = text_or_problem
      end
      if job then check_silence(now) end
      if job and job.cancel_asked and now - job.cancel_asked > 15 then
        cancel_in_engine() -- the client may be gone
        end_job({ state = "cancelled", unconfirmed = true,
          message = "Cancelled (the client did not confirm; it may still be stopping)." })
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
    set_batch(batch, false)
    progress:close()
  end)
  reaper.defer(poll)
end

return VERSION
end
