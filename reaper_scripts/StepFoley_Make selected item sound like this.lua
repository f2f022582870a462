-- @noindex
-- @description StepFoley: Make selected item sound like this
--[[
Make selected item sound like this: generates the selected StepFoley item again so that it
sounds like a reference recording ("this"): a second selected item (what you hear of it is
rendered: its take, volume, fades and its track's FX), or, when only the StepFoley item is
selected, a WAV file you pick. When both selected items were made by StepFoley, it asks which
one to generate again. Uses the engine's reference method (MultiFoley-style guidance;
beta is the pull toward the reference). The dialog shows the item's caption; the result is a
new, active take of the item, aligned with the picture. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

-- The selected items other than `target`.
local function other_selected(proj, target)
  local list = {}
  for i = 0, reaper.CountSelectedMediaItems(proj) - 1 do
    local item = reaper.GetSelectedMediaItem(proj, i)
    if item ~= target then list[#list + 1] = item end
  end
  return list
end

-- What the reference item is called: its take's name, else its file's.
local function reference_name(item)
  local take = reaper.GetActiveTake(item)
  if not take then return "an item" end
  local _, name = reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", "", false)
  if name ~= "" then return name end
  local src = reaper.GetMediaItemTake_Source(take)
  local file = src and reaper.GetMediaSourceFileName(src, "") or ""
  return file ~= "" and SF.basename(file) or "an item"
end

-- With two StepFoley items selected either could be the one to change: the user says which.
-- Returns the item to generate again, its metadata and the reference, or nil when cancelled.
local function choose_target(item, meta, other)
  local other_meta = SF.take_meta(reaper.GetActiveTake(other))
  if not other_meta then return item, meta, other end
  -- caption and track: two layers may share a caption
  local function named(it, m)
    return string.format("\"%s\" (track \"%s\")", m.caption, SF.track_name(reaper.GetMediaItem_Track(it)))
  end
  local a, b = named(item, meta), named(other, other_meta)
  local answer = reaper.ShowMessageBox(string.format("Both selected items were made by StepFoley.\n\n" ..
    "Yes: generate %s again to sound like %s.\nNo: generate %s again to sound like %s.", a, b, b, a),
    "StepFoley: which item should change?", 3)
  if answer == 6 then return item, meta, other end
  if answer == 7 then return other, other_meta, item end
  return nil
end

local function main()
  local proj = reaper.EnumProjects(-1, "")
  -- the lock matters only for the item that gets the new take, known after choose_target
  local item, meta = SF.selected_stepfoley_item(proj, "it is generated again to sound like a reference.", true)
  if not item then return end
  local others = other_selected(proj, item)
  if #others > 1 then
    SF.alert("Select the StepFoley item and at most one other item: the recording it should sound like.")
    return
  end
  local reference = others[1]
  if reference then
    item, meta, reference = choose_target(item, meta, reference)
    if not item then return end
  end
  if SF.refuse_locked(item) then return end
  if reference and not reaper.GetActiveTake(reference) then -- an empty item: nothing to sound like
    SF.alert("The other selected item is empty: it has no take, so there is nothing to sound like. Select an item " ..
      "that plays the recording, or select only the StepFoley item and pick the recording as a WAV file.")
    return
  end
  if reference then
    -- what is heard of it is rendered: a muted one would be sent as silence
    if not (SF.item_plays(reference) and SF.track_is_heard(reaper.GetMediaItem_Track(reference))) then
      SF.alert("The reference item \"" .. reference_name(reference) .. "\" is not heard: it is muted, its track " ..
        "or a folder above it is muted, or its lane does not play. StepFoley renders what you hear of it, so " ..
        "unmute it first, or select only the StepFoley item and pick the recording as a WAV file.")
      return
    end
  end
  local job = SF.job_for_item(proj, item, { title = "StepFoley: make it sound like this",
    dialog = { audio = "reference", fixed_method = SF.reference_method, remember = false,
      values = { caption = meta.caption } },
    feature = "follow a loudness curve or focus on part of the picture",
    extra_fields = function(region) return SF.stored_controls(meta, region) end })
  if reference then
    job.reference_label = reference_name(reference)
    -- the engine hears as much of the reference as the picture lasts, from its start: a
    -- window that long within the item, over the picture as far as the item lets it (a
    -- production-sound item under the picture gives the part under it), else the item's start
    -- (the whole of a reel's item took minutes to render, and the engine heard its first seconds)
    job.make_reference = function(folders, sample_rate, region)
      local a, b = SF.item_range(reference)
      local length = region.file_out - region.file_in
      local from = math.max(a, math.min(region.project_start, b - length))
      local to = math.min(b, from + length)
      return SF.bounce(proj, { reaper.GetMediaItem_Track(reference) }, from, to, folders.job_dir, "reference",
        sample_rate, { reference })
    end
  else
    local region, problem = SF.job_picture(job) -- said before the file is asked for, not after
    if not region then return SF.alert(problem) end
    local ok, path = reaper.GetUserFileNameForRead("", "StepFoley: the recording it should sound like", "wav")
    if not ok or path == "" then return end
    job.reference_label = SF.basename(path)
    job.make_reference = function() return path end
  end
  job.undo = function(params) return "StepFoley: make \"" .. params.caption .. "\" sound like " .. job.reference_label end
  SF.generate(job)
end

main()
