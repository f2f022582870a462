-- @noindex
-- @description StepFoley: Generate Foley track for part of the picture
--[[
Generate Foley track for part of the picture: "only the bird on the left". Asks which part of
the picture the sound comes from (left, top right, centre ... or left, top, right, bottom in
percent) and, if you like, when (seconds from the time selection's start; the rest of the time
the whole picture is seen), then generates as "Generate Foley track for time selection" does:
the video features see only that part of the picture. One undo point. Needs an engine of
protocol 2.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  -- no picture (or one StepFoley cannot follow) is said before the part of it is asked for
  local picture, err = SF.region_for(proj, t0, t1)
  if not picture then return SF.alert(err) end
  local speed = (picture.file_out - picture.file_in) / (picture.project_end - picture.project_start) -- "When" is in its seconds
  local choice = SF.ask_picture_region(t1 - t0, nil, speed)
  if not choice then return end
  local dialog = { negatives = true }
  dialog.values = SF.initial_values(dialog)
  SF.generate({ proj = proj, t0 = t0, t1 = t1, title = "StepFoley: Foley track for part of the picture",
    dialog = dialog, feature = "focus on part of the picture",
    extra_fields = function(region, caps) return SF.picture_fields(choice, t0, region, caps) end,
    undo = function(params) return "StepFoley: add Foley track \"" .. params.caption .. "\" for part of the picture" end })
end

main()
