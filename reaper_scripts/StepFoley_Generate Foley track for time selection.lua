-- @description StepFoley: Foley from picture, layer by layer (MMAudio + Negative Audio Guidance)
-- @author StepFoley
-- @version 0.5.39
-- @changelog
--   No bounce while REAPER records: the action says so and sets nothing (the render's solos and settings would reach the recording).
--   A picture or project folder named in another encoding is refused before the dialog, not after the bounce.
--   A bounce that failed deletes its job folder (a half file on a full disk stayed for days); a request file cut short by a full disk is said so and removed.
-- @provides
--   [nomain] StepFoley_lib.lua
--   [nomain] StepFoley_lib_engine.lua
--   [nomain] StepFoley_lib_project.lua
--   [nomain] StepFoley_lib_bounce.lua
--   [nomain] StepFoley_lib_dialog.lua
--   [nomain] StepFoley_lib_controls.lua
--   [nomain] StepFoley_lib_results.lua
--   [main] StepFoley_Generate variations as takes.lua
--   [main] StepFoley_Regenerate selected Foley item.lua
--   [main] StepFoley_Replace this layer, negating all the others.lua
--   [main] StepFoley_Extend selected Foley item to time selection.lua
--   [main] StepFoley_Regenerate time selection inside selected item.lua
--   [main] StepFoley_Generate Foley track following selected envelope.lua
--   [main] StepFoley_Generate Foley track for part of the picture.lua
--   [main] StepFoley_Make selected item sound like this.lua
--   [main] StepFoley_Toggle selected tracks as negatives.lua
--   [main] StepFoley_Cancel running generation.lua
--   [main] StepFoley_Engine status.lua
--   [main] StepFoley_Verify setup.lua
--   [main] StepFoley_Settings.lua
-- @about
--   # StepFoley
--   Generates Foley for the picture under the time selection, one track at a time: each new
--   track is generated knowing the layers already there (Negative Audio Guidance), so it adds
--   what is missing instead of repeating it.
--
--   Needs the StepFoley engine (`stepfoley serve`) running on this computer. Run "StepFoley:
--   Verify setup" first. See docs/reaper.md in the StepFoley repository for installation.
--[[
Generate Foley track for time selection: reads the time selection and the video under it,
asks for the caption (and, if you like, method and guidance values), bounces the layers to
negate, asks the engine for a new stem and puts it on a new track named after the caption,
exactly over the region. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local dialog = { negatives = true }
  dialog.values = SF.initial_values(dialog)
  SF.generate({ proj = proj, t0 = t0, t1 = t1, title = "StepFoley: generate Foley track", dialog = dialog,
    undo = function(params) return "StepFoley: add Foley track \"" .. params.caption .. "\"" end })
end

main()
