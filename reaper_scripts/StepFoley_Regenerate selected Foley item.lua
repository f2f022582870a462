-- @noindex
--[[
Regenerate selected Foley item: generates the selected StepFoley item again with a new seed
(same caption, method, alpha, beta, steps; the picture under the item as it is now) and adds
the result as a new, active take of the same item. The other Foley tracks over the item are
bounced again, so the new take complements what is there now. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local item = reaper.GetSelectedMediaItem(proj, 0)
  if not item then
    SF.alert("Select a StepFoley item first (one made by \"Generate Foley track for time selection\").")
    return
  end
  local take = reaper.GetActiveTake(item)
  local ok, stored = false, ""
  if take then ok, stored = reaper.GetSetMediaItemTakeInfo_String(take, SF.TAKE_META, "", false) end
  local meta = ok and stored ~= "" and SF.json_decode(stored)
  if type(meta) ~= "table" or type(meta.caption) ~= "string" then
    SF.alert("The selected item was not made by StepFoley (its take has no StepFoley metadata).\n\n" ..
      "Select an item made by \"Generate Foley track for time selection\".")
    return
  end
  local settings = SF.load_settings()
  local params = {
    caption = meta.caption, method = meta.method or settings.method,
    alpha = tonumber(meta.alpha) or settings.alpha, beta = tonumber(meta.beta) or settings.beta,
    steps = math.tointeger(meta.steps) or math.tointeger(settings.steps) or 25,
  }
  local seed = SF.random_seed()
  if seed == meta.seed then seed = seed % (2 ^ 31 - 1) + 1 end
  local t0, t1 = SF.item_range(item)
  local track = reaper.GetMediaItem_Track(item)
  local jobs, region = SF.prepare_jobs(proj, settings, { t0 = t0, t1 = t1, params = params, seeds = { seed },
    exclude_tracks = { [track] = true } })
  if not jobs then SF.alert(region) return end
  SF.run_jobs(settings, jobs, "StepFoley: " .. params.caption, function(results)
    local done = SF.report(results, "generations")
    if #done == 0 then return end
    if not (SF.project_is_open(proj) and reaper.ValidatePtr2(proj, item, "MediaItem*")) then
      SF.alert("The item was deleted (or its project closed) while generating; the stem is at\n" .. done[1].stem_path)
      return
    end
    local new_meta = SF.take_metadata(jobs[1].request, done[1])
    SF.undoable_edit(proj, "StepFoley: regenerate \"" .. params.caption .. "\"", function()
      reaper.SetActiveTake(SF.add_take(item, done[1].stem_path, new_meta))
      reaper.GetSetMediaItemInfo_String(item, "P_NOTES", SF.describe(new_meta), true)
    end)
  end)
end

main()
