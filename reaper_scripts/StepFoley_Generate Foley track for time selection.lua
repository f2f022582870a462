-- @description StepFoley: Foley from picture, layer by layer (MMAudio + Negative Audio Guidance)
-- @author StepFoley
-- @version 0.5.5
-- @changelog
--   Closing the project tab while StepFoley asks the engine (the client starting) is said in a message instead of ending in a script error; Verify setup says the project was closed and skips its checks.
--   The peaks of new takes are built only when their project is the active tab (REAPER's action would build the active tab's).
--   Python.org installs are tried newest version first (Python312 before Python39).
--   Replace this layer and Make selected item sound like this keep the loudness curve and the part of the picture the item was made with (while it covers the same time), as Regenerate does; they were dropped without a word.
--   Extend and Regenerate time selection inside selected item keep the part of the picture while it fits the item's time; the loudness curve (which the new part cannot follow: it keeps the take's level) stays with the new take while the item covers the time it was drawn for, so a later Regenerate follows it again.
--   The layers' bounce no longer lets in the tracks inside a chosen folder that are not negatives themselves (a soloed folder plays its children): with negatives "selection" an item picked on a folder track brought its child tracks' items too, and Replace this layer on a layer inside a layers' folder heard the very layer it replaces.
--   A cancel made just after a generation starts (Esc at once, or Cancel running generation) is no longer lost when the engine's client takes a moment to start (needs the engine from this release; an older client deleted that cancel as stale).
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
