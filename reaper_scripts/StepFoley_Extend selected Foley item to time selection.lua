-- @noindex
-- @description StepFoley: Extend selected Foley item to time selection
--[[
Extend selected Foley item to time selection: keeps the selected item's take up to where the
time selection starts (or up to the item's end, when the selection starts later) and continues
it to the selection's end, in sync with the picture: the engine makes only the new part, so
that it continues the take seamlessly, and returns the take sample for sample before it. The
dialog opens with the item's parameters; the other layers are negated as usual (never the
item's own track). The result is a new, active take of the item, which grows to the
selection's end. One undo point. Needs an engine of protocol 2.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local item, meta = SF.selected_stepfoley_item(proj, "its take is continued to the end of the time selection.")
  if not item then return end
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local start, item_end = SF.item_range(item)
  if t1 <= item_end + 1e-6 then
    return SF.alert("Make the time selection end after the selected item: the item is continued to its end. " ..
      "(To make part of an item again, use \"Regenerate time selection inside selected item\".)")
  end
  if t0 <= start + 1e-6 then
    return SF.alert("The time selection starts at or before the item's start, so nothing of the take would be " ..
      "kept. Start it where the take should go on.")
  end
  -- the picture the item was made over, which the extension follows up to its end (a cut to
  -- the next shot), even where the selection runs on over another one
  local under = { start, item_end }
  local picture = SF.region_for(proj, start, t1, under)
  local reach = picture and math.min(t1, picture.project_end) or t1
  local over = SF.item_in_the_way(item, item_end, reach)
  if over then
    return SF.alert(string.format("Extended to %.3f s, the item would run over \"%s\" (from %.3f s) on the same " ..
      "track, which it could not hear. End the time selection before it, or move that item.", SF.on_ruler(proj, reach),
      over.name, SF.on_ruler(proj, over.start)))
  end
  local from = math.min(t0, item_end)
  local continued, stored = SF.continuation_job_fields(item, meta, from, t1)
  -- the region stops where its picture does: cut back to the item, the take's tail would be
  -- made again and nothing extended
  local function extra_fields(region, caps, words)
    local fields, err = continued(region, caps, words)
    if fields and region.project_end <= item_end + 1e-6 then
      return nil, string.format("The picture ends at %.3f s, where the selected item ends (a cut to another " ..
        "video file, or the end of the video), so there is no picture to extend the item over. StepFoley " ..
        "follows one video file per generation: for the next shot, use \"Generate Foley track for time " ..
        "selection\".", SF.on_ruler(proj, region.project_end))
    end
    return fields, err
  end
  local job = SF.job_for_item(proj, item, { title = "StepFoley: extend",
    dialog = { negatives = true, remember = false, values = SF.values_from_meta(meta) },
    feature = "extend or repair a take",
    extra_fields = extra_fields, stored_fields = stored,
    extend_item = true,
    undo = function(params) return "StepFoley: extend \"" .. params.caption .. "\"" end })
  job.t1, job.picture_under = t1, under
  job.words = SF.SELECTION_WORDS -- its range ends where the time selection does
  SF.generate(job)
end

main()
