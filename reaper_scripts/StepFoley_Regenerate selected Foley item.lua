-- @noindex
-- @description StepFoley: Regenerate selected Foley item
--[[
Regenerate selected Foley item: opens the dialog with the item's stored parameters (caption,
and the method and values you had chosen; a new random seed unless you type one), generates
again over the picture under the item as it is now, and adds the result as a new, active take
of the same item, aligned with the picture. The layers to negate are bounced again (never the
item's own track), so the new take complements what is there now. A loudness curve or part of
the picture the take was made with is kept while the item sits over the same stretch of picture,
wherever a ripple edit has since moved both. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local item, meta = SF.selected_stepfoley_item(proj, "it is generated again as a new take.")
  if not item then return end
  local dialog = { negatives = true, remember = false, values = SF.values_from_meta(meta) }
  SF.generate(SF.job_for_item(proj, item, { title = "StepFoley: regenerate", dialog = dialog,
    feature = "follow a loudness curve or focus on part of the picture",
    extra_fields = function(region) return SF.stored_controls(meta, region) end,
    undo = function(params) return "StepFoley: regenerate \"" .. params.caption .. "\"" end }))
end

main()
