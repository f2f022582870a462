-- @description StepFoley: step-by-step Foley from picture (MMAudio + Negative Audio Guidance)
-- @author StepFoley
-- @version 0.2.0
-- @changelog Every earlier layer reaches the engine (master-mix bounce of the chosen layers); results land in the generation's project tab; stopping an action cancels its job; the watchdog setting reaches the client and measures silence; progress shows the engine's phase; non-ASCII paths work.
-- @provides
--   [nomain] StepFoley_lib.lua
--   [main] StepFoley_Regenerate selected Foley item.lua
--   [main] StepFoley_Generate variations as takes.lua
--   [main] StepFoley_Cancel running generation.lua
--   [main] StepFoley_Engine status.lua
--   [main] StepFoley_Settings.lua
--   [main] StepFoley_Generate Foley track for time selection (Python).py
-- @about
--   # StepFoley
--   Generates Foley for the picture under the time selection, one track at a time: each new
--   track is generated knowing the tracks already there (Negative Audio Guidance), so it adds
--   what is missing instead of repeating it.
--
--   Needs the StepFoley engine (`stepfoley serve`) running on this computer. See
--   docs/reaper.md in the StepFoley repository for installation and first run.
--[[
Generate Foley track for time selection: reads the time selection and the video under it,
bounces the Foley tracks already there, asks the engine for a new stem and puts it on a new
track named after the caption, exactly over the region. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local settings = SF.load_settings()
  local params = SF.ask_params("StepFoley: generate Foley track", settings, {}, false)
  if params == nil then return end -- dialog cancelled
  local jobs, region = SF.prepare_jobs(proj, settings, { t0 = t0, t1 = t1, params = params, seeds = { params.seed } })
  if not jobs then SF.alert(region) return end
  if params.method ~= "independent" and jobs[1].request.existing_mix == nil then
    SF.log("no Foley tracks in the region yet: this first track is generated from picture and caption only.")
  end
  SF.run_jobs(settings, jobs, "StepFoley: " .. params.caption, function(results)
    local done = SF.report(results, "generations")
    if #done == 0 then return end
    if not SF.project_is_open(proj) then
      SF.alert("The project was closed while generating; the stem is at\n" .. done[1].stem_path)
      return
    end
    SF.undoable_edit(proj, "StepFoley: add Foley track \"" .. params.caption .. "\"", function()
      SF.insert_track(proj, region, { { stem_path = done[1].stem_path,
        meta = SF.take_metadata(jobs[1].request, done[1]) } })
    end)
  end)
end

main()
