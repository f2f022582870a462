-- @description StepFoley: Foley from picture, layer by layer (MMAudio + Negative Audio Guidance)
-- @author StepFoley
-- @version 0.5.35
-- @changelog
--   Extend follows the picture under the item up to a cut to the next shot; a selection running on over that shot longer refused the extension.
--   Regenerate and Replace take an item trimmed while the engine works; the finished job was thrown away as "moved apart".
--   A project at a rate the engine does not write (64 kHz) gets its stems at the next rate it does; it was refused after the dialog and the bounce.
--   Regenerating a take that negated a selection opens on the layers; "selection" negated nothing there.
--   "Part of the picture" says there is no picture before asking which part of it.
--   Cancel running generation stops variations made as several jobs also between two of them; it found nothing running there, and the rest were made.
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
assert(SF.VERSION == "0.5.35", SF.mixed_versions and SF.mixed_versions("this action", "0.5.35")
  or "StepFoley_lib.lua is older than this action (0.5.35). Install every StepFoley_*.lua file of one release into one folder.")

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
