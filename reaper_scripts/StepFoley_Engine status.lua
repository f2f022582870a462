-- @noindex
--[[
Engine status: what the REAPER side knows, in one message: which StepFoley program it will
start, the engine port, and every running generation with its progress (read from the
status files the client keeps up to date).
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")

local settings = SF.load_settings()
local lines = {}
local prefix, err = SF.client_prefix(settings)
if prefix then
  lines[#lines + 1] = "Client: " .. table.concat(prefix, " ")
else
  lines[#lines + 1] = "Client: NOT FOUND\n" .. err
end
lines[#lines + 1] = string.format("Engine port: %d", math.floor(settings.port))
if prefix then
  -- `send --ping` answers within about 2 s, so waiting for it here is acceptable
  local argv = {}
  for _, a in ipairs(prefix) do argv[#argv + 1] = a end
  for _, a in ipairs({ "send", "--ping", "--port", tostring(math.floor(settings.port)) }) do argv[#argv + 1] = a end
  local ok, cmd = pcall(SF.command_line, argv)
  local out = ok and reaper.ExecProcess(cmd, 8000) or nil
  local code, text = (out or ""):match("^(%-?%d+)\n(.*)$")
  if code == "0" then
    lines[#lines + 1] = "Engine: running. " .. (text or ""):gsub("%s+$", "")
  else
    lines[#lines + 1] = "Engine: NOT answering. " .. (text or ""):gsub("%s+$", "") ..
      string.format("\nStart it in a terminal with: stepfoley serve --port %d", math.floor(settings.port))
  end
end
lines[#lines + 1] = ""
local running = SF.running_status_files()
if #running == 0 then
  lines[#lines + 1] = "No generation is running."
end
for _, path in ipairs(running) do
  local status = SF.read_status(path)
  if not status then
    lines[#lines + 1] = "Starting (no status yet): " .. path
  else
    local line = string.format("%s: %s", tostring(status.job_id or "?"), (SF.describe_progress(status)))
    if type(status.error) == "table" and status.error.message then line = line .. "\n  " .. status.error.message end
    lines[#lines + 1] = line
  end
end
SF.alert(table.concat(lines, "\n"), "StepFoley: engine status")
