-- @description StepFoley: Foley from picture, layer by layer (MMAudio + Negative Audio Guidance)
-- @author StepFoley
-- @version 0.5.6
-- @changelog
--   The plain dialog (without ReaImGui) shows a remembered caption or path holding an odd number of ' or ", or an unclosed (, with look-alike characters (’ ” （): REAPER's own rules for the dialog's initial text put the fields after it in the wrong places. A field left as shown keeps its text exactly; an edited one is sent as typed, with those look-alikes turned back.
--   An answer REAPER cut at its 1,023-byte limit (a long caption, or one in a script that takes 3 bytes a character) is said to be cut and asked again, instead of being sent shortened with the later fields fallen back to defaults.
--   Variations go as fixed lanes from REAPER 7.07, the first version where a script can name lanes; before it, as takes named by seed.
--   A job holds as many variations as the engine publishes (it read a copy of its own).
--   Extend from inside an item's silent tail (its edge dragged past the take's audio) starts where the audio ends; a repair that would keep audio past the take's end is refused before any bounce, in REAPER's words (both were refused by the engine after the dialog).
--   A selection with less than a second of picture (or more than the engine takes) is said before the dialog and any bounce.
--   A cancelled generation leaves no job files in the project (a failure, or a cancel the client did not confirm, keeps them, for support).
--   Where two video items play at once, the picture is the one REAPER shows (the top track's), not the one covering more of the selection, and the region is the longest stretch where it is seen (an item shows nothing past its file's end); a picture seen over only part of the selection is named in the console once that part will be made.
--   A new layer after the last layer inside a heard folder (a Foley bus) joins that folder; never a muted one.
--   Extend refuses to grow an item over another playing item on its track (which it could not hear; a crossfaded neighbour too), before the dialog.
--   Toggling a folder track says that its child tracks are chosen one by one.
--   A StepFoley item with its own lock set (Item properties) is left as it is: Regenerate, Replace, Extend, the repair and Make like this say so before anything else (REAPER's project-wide locking is not read).
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
