-- @noindex
--[[
StepFoley library, part "project": the time selection and the picture under it (project time
to file time through the take's offset, playrate, sections), where files go, and which layers
count as negatives (what the next generation must complement). Loaded by StepFoley_lib.lua;
adds to its table.
]]

-- Returned by the function below, for StepFoley_lib.lua to check: the files of one release go together
local VERSION = "0.5.39"

return function(M)

------------------------------------------------------------------------------------------
-- Time selection and picture
------------------------------------------------------------------------------------------

-- A time of project `proj` as its ruler shows it, for messages: shifted by that project's
-- start time (Project settings), 01:00:00:00 in much post-production work. Every time sent or
-- set is project time; only what the user reads is the ruler's. `proj`, not the active tab:
-- a message may come after the user switched to a project that starts elsewhere.
function M.on_ruler(proj, t)
  return t + (reaper.GetProjectTimeOffset and reaper.GetProjectTimeOffset(proj, false) or 0)
end

function M.time_selection(proj)
  local t0, t1 = reaper.GetSet_LoopTimeRange2(proj, false, false, 0, 0, false)
  if t1 > t0 then return t0, t1 end
  return nil
end

-- The time selection, or nil after asking the user to make one.
function M.require_time_selection(proj)
  local t0, t1 = M.time_selection(proj)
  if not t0 then
    M.alert("Make a time selection over the picture first: StepFoley generates Foley for the selected time.")
    return nil
  end
  return t0, t1
end

function M.project_sample_rate(proj)
  local use = reaper.GetSetProjectInfo(proj, "PROJECT_SRATE_USE", 0, false)
  local sr = math.floor(reaper.GetSetProjectInfo(proj, "PROJECT_SRATE", 0, false) + 0.5)
  if use ~= 0 and sr > 0 then return sr end
  return 48000
end

function M.item_range(item)
  local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  return pos, pos + reaper.GetMediaItemInfo_Value(item, "D_LENGTH")
end

-- The first other item that plays on `item`'s track (in its fixed lane, where the track has
-- lanes) and sounds within [a, b): {name, start}, or nil. What Extend would grow over (one that
-- already overlaps the item's end, crossfaded, too).
function M.item_in_the_way(item, a, b)
  local track = reaper.GetMediaItem_Track(item)
  local lane = reaper.GetMediaItemInfo_Value(item, "I_FIXEDLANE")
  local found
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local other = reaper.GetTrackMediaItem(track, i)
    local start, stop = M.item_range(other)
    if other ~= item and reaper.GetMediaItemInfo_Value(other, "I_FIXEDLANE") == lane and M.item_plays(other)
      and stop > a + 1e-9 and start < b - 1e-9 and (not found or start < found.start) then
      local take, name = reaper.GetActiveTake(other), ""
      if take then name = select(2, reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", "", false)) end
      found = { name = name ~= "" and name or "an item", start = start }
    end
  end
  return found
end

-- The chain of sources from the take's source up to the file: each level is
-- {src=, section=bool, offs=, len=, rev=}. The last level is the file.
function M.source_chain(take)
  local levels = {}
  local src = reaper.GetMediaItemTake_Source(take)
  while src do
    local is_section, offs, len, rev = reaper.PCM_Source_GetSectionInfo(src)
    local parent = reaper.GetMediaSourceParent(src)
    levels[#levels + 1] = { src = src, section = (parent ~= nil) and is_section or false,
      offs = offs or 0, len = len or 0, rev = rev or false }
    src = parent
  end
  return levels
end

function M.is_video_source(src)
  local kind = (reaper.GetMediaSourceType(src, "") or ""):upper()
  if kind == "VIDEO" then return true end
  return M.VIDEO_EXTENSIONS[M.extension(reaper.GetMediaSourceFileName(src, "") or "")] == true
end

-- Pure: project time -> time in the take's own source (k-diffusion-style small function).
function M.take_source_time(t, item_pos, startoffs, playrate)
  return startoffs + (t - item_pos) * playrate
end

-- Pure: time in a section level -> time in its parent.
function M.section_to_parent_time(s, level)
  if level.rev then return level.offs + (level.len - s) end
  return level.offs + s
end

-- Maps a project-time interval through the take and its section/reverse levels to file time.
-- Returns file_a, file_b (file time of t0 and t1) and whether time runs backwards in the file.
function M.map_interval(t0, t1, item_pos, startoffs, playrate, levels)
  local a = M.take_source_time(t0, item_pos, startoffs, playrate)
  local b = M.take_source_time(t1, item_pos, startoffs, playrate)
  local reversed = false
  for i = 1, #levels - 1 do -- the last level is the file itself
    local level = levels[i]
    if level.section then
      a = M.section_to_parent_time(a, level)
      b = M.section_to_parent_time(b, level)
      if level.rev then reversed = not reversed end
    end
  end
  return a, b, reversed
end

-- Whether the track holds a video item: while one is the picture under the time selection, the
-- track is left out of what is negated (its sound is the picture's, not a layer).
function M.holds_video(track)
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local take = reaper.GetActiveTake(reaper.GetTrackMediaItem(track, i))
    if take and M.is_video_source(reaper.GetMediaItemTake_Source(take)) then return true end
  end
  return false
end

-- Whether a video item is the picture the user sees: it plays (M.item_plays) on a heard track.
local function picture_plays(item)
  return M.item_plays(item) and M.track_is_heard(reaper.GetMediaItem_Track(item))
end

-- The stretches of [a, b] not covered by any of `spans` ({a, b} each), in time order.
local function uncovered(a, b, spans)
  table.sort(spans, function(x, y) return x[1] < y[1] end)
  local free, at = {}, a
  for _, span in ipairs(spans) do
    if span[1] > at and at < b then free[#free + 1] = { at, math.min(span[1], b) } end
    at = math.max(at, span[2])
  end
  if at < b then free[#free + 1] = { at, b } end
  return free
end

-- Whether the item loops its source (B_LOOPSRC): past the source's end, and before its start,
-- the source plays again.
function M.loops_source(item)
  return reaper.GetMediaItemInfo_Value(item, "B_LOOPSRC") ~= 0
end

-- Whether the item loops its source and plays it again: "Loop source" is on (REAPER's default
-- for imported media) and the item reaches before its take's source starts or past where it
-- ends. An item within one pass, such as each piece of a split picture, plays as one that
-- does not loop.
function M.wraps_source(item)
  if not M.loops_source(item) then return false end
  local take = reaper.GetActiveTake(item)
  local levels = take and M.source_chain(take)
  if not levels or #levels == 0 then return true end
  local pos, item_end = M.item_range(item)
  local startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  local source_end = startoffs + (item_end - pos) * reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  return startoffs < -1e-6 or source_end > reaper.GetMediaSourceLength(levels[1].src) + 1e-6
end

-- Where a video item shows picture in project time: the item, within its take's source (no
-- frames before the source's start or after its end) unless it plays its source again.
local function picture_span(item)
  local pos, item_end = M.item_range(item)
  if M.wraps_source(item) then return pos, item_end end
  local take = reaper.GetActiveTake(item)
  local levels = M.source_chain(take)
  local startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  local playrate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  local source_length = reaper.GetMediaSourceLength(levels[1].src)
  return math.max(pos, pos - startoffs / playrate), math.min(item_end, pos + (source_length - startoffs) / playrate)
end

--[[
Pure: for a looped source of `length` s played from `startoffs` at `playrate` by an item at
`item_pos`, the pass of the loop that plays at project time `a`: the start offset that maps that
pass to the source's own times (0 to length), and the project time where the pass ends. A small
tolerance keeps a time on a pass's boundary in the pass it starts.
]]
function M.loop_pass(a, item_pos, startoffs, playrate, length)
  local pass = math.floor((M.take_source_time(a, item_pos, startoffs, playrate) + 1e-6 * playrate) / length)
  return startoffs - pass * length, item_pos + ((pass + 1) * length - startoffs) / playrate
end

-- Whether video item candidate `d` goes on with the picture of `c` (a picture split into pieces,
-- crossfaded or not): the same track, file and rate, neither read through a section nor
-- stretched, `d` starting within `c` or where it ends, and at that moment in the file where `c`'s
-- picture would be.
local function continues(c, d)
  return c.track == d.track and c.plays == d.plays and c.file == d.file and c.plain and d.plain
    and not c.loops and not d.loops
    and math.abs(c.playrate - d.playrate) <= 1e-9 and d.pos >= c.pos and d.pos <= c.span_b + 1e-6
    and math.abs(M.take_source_time(d.pos, c.pos, c.startoffs, c.playrate) - d.startoffs) <= 1e-6
end

-- The candidates with every run of pieces that continue one another (`continues`) joined into
-- one, which keeps its first piece's item: its take maps the whole run to the file.
local function join_pieces(candidates)
  table.sort(candidates, function(x, y)
    if x.track ~= y.track then return x.track < y.track end
    return x.pos < y.pos
  end)
  local joined = {}
  for _, c in ipairs(candidates) do
    local run = joined[#joined]
    if run and continues(run.last, c) then
      run.b, run.last = math.max(run.b, c.b), c
    else
      c.last = c
      joined[#joined + 1] = c
    end
  end
  return joined
end

--[[
The video item to use under [t0, t1] and the stretch {a, b} of it the user sees: of the items
that play on heard tracks, the one seen over most of it, a picture split into pieces counting
as one item. REAPER shows the video of the topmost
track where several play at once, so an item counts only where no playing video on a track above
it shows picture at the same time (ties: the top track); its stretch is the longest of those.
An old cut left muted, in a muted folder or on a lane that does not play loses to the one the
user sees. Only when none plays, the one covering most of the others: a picture put on a muted
track so that its sound stays out is still the picture. `under` ({a, b} within [t0, t1], or
nil): the one seen over most of that instead, and its stretch the one seen most over it (an
item extended into the next shot keeps the picture it was made over).
]]
function M.find_video_item(proj, t0, t1, under)
  local candidates = {}
  for i = 0, reaper.CountMediaItems(proj) - 1 do
    local item = reaper.GetMediaItem(proj, i)
    local take = reaper.GetActiveTake(item)
    if take and not reaper.TakeIsMIDI(take) then
      local levels = M.source_chain(take)
      if #levels > 0 and M.is_video_source(levels[#levels].src) then
        local span_a, span_b = picture_span(item)
        local a, b = math.max(span_a, t0), math.min(span_b, t1)
        if b > a then
          candidates[#candidates + 1] = { item = item, a = a, b = b, span_b = span_b, plays = picture_plays(item),
            track = reaper.GetMediaTrackInfo_Value(reaper.GetMediaItem_Track(item), "IP_TRACKNUMBER"),
            file = reaper.GetMediaSourceFileName(levels[#levels].src, ""), pos = M.item_range(item),
            startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS"),
            playrate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE"),
            plain = #levels == 1 and reaper.GetTakeNumStretchMarkers(take) == 0, loops = M.wraps_source(item) }
        end
      end
    end
  end
  candidates = join_pieces(candidates)
  local best, best_stretch, best_seen, best_track, best_plays = nil, nil, 0, math.huge, false
  for _, c in ipairs(candidates) do
    local above = {}
    for _, other in ipairs(candidates) do
      if c.plays and other.plays and other.track < c.track then above[#above + 1] = { other.a, other.b } end
    end
    local seen, longest, most = 0, nil, 0
    for _, stretch in ipairs(uncovered(c.a, c.b, above)) do
      local counts = stretch[2] - stretch[1]
      if under then counts = math.max(0, math.min(stretch[2], under[2]) - math.max(stretch[1], under[1])) end
      seen = seen + counts
      if counts > most then longest, most = stretch, counts end
    end
    local better = (c.plays and not best_plays) or (c.plays == best_plays and (seen > best_seen + 1e-9
      or (math.abs(seen - best_seen) <= 1e-9 and c.track < best_track)))
    if seen > 0 and better then
      best, best_stretch, best_seen, best_track, best_plays = c.item, longest, seen, c.track, c.plays
    end
  end
  return best, best_stretch
end

-- How a refusal names the range an action works on, and what to do with it: the time selection,
-- or (M.ITEM_WORDS) the selected item whose new take is made.
M.SELECTION_WORDS = { range = "the time selection", part = "the selection", place = "make the time selection over it",
  longer = "Select a longer range", shorter = "Select a shorter range and make the rest in a second pass" }
M.ITEM_WORDS = { range = "the selected item", part = "the selected item", place = "move the item over it",
  longer = "Lengthen the item over the picture", shorter = "Trim the item shorter" }

-- Turns a time selection into the request's region. Returns region, nil or nil, message.
-- The region is the part of [t0, t1] where the user sees the chosen picture (the one under
-- `under`, when given: M.find_video_item); `clipped` says whether it shrank (no picture there,
-- another video item shows, or a looped picture starts again). `words`: M.SELECTION_WORDS when nil.
function M.region_for(proj, t0, t1, under, words)
  words = words or M.SELECTION_WORDS
  local item, stretch = M.find_video_item(proj, t0, t1, under)
  if not item and under then item, stretch = M.find_video_item(proj, t0, t1) end -- said where it lacks picture
  if not item then
    return nil, string.format("There is no video item under %s (%.3f s to %.3f s).\n\n" ..
      "Put the picture on a track and %s.", words.range, M.on_ruler(proj, t0), M.on_ruler(proj, t1), words.place)
  end
  local take = reaper.GetActiveTake(item)
  if reaper.GetTakeNumStretchMarkers(take) > 0 then
    return nil, "The video item has stretch markers, which StepFoley cannot follow.\n\n" ..
      "Remove them (Item > Stretch markers > Remove) or render the stretched video to a new file first."
  end
  local levels = M.source_chain(take)
  local file = reaper.GetMediaSourceFileName(levels[#levels].src, "")
  local pos = M.item_range(item)
  local startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  local playrate = reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
  local a, b = stretch[1], stretch[2]
  if M.wraps_source(item) then -- one pass of the loop: the film does not go on where it starts again
    local pass_end
    startoffs, pass_end = M.loop_pass(a, pos, startoffs, playrate, reaper.GetMediaSourceLength(levels[1].src))
    b = math.min(b, pass_end)
  end
  if b - a <= 1e-6 then
    return nil, M.capitalized(words.range) .. " does not overlap the picture of the video item (" ..
      M.basename(file) .. ")."
  end
  local file_a, file_b, reversed = M.map_interval(a, b, pos, startoffs, playrate, levels)
  if reversed then
    return nil, "The video item plays its picture in reverse; StepFoley reads the video forwards.\n\n" ..
      "Turn off reverse for the item, or render the reversed video to a new file first."
  end
  local region = {
    video = file,
    file_in = math.max(0.0, file_a) + 0.0,
    file_out = file_b + 0.0,
    playrate = playrate + 0.0,
    project_start = a + 0.0,
    project_end = b + 0.0,
  }
  return region, nil, (a > t0 + 1e-9 or b < t1 - 1e-9), item
end

------------------------------------------------------------------------------------------
-- Layers: which tracks and items count as negatives
------------------------------------------------------------------------------------------

function M.is_stepfoley_track(track)
  local _, mark = reaper.GetSetMediaTrackInfo_String(track, M.TRACK_MARK, "", false)
  return mark == "1"
end

-- "include", "exclude" or "auto" (the track's P_EXT; see M.NEGATIVE_ROLE).
function M.negative_role(track)
  local _, role = reaper.GetSetMediaTrackInfo_String(track, M.NEGATIVE_ROLE, "", false)
  if role == "1" then return "include" elseif role == "0" then return "exclude" end
  return "auto"
end

-- Stores a role; "auto" removes the mark. A project edit: call inside an undo block.
function M.set_negative_role(track, role)
  local value = ({ include = "1", exclude = "0" })[role] or ""
  reaper.GetSetMediaTrackInfo_String(track, M.NEGATIVE_ROLE, value, true)
end

-- The role that makes a track count as a negative (`want` true) or not: the automatic one
-- where it already gives that.
function M.role_for(stepfoley, want)
  if stepfoley then return want and "auto" or "exclude" end
  return want and "include" or "auto"
end

-- Whether a track counts as a negative layer: StepFoley's tracks unless excluded, any other
-- track only when included.
function M.counts_as_negative(track)
  local role = M.negative_role(track)
  if role == "auto" then return M.is_stepfoley_track(track) end
  return role == "include"
end

-- The folder tracks above `track`, nearest first: `for folder in M.folders_above(track) do`.
function M.folders_above(track)
  local t = track
  return function()
    t = reaper.GetParentTrack(t)
    return t
  end
end

-- Whether the track is heard at all: neither it nor a folder above it is muted.
function M.track_is_heard(track)
  if reaper.GetMediaTrackInfo_Value(track, "B_MUTE") ~= 0 then return false end
  for folder in M.folders_above(track) do
    if reaper.GetMediaTrackInfo_Value(folder, "B_MUTE") ~= 0 then return false end
  end
  return true
end

-- Whether the item plays: not muted (B_MUTE includes item solo), on a lane that plays (fixed
-- lanes, REAPER 7; C_LANEPLAYS -1: a hidden lane left from a track that had fixed lanes), with
-- an active take. Only the active take of an item plays.
function M.item_plays(item)
  if reaper.GetMediaItemInfo_Value(item, "B_MUTE") ~= 0 then return false end
  local track = reaper.GetMediaItem_Track(item)
  local lane = reaper.GetMediaItemInfo_Value(item, "C_LANEPLAYS")
  if lane < 0 or (reaper.GetMediaTrackInfo_Value(track, "I_FREEMODE") == 2 and lane == 0) then
    return false
  end
  return reaper.GetActiveTake(item) ~= nil
end

-- The items of `track` that play somewhere in [t0, t1].
local function playing_items_in(track, t0, t1)
  local list = {}
  for i = 0, reaper.CountTrackMediaItems(track) - 1 do
    local item = reaper.GetTrackMediaItem(track, i)
    local a, b = M.item_range(item)
    if b > t0 and a < t1 and M.item_plays(item) then list[#list + 1] = item end
  end
  return list
end

local function track_name(track)
  local _, name = reaper.GetSetMediaTrackInfo_String(track, "P_NAME", "", false)
  if name == "" then name = "Track " .. math.floor(reaper.GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")) end
  return name
end
M.track_name = track_name

--[[
The tracks a user may choose as negatives over [t0, t1], in track order: every track that is
heard (neither it nor a folder above it muted) and has items playing there, except those in
`exclude` (the picture's track, the layer being replaced). Each: {track, name, role,
stepfoley, negative = whether it counts by its role}.
]]
function M.layer_candidates(proj, t0, t1, exclude)
  local list = {}
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    if not exclude[tr] and M.track_is_heard(tr) and #playing_items_in(tr, t0, t1) > 0 then
      list[#list + 1] = { track = tr, name = track_name(tr), role = M.negative_role(tr),
        stepfoley = M.is_stepfoley_track(tr), negative = M.counts_as_negative(tr) }
    end
  end
  return list
end

-- The razor-edit areas of a track (REAPER 6.24+), track areas only (not envelopes): {{a, b}}.
function M.razor_areas(track)
  local _, text = reaper.GetSetMediaTrackInfo_String(track, "P_RAZOREDITS", "", false)
  local areas = {}
  local word, space = "([^" .. M.SPACE .. "]+)", "[" .. M.SPACE .. "]+"
  for a, b, guid in (text or ""):gmatch(word .. space .. word .. space .. '"([^"]*)"') do
    if guid == "" and tonumber(a) and tonumber(b) then areas[#areas + 1] = { tonumber(a), tonumber(b) } end
  end
  return areas
end

--[[
The items the user picked as negatives over [t0, t1]: the selected items and the items a
razor-edit area touches, that play there and are on heard tracks not in `exclude`. Returns
the items and their tracks (track order).
]]
function M.picked_items(proj, t0, t1, exclude)
  local items, tracks = {}, {}
  for i = 0, reaper.CountTracks(proj) - 1 do
    local tr = reaper.GetTrack(proj, i)
    if not exclude[tr] and M.track_is_heard(tr) then
      local areas = M.razor_areas(tr)
      local any = false
      for _, item in ipairs(playing_items_in(tr, t0, t1)) do
        local a, b = M.item_range(item)
        local picked = reaper.IsMediaItemSelected(item)
        for _, area in ipairs(areas) do
          picked = picked or (b > math.max(area[1], t0) and a < math.min(area[2], t1))
        end
        if picked then items[#items + 1] = item; any = true end
      end
      if any then tracks[#tracks + 1] = tr end
    end
  end
  return items, tracks
end

M.NEGATIVE_MODES = { "layers", "selection", "none" }

--[[
What the next generation negates over [t0, t1], for a mode:
  "layers"    the tracks that count as negatives (M.counts_as_negative), or for the ones in
              `overrides` (track -> true/false, the dialog's checkboxes) what the user chose;
  "selection" the selected items and razor-edit areas (M.picked_items), only those items;
  "none"      nothing.
Returns {mode, tracks, items (nil: every playing item of the tracks), names}.
]]
function M.choose_negatives(proj, t0, t1, exclude, mode, overrides)
  local chosen = { mode = mode, tracks = {}, names = M.array({}) }
  if mode == "selection" then
    chosen.items, chosen.tracks = M.picked_items(proj, t0, t1, exclude)
  elseif mode == "layers" then
    for _, c in ipairs(M.layer_candidates(proj, t0, t1, exclude)) do
      local negative = c.negative
      if overrides and overrides[c.track] ~= nil then negative = overrides[c.track] end
      if negative then chosen.tracks[#chosen.tracks + 1] = c.track end
    end
  end
  for _, tr in ipairs(chosen.tracks) do chosen.names[#chosen.names + 1] = track_name(tr) end
  return chosen
end

M.MAX_PREVIOUS_CAPTIONS = 64 -- stepfoley.request.MAX_PREVIOUS_CAPTIONS, when the engine does not say

--[[
Captions of the StepFoley takes that play in [t0, t1] on `tracks` (only `items` when given),
in track order: the same material the bounce contains. Each caption once (a layer split into
pieces has its caption in every piece), and at most as many as the engine takes (`caps`'
bound; it refuses a request with more): the first ones, and the console says so.
]]
function M.previous_captions(tracks, t0, t1, items, caps)
  local only
  if items then only = {} for _, it in ipairs(items) do only[it] = true end end
  local most = M.published(caps, "previous_captions", M.MAX_PREVIOUS_CAPTIONS)
  local captions, seen, distinct = M.array({}), {}, 0
  for _, tr in ipairs(tracks) do
    for _, item in ipairs(playing_items_in(tr, t0, t1)) do
      local meta = (not only or only[item]) and M.take_meta(reaper.GetActiveTake(item))
      if meta and not seen[meta.caption] then
        seen[meta.caption], distinct = true, distinct + 1
        if #captions < most then captions[#captions + 1] = meta.caption end
      end
    end
  end
  if distinct > #captions then
    M.log(string.format("only the first %d of the %d captions of the layers go to the engine as " ..
      "previous_captions (the most it takes).", #captions, distinct))
  end
  return captions
end

-- The StepFoley metadata of a take (a table with a caption), or nil.
function M.take_meta(take)
  if not take then return nil end
  local ok, stored = reaper.GetSetMediaItemTakeInfo_String(take, M.TAKE_META, "", false)
  local meta = ok and stored ~= "" and M.json_decode(stored)
  if type(meta) == "table" and type(meta.caption) == "string" then return meta end
  return nil
end

-- Whether `item` is locked (C_LOCK), after telling the user: the actions that give an item a
-- new take leave a locked one as it is.
function M.refuse_locked(item)
  if reaper.GetMediaItemInfo_Value(item, "C_LOCK") % 2 ~= 1 then return false end
  M.alert("The selected StepFoley item is locked, and this action gives it a new take (Extend also makes it " ..
    "longer). Unlock it first (Item properties > Locked).")
  return true
end

-- The selected item made by StepFoley and its metadata, or nil after telling the user. With
-- `lock_checked_later` a locked one is returned too: the caller may still pick another item
-- to change, and checks the lock of the one it picks (M.refuse_locked).
-- Without `lock_checked_later` one such item must be selected: with two, the first was
-- changed without a word about the other.
function M.selected_stepfoley_item(proj, what, lock_checked_later)
  local found, found_meta, count = nil, nil, 0
  for i = 0, reaper.CountSelectedMediaItems(proj) - 1 do
    local item = reaper.GetSelectedMediaItem(proj, i)
    local meta = M.take_meta(reaper.GetActiveTake(item))
    if meta then
      count = count + 1
      if not found then found, found_meta = item, meta end
      if lock_checked_later then break end
    end
  end
  if count > 1 then
    M.alert(string.format("%d items made by StepFoley are selected; select only the one to change: %s", count, what))
    return nil
  end
  if not found then
    M.alert("Select an item made by StepFoley first (its active take holds StepFoley's metadata): " .. what)
    return nil
  end
  if not lock_checked_later and M.refuse_locked(found) then return nil end
  return found, found_meta
end

------------------------------------------------------------------------------------------
-- Where files go
------------------------------------------------------------------------------------------

function M.new_job_id()
  return os.date("%Y%m%d-%H%M%S") .. string.format("-%04x%04x", math.random(0, 0xffff), math.random(0, 0xffff))
end

-- The folder of the project file, or nil for a project never saved. (GetProjectPathEx is
-- the project's *recording* path, e.g. <project>/Audio when media go to a subfolder.)
function M.project_folder(proj)
  for i = 0, math.huge do
    local p, file = reaper.EnumProjects(i, "")
    if not p then return nil end
    if p == proj then
      if file == nil or file == "" then return nil end
      local dir = M.dirname(file)
      return dir ~= "" and dir or nil
    end
  end
end

-- The time a job folder was made, from its name (M.new_job_id), or nil.
function M.job_folder_time(name)
  local y, mo, d, h, mi, s = name:match("^(%d%d%d%d)(%d%d)(%d%d)%-(%d%d)(%d%d)(%d%d)%-%x+$")
  if not y then return nil end
  return os.time({ year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
    min = tonumber(mi), sec = tonumber(s) })
end

-- Deletes the job folders in `jobs_root` older than `days` (finished jobs delete their own;
-- these are the failed ones kept for support, and older versions' leftovers).
function M.prune_job_folders(jobs_root, days)
  local limit = os.time() - days * 86400
  local old = {}
  reaper.EnumerateSubdirectories(jobs_root, -1)
  for i = 0, math.huge do
    local name = reaper.EnumerateSubdirectories(jobs_root, i)
    if not name then break end
    local made = M.job_folder_time(name)
    if made and made < limit then old[#old + 1] = M.join(jobs_root, name) end
  end
  for _, dir in ipairs(old) do M.remove_tree(dir) end
end

--[[
The project's StepFoley folder (stems: <project folder>/StepFoley) and a new job folder
(request, status, bounce: <project folder>/StepFoley/jobs/<job id>). A project never saved
has no folder: REAPER's default recording path is used (and the console says so). The job
folder's path goes on a command line, and the bounce is rendered into it (REAPER lists the
files a render writes separated by ";"), so it falls back to REAPER's resource folder when the
project path has characters a command line cannot carry safely, or a ";". Old job folders are
pruned.
]]
-- Windows holds a path to 259 characters (UTF-16 units) unless long paths are switched on, and
-- Python, the client, is held to it too: the longest path a job writes below its jobs folder
-- (the job's id, take<N>, the client's temporary status file) is at most this much longer. A
-- job folder over the limit let REAPER write the request and the client fail on its status,
-- which looked like a client that never started.
local JOB_FILES_ROOM = 90
local WINDOWS_MAX_PATH = 259

local function utf16_length(s)
  local n = utf8.len(s)
  if not n then return nil end
  for _, c in utf8.codes(s) do
    if c >= 0x10000 then n = n + 1 end
  end
  return n
end

local function usable_for_jobs(path)
  if not M.is_command_line_safe(path) or path:find(";", 1, true) then return false end
  if M.is_windows() then
    local n = utf16_length(path)
    return n ~= nil and n + JOB_FILES_ROOM <= WINDOWS_MAX_PATH
  end
  return true
end

function M.folders(proj, job_id, settings)
  local project_dir = M.project_folder(proj)
  if not project_dir then
    project_dir = reaper.GetProjectPathEx(proj, "")
    if project_dir == nil or project_dir == "" then project_dir = reaper.GetResourcePath() end
    M.log("the project is not saved yet: the stems go to " .. M.join(project_dir, "StepFoley") ..
      ". Save the project first to keep them with it.")
  end
  local output_dir = M.join(project_dir, "StepFoley")
  local jobs_root = M.join(output_dir, "jobs")
  if not usable_for_jobs(jobs_root) then
    jobs_root = M.join(M.join(reaper.GetResourcePath(), "StepFoley"), "jobs")
  end
  if not usable_for_jobs(jobs_root) then
    return nil, "Neither the project folder nor REAPER's resource folder can be passed to the " ..
      "StepFoley client (they contain quotes, \";\" or other special characters, or are too long for " ..
      "Windows):\n" .. jobs_root
  end
  M.prune_job_folders(jobs_root, settings.job_days)
  local job_dir = M.join(jobs_root, job_id)
  reaper.RecursiveCreateDirectory(output_dir, 0)
  reaper.RecursiveCreateDirectory(job_dir, 0)
  return { output_dir = output_dir, job_dir = job_dir }
end

return VERSION
end
