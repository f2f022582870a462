-- @description StepFoley: Foley from picture, layer by layer (MMAudio + Negative Audio Guidance)
-- @author StepFoley
-- @version 0.5.32
-- @changelog
--   A picture split into pieces with "Loop source" on (REAPER's default for imported media) is one picture, as with it off: each piece was taken for a looped one, so a selection over a split was cut short, and Extend or Regenerate time selection across it was refused.
--   A ripple edit (or any move) of a later piece of a split picture while generating is noticed: nothing is added, and the stems are kept, where the new audio went in 1 s off the picture after the cut.
--   Regenerate, Replace and Make like keep a take's loudness curve and part of the picture while the item sits over the same stretch of picture, wherever a ripple edit has since moved both; a picture moved alone under the item drops them (it was the other way round).
--   Verify setup leaves out the picture's track from the layers it counts and its test bounce, as Generate does.
--   A client that stops mid-job (its window closed, a crash) is noticed after 30 s (or the watchdog and 10 s, when shorter), not the engine's watchdog and more (190 s by default), with a stepfoley that says it is alive; the engine is then asked to cancel the job itself (it went on with it, and Cancel could not reach it), and the message names the folder a stem it finishes anyway goes to.
--   An engine stopped, restarted or still loading during a job is said in REAPER's words (it said "resend the request" or "give a longer --timeout"). Engine status, for an engine not answering, says to check an open engine window's port and token, and that one showing no activity may be hung or paused.
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
assert(SF.VERSION == "0.5.32", SF.mixed_versions and SF.mixed_versions("this action", "0.5.32")
  or "StepFoley_lib.lua is older than this action (0.5.32). Install every StepFoley_*.lua file of one release into one folder.")

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
