-- @noindex
-- @description StepFoley: Regenerate time selection inside selected item
--[[
Regenerate time selection inside selected item: "this take is great except 3.1-3.6 s". Keeps
the selected item's take outside the time selection sample for sample and makes only the
selected part again, continuing the audio on both sides and in sync with the picture. The
dialog opens with the item's parameters (a new seed unless you type one); the other layers are
negated as usual (never the item's own track). The result is a new, active take of the item.
One undo point. Needs an engine of protocol 2.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local item, meta = SF.selected_stepfoley_item(proj, "the time selection inside it is made again.")
  if not item then return end
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local start, item_end = SF.item_range(item)
  if t0 < start - 1e-6 or t1 > item_end + 1e-6 then
    return SF.alert("Make the time selection inside the selected item: the part of it to make again. " ..
      "(To continue an item past its end, use \"Extend selected Foley item to time selection\".)")
  end
  local extra_fields, stored = SF.continuation_job_fields(item, meta, t0, t1)
  SF.generate(SF.job_for_item(proj, item, { title = "StepFoley: regenerate part",
    dialog = { negatives = true, remember = false, values = SF.values_from_meta(meta) },
    feature = "extend or repair a take",
    extra_fields = extra_fields, stored_fields = stored,
    undo = function(params) return "StepFoley: regenerate part of \"" .. params.caption .. "\"" end }))
end

main()
