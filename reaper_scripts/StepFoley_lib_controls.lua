-- @noindex
--[[
StepFoley library, part "controls": the request fields that shape a new track beyond its
caption (protocol 2): a loudness curve read from a volume envelope the user drew, and the part
of the picture the sound comes from, typed as words or percentages. Loaded by
StepFoley_lib.lua; adds to its table.
]]

-- Returned by the function below, for StepFoley_lib.lua to check: the files of one release go together
local VERSION = "0.5.39"

return function(M)

------------------------------------------------------------------------------------------
-- Loudness curve from a volume envelope
------------------------------------------------------------------------------------------

-- 0 dB on the envelope is the level StepFoley delivers every other track at (engine.mixing.
-- STEM_LUFS), so a flat envelope at 0 dB gives a track as loud as one made without a curve.
M.LOUDNESS_AT_0DB = -23
-- Defaults for an engine that does not publish its bounds (stepfoley.request).
M.MAX_LOUDNESS_POINTS = 128
M.LOUDNESS_RANGE = { -70, 0 }
-- The envelope is read at most this far apart, at most MAX_CURVE_READINGS times (a region is
-- at most 600 s: 12001 readings); of the readings, the curve keeps the ones that a straight
-- line through the kept ones misses by more than CURVE_TOLERANCE_DB (M.loudness_curve).
M.CURVE_STEP_S = 0.05
M.MAX_CURVE_READINGS = 12001
M.CURVE_TOLERANCE_DB = 0.05
-- A track's volume envelopes, by the names of their configuration chunks: Volume, Volume
-- (Pre-FX) and Trim Volume. Their shown names are translated by a LangPack ("Lautstärke"),
-- these are not.
M.VOLUME_ENVELOPE_CHUNKS = { "<VOLENV2", "<VOLENV", "<VOLENV3" }

local published = M.published

-- Whether `env` is one of its track's volume envelopes (whatever REAPER's language).
local function is_track_volume(env)
  local track = reaper.Envelope_GetParentTrack(env)
  if not track then return false end
  for _, chunk in ipairs(M.VOLUME_ENVELOPE_CHUNKS) do
    if reaper.GetTrackEnvelopeByChunkName(track, chunk) == env then return true end
  end
  return false
end

-- The selected track volume envelope, or nil and a message saying how to select one.
function M.selected_volume_envelope(proj)
  local env = reaper.GetSelectedEnvelope(proj)
  if not env then
    return nil, "Select the volume envelope to follow first: draw the loudness you want over the time selection " ..
      "on a track's Volume envelope (an empty track is best: the envelope also acts on a track's own audio), " ..
      "click the envelope lane so that it is selected, and run this action again. 0 dB on the envelope is " ..
      M.LOUDNESS_AT_0DB .. " LUFS, the level of StepFoley's other tracks."
  end
  if reaper.Envelope_GetParentTake(env) then
    return nil, "The selected envelope belongs to a take. Draw the loudness on a track's Volume envelope instead."
  end
  if not is_track_volume(env) then
    local _, name = reaper.GetEnvelopeName(env) -- in REAPER's language, as the user sees it
    return nil, "The selected envelope is \"" .. tostring(name) .. "\". StepFoley follows a track's Volume " ..
      "(or Trim Volume) envelope: select one of those."
  end
  return env
end

local function loudness_at(env, mode, t, low, high)
  local _, value = reaper.Envelope_Evaluate(env, t, 0, 0)
  local gain = reaper.ScaleFromEnvelopeMode(mode, value)
  local db = gain > 0 and 20 * math.log(gain, 10) or -math.huge
  return math.max(low, math.min(high, M.LOUDNESS_AT_0DB + db))
end

-- How far inside the selection its first and last readings are taken: an envelope that changes
-- at an edge (a square point there, or the two points REAPER adds at a time selection's edges
-- when a segment inside it is raised) gave the value beyond it, and the stem faded there.
M.EDGE_READING_S = 1e-4

-- The envelope over [0, length] seconds from `a`, read at most CURVE_STEP_S apart (evenly,
-- both ends included, read EDGE_READING_S inside them): {seconds from a, dB LUFS} each.
local function readings(env, a, length, low, high)
  local steps = math.max(1, math.ceil(length / M.CURVE_STEP_S - 1e-6))
  steps = math.min(steps, M.MAX_CURVE_READINGS - 1)
  local mode = reaper.GetEnvelopeScalingMode(env)
  local points = {}
  for i = 0, steps do
    local t = length * i / steps
    local inside = math.max(math.min(t, length - M.EDGE_READING_S), M.EDGE_READING_S)
    points[i + 1] = { t, loudness_at(env, mode, a + inside, low, high) }
  end
  return points
end

-- The reading strictly between points[i] and points[j] farthest (in dB) from the straight
-- line between them: its index and that distance (nil, 0 when there is none).
local function farthest(points, i, j)
  local a, b = points[i], points[j]
  local slope = (b[2] - a[2]) / (b[1] - a[1])
  local at, most = nil, 0
  for k = i + 1, j - 1 do
    local p = points[k]
    local d = math.abs(a[2] + slope * (p[1] - a[1]) - p[2])
    if d > most then at, most = k, d end
  end
  return at, most
end

--[[
At most `most` of the readings, the two ends always, chosen the Douglas-Peucker way: from the
ends on, the reading that the straight lines through the kept ones miss by the most is kept
next, until they miss none by more than CURVE_TOLERANCE_DB or `most` are kept. A flat or
straight stretch needs only its ends, and a short dip in a long flat region is far off the
line, so it is kept among the first (evenly spaced points would step over it).
]]
local function thinned(points, most)
  local keep, kept = { [1] = true, [#points] = true }, 2
  local spans = {} -- {i, j, farthest reading, its distance}: the stretches still missed
  local function look_at(i, j)
    local at, distance = farthest(points, i, j)
    if at and distance > M.CURVE_TOLERANCE_DB then spans[#spans + 1] = { i, j, at, distance } end
  end
  look_at(1, #points)
  while kept < most and #spans > 0 do
    local worst = 1
    for s = 2, #spans do if spans[s][4] > spans[worst][4] then worst = s end end
    local i, j, at = table.unpack(table.remove(spans, worst))
    keep[at], kept = true, kept + 1
    look_at(i, at)
    look_at(at, j)
  end
  local out = {}
  for k = 1, #points do if keep[k] then out[#out + 1] = points[k] end end
  return out
end

--[[
The request's loudness_curve: the envelope read over the region every CURVE_STEP_S, thinned to
the readings that matter (at most the points the engine takes), as [seconds from
region.project_start, dB LUFS] points. nil and a message when the envelope is gone.
]]
function M.loudness_curve(proj, env, region, caps)
  if not reaper.ValidatePtr2(proj, env, "TrackEnvelope*") then
    return nil, "The volume envelope to follow is gone; nothing was generated."
  end
  local range = published(caps, "loudness_curve_db", M.LOUDNESS_RANGE)
  local most = math.max(2, published(caps, "loudness_curve_points", M.MAX_LOUDNESS_POINTS))
  local a, b = region.project_start, region.project_end
  local curve = {}
  for i, p in ipairs(thinned(readings(env, a, b - a, range[1], range[2]), most)) do
    curve[i] = M.array({ math.floor(p[1] * 1e6 + 0.5) / 1e6, math.floor(p[2] * 100 + 0.5) / 100 })
  end
  return M.array(curve)
end

------------------------------------------------------------------------------------------
-- Part of the picture
------------------------------------------------------------------------------------------

M.MIN_PICTURE_REGION = 0.05 -- stepfoley.request.MIN_PICTURE_REGION, when the engine does not say
M.MIN_PICTURE_REGION_SECONDS = 0.16 -- stepfoley.request.MIN_PICTURE_REGION_SECONDS, likewise
M.PICTURE_PARTS = {
  ["left"] = { 0, 0, 0.5, 1 }, ["right"] = { 0.5, 0, 1, 1 }, ["top"] = { 0, 0, 1, 0.5 }, ["bottom"] = { 0, 0.5, 1, 1 },
  ["top left"] = { 0, 0, 0.5, 0.5 }, ["top right"] = { 0.5, 0, 1, 0.5 },
  ["bottom left"] = { 0, 0.5, 0.5, 1 }, ["bottom right"] = { 0.5, 0.5, 1, 1 },
  ["centre"] = { 0.25, 0.25, 0.75, 0.75 }, ["center"] = { 0.25, 0.25, 0.75, 0.75 },
}
M.PICTURE_PART_WORDS = "left, right, top, bottom, top left, top right, bottom left, bottom right, centre"

local function numbers_in(text)
  local out = {}
  for word in text:gmatch("[^,;%%" .. M.SPACE .. "]+") do -- "10%, 20%": the label asks for percent
    local x = tonumber(word)
    if not x then return nil end
    out[#out + 1] = x
  end
  return out
end

--[[
A picture region typed by the user: one of PICTURE_PARTS ("left", "top right", also "left
half" and "upper left"), or "left, top, right, bottom" in percent of the picture's width and
height (0, 0 = top left). Returns {x0, y0, x1, y1} as fractions, or nil and a message.
]]
function M.parse_picture_region(text, caps)
  local words = (text or ""):lower():gsub("upper", "top"):gsub("lower", "bottom"):gsub("half", "")
  words = M.trim(words:gsub("[" .. M.SPACE .. "]+", " "))
  if M.PICTURE_PARTS[words] then return M.array({ table.unpack(M.PICTURE_PARTS[words]) }) end
  local smallest = published(caps, "picture_region_size", M.MIN_PICTURE_REGION)
  local v = numbers_in(words)
  if not v or #v ~= 4 then
    return nil, "Say which part of the picture the sound comes from: " .. M.PICTURE_PART_WORDS ..
      ", or four numbers: left, top, right, bottom in percent of the picture (for example 10, 20, 60, 90)."
  end
  for _, x in ipairs(v) do
    if x < 0 or x > 100 then return nil, "The picture region's numbers are percentages, from 0 to 100." end
  end
  local x0, y0, x1, y1 = v[1] / 100, v[2] / 100, v[3] / 100, v[4] / 100
  if math.min(x1 - x0, y1 - y0) < smallest - 1e-9 then -- as the engine rounds: 0.15 - 0.10 is 0.0499...
    return nil, string.format("The picture region must be at least %g %% wide and high, with right > left and " ..
      "bottom > top (left, top, right, bottom).", smallest * 100)
  end
  return M.array({ x0, y0, x1, y1 })
end

--[[
When the picture region applies, typed as "start-end" in seconds from the time selection's
start (empty: throughout), over a picture that plays `speed` times as fast as the timeline
(default 1). Returns {start, end} in seconds from the selection start, false for "throughout",
or nil and a message.
]]
function M.parse_picture_time(text, length, caps, speed)
  local t = M.trim(text)
  if t == "" then return false end
  local space = "[" .. M.SPACE .. "]"
  local a, b = t:match("^([%d%.]+)" .. space .. "*%-" .. space .. "*([%d%.]+)$")
  if not a then a, b = t:match("^([%d%.]+)" .. space .. "+to" .. space .. "+([%d%.]+)$") end
  a, b = tonumber(a), tonumber(b)
  if not a or not b or b <= a then
    return nil, "Say when the picture region applies as start-end in seconds from the time selection's start " ..
      "(for example 1.5-4), or leave it empty for the whole selection."
  end
  if a >= length then
    return nil, string.format("The picture region starts at %g s, after the time selection ends (%.3f s long).",
      a, length)
  end
  -- the engine's bound is in seconds of picture, which plays `speed` times as fast as the
  -- timeline here (picture_fields checks again, at the rate the picture plays once generating)
  local shortest = published(caps, "picture_region_seconds", M.MIN_PICTURE_REGION_SECONDS)
  speed = speed or 1
  if (math.min(b, length) - a) * speed < shortest - 1e-9 then
    return nil, string.format("The picture region must apply for at least %g s of the time selection (%g s of " ..
      "picture, the longest gap between the frames the picture features read), or no frame may be seen cropped.",
      shortest / speed, shortest)
  end
  return { a, math.min(b, length) }
end

M.PICTURE_STATE = "last_picture_region" -- ExtState: what the user typed last

--[[
Asks which part of the picture (and when) the sound comes from. Returns {region, time (false:
throughout)} or nil when the user cancels; asks again, with what was typed, after a mistake.
`speed`: how fast the picture under the selection plays (parse_picture_time).
]]
function M.ask_picture_region(length, caps, speed)
  local last = M.get_json_state(M.PICTURE_STATE) or {}
  local values = { last.part or "left", last.when or "" }
  while true do
    local answer, cut, cut_fields = M.plain_dialog("StepFoley: part of the picture", {
      -- GetUserInputs separates the captions with commas: none inside one
      "Part of the picture (left / top right / centre ... or left top right bottom in %)",
      "When (start-end in s from the selection start; empty: throughout)" }, values, 300)
    if answer == nil then return nil end
    values = answer or cut_fields
    local rect, err
    if answer then rect, err = M.parse_picture_region(values[1], caps) else err = cut end
    local when
    if rect then when, err = M.parse_picture_time(values[2], length, caps, speed) end
    if rect and when ~= nil then
      M.set_json_state(M.PICTURE_STATE, { part = values[1] or "", when = values[2] or "" }, true)
      return { region = rect, time = when }
    end
    M.alert(err)
  end
end

--[[
The request fields of a picture region chosen over the time selection starting at t0, for a
region that starts at region.project_start (later than t0 when the picture starts later).
nil and a message when the chosen time falls outside the picture.
]]
function M.picture_fields(choice, t0, region, caps)
  local fields = { protocol = 2, picture_region = choice.region }
  if choice.time then
    local length = region.project_end - region.project_start
    local a = math.max(0, t0 + choice.time[1] - region.project_start)
    local b = math.min(length, t0 + choice.time[2] - region.project_start)
    if b - a <= 0 then
      return nil, "The time the picture region applies to is outside the picture under the time selection."
    end
    -- the engine's bound is in seconds of picture: a picture that plays slower covers less of
    -- itself in the same stretch of timeline (the dialog asked in timeline seconds)
    local shortest = published(caps, "picture_region_seconds", M.MIN_PICTURE_REGION_SECONDS)
    local speed = (region.file_out - region.file_in) / length
    if (b - a) * speed < shortest - 1e-9 then
      return nil, string.format("The picture region applies for %.3f s of the time selection, which is %.3f s of " ..
        "the picture at the speed it plays here; make it at least %.3f s of the selection (%g s of picture, the " ..
        "longest gap between the frames the picture features read).", b - a, (b - a) * speed, shortest / speed,
        shortest)
    end
    fields.picture_region_time = M.array({ a, b })
  end
  return fields
end

------------------------------------------------------------------------------------------
-- Making a take again
------------------------------------------------------------------------------------------

M.CONTROL_FIELDS = { "loudness_curve", "picture_region", "picture_region_time" }

-- Whether `region` starts (and with `whole`, ends too) at the moment of the same video file, played
-- at the same rate, as `was` (a take's stored region): the controls' times count from there. It is
-- the picture that counts, not the timeline: a ripple edit moves the picture and its layers together.
-- The file is known by its name: a project moved with its media to another drive stores the old path.
local function same_picture(was, region, whole)
  local function near(key, tolerance)
    return type(was[key]) == "number" and math.abs(was[key] - region[key]) <= tolerance
  end
  return type(was.video) == "string" and M.basename(was.video) == M.basename(region.video)
    and near("file_in", 1e-6) and near("playrate", 1e-9) and (not whole or near("file_out", 1e-6))
end

--[[
The loudness curve and picture region a take was made with (its metadata), for making it again
over `region`: kept when the region is over the picture the take was made for (their times count
from its start), else left out with a note in the console. {} when the take had none.
]]
function M.stored_controls(meta, region)
  local fields = {}
  for _, key in ipairs(M.CONTROL_FIELDS) do fields[key] = meta[key] end
  if next(fields) == nil then return fields end
  if not same_picture(type(meta.region) == "table" and meta.region or {}, region, true) then
    M.log("the item no longer sits over the stretch of picture its loudness curve and part of the picture were " ..
      "drawn for; generating without them.")
    return {}
  end
  fields.protocol = 2
  return fields
end

--[[
The controls a take was made with, for a continuation of it (extend, repair) over `region`:
the part of the picture goes to the engine again while it fits (its times count from the
region's start, which a continuation keeps, and end within the region); the loudness curve
cannot (the engine refuses one with a take: the kept take sets the level) but is stored with
the new take while the item covers the time it was drawn for, so that a later "Regenerate
selected Foley item" follows it again. Returns the fields to send and those to store; what is
left out is said in the console.
]]
function M.continued_controls(meta, region)
  local sent, stored = {}, {}
  local was = type(meta.region) == "table" and meta.region or {}
  if meta.picture_region ~= nil then
    local when = type(meta.picture_region_time) == "table" and tonumber(meta.picture_region_time[2]) or 0
    if same_picture(was, region, false) and when <= region.project_end - region.project_start + 1e-6 then
      sent.picture_region, sent.picture_region_time = meta.picture_region, meta.picture_region_time
    else
      M.log("the item no longer sits over the stretch of picture its part of the picture was chosen for; " ..
        "continuing it without it.")
    end
  end
  if meta.loudness_curve ~= nil then
    if same_picture(was, region, true) then
      stored.loudness_curve = meta.loudness_curve
      M.log("the new part keeps the take's level, not the loudness curve; the curve stays with the new take " ..
        "for a later \"Regenerate selected Foley item\".")
    else
      M.log("the loudness curve was drawn for another time than the item covers now; the new take goes on " ..
        "without it.")
    end
  end
  return sent, stored
end

--[[
extra_fields for a continuation of `item` (extend, repair: the span a..b made new) and the
fields its new take stores besides the request (filled in when extra_fields runs): the
continuation's own (M.continuation_fields) and the take's controls (M.continued_controls).
]]
function M.continuation_job_fields(item, meta, a, b)
  local stored = {}
  local function extra_fields(region, caps, words)
    local fields, err = M.continuation_fields(item, region, a, b, caps, words)
    if not fields then return nil, err end
    local sent, keep = M.continued_controls(meta, region)
    for k, v in pairs(sent) do fields[k] = v end
    for k, v in pairs(keep) do stored[k] = v end
    return fields
  end
  return extra_fields, stored
end

return VERSION
end
