-- @noindex
-- @description StepFoley: Engine status
--[[
Engine status: which StepFoley program REAPER starts (and where it was found), whether the
engine answers, its model, defaults and methods, and every running generation with its
progress. The engine is asked in the background (REAPER stays usable); the answer comes as
one message.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function local_jobs()
  local lines = {}
  local running = SF.running_status_files()
  if #running == 0 then lines[1] = "No generation is running." end
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
  return table.concat(lines, "\n")
end

local function main()
  local settings = SF.load_settings()
  local prefix, found = SF.client_prefix(settings)
  local head = string.format("Engine port: %d\n", math.floor(settings.port))
  if not prefix then
    SF.alert("Client: NOT FOUND\n" .. found .. "\n\n" .. head .. "\n" .. local_jobs(), "StepFoley: engine status")
    return
  end
  head = "Client: " .. table.concat(prefix, " ") .. " (from " .. found.where .. ")\n" .. head
  SF.query_engine(settings, prefix, function(engine)
    SF.alert(head .. SF.describe_engine(engine, settings) .. "\n\n" .. local_jobs(), "StepFoley: engine status")
  end)
end

main()
