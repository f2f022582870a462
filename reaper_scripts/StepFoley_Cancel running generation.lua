-- @noindex
-- @description StepFoley: Cancel running generation
--[[
Cancel running generation: asks every StepFoley generation started from this REAPER to stop
(creates STATUS.json.cancel next to each running job's status file, which the client reads
and cancels the job in the engine, and a cancel file of each run, which starts no more jobs;
the generating action then adds only what had finished).
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local n = SF.request_cancel_all()
if n == 0 then
  SF.alert("No StepFoley generation is running.")
else
  SF.log(string.format("asked %d running generation(s) to cancel.", n))
end
