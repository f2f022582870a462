-- @noindex
-- @description StepFoley: Generate variations as takes
--[[
Generate variations: like "Generate Foley track for time selection", but N generations with
seeds s, s+1, ... on one new track: from REAPER 7.07 one item per fixed lane (the first lane
plays; switch or comp lanes to audition), in older REAPER (or with "Variations as: takes" in
Settings) as N takes of one item, best first (the engine ranks them where its model has an
embedding to judge with, else in seed order). An engine that speaks protocol 2 samples up to 8
variations together in one job; an older one makes them one job after another. The track is
added once, in one undo point, with every variation that finished.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local dialog = { negatives = true, count = true }
  dialog.values = SF.initial_values(dialog)
  dialog.values.count = dialog.values.count or "4"
  SF.generate({ proj = proj, t0 = t0, t1 = t1, title = "StepFoley: generate variations", dialog = dialog,
    undo = function(params, n)
      return string.format("StepFoley: add %d variation%s of \"%s\"", n, n == 1 and "" or "s", params.caption)
    end })
end

main()
