-- @noindex
--[[
StepFoley library, part "results": the generate flow every generating action shares (engine
check, dialog, negatives, bounce, jobs) and putting its results into the project: a new track,
variations as fixed lanes (REAPER 7) or takes, a new take of an item; the seed as a take
marker; one undo point per edit. Loaded by StepFoley_lib.lua; adds to its table.
]]

-- Returned by the function below, for StepFoley_lib.lua to check: the files of one release go together
local VERSION = "0.5.39"

return function(M)

------------------------------------------------------------------------------------------
-- Metadata
------------------------------------------------------------------------------------------

local function shown(value, default)
  if value == nil then return "default" .. (default ~= nil and (" (" .. tostring(default) .. ")") or "") end
  return tostring(value)
end

-- The item notes: what was asked and what the engine used.
function M.describe(meta)
  local r, e = meta.region or {}, type(meta.engine) == "table" and meta.engine or {}
  local negatives = meta.negatives or {}
  local names = type(negatives.tracks) == "table" and table.concat(negatives.tracks, ", ") or ""
  -- the engine says whether the negative caption steered the take (negative_caption_heard)
  local unheard = e.negative_caption_heard == false and
    "; their captions were not heard (at this alpha a negative caption does not steer away)" or ""
  return string.format("StepFoley: %s\nmethod %s, alpha %s, beta %s, seed %s, steps %s\n" ..
    "negatives: %s%s%s\nvideo: %s (file %.3f s to %.3f s, playrate %s)\nstem: %s",
    tostring(meta.caption), shown(meta.method, e.method), shown(meta.alpha, e.alpha), shown(meta.beta, e.beta),
    tostring(meta.seed), shown(meta.steps, e.steps), tostring(negatives.mode or "layers"),
    names ~= "" and (" (" .. names .. ")") or "", unheard, tostring(r.video), tonumber(r.file_in) or 0,
    tonumber(r.file_out) or 0, tostring(r.playrate), tostring(meta.stem_path))
end

-- An item's notes with `description` (M.describe) in place of the StepFoley block they hold
-- (from a line "StepFoley: " through its "stem: " line), or after the user's own text: what
-- the artist wrote there is kept.
function M.notes_with(notes, description)
  local first = notes:sub(1, 11) == "StepFoley: " and 1 or notes:find("\nStepFoley: ", 1, true)
  if first and first > 1 then first = first + 1 end
  local stem = first and notes:find("\nstem: ", first, true)
  if stem then
    local line_end = notes:find("\n", stem + 1, true)
    return notes:sub(1, first - 1) .. description .. (line_end and notes:sub(line_end) or "")
  end
  if M.is_blank(notes) then return description end
  return notes .. (notes:sub(-1) == "\n" and "\n" or "\n\n") .. description
end

-- The metadata stored in a take: the request as sent (a guidance field is present only when
-- the user chose it; absent = the model's default), what was negated, and what the engine
-- returned (its metadata says which values it used). Paths of job files, deleted when the job
-- succeeds, are left out.
function M.take_metadata(request, result, negatives, reference_label, stored)
  local meta = {}
  for k, v in pairs(stored or {}) do meta[k] = v end -- kept with the take though not sent (job.stored_fields)
  for k, v in pairs(request) do meta[k] = v end
  meta.existing_mix, meta.output_dir = nil, nil
  if reference_label then meta.reference_audio, meta.reference = nil, reference_label end
  meta.negatives = { mode = negatives.mode, tracks = negatives.names }
  meta.stem_path = result.stem_path
  meta.job_id = result.job_id
  meta.engine = result.metadata
  meta.stepfoley_scripts = M.VERSION
  return meta
end

------------------------------------------------------------------------------------------
-- Takes, items, tracks
------------------------------------------------------------------------------------------

-- A new take playing `stem_path` from region.project_start, in `item` (which may start
-- earlier or end later than the region: regenerating an item whose picture covers only part
-- of it). Before and after the region the take is silent: a negative start offset with "loop
-- source" off (with it on, REAPER would wrap the stem around into the gap). Loop source is an
-- item setting, so it is switched off only then: an item the stem fills keeps it, and its
-- earlier takes keep looping. The seed is a take marker at the stem's start (REAPER 5.981+).
-- `src`: the stem's source, from stem_sources.
function M.add_take(item, src, meta, region)
  local take = reaper.AddTakeToMediaItem(item)
  reaper.SetMediaItemTake_Source(take, src)
  local item_pos, item_end = M.item_range(item)
  local outside = item_pos < region.project_start - 1e-9 or item_end > region.project_end + 1e-9
  if outside and reaper.GetMediaItemInfo_Value(item, "B_LOOPSRC") ~= 0 then
    reaper.SetMediaItemInfo_Value(item, "B_LOOPSRC", 0)
    M.log("\"loop source\" is switched off for this item: the new take covers only the picture's part of it, " ..
      "so the item's earlier takes no longer loop.")
  end
  reaper.SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", item_pos - region.project_start)
  reaper.SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", 1)
  reaper.GetSetMediaItemTakeInfo_String(take, "P_NAME", string.format("%s (seed %s)", meta.caption, tostring(meta.seed)), true)
  reaper.GetSetMediaItemTakeInfo_String(take, M.TAKE_META, M.json_encode(meta), true)
  if reaper.SetTakeMarker then reaper.SetTakeMarker(take, -1, "seed " .. tostring(meta.seed), 0) end
  return take
end

-- The sources of the takes' stems, all made before anything is edited: a stem REAPER could
-- not read had left an empty take active in the item (silence there) or a new track with an
-- empty item. The message is the user's (level 0: no script path in front of it).
local function stem_sources(takes)
  local sources = {}
  for i, t in ipairs(takes) do
    sources[i] = reaper.PCM_Source_CreateFromFile(t.stem_path)
    if not sources[i] then
      for j = 1, i - 1 do reaper.PCM_Source_Destroy(sources[j]) end
      error("REAPER cannot read the stem " .. t.stem_path .. "; nothing was changed in the project.", 0)
    end
  end
  return sources
end

-- A take's own settings that change how its audio sounds (volume and polarity, pan and pan
-- law, channel mode, pitch and how it is shifted, the channels its take FX get). A new take
-- starts from REAPER's defaults, with no take FX (copied too, after their channel count) and
-- no take envelopes, stretch markers or spectral edits (a kept take with those is refused).
M.TAKE_SOUND = { "D_VOL", "D_PAN", "D_PANLAW", "I_CHANMODE", "D_PITCH", "B_PPITCH", "I_PITCHMODE", "I_TAKEFX_NCH" }

-- Gives `to` the sound settings and the take FX of `from`: a take that continues another
-- holds its audio sample for sample, and the kept part must sound as it did.
local function copy_take_sound(from, to)
  for _, key in ipairs(M.TAKE_SOUND) do
    reaper.SetMediaItemTakeInfo_Value(to, key, reaper.GetMediaItemTakeInfo_Value(from, key))
  end
  for fx = 0, reaper.TakeFX_GetCount(from) - 1 do reaper.TakeFX_CopyToTake(from, fx, to, fx, false) end
end

-- The indexes of the folder tracks a track inserted at `index` would be inside, outermost first.
local function folders_around(proj, index)
  local open = {}
  for i = 0, index - 1 do
    local depth = reaper.GetMediaTrackInfo_Value(reaper.GetTrack(proj, i), "I_FOLDERDEPTH")
    if depth > 0 then
      open[#open + 1] = i
    elseif depth < 0 then
      for _ = 1, -depth do open[#open] = nil end
    end
  end
  return open
end

-- The index after the last track of the folder whose folder track is at `folder`, or nil when
-- the folder runs to the end of the project.
local function after_folder(proj, folder)
  local level = 0
  for i = folder, reaper.CountTracks(proj) - 1 do
    level = level + reaper.GetMediaTrackInfo_Value(reaper.GetTrack(proj, i), "I_FOLDERDEPTH")
    if level <= 0 then return i + 1 end
  end
  return nil
end

--[[
The index after the last StepFoley track (or the end), so new tracks stack in order. Never
inside a muted folder, at any depth: old layers archived in one would make the new layer
silent, and a silent layer never counts as a negative. The layer then goes after the end of
the outermost muted folder around that place (before it, when it runs to the project's end).
]]
local function new_track_index(proj)
  local index = reaper.CountTracks(proj)
  for i = 0, reaper.CountTracks(proj) - 1 do
    if M.is_stepfoley_track(reaper.GetTrack(proj, i)) then index = i + 1 end
  end
  for _, folder in ipairs(folders_around(proj, index)) do
    if reaper.GetMediaTrackInfo_Value(reaper.GetTrack(proj, folder), "B_MUTE") ~= 0 then
      return after_folder(proj, folder) or folder
    end
  end
  return index
end

--[[
Runs `edit()` as one undo point named `description` in `proj` (which need not be the active
tab), with the UI frozen meanwhile, then builds the peaks of the new media (in the active tab).
Whatever fails inside (the edit or the peaks), the UI refresh is restored and the undo block
closed; the failure is shown to the user. Returns whether the edit succeeded.
]]
function M.undoable_edit(proj, description, edit)
  reaper.Undo_BeginBlock2(proj)
  reaper.PreventUIRefresh(1)
  local ok, err = pcall(function()
    edit()
    -- an action runs on the active tab whatever project it is given: another tab builds its
    -- peaks when it is shown
    if proj == 0 or proj == nil or reaper.EnumProjects(-1, "") == proj then
      reaper.Main_OnCommandEx(M.BUILD_MISSING_PEAKS, 0, proj)
    end
  end)
  reaper.PreventUIRefresh(-1)
  reaper.UpdateArrange()
  reaper.Undo_EndBlock2(proj, description, -1)
  if not ok then M.alert("StepFoley could not complete \"" .. description .. "\": " .. tostring(err)) end
  return ok
end

function M.project_is_open(proj)
  for i = 0, math.huge do
    local p = reaper.EnumProjects(i, "")
    if not p then return false end
    if p == proj then return true end
  end
end

-- A new track at `index` of `proj`. InsertTrackAtIndex acts on the ACTIVE project tab, which
-- may be another project by the time a generation ends, so InsertTrackInProject (REAPER
-- 7.18+) is used; older REAPER gets `proj` made active for the insert and the user's tab back.
local function insert_track_in(proj, index)
  local before = reaper.CountTracks(proj)
  if reaper.InsertTrackInProject then
    reaper.InsertTrackInProject(proj, index, 1) -- 1: default envelopes/FX, like wantDefaults
  else
    local active = reaper.EnumProjects(-1, "")
    if active ~= proj then reaper.SelectProjectInstance(proj) end
    reaper.InsertTrackAtIndex(index, true)
    if active ~= proj then reaper.SelectProjectInstance(active) end
  end
  if reaper.CountTracks(proj) ~= before + 1 then
    error("REAPER did not add the new track to the generation's project")
  end
  return reaper.GetTrack(proj, index)
end

-- An item for the region, not looping (REAPER loops new items' sources by default): a stem
-- a fraction of a sample short of the item would wrap its start around. It keeps time as the
-- picture does (`timebase`, M.picture_placement's): a new item follows the project's default,
-- Beats unless changed, and a tempo edit would move it off a picture kept in Time.
local function new_item(track, region, timebase)
  local item = reaper.AddMediaItemToTrack(track)
  reaper.SetMediaItemInfo_Value(item, "D_POSITION", region.project_start)
  reaper.SetMediaItemInfo_Value(item, "D_LENGTH", region.project_end - region.project_start)
  reaper.SetMediaItemInfo_Value(item, "B_LOOPSRC", 0)
  if timebase and timebase.mode ~= -1 then
    reaper.SetMediaItemInfo_Value(item, "C_BEATATTACHMODE", timebase.mode)
    reaper.SetMediaItemInfo_Value(item, "C_AUTOSTRETCH", timebase.autostretch)
  end
  return item
end

-- Whether this REAPER has fixed item lanes that a script can name (P_LANENAME: REAPER 7.07;
-- before it the lanes would stand unnamed, so variations go as takes, named by their seeds).
function M.has_fixed_lanes()
  local version = tonumber((reaper.GetAppVersion() or ""):match("^(%d+%.?%d*)"))
  return version ~= nil and version >= 7.07
end

--[[
One new StepFoley track named after the caption over the region, with the results `takes`
({stem_path, meta} each): as takes of one item, or with `lanes` as one item per fixed lane
(REAPER 7; the first lane plays, the others are there to audition and comp, each lane named
after its seed). `timebase`: optional, the picture's (M.picture_placement).
]]
function M.insert_track(proj, region, takes, lanes, timebase)
  local sources = stem_sources(takes)
  local index = new_track_index(proj)
  local track = insert_track_in(proj, index)
  -- after the last layer, inside a folder (a Foley bus): the new layer joins it, so the
  -- folder's end moves from that layer to the new one (a new track after it would be outside)
  local before = index > 0 and reaper.GetTrack(proj, index - 1)
  local depth = before and reaper.GetMediaTrackInfo_Value(before, "I_FOLDERDEPTH") or 0
  if depth < 0 and M.is_stepfoley_track(before) then
    -- of the folders `before` closes (innermost first) it keeps closing those up to the outermost
    -- muted one (a new layer never goes into a muted archive); the new layer closes the heard
    -- ones. Its own mute is no matter: the artist may have muted the last layer to audition.
    local keep, folder = 0, before
    for i = 1, -depth do
      folder = folder and reaper.GetParentTrack(folder)
      if folder and reaper.GetMediaTrackInfo_Value(folder, "B_MUTE") ~= 0 then keep = i end
    end
    if keep < -depth then
      reaper.SetMediaTrackInfo_Value(before, "I_FOLDERDEPTH", -keep)
      reaper.SetMediaTrackInfo_Value(track, "I_FOLDERDEPTH", depth + keep)
    end
  end
  reaper.GetSetMediaTrackInfo_String(track, "P_NAME", takes[1].meta.caption, true)
  reaper.GetSetMediaTrackInfo_String(track, M.TRACK_MARK, "1", true)
  if lanes then
    reaper.SetMediaTrackInfo_Value(track, "I_FREEMODE", 2)
    reaper.SetMediaTrackInfo_Value(track, "I_NUMFIXEDLANES", #takes)
    for i, t in ipairs(takes) do
      local item = new_item(track, region, timebase)
      reaper.SetMediaItemInfo_Value(item, "I_FIXEDLANE", i - 1)
      M.add_take(item, sources[i], t.meta, region)
      reaper.GetSetMediaItemInfo_String(item, "P_NOTES", M.describe(t.meta), true)
      reaper.GetSetMediaTrackInfo_String(track, "P_LANENAME:" .. (i - 1), "seed " .. tostring(t.meta.seed), true)
      reaper.SetMediaTrackInfo_Value(track, "C_LANEPLAYS:" .. (i - 1), i == 1 and 1 or 0)
    end
    reaper.UpdateTimeline()
    return track
  end
  local item = new_item(track, region, timebase)
  local first
  for i, t in ipairs(takes) do
    local take = M.add_take(item, sources[i], t.meta, region)
    first = first or take
  end
  reaper.SetActiveTake(first)
  reaper.GetSetMediaItemInfo_String(item, "P_NOTES", M.describe(takes[1].meta), true)
  return track
end

-- Reports failures of a finished batch, counting takes (a protocol-2 job makes several);
-- returns the done results. Jobs left unstarted after a cancel are a cancel too.
function M.report(results, jobs)
  local done, problems, made, asked, skipped = {}, {}, 0, 0, false
  for i, r in ipairs(results) do
    asked = asked + (jobs[i] and jobs[i].request.variations or 1)
    if r.state == "done" then
      done[#done + 1] = r
      made = made + (r.stems and #r.stems or 1)
    elseif r.state == "error" then problems[#problems + 1] = r.message or "unknown error"
    elseif r.state == "cancelled" then problems[#problems + 1] = r.message or "Generation cancelled."
    elseif r.state == "not_started" then skipped = true
    end
  end
  if #problems == 0 and skipped then problems[1] = "Generation cancelled." end
  if #problems > 0 then
    local prefix = made > 0 and string.format("%d of %d %s finished; ", made, asked,
      asked > 1 and "variations" or "generations") or ""
    M.alert(prefix .. table.concat(problems, "\n\n"))
  end
  return done
end

------------------------------------------------------------------------------------------
-- Requests
------------------------------------------------------------------------------------------

M.MAX_NAME_HINT_CHARS = 200 -- stepfoley.request.MAX_NAME_HINT_CHARS, when the engine does not say

-- The first `n` characters of UTF-8 text, never half of a multi-byte one. Text that is not
-- UTF-8 is cut after n bytes (fewer characters still); the engine refuses such a caption anyway.
local function first_chars(text, n)
  local length = utf8.len(text)
  if not length then return text:sub(1, n) end
  if length <= n then return text end
  return text:sub(1, utf8.offset(text, n + 1) - 1)
end

-- The stem's name hint: the caption, cut to the engine's bound for it (a caption may be far
-- longer than a name hint, and the engine refuses a request whose hint is too long).
function M.name_hint(caption, caps)
  local most = math.tointeger(M.published(caps, "name_hint_chars", M.MAX_NAME_HINT_CHARS))
  return first_chars(caption, most or M.MAX_NAME_HINT_CHARS)
end

-- The request for one job. Guidance fields the user left empty are left out: the engine uses
-- its model's defaults. `caps`: the engine's capabilities (its bounds), or nil.
function M.build_request(region, params, seed, folders, negatives, sample_rate, caps)
  return {
    protocol = 1,
    region = region,
    caption = params.caption,
    method = params.method,
    alpha = params.alpha,
    beta = params.beta,
    steps = params.steps,
    seed = seed,
    negative_caption = "",
    previous_captions = negatives.previous,
    existing_mix = negatives.mix,
    reference_audio = params.reference_audio,
    output_dir = folders.output_dir,
    sample_rate = sample_rate,
    format = "wav24",
    name_hint = M.name_hint(params.caption, caps),
  }
end

M.MAX_REQUEST_BYTES = 32256 -- bridge.protocol.MAX_REQUEST_BYTES: the request JSON one message carries

--[[
Makes `request` fit one message: its JSON (compact UTF-8, as the client sends it) at most
MAX_REQUEST_BYTES. Each previous caption may be long and there may be 64, so the last ones are
left out until it fits, and the console says how many. nil and a message when it cannot be
written as JSON or does not fit even without them.
]]
-- The first string in `value` (a request, or any part of it) that is not UTF-8 text, or nil.
local function first_not_utf8(value)
  if type(value) == "string" then
    if not utf8.len(value) then return value end
  elseif type(value) == "table" then
    for _, v in pairs(value) do
      local bad = first_not_utf8(v)
      if bad then return bad end
    end
  end
  return nil
end

-- `text` with each byte that is not part of UTF-8 text shown as "?", so it can be shown.
local function shown_as_utf8(text)
  local out = {}
  while #text > 0 do
    local _, bad = utf8.len(text)
    if not bad then out[#out + 1] = text; break end
    out[#out + 1] = text:sub(1, bad - 1) .. "?"
    text = text:sub(bad + 1)
  end
  return table.concat(out)
end

-- The refusal of a request (or any part of it) holding a name that is not UTF-8 text, or nil.
local function not_utf8_problem(value)
  local bad = first_not_utf8(value)
  if not bad then return nil end
  return "\"" .. shown_as_utf8(bad) .. "\" is not UTF-8 text (a file or folder named in another " ..
    "encoding; \"?\" marks what is not), and the engine reads requests as UTF-8. Rename it, or copy the " ..
    "media to a folder with a plain name."
end

function M.fit_request(request)
  -- the engine reads a request as UTF-8 JSON: a file or folder named in another encoding (a
  -- Latin-1 name on Linux) failed there as "can't decode byte 0xe9", naming no file
  local bad = not_utf8_problem(request)
  if bad then return nil, bad end
  local ok, text = pcall(M.json_encode, request)
  if not ok then return nil, "The request for the engine cannot be written: " .. tostring(text) end
  local previous = request.previous_captions or {}
  local size, kept = #text, #previous
  while size > M.MAX_REQUEST_BYTES and kept > 0 do
    size = size - #M.json_encode(previous[kept]) - (kept > 1 and 1 or 0) -- the caption and its comma
    kept = kept - 1
  end
  if kept < #previous then
    request.previous_captions = M.array({ table.unpack(previous, 1, kept) })
    M.log(string.format("only the first %d of the %d captions of the layers go to the engine as " ..
      "previous_captions: with more, the request would not fit one message.", kept, #previous))
    size = #M.json_encode(request)
  end
  if size > M.MAX_REQUEST_BYTES then
    return nil, string.format("The request for the engine is %d bytes, more than the %d one message carries. " ..
      "Shorten the caption, or keep the project (and its StepFoley folder) on a shorter path.", size,
      M.MAX_REQUEST_BYTES)
  end
  return request
end

-- What the chosen method's audio branch hears ("existing", "reference" or nil); "existing"
-- when the engine did not say (it then decides what to do with a bounce it gets).
function M.method_audio(caps, method)
  if not caps then return "existing" end
  local info = M.method_info(caps, method or M.default_text(caps, "method"))
  return info and info.audio or nil
end

-- The method that negates layers for "Replace this layer": the stored one when it hears the
-- layers, else the model's default when it does, else the first available one that does.
-- Without capabilities (an older engine) the stored one. nil and a message when the model
-- has none.
function M.negating_method(caps, stored)
  if not caps then return stored end
  -- built one by one: a layer made with the default method stores none, and a nil inside a
  -- table constructor would end ipairs there (or not, depending on the table's layout)
  local candidates = {}
  local function consider(name) if name then candidates[#candidates + 1] = name end end
  consider(stored)
  consider(M.default_text(caps, "method"))
  for _, m in ipairs(M.dialog_methods(caps, "existing")) do
    if m.audio == "existing" then consider(m.name) end
  end
  for _, name in ipairs(candidates) do
    local info = M.method_info(caps, name)
    if info and info.available ~= false and info.audio == "existing" then return name end
  end
  return nil, "The engine's model '" .. tostring(caps.model) .. "' has no method that hears the other layers " ..
    "(it has no NAG ControlNet), so it cannot negate them."
end

-- The method that sounds like a reference recording (audio "reference"), or nil and why not.
function M.reference_method(caps)
  if not caps then return "reference" end -- an older engine: it says whether it knows it
  local list = M.dialog_methods(caps, "reference")
  if #list > 0 then return list[1].name end
  local reasons = {}
  for _, m in ipairs(caps.methods or {}) do
    if m.audio == "reference" then reasons[#reasons + 1] = m.name .. ": " .. tostring(m.unavailable_reason) end
  end
  return nil, "The engine's model '" .. tostring(caps.model) .. "' cannot make a sound like a reference" ..
    (#reasons > 0 and (" (" .. table.concat(reasons, "; ") .. ")") or "") .. "."
end

------------------------------------------------------------------------------------------
-- The generate flow
------------------------------------------------------------------------------------------

-- The engine's answer, asked again when it was not running before the dialog (the user may
-- have started it meanwhile): on_ready(engine) only when it runs, else the user is told.
local function with_running_engine(settings, prefix, engine, on_ready)
  if engine.ok then return on_ready(engine) end
  M.query_engine(settings, prefix, function(again)
    if again.ok then return on_ready(again) end
    M.alert(again.message)
  end)
end

-- Whether the job's project (and item) still exist: the ReaImGui dialog and the jobs leave
-- REAPER usable, so either may have been closed or deleted meanwhile.
local function still_there(job)
  return M.project_is_open(job.proj) and (job.item == nil or reaper.ValidatePtr2(job.proj, job.item, "MediaItem*"))
end

-- Where the audio of `item`'s `take` (its active one by default) starts on the timeline: a trim
-- of the item's edge moves neither it nor the take's sound; a drag or a slip moves it.
local function audio_origin(item, take)
  take = take or reaper.GetActiveTake(item)
  local pos = reaper.GetMediaItemInfo_Value(item, "D_POSITION")
  if not take then return pos end
  local startoffs = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS")
  return pos - startoffs / reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE")
end

-- Where the video item plays its picture, when the region is taken: what tells later whether
-- the picture has moved (where its source starts on the timeline, at what rate), and the time
-- base the new items keep (the item's, else its track's; -1 for both: the project's default,
-- which a new item follows anyway).
function M.picture_placement(item)
  local take = reaper.GetActiveTake(item)
  local timebase = { mode = reaper.GetMediaItemInfo_Value(item, "C_BEATATTACHMODE"),
    autostretch = reaper.GetMediaItemInfo_Value(item, "C_AUTOSTRETCH") }
  if timebase.mode == -1 then
    timebase = { mode = reaper.GetMediaTrackInfo_Value(reaper.GetMediaItem_Track(item), "C_BEATATTACHMODE"),
      autostretch = 0 }
  end
  -- no take: its takes deleted while generating, refused as another take
  return { item = item, take = take, origin = audio_origin(item, take), loops = M.wraps_source(item),
    playrate = take and reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE") or 1, timebase = timebase }
end

-- How far the job's picture has moved on the timeline since its region was taken (REAPER stays
-- usable while the engine works: a ripple edit, a dragged or slipped video item): seconds, 0
-- when it has not; nil and why when the region can no longer be placed by it. The selected
-- item must have moved with it: a kept take's sound (Extend, Repair), since the new part was
-- made for the old sync; an item given a new take (Regenerate), since the take would start
-- or end where the item does not play it. The whole picture under `region` must still show the
-- same frames there, moved by as much: a picture in pieces (split at a cut) is followed by its
-- first piece, and a ripple edit at a later cut moves only what lies after it.
local function picture_moved(job, region)
  local was = job.picture
  if not reaper.ValidatePtr2(job.proj, was.item, "MediaItem*") then
    return nil, "the video item was deleted, or another project was opened in its tab"
  end
  local now = M.picture_placement(was.item)
  if now.take ~= was.take or math.abs(now.playrate - was.playrate) > 1e-9 or now.loops ~= was.loops then
    return nil, "the video item now plays another take, at another rate, or loops otherwise"
  end
  local shift = now.origin - was.origin
  if math.abs(shift) < 1e-9 then shift = 0 end
  -- where the item's sound sits, not its left edge: a trim during the job moves the edge alone,
  -- and the new take is placed by the picture (it was refused as "moved apart")
  local moved
  if job.item_take and reaper.ValidatePtr2(job.proj, job.item_take, "MediaItem_Take*") then
    moved = audio_origin(job.item, job.item_take) - job.item_origin
  elseif job.item then
    moved = reaper.GetMediaItemInfo_Value(job.item, "D_POSITION") - job.item_position
  end
  if moved and math.abs(moved - shift) > 1e-6 then
    return nil, "the video item and the selected item were moved apart"
  end
  local under = job.picture_under and { job.picture_under[1] + shift, job.picture_under[2] + shift }
  local now_region = M.region_for(job.proj, region.project_start + shift, region.project_end + shift, under)
  if not now_region or now_region.video ~= region.video or math.abs(now_region.file_in - region.file_in) > 1e-6
      or math.abs(now_region.file_out - region.file_out) > 1e-6 then
    return nil, "the picture under the time selection was cut, moved in part or covered by another video item"
  end
  return shift
end

-- A copy of `region` (a request's, or the one a take's metadata keeps) `shift` seconds later
-- on the timeline.
local function shifted(region, shift)
  local moved = {}
  for k, v in pairs(region) do moved[k] = v end
  moved.project_start, moved.project_end = region.project_start + shift, region.project_end + shift
  return moved
end

local function apply_roles(proj, roles)
  if #roles == 0 then return end
  M.undoable_edit(proj, "StepFoley: choose negative layers", function()
    for _, r in ipairs(roles) do
      if reaper.ValidatePtr2(proj, r.track, "MediaTrack*") then M.set_negative_role(r.track, r.role) end
    end
  end)
end

-- Bounces the negatives of `job` over the region: {mode, tracks, names, previous, mix}, or
-- nil and a message.
local function negatives_for(job, settings, engine, params, region, folders, sample_rate)
  local a, b = region.project_start, region.project_end
  local chosen = M.choose_negatives(job.proj, a, b, job.exclude, params.negatives)
  chosen.previous = M.previous_captions(chosen.tracks, a, b, chosen.items, engine.capabilities)
  local hears_layers = M.method_audio(engine.capabilities, params.method) == "existing"
  if hears_layers and #chosen.tracks > 0 then
    local mix, err = M.bounce(job.proj, chosen.tracks, a, b, folders.job_dir, "existing_mix", sample_rate, chosen.items)
    if not mix then return nil, err end
    chosen.mix = mix
  elseif hears_layers and params.negatives == "selection" then
    M.log("no selected item or razor area of another layer plays over the region (Negatives: selection): " ..
      "this track is generated from picture and caption only.")
  elseif hears_layers and params.negatives ~= "none" then
    M.log("nothing to negate over the region yet: this track is generated from picture and caption only.")
  end
  return chosen
end

-- The most variations one protocol-2 request may ask for: the engine's published bound, else
-- this copy of stepfoley.request.MAX_VARIATIONS.
M.VARIATIONS_PER_JOB = 8

function M.variations_per_job(caps)
  local bound = M.published(caps, "variations", nil)
  local most = type(bound) == "table" and math.tointeger(bound[2])
  return (most and most >= 1) and most or M.VARIATIONS_PER_JOB
end

-- The part of prepare_jobs (below) that fills its new job folder `folders`: the negatives'
-- bounce, the reference, the requests. Returns jobs, negatives or nil, message.
local function jobs_in(folders, job, settings, engine, params, region, extra)
  local proj = job.proj
  local sample_rate, substituted = M.stem_rate(engine.capabilities, M.project_sample_rate(proj))
  if substituted then
    M.log(string.format("the project runs at %d Hz, a rate StepFoley does not write: the new track comes at %d Hz, " ..
      "which REAPER resamples as it plays.", M.project_sample_rate(proj), sample_rate))
  end
  local negatives, err = negatives_for(job, settings, engine, params, region, folders, sample_rate)
  if not negatives then return nil, err end
  if job.make_reference then
    local path, ref_err = job.make_reference(folders, sample_rate, region)
    if not path then return nil, ref_err end
    params.reference_audio = path
  end
  local most = (params.count > 1 and M.engine_speaks(engine, 2)) and M.variations_per_job(engine.capabilities) or 1
  -- as even as the jobs can be (9 = 5 + 4, not 8 + 1): the engine scores the takes of a job
  -- with two or more, and those scores rank the takes across jobs (rank_across_jobs)
  local batch = math.ceil(params.count / math.ceil(params.count / most))
  local jobs = {}
  for first = 0, params.count - 1, batch do
    local i = #jobs + 1
    local job_folders = folders
    if i > 1 then -- each job gets its own status file
      job_folders = { output_dir = folders.output_dir, job_dir = M.join(folders.job_dir, "take" .. i) }
      reaper.RecursiveCreateDirectory(job_folders.job_dir, 0)
    end
    local request = M.build_request(region, params, params.seed + first, folders, negatives, sample_rate,
      engine.capabilities)
    if batch > 1 then
      request.protocol, request.variations = 2, math.min(batch, params.count - first)
    end
    for k, v in pairs(extra or {}) do request[k] = v end
    local fit_err
    request, fit_err = M.fit_request(request)
    if not request then return nil, fit_err end
    jobs[i] = { request = request, folders = job_folders, label = params.caption }
  end
  return jobs, negatives
end

--[[
Everything between the dialog and the engine: the job folder, the negatives and their bounce,
the reference, and the requests: with an engine that speaks protocol 2, the variations go in
batches of up to variations_per_job seeds per request (sampled together there); with an older
one, one request per seed. Returns jobs, negatives or nil, message.
]]
local function prepare_jobs(job, settings, engine, params, region)
  local proj = job.proj
  -- where the item is as the job starts (run() checked the picture until now): moved during
  -- the dialog is no move away from the picture
  if job.item then
    job.item_position = reaper.GetMediaItemInfo_Value(job.item, "D_POSITION")
    -- the take active now: a continuation keeps it, whatever the user activates while the engine works
    job.item_take = reaper.GetActiveTake(job.item)
    job.item_origin = job.item_take and audio_origin(job.item, job.item_take) -- slipped or switched, too
  end
  local extra
  if job.extra_fields then -- checked before anything is bounced
    local err
    extra, err = job.extra_fields(region, engine.capabilities, job.words)
    if not extra then return nil, err end
    if extra.take and job.item then job.kept_take = job.item_take end
    if extra.protocol == 2 and not M.engine_speaks(engine, 2) then
      return nil, "The engine is older than protocol 2, so it cannot " .. job.feature .. ". Update StepFoley " ..
        "and restart `stepfoley serve`."
    end
  end
  local folders, folder_err = M.folders(proj, M.new_job_id(), settings)
  if not folders then return nil, folder_err end
  local jobs, negatives = jobs_in(folders, job, settings, engine, params, region, extra)
  -- no job ran, so nothing in its folder is for support (run_jobs keeps a failed job's): a
  -- bounce cut short on a full disk, or one made before the request was refused, was left there
  -- for days, until a later generation pruned it
  if not jobs and settings.keep_job_files == 0 then M.remove_tree(folders.job_dir) end
  return jobs, negatives
end

--[[
Takes made by several jobs (more variations than one job holds) in one order, best first: each
job ranked only its own. The engine's scores compare across jobs (the same caption and the same
layers heard), so the takes are ordered by them when every take has one; otherwise (ranked by
seed) they stay in job order, which is seed order. Ranks are renumbered to the new places.
]]
function M.rank_across_jobs(takes)
  local function score(t)
    local ranking = type(t.meta.engine) == "table" and t.meta.engine.ranking
    return type(ranking) == "table" and type(ranking.score) == "number" and ranking.score or nil
  end
  local all_scored = true
  for i, t in ipairs(takes) do
    t.place = i
    all_scored = all_scored and score(t) ~= nil
  end
  if all_scored then
    table.sort(takes, function(a, b)
      if score(a) ~= score(b) then return score(a) > score(b) end
      return a.place < b.place
    end)
  end
  for i, t in ipairs(takes) do
    t.place = nil
    if t.meta.rank ~= nil then t.meta.rank = i end
  end
end

-- The layers' bounce reached the engine silent over the region (master volume automation down
-- there, an FX silencing the layers): the track was made as a first track is, negating nothing
-- (the engine's metadata earlier_layers_silent). Said, never silently.
local function say_if_layers_were_silent(takes, negatives)
  if not (negatives and negatives.mix) then return end
  for _, t in ipairs(takes) do
    if type(t.meta.engine) == "table" and t.meta.engine.earlier_layers_silent == true then
      return M.log("the layers to negate were silent in their bounce over the region as the model hears them " ..
        "(master volume automation down there, an FX silencing them, or only sound above the model's band?), so " ..
        "the new audio was made without negating them.")
    end
  end
end

-- negative_prompt steers away from the layers' captions, as many as its text encoder hears
-- whole (the engine's metadata previous_captions_left_out counts the others). Said, never silently.
local function say_if_captions_were_left_out(takes)
  local engine = type(takes[1].meta.engine) == "table" and takes[1].meta.engine or {}
  local left_out = math.tointeger(engine.previous_captions_left_out)
  if left_out and left_out > 0 then
    M.log(string.format("%d of the earlier layers' captions did not fit in what the text encoder reads (75 " ..
      "tokens), so the new audio was not steered away from them; shorten those captions, or choose fewer " ..
      "layers to negate.", left_out))
  end
end

-- A take further than this from the drawn loudness curve, as a median over where it is heard
-- (the engine's metadata loudness_curve_error_db), did not follow it; a followed one is within 1 dB.
M.CURVE_MISSED_DB = 3.0

-- The curve asked for more than the engine's level automation gives (engine/loudness_curve.py:
-- +30 dB, -60 dB, then the -1 dBTP limiter). Which bound held it, from the automation's range
-- (loudness_curve_gain_db) and, for a stem brought onto the curve again at its own rate and time
-- (varispeed, a rate below the model's), that pass's range (loudness_curve_output_correction_db),
-- bounded by what the first left: the two add up where the stem is heard.
function M.why_the_curve_was_missed(engine)
  local function range(key)
    local r = type(engine[key]) == "table" and engine[key] or {}
    return tonumber(r[1]), tonumber(r[2])
  end
  local lowest, highest = range("loudness_curve_gain_db")
  local again_lowest, again_highest = range("loudness_curve_output_correction_db")
  local boosted = highest and highest + math.max(again_highest or 0, 0)
  local cut = lowest and lowest + math.min(again_lowest or 0, 0)
  if boosted and boosted >= 29.9 then
    return "the model's sound was too faint to lift onto it (the level automation lifts at most 30 dB): generate " ..
      "the take again, or draw the envelope lower"
  elseif cut and cut <= -59.9 then
    return "it asks for more than 60 dB under the model's sound, the most the level automation cuts: draw the " ..
      "envelope higher"
  end
  return "it asks for louder than the stem's peaks allow (they stay under -1 dBTP): draw the envelope lower, " ..
    "nearer 0 dB"
end

-- Said, never silently: the take is still added.
local function say_if_the_curve_was_missed(takes)
  local worst
  for _, t in ipairs(takes) do
    local engine = type(t.meta.engine) == "table" and t.meta.engine or {}
    local missed = tonumber(engine.loudness_curve_error_db)
    if missed and missed > M.CURVE_MISSED_DB and (not worst or missed > worst.missed) then
      worst = { missed = missed, engine = engine }
    end
  end
  if not worst then return end
  M.log(string.format("the new audio is %.1f dB from the drawn loudness curve (median, where it is heard): %s.",
    worst.missed, M.why_the_curve_was_missed(worst.engine)))
end

-- Puts the finished results into the project, in one undo point.
local function insert_results(job, settings, region, jobs, results, negatives, params)
  local takes = {}
  for i, r in ipairs(results) do
    if r.state == "done" and r.stems then -- every variation of a protocol-2 job, best first
      for _, s in ipairs(r.stems) do
        local request = {}
        for k, v in pairs(jobs[i].request) do request[k] = v end
        request.seed, request.variations = s.metadata.seed or request.seed, nil
        local meta = M.take_metadata(request, { stem_path = s.stem_path, job_id = r.job_id, metadata = s.metadata },
          negatives, job.reference_label, job.stored_fields)
        meta.rank, meta.ranking = s.metadata.rank, r.ranking
        takes[#takes + 1] = { stem_path = s.stem_path, meta = meta }
      end
    elseif r.state == "done" then
      takes[#takes + 1] = { stem_path = r.stem_path,
        meta = M.take_metadata(jobs[i].request, r, negatives, job.reference_label, job.stored_fields) }
    end
  end
  if #takes == 0 then return end
  say_if_layers_were_silent(takes, negatives)
  say_if_captions_were_left_out(takes)
  say_if_the_curve_was_missed(takes)
  if #jobs > 1 then M.rank_across_jobs(takes) end
  local proj = job.proj
  if not still_there(job) then
    M.alert("The " .. (job.item and "item was deleted (or its project closed)" or "project was closed") ..
      " while generating; the stems are in\n" .. jobs[1].folders.output_dir)
    return
  end
  local shift, why = picture_moved(job, region)
  if not shift then
    return M.alert("Nothing was added: " .. why .. " while generating, so StepFoley cannot tell where the new " ..
      "audio lines up with the picture. The stems are in\n" .. jobs[1].folders.output_dir)
  end
  if shift ~= 0 then
    region = shifted(region, shift)
    for _, t in ipairs(takes) do
      if type(t.meta.region) == "table" then t.meta.region = shifted(t.meta.region, shift) end
    end
    M.log(string.format("the picture moved %+.3f s while generating; the new audio follows it, from %.3f s.",
      shift, M.on_ruler(proj, region.project_start)))
  end
  M.undoable_edit(proj, job.undo(params, #takes), function()
    if job.item then
      local take = M.add_take(job.item, stem_sources({ takes[1] })[1], takes[1].meta, region)
      local kept = job.kept_take -- gone if the user deleted it meanwhile
      if kept and reaper.ValidatePtr2(proj, kept, "MediaItem_Take*") then copy_take_sound(kept, take) end
      reaper.SetActiveTake(take)
      local pos, item_end = M.item_range(job.item)
      if job.extend_item and region.project_end > item_end then
        reaper.SetMediaItemInfo_Value(job.item, "D_LENGTH", region.project_end - pos)
      end
      local _, notes = reaper.GetSetMediaItemInfo_String(job.item, "P_NOTES", "", false)
      reaper.GetSetMediaItemInfo_String(job.item, "P_NOTES", M.notes_with(notes, M.describe(takes[1].meta)), true)
    else
      local lanes = #takes > 1 and settings.variations_as == "lanes" and M.has_fixed_lanes()
      M.insert_track(proj, region, takes, lanes, job.picture.timebase)
    end
  end)
end

--[[
What plays under `item` outside `region` (one stretch of one video file): nil when the item lies
within it; else what plays there and the span (a, b): "loop" (the region's own video item
starting its source again) or the file another video item shows (region.video itself at a cut
within it), before the region or after it, else "none" (no picture) and the first such span.
]]
function M.picture_beyond(item, region)
  local proj = reaper.GetItemProjectContext and reaper.GetItemProjectContext(item) or 0
  local pos, item_end = M.item_range(item)
  local spans = {}
  if region.project_start > pos + 1e-6 then spans[#spans + 1] = { pos, region.project_start } end
  if region.project_end < item_end - 1e-6 then spans[#spans + 1] = { region.project_end, item_end } end
  if #spans == 0 then return nil end
  local own = M.find_video_item(proj, region.project_start, region.project_end)
  for _, span in ipairs(spans) do
    local a, b = span[1], span[2]
    local other = M.find_video_item(proj, a, b)
    if other and other == own then return "loop", a, b end
    local levels = other and M.source_chain(reaper.GetActiveTake(other))
    local shown = levels and #levels > 0 and reaper.GetMediaSourceFileName(levels[#levels].src, "")
    if shown and shown ~= "" then return shown, a, b end
  end
  return "none", spans[1][1], spans[1][2]
end

-- Why one generation cannot follow the picture under all of `item` (M.picture_beyond: a loop
-- starting again, or another shot), said with what becomes of the item there (`lost`) and what to
-- trim; nil where there is no other picture.
function M.other_picture_problem(item, region, lost, trim)
  local what, a, b = M.picture_beyond(item, region)
  if what == nil or what == "none" then return nil end
  local proj = reaper.GetItemProjectContext and reaper.GetItemProjectContext(item) or 0
  if what == "loop" then
    return string.format("The video item under the selected item loops its source, and starts it again from " ..
      "%.3f s to %.3f s. StepFoley follows one pass of the picture per generation, so %s there. Trim %s to one " ..
      "pass, or render the looped picture into one file, then try again.", M.on_ruler(proj, a), M.on_ruler(proj, b),
      lost, trim)
  end
  local shows = what ~= region.video
    and string.format("changes to another video file: %s shows from %.3f s to %.3f s, and %s over the rest",
      M.basename(what), M.on_ruler(proj, a), M.on_ruler(proj, b), M.basename(region.video))
    or string.format("cuts within %s: another video item of it shows from %.3f s to %.3f s", M.basename(what),
      M.on_ruler(proj, a), M.on_ruler(proj, b))
  return "The picture under the selected item " .. shows .. ". StepFoley follows one stretch of one video file " ..
    "per generation, so " .. lost .. " where the other plays. Render the picture of this stretch into one file, " ..
    "or trim " .. trim .. " to one shot, then try again."
end

M.MIN_REGENERATE_S = 0.1 -- stepfoley.request.MIN_REGENERATE_SECONDS

-- As M.region_for, for `job` (M.generate's): its region, nil, whether it was clipped and its video
-- item; or nil and why it cannot be made over its picture, said before anything is asked or bounced:
-- no picture under its range, or, for a new take over the whole item (job.words is M.ITEM_WORDS),
-- which covers the picture of one shot, another shot under part of the item (the take would be
-- silent there; Extend says so of its own range, M.continuation_fields).
function M.job_picture(job)
  local region, region_err, clipped, video_item = M.region_for(job.proj, job.t0, job.t1, job.picture_under,
    job.words)
  if not region then return nil, region_err end
  -- known now, and refused by fit_request anyway: said before the dialog and the bounce, not after
  local not_utf8 = not_utf8_problem({ region.video, M.project_folder(job.proj) })
  if not_utf8 then return nil, not_utf8 end
  local other = job.words == M.ITEM_WORDS and clipped
    and M.other_picture_problem(job.item, region, "the new take would be silent", "the item")
  if other then return nil, other end
  return region, nil, clipped, video_item
end

--[[
The fields of a protocol-2 request that keeps the active take of `item` and makes the span
a..b (project time) new: the take's source file, where region.project_start falls in it, and
the span in seconds from region.project_start (clipped to the region, which may be clipped to
the picture). nil and a message when the take cannot be kept sample for sample or nothing of
it would be kept. `words`: how a refusal names the range (M.SELECTION_WORDS when nil).
]]
function M.continuation_fields(item, region, a, b, caps, words)
  local proj = reaper.GetItemProjectContext and reaper.GetItemProjectContext(item) or 0 -- for its ruler
  if math.abs(region.playrate - 1) > 1e-9 then -- the engine's rule, said before anything is bounced
    return nil, string.format("The video item plays at rate %g. StepFoley extends or repairs a take only under " ..
      "a picture at rate 1, so that the new part follows the picture the take was made for. Set the video " ..
      "item's playrate to 1 for this, or render the picture at this speed and use that.", region.playrate)
  end
  local take = reaper.GetActiveTake(item)
  if math.abs(reaper.GetMediaItemTakeInfo_Value(take, "D_PLAYRATE") - 1) > 1e-9 then
    return nil, "The selected item plays its take at another rate. StepFoley keeps the take sample for sample, " ..
      "so set the take's playrate to 1 or glue the item (Item > Glue items) first."
  end
  -- spectral edits (REAPER 6.x+; an older REAPER reads the unknown key as 0)
  if reaper.GetTakeNumStretchMarkers(take) > 0 or reaper.CountTakeEnvelopes(take) > 0
      or reaper.GetMediaItemTakeInfo_Value(take, "IP_SPECEDIT:CNT") > 0 then
    return nil, "The selected item's take has stretch markers, take envelopes or spectral edits, which a new " ..
      "take would not have. Glue the item (Item > Glue items) first, so that StepFoley can keep it as it sounds."
  end
  if reaper.TakeFX_GetCount(take) > 0 and not reaper.TakeFX_CopyToTake then
    return nil, "The selected item's take has take FX, which this REAPER cannot copy to a new take. Glue the " ..
      "item (Item > Glue items) first, so that StepFoley can keep it as it sounds."
  end
  local levels = M.source_chain(take)
  if #levels > 1 or levels[1].rev then
    return nil, "The selected item's take is a section of its file or reversed. Glue the item (Item > Glue items) " ..
      "first, so that StepFoley can keep it sample for sample."
  end
  local pos, item_end = M.item_range(item)
  -- the stem covers the picture only: the item's take outside it would be silent in the new
  -- take (an extension past the picture's end is only cut short there: nothing of the take is lost)
  local what, uncovered_a, uncovered_b = M.picture_beyond(item, region)
  if what then
    return nil, M.other_picture_problem(item, region, "the take would be lost", "the item (and the time selection)")
      or string.format("The selected item reaches outside the picture: %.3f s to %.3f s has no video " ..
        "under it, and StepFoley makes the new take over the picture only, so the take would be lost there. Trim " ..
        "the item (and the time selection) to the picture, or put the picture under all of it, then try again.",
        M.on_ruler(proj, uncovered_a), M.on_ruler(proj, uncovered_b))
  end
  local offset = reaper.GetMediaItemTakeInfo_Value(take, "D_STARTOFFS") + (region.project_start - pos)
  if offset < -1e-9 then
    return nil, "The selected item's take starts later than the picture StepFoley would keep it from. Glue the " ..
      "item (Item > Glue items) first."
  end
  a, b = math.max(a, region.project_start), math.min(b, region.project_end)
  -- an item dragged out past its take's audio plays silence there
  local audio_end = pos + (reaper.GetMediaSourceLength(levels[1].src) - reaper.GetMediaItemTakeInfo_Value(take,
    "D_STARTOFFS"))
  if M.loops_source(item) and audio_end < item_end - 1e-6 then -- and a repeat, heard, where it loops
    return nil, string.format("The selected item loops its source: from %.3f s on it plays its audio again, " ..
      "which a new take would not keep. Glue the item (Item > Glue items) first, so that StepFoley keeps it " ..
      "as it sounds, or turn off Loop source in its item properties if the repeat is not wanted.", M.on_ruler(proj, audio_end))
  end
  if b >= region.project_end - 1e-6 then
    a = math.min(a, audio_end) -- the new part starts where the audio ends, covering the rest of the item too
  elseif audio_end < region.project_end - 1e-6 then
    return nil, string.format("The selected item runs %.3f s past the end of its take's audio (its edge was " ..
      "dragged out), so the part after the time selection cannot be kept from the take. " ..
      "Trim the item to its audio, or glue it (Item > Glue items), then make the part again; or extend the item " ..
      "from %.3f s with \"Extend selected Foley item to time selection\".", region.project_end - audio_end,
      M.on_ruler(proj, audio_end))
  end
  if a <= region.project_start + 1e-6 and b >= region.project_end - 1e-6 then
    return nil, "Nothing of the take would be kept: the time selection covers all of it. Use \"Regenerate " ..
      "selected Foley item\" to make it anew."
  end
  local shortest = tonumber(M.published(caps, "regenerate_seconds", M.MIN_REGENERATE_S)) or M.MIN_REGENERATE_S
  if b - a < shortest - 1e-6 then -- as the engine rounds: 2.05 - 1.95 is 0.0999...
    return nil, string.format("The part to make new (%.3f s to %.3f s) is shorter than %g s, or outside the " ..
      "picture. Make a longer time selection.", M.on_ruler(proj, a), M.on_ruler(proj, b), shortest)
  end
  local fields = { protocol = 2, take = reaper.GetMediaSourceFileName(levels[1].src, ""),
    take_offset = math.max(0, offset), regenerate = M.array({ a - region.project_start, b - region.project_start }) }
  -- at the take's own rate: at the project's (48 kHz when it is not set; a glue follows the
  -- audio device's), the kept part would come back resampled, not sample for sample
  local rate = math.floor(reaper.GetMediaSourceSampleRate(levels[1].src) + 0.5)
  if M.writes_rate(caps, rate) then
    fields.sample_rate = rate
    -- the stem's length at the take's rate and channels, as the project's was checked
    local channels = math.max(math.tointeger(reaper.GetMediaSourceNumChannels(levels[1].src)) or 1, 1)
    local problem = M.region_length_problem(region, false, caps, rate, "the take's", channels, words)
    if problem then return nil, problem end
  else
    M.log(string.format("the take is at %d Hz, a rate StepFoley does not write: the new take comes at the " ..
      "rate of the project's new tracks, and its kept part is resampled to it.", rate))
  end
  return fields
end

-- Whether the engine writes stems at `rate` Hz: its published sample_rates, else this copy of
-- stepfoley.request.SAMPLE_RATES.
M.SAMPLE_RATES = { 8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000 }

function M.writes_rate(caps, rate)
  local rates = M.published(caps, "sample_rates", M.SAMPLE_RATES)
  for _, r in ipairs(type(rates) == "table" and rates or M.SAMPLE_RATES) do
    if r == rate then return true end
  end
  return false
end

-- The rate new stems are written at: the project's, or where the engine does not write that
-- rate (a project set to 64 kHz), the lowest it writes above it, else its highest: REAPER plays
-- a file of any rate in the project. Returns rate, whether it is not the project's.
function M.stem_rate(caps, project_rate)
  if M.writes_rate(caps, project_rate) then return project_rate, false end
  local rates = M.published(caps, "sample_rates", M.SAMPLE_RATES)
  local above, highest
  for _, r in ipairs(type(rates) == "table" and rates or M.SAMPLE_RATES) do
    if type(r) == "number" then
      if r >= project_rate and (not above or r < above) then above = r end
      if not highest or r > highest then highest = r end
    end
  end
  return above or highest or 48000, true
end

-- A job whose result becomes a new take of `item`: over the item's range, never negating the
-- item's own track. Fills in proj, item, t0, t1 and exclude of `job` (see M.generate).
function M.job_for_item(proj, item, job)
  job.proj, job.item, job.words = proj, item, M.ITEM_WORDS
  job.t0, job.t1 = M.item_range(item)
  job.exclude = { [reaper.GetMediaItem_Track(item)] = true }
  return job
end

-- When the engine does not say (stepfoley.request): the picture lengths a request may have
-- (MIN_REGION_SECONDS, MAX_REGION_SECONDS), the longest stem on the timeline (MAX_STEM_SECONDS)
-- and its largest file (MAX_STEM_BYTES, with WAV_HEADER_BYTES and wav24's 3 bytes a sample).
M.REGION_SECONDS = { 1.0, 600.0 }
M.STEM_SECONDS = 600.0
M.STEM_BYTES = 128 * 2 ^ 20
local WAV_HEADER_BYTES, WAV24_BYTES = 4096, 3

-- Why the region is too short or too long for the engine (said before the dialog and any
-- bounce), or nil: its picture, its length on the timeline (the picture may play at another
-- rate) and its new track's file at `sample_rate`. `clipped`: the picture covers only part of
-- the selection. `whose`: whose rate sample_rate is ("this project's" when nil); `channels`:
-- the stem's (1 when nil: a new track is mono; a continuation has its take's); `words`: how the
-- range is named (M.SELECTION_WORDS when nil).
function M.region_length_problem(region, clipped, caps, sample_rate, whose, channels, words)
  words = words or M.SELECTION_WORDS
  local bound = M.published(caps, "region_seconds", M.REGION_SECONDS)
  if type(bound) ~= "table" then bound = M.REGION_SECONDS end
  local low, high = tonumber(bound[1]) or M.REGION_SECONDS[1], tonumber(bound[2]) or M.REGION_SECONDS[2]
  local length = region.file_out - region.file_in
  local what = clipped and string.format("Only %.2f s of %s has picture under it", length, words.part)
    or string.format("%s covers %.2f s of picture", M.capitalized(words.part), length)
  if length < low - 1e-6 then
    return string.format("%s; StepFoley needs at least %g s to follow. %s.", what, low, words.longer)
  elseif length > high + 1e-6 then
    return string.format("%s; at most %g s can be made at once. %s.", what, high, words.shorter)
  end
  local timeline = region.project_end - region.project_start
  local most_s = tonumber(M.published(caps, "stem_seconds", M.STEM_SECONDS)) or M.STEM_SECONDS
  local most_bytes = tonumber(M.published(caps, "stem_bytes", M.STEM_BYTES)) or M.STEM_BYTES
  channels = channels or 1
  local longest = math.min(most_s, (most_bytes - WAV_HEADER_BYTES) / (WAV24_BYTES * sample_rate * channels))
  if timeline > longest + 1e-6 then
    return string.format("The new item would last %.1f s on the timeline; at most %.1f s can be made at once at " ..
      "%s %d Hz%s. %s.", timeline, math.floor(longest * 10) / 10, whose or "this project's", sample_rate,
      channels > 1 and string.format(" in %d channels", channels) or "", words.shorter)
  end
  return nil
end

--[[
One generating action, from the engine check to the new media. `job`:
  proj; t0, t1      the time selection, or the item's range;
  title             of the dialog and the progress window;
  exclude           tracks that are never negatives (the layer being replaced); the picture's
                    track is added;
  item              when set, the result becomes a new active take of this item; else a new track;
                    a continuation's (extra_fields with `take`) gets the kept take's sound
                    settings (M.TAKE_SOUND);
  words             how refusals name the range (M.ITEM_WORDS from job_for_item; M.SELECTION_WORDS when nil);
  extra_fields      optional function(region, capabilities, words) -> request fields or nil, message:
                    what the action adds to the request (extend and repair: M.continuation_fields;
                    a loudness curve or a picture region: StepFoley_lib_controls.lua); with
                    protocol = 2 among them, feature says what an older engine cannot do;
  stored_fields     optional table: fields the new takes' metadata keeps though the request did
                    not send them (a continuation's loudness curve: M.continuation_job_fields);
  extend_item       the item grows to the region's end;
  dialog            a dialog spec (M.dialog_fields) without title and engine (its fixed_method
                    may be a function(capabilities) -> name or nil, message); or nil, with
  params            fixed parameters (M.parse_form's result);
  params_for        optional function(engine) -> params or nil, message: when the parameters
                    depend on what the engine offers;
  make_reference    optional function(folders, sample_rate, region) -> path or nil, message;
  reference_label   what the reference was, for the metadata;
  undo              function(params, n) -> the undo point's name.
Everything that can wait for something (the engine, the dialog, the jobs) runs from
reaper.defer: REAPER stays usable throughout.
]]
function M.generate(job)
  local region, why, clipped, video_item = M.job_picture(job)
  if not region then return M.alert(why) end
  job.exclude = job.exclude or {}
  job.exclude[reaper.GetMediaItem_Track(video_item)] = true
  job.picture = M.picture_placement(video_item)
  job.item_position = job.item and reaper.GetMediaItemInfo_Value(job.item, "D_POSITION")
  local settings = M.load_settings()
  local prefix, found = M.client_prefix(settings)
  if not prefix then return M.alert(found) end

  local function run(engine, params)
    if not still_there(job) then
      return M.alert("The " .. (job.item and "item" or "project") .. " is gone; nothing was generated.")
    end
    local shift, why = picture_moved(job, region)
    if shift ~= 0 then -- the layers to negate and the region were read where the picture was
      return M.alert("Nothing was generated: " .. (why or "the picture moved") .. " before generating began. " ..
        "Run the action again.")
    end
    local jobs, negatives = prepare_jobs(job, settings, engine, params, region)
    if not jobs then return M.alert(negatives) end
    if clipped then -- said once that part will be made
      M.log(string.format("you see the video item %s over only %.3f s to %.3f s of the range (the rest has no " ..
        "picture, another video item shows, or the looped picture starts again: make a second pass there); " ..
        "generating that part.",
        M.basename(region.video), M.on_ruler(job.proj, region.project_start), M.on_ruler(job.proj, region.project_end)))
    end
    M.run_jobs(settings, prefix, jobs, "StepFoley: " .. params.caption, function(results)
      M.report(results, jobs)
      insert_results(job, settings, region, jobs, results, negatives, params)
    end)
  end

  M.query_engine(settings, prefix, function(engine)
    if not engine.client_ok then return M.alert(engine.message) end
    if not still_there(job) then -- closed (or the item deleted) while the engine was asked
      return M.alert("The " .. (job.item and "item was deleted (or its project closed)" or "project was closed") ..
        " while StepFoley asked the engine; nothing was generated.")
    end
    local stem_rate, substituted = M.stem_rate(engine.capabilities, M.project_sample_rate(job.proj))
    local length_problem = M.region_length_problem(region, clipped, engine.capabilities, stem_rate,
      substituted and (job.item and "the new take's" or "the new track's") or nil, nil, job.words)
    if length_problem then return M.alert(length_problem) end
    if not job.dialog then
      return with_running_engine(settings, prefix, engine, function(ready)
        local params, err = job.params, nil
        if job.params_for then params, err = job.params_for(ready) end
        if not params then return M.alert(err) end
        run(ready, params)
      end)
    end
    local spec = job.dialog
    spec.title, spec.engine = job.title, engine
    if type(spec.fixed_method) == "function" then
      local name, err = spec.fixed_method(engine.capabilities)
      if not name then return M.alert(err) end
      spec.fixed_method = name
    end
    if spec.negatives then
      local a, b = region.project_start, region.project_end
      spec.candidates = M.layer_candidates(job.proj, a, b, job.exclude)
      spec.picked = #(M.picked_items(job.proj, a, b, job.exclude))
    end
    M.ask_params(spec, function(params, roles)
      if still_there(job) then apply_roles(job.proj, roles) end
      with_running_engine(settings, prefix, engine, function(ready) run(ready, params) end)
    end)
  end)
end

return VERSION
end
