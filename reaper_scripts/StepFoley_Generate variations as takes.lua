-- @noindex
--[[
Generate N variations as takes: like "Generate Foley track for time selection", but one item
holds N takes with different seeds (seed, seed+1, ...). Switch takes to audition them.
The generations run one after another; the item is added once, in one undo point, with
every take that finished.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local settings = SF.load_settings()
  local params = SF.ask_params("StepFoley: generate variations", settings, { count = 4 }, true)
  if params == nil then return end
  local seeds = {}
  for i = 1, params.count do seeds[i] = params.seed + i - 1 end
  local jobs, region = SF.prepare_jobs(proj, settings, { t0 = t0, t1 = t1, params = params, seeds = seeds })
  if not jobs then SF.alert(region) return end
  SF.run_jobs(settings, jobs, "StepFoley: " .. params.caption, function(results)
    local done = SF.report(results, "variations")
    if #done == 0 then return end
    if not SF.project_is_open(proj) then
      SF.alert("The project was closed while generating; the stems are in\n" .. jobs[1].folders.output_dir)
      return
    end
    local takes = {}
    for i, r in ipairs(results) do
      if r.state == "done" then takes[#takes + 1] = { stem_path = r.stem_path, meta = SF.take_metadata(jobs[i].request, r) } end
    end
    SF.undoable_edit(proj, string.format("StepFoley: add %d variations of \"%s\"", #takes, params.caption),
      function() SF.insert_track(proj, region, takes) end)
  end)
end

main()
