-- @noindex
--[[
StepFoley library, part "dialog": the parameters of a generation, asked in a ReaImGui window
where ReaImGui (0.9 or newer) is installed, else in REAPER's GetUserInputs dialog. Both show
the same fields from one description (M.dialog_fields), read them with one parser
(M.parse_form) and remember what the user typed the same way.

Guidance fields left empty mean "the loaded model's default": the request leaves them out and
the engine fills in its own (docs/osc-protocol.md). The dialog shows those defaults, the
methods and the bounds from the engine's capabilities (`stepfoley send --engine-status`);
when the engine does not answer it says so and shows no numbers of its own. Only values the
user typed are remembered (last_params), never a default.

Loaded by StepFoley_lib.lua; adds to its table.
]]

-- Returned by the function below, for StepFoley_lib.lua to check: the files of one release go together
local VERSION = "0.5.39"

return function(M)

local HISTORY_KEY, LAST_KEY = "caption_history", "last_params"
M.HISTORY_SIZE = 20
M.MAX_VARIATIONS = 16

------------------------------------------------------------------------------------------
-- What the engine offers
------------------------------------------------------------------------------------------

-- The methods a dialog offers: the engine's available methods whose audio branch is `audio`
-- ("reference" for the reference action; anything but "reference" otherwise).
function M.dialog_methods(caps, audio)
  local list = {}
  for _, m in ipairs((caps or {}).methods or {}) do
    local matches = (audio == "reference") == (m.audio == "reference")
    if m.available ~= false and matches then list[#list + 1] = m end
  end
  return list
end

local function method_info(caps, name)
  for _, m in ipairs((caps or {}).methods or {}) do if m.name == name then return m end end
  return nil
end
M.method_info = method_info

-- shown in the dialog and given back to parse_form as typed: a dot whatever LC_NUMERIC says
local function number_text(x) return M.number_text(x) end

-- The model's default for a field, as text, or nil when the engine did not say.
function M.default_text(caps, key)
  local d = caps and caps.defaults
  if type(d) ~= "table" or d[key] == nil then return nil end
  if type(d[key]) == "number" then return number_text(d[key]) end
  return tostring(d[key])
end

-- A few words about the engine, for the plain dialog's title and the ReaImGui window.
function M.engine_words(engine)
  if engine.state == "running" and engine.capabilities then
    return string.format("model %s on %s", tostring(engine.model), tostring(engine.device))
  elseif engine.state == "running" then
    return "an older engine: its defaults are not shown"
  elseif engine.state == "loading" then
    return "the engine is loading: defaults unknown"
  elseif engine.state == "stopping" then
    return "the engine is shutting down: start it again once it has closed"
  elseif engine.state == "error" then
    return "the engine refused to answer: defaults unknown"
  end
  return "engine NOT running: defaults unknown"
end

------------------------------------------------------------------------------------------
-- The fields
------------------------------------------------------------------------------------------

--[[
A dialog `spec`: {title, engine (M.query_engine's answer), values (initial text per field),
audio ("reference" for the reference action), fixed_method (a method that cannot be changed),
count (ask for a number of variations), negatives (ask which layers to negate: the spec then
has `candidates` from M.layer_candidates and `picked`, the number of picked items)}.
]]
function M.dialog_fields(spec)
  local keys = { "caption" }
  if not spec.fixed_method then keys[#keys + 1] = "method" end
  for _, k in ipairs({ "alpha", "beta", "seed", "steps" }) do keys[#keys + 1] = k end
  if spec.negatives then keys[#keys + 1] = "negatives" end
  if spec.count then keys[#keys + 1] = "count" end
  return keys
end

-- A short list of names for a label: no commas (GetUserInputs separates captions with them).
local function names_text(names, most)
  local shown = {}
  for i = 1, math.min(#names, most) do shown[i] = (names[i]:gsub("[,\n]", " ")) end
  local text = table.concat(shown, "; ")
  if #names > most then text = text .. string.format(" +%d", #names - most) end
  return text
end

local function layer_names(spec)
  local names = {}
  for _, c in ipairs(spec.candidates or {}) do if c.negative then names[#names + 1] = c.name end end
  return names
end

local function default_words(spec, key)
  local d = M.default_text(spec.engine.capabilities, key)
  if d then return "empty = " .. d end
  return "empty = the model's default"
end

-- The label of a field (no commas: see names_text).
function M.field_label(spec, key)
  if key == "caption" then return "Caption (what you hear)"
  elseif key == "method" then
    local names = {}
    for _, m in ipairs(M.dialog_methods(spec.engine.capabilities, spec.audio)) do names[#names + 1] = m.name end
    local list = #names > 0 and ("; or " .. table.concat(names, " / ")) or ""
    return "Method (" .. default_words(spec, "method") .. list .. ")"
  elseif key == "alpha" then return "Alpha: text guidance (" .. default_words(spec, "alpha") .. ")"
  elseif key == "beta" then
    local what = spec.audio == "reference" and "pull toward the reference" or "away from the negatives"
    return "Beta: " .. what .. " (" .. default_words(spec, "beta") .. ")"
  elseif key == "seed" then return "Seed (empty = random)"
  elseif key == "steps" then return "Steps (" .. default_words(spec, "steps") .. ")"
  elseif key == "negatives" then
    local names = layer_names(spec)
    return string.format("Negatives: layers (%s) / selection (%d items) / none",
      #names > 0 and names_text(names, 3) or "none yet", spec.picked or 0)
  elseif key == "count" then return "Number of variations"
  end
  error("unknown field " .. tostring(key))
end

------------------------------------------------------------------------------------------
-- Reading the fields
------------------------------------------------------------------------------------------

local trim = M.trim

-- A number field: nil when empty; error({msg}) when it is not a finite number within [low,
-- high] (without bounds, from an engine that did not say, "1e999" would reach the request as
-- infinity, which JSON cannot hold).
local function number_field(text, name, low, high, integer)
  text = trim(text)
  if text == "" then return nil end
  local x, hint = M.parse_number(text, integer)
  local whole = x ~= nil and x == math.floor(x) and math.abs(x) < 2 ^ 63
  local finite = x ~= nil and x == x and math.abs(x) ~= math.huge
  if not finite or (low and x < low) or (high and x > high) or (integer and not whole) then
    local range = (low and high) and string.format(" between %s and %s", number_text(low), number_text(high)) or ""
    error({ msg = string.format("%s must be %s%s, got \"%s\".%s", name, integer and "a whole number" or "a number",
      range, text, hint or "") }, 0)
  end
  if integer then return math.tointeger(x) or math.floor(x) end
  return x + 0.0
end

local function bounds(caps, key)
  local b = caps and caps.bounds and caps.bounds[key]
  if type(b) == "table" then return b[1], b[2] end
  return nil, nil
end

local function check_method(name, spec)
  if not name:match("^[a-z][a-z0-9_]*$") then
    error({ msg = "\"" .. name .. "\" is not a method name." }, 0)
  end
  local caps = spec.engine.capabilities
  if not caps then return name end -- the engine will say whether it knows it
  local info = method_info(caps, name)
  local offered = {}
  for _, m in ipairs(M.dialog_methods(caps, spec.audio)) do offered[#offered + 1] = m.name end
  if info and info.available == false then
    error({ msg = string.format("Method \"%s\" is not available: %s", name, tostring(info.unavailable_reason)) }, 0)
  end
  for _, n in ipairs(offered) do if n == name then return name end end
  error({ msg = string.format("Unknown method \"%s\". Use %s (or leave it empty for the model's default).", name,
    table.concat(offered, ", ")) }, 0)
end

--[[
Reads the dialog's text fields (`values`, by key). Returns params or nil, message:
{caption, method, alpha, beta, steps (nil = the model's default), seed (chosen at random when
empty), negatives ("layers"/"selection"/"none"), count}. Bounds come from the engine's
capabilities when it published them; without them only the kind of value is checked (the
client checks the request again before sending it).
]]
function M.parse_form(values, spec)
  local caps = spec.engine.capabilities
  local ok, result = pcall(function()
    local p = {}
    p.caption = trim(values.caption)
    if p.caption == "" then
      error({ msg = "The caption is empty: describe the sound to generate, e.g. \"footsteps on gravel\"." }, 0)
    end
    local max_chars = caps and caps.bounds and caps.bounds.caption_chars
    if max_chars and utf8.len(p.caption) and utf8.len(p.caption) > max_chars then
      error({ msg = string.format("The caption is longer than %d characters.", max_chars) }, 0)
    end
    if spec.fixed_method then
      p.method = spec.fixed_method
    else
      local method = M.lower_ascii(trim(values.method))
      if method ~= "" then p.method = check_method(method, spec) end
    end
    p.alpha = number_field(values.alpha, "Alpha", bounds(caps, "alpha"))
    p.beta = number_field(values.beta, "Beta", bounds(caps, "beta"))
    local steps_low, steps_high = bounds(caps, "steps")
    p.steps = number_field(values.steps, "Steps", steps_low or 1, steps_high, true)
    local seed_low, seed_high = bounds(caps, "seed")
    p.seed = number_field(values.seed, "Seed", seed_low or 0, seed_high, true) or M.random_seed()
    p.negatives = spec.audio == "reference" and "none" or "layers"
    if spec.negatives then
      local mode = M.lower_ascii(trim(values.negatives))
      if mode == "" then mode = "layers" end
      local known = false
      for _, m in ipairs(M.NEGATIVE_MODES) do known = known or m == mode end
      if not known then
        error({ msg = "Negatives must be layers, selection or none, got \"" .. mode .. "\"." }, 0)
      end
      p.negatives = mode
    end
    p.count = 1
    if spec.count then
      p.count = number_field(values.count, "Number of variations", 1, M.MAX_VARIATIONS, true) or 1
      -- variation k is made with seed + k - 1
      local top = seed_high or math.maxinteger
      if p.seed > top - (p.count - 1) then
        error({ msg = string.format("Seed %s leaves no room for %d variations (they use the seed and the %d after " ..
          "it, up to %s); choose a smaller seed.", number_text(p.seed), p.count, p.count - 1, number_text(top)) }, 0)
      end
    end
    return p
  end)
  if ok then return result end
  return nil, type(result) == "table" and result.msg or tostring(result)
end

function M.random_seed()
  return math.random(1, 2 ^ 31 - 1)
end

------------------------------------------------------------------------------------------
-- Remembering
------------------------------------------------------------------------------------------

function M.caption_history()
  local list = M.get_json_state(HISTORY_KEY)
  local out = {}
  for _, c in ipairs(type(list) == "table" and list or {}) do
    if type(c) == "string" then out[#out + 1] = c end
  end
  return out
end

-- The text the user typed last time into the fields that are remembered (never a default).
function M.last_values()
  local last = M.get_json_state(LAST_KEY)
  return type(last) == "table" and last or {}
end

-- Remembers a confirmed dialog: the caption first in the history (no duplicates), and what
-- the user typed into the guidance fields (an emptied field is forgotten: default again).
function M.remember(values, spec)
  local caption = trim(values.caption)
  local history = M.array({ caption })
  for _, c in ipairs(M.caption_history()) do
    if c ~= caption and #history < M.HISTORY_SIZE then history[#history + 1] = c end
  end
  M.set_json_state(HISTORY_KEY, history, true)
  if spec.remember == false then return end
  local last = M.last_values()
  for _, key in ipairs(M.dialog_fields(spec)) do
    if key ~= "caption" and key ~= "seed" then
      local text = trim(values[key])
      last[key] = text ~= "" and text or nil
    end
  end
  M.set_json_state(LAST_KEY, last, true)
end

-- The initial text of the fields of a new generation: the last caption and what the user
-- typed last time.
function M.initial_values(spec)
  local values = {}
  local last = M.last_values()
  for _, key in ipairs(M.dialog_fields(spec)) do
    if type(last[key]) == "string" and key ~= "seed" then values[key] = last[key] end
  end
  values.caption = M.caption_history()[1] or ""
  return values
end

-- The text fields that reproduce a stored generation (take metadata): what the user chose,
-- empty where the model's default was used.
function M.values_from_meta(meta)
  local mode = type(meta.negatives) == "table" and meta.negatives.mode or nil
  -- a take that negated the items selected then: they cannot be selected again beside it (one
  -- StepFoley item at a time), so the dialog opens on the layers, not on a selection of nothing
  if mode == "selection" then mode = "layers" end
  local values = { caption = meta.caption or "", negatives = mode }
  -- a reference's recording is not kept: regenerating such an item is a plain generation
  local keys = meta.reference and { "alpha", "steps" } or { "method", "alpha", "beta", "steps" }
  for _, key in ipairs(keys) do
    if meta[key] ~= nil then values[key] = type(meta[key]) == "number" and number_text(meta[key]) or tostring(meta[key]) end
  end
  return values
end

------------------------------------------------------------------------------------------
-- GetUserInputs (always available; at most 16 fields, values separated by newlines so that
-- captions may hold commas)
------------------------------------------------------------------------------------------

-- GetUserInputs hands back at most this many bytes, every field together (its answer buffer
-- is REAPER's default 1,024 bytes for a script): a longer answer is cut, fields and all.
M.PLAIN_DIALOG_BYTES = 1023

-- REAPER reads the initial text of GetUserInputs with rules of its own: a field with an odd
-- number of ' or ", or an unclosed (, swallows the separators after it, and the later fields'
-- text lands in the wrong fields ("man's footsteps" is a usual caption). Such characters are
-- shown as look-alikes, and turned back in the answer only in the fields where they were put.
local LOOK_ALIKES = { ["'"] = "\u{2019}", ['"'] = "\u{201D}", ["("] = "\u{FF08}" }

local function count(text, char)
  local _, n = text:gsub("%" .. char, "")
  return n
end

function M.plain_dialog_text(text)
  if count(text, "'") % 2 == 1 then text = text:gsub("'", LOOK_ALIKES["'"]) end
  if count(text, '"') % 2 == 1 then text = text:gsub('"', LOOK_ALIKES['"']) end
  if count(text, "(") > count(text, ")") then text = text:gsub("%(", LOOK_ALIKES["("]) end
  return text
end

-- A field of the answer, given the `value` it was opened with and the text it `shown` for it:
-- left as shown, the value itself; edited, as typed, with the look-alikes this dialog put in
-- (and only those kinds) turned back.
function M.plain_dialog_answer(field, value, shown)
  if field == shown then return value end
  for plain, look in pairs(LOOK_ALIKES) do
    if value:find(plain, 1, true) and not shown:find(plain, 1, true) then
      field = field:gsub(look, (plain:gsub("%%", "%%%%")))
    end
  end
  return field
end

--[[
One GetUserInputs dialog of `labels` with `values` (both arrays; values as the user sees them).
Returns the fields of the answer (as typed, look-alikes turned back), or nil when the user
cancels, or false, a message and the fields when the answer was cut at PLAIN_DIALOG_BYTES.
]]
function M.plain_dialog(title, labels, values, width)
  local shown = {}
  for i = 1, #labels do shown[i] = M.plain_dialog_text(values[i] or "") end
  local ok, answer = reaper.GetUserInputs(title, #labels,
    table.concat(labels, ",") .. ",extrawidth=" .. (width or 360) .. ",separator=\n", table.concat(shown, "\n"))
  if not ok then return nil end
  local got = {}
  for field in (answer .. "\n"):gmatch("(.-)\n") do
    local _, bad = utf8.len(field) -- the cut may fall inside a character: shown again without it
    local i = #got + 1
    got[i] = M.plain_dialog_answer(bad and field:sub(1, bad - 1) or field, values[i] or "", shown[i] or "")
  end
  if #answer >= M.PLAIN_DIALOG_BYTES then
    return false, string.format("REAPER's dialog hands back at most %d bytes, all fields together, and what you " ..
      "typed was cut there. Shorten the text (a character outside English takes 2 to 4 bytes), or install " ..
      "ReaImGui (ReaPack) for the larger dialog.", M.PLAIN_DIALOG_BYTES), got
  end
  return got
end

function M.ask_plain(spec, on_answer)
  local keys = M.dialog_fields(spec)
  local labels, values = {}, {}
  for i, key in ipairs(keys) do
    labels[i] = M.field_label(spec, key)
    values[i] = spec.values[key] or ""
  end
  local title = spec.title .. " (" .. M.engine_words(spec.engine) .. ")"
  while true do
    local got, cut, cut_fields = M.plain_dialog(title, labels, values)
    if got == nil then return end
    local by_key = {}
    for i, key in ipairs(keys) do values[i] = (got or cut_fields)[i] or ""; by_key[key] = values[i] end
    local params, err
    if got then params, err = M.parse_form(by_key, spec) else err = cut end
    if params then
      M.remember(by_key, spec)
      return on_answer(params, {})
    end
    M.alert(err) -- and the dialog comes back with what the user typed
  end
end

------------------------------------------------------------------------------------------
-- ReaImGui (optional): the same fields, plus the caption history, the method list with
-- what each method does, and the layers with a checkbox each
------------------------------------------------------------------------------------------

function M.has_imgui()
  return reaper.ImGui_GetBuiltinPath ~= nil
end

-- The user's checkbox choices as track roles to store (only the tracks that changed).
function M.roles_from_overrides(candidates, overrides)
  local roles = {}
  for _, c in ipairs(candidates) do
    local want = overrides[c.track]
    if want ~= nil and want ~= c.negative then
      roles[#roles + 1] = { track = c.track, role = M.role_for(c.stepfoley, want) }
    end
  end
  return roles
end

local function draw_text_field(ImGui, ctx, spec, state, key, hint)
  ImGui.SetNextItemWidth(ctx, 260)
  local changed, text = ImGui.InputTextWithHint(ctx, M.field_label(spec, key) .. "##" .. key, hint or "",
    state.values[key] or "")
  if changed then state.values[key] = text end
end

local function draw_caption(ImGui, ctx, spec, state)
  draw_text_field(ImGui, ctx, spec, state, "caption", "footsteps on gravel")
  local history = M.caption_history()
  if #history > 0 and ImGui.BeginCombo(ctx, "Recent captions##history", "") then
    for i, c in ipairs(history) do
      if ImGui.Selectable(ctx, c .. "##history" .. i, c == state.values.caption) then state.values.caption = c end
    end
    ImGui.EndCombo(ctx)
  end
end

local function draw_method(ImGui, ctx, spec, state)
  local caps = spec.engine.capabilities
  local default = M.default_text(caps, "method")
  local default_label = "model default" .. (default and (" (" .. default .. ")") or "")
  local current = state.values.method or ""
  if ImGui.BeginCombo(ctx, "Method##method", current ~= "" and current or default_label) then
    if ImGui.Selectable(ctx, default_label .. "##method-default", current == "") then state.values.method = "" end
    for _, m in ipairs(M.dialog_methods(caps, spec.audio)) do
      if ImGui.Selectable(ctx, m.name .. "##method-" .. m.name, current == m.name) then state.values.method = m.name end
    end
    ImGui.EndCombo(ctx)
  end
  local info = method_info(caps, current ~= "" and current or default)
  if info and info.summary then ImGui.TextDisabled(ctx, info.summary) end
  for _, m in ipairs((caps or {}).methods or {}) do
    if m.available == false then ImGui.TextDisabled(ctx, m.name .. ": " .. tostring(m.unavailable_reason)) end
  end
end

local function draw_negatives(ImGui, ctx, spec, state)
  ImGui.Text(ctx, "Negatives (what the new sound must complement):")
  for i, mode in ipairs(M.NEGATIVE_MODES) do
    if i > 1 then ImGui.SameLine(ctx) end
    local current = state.values.negatives or "layers"
    if current == "" then current = "layers" end
    if ImGui.RadioButton(ctx, mode .. "##negatives-" .. mode, current == mode) then state.values.negatives = mode end
  end
  local mode = state.values.negatives or "layers"
  if mode == "selection" then
    ImGui.TextDisabled(ctx, string.format("%d selected items or items in razor-edit areas", spec.picked or 0))
  elseif mode ~= "none" then
    if #(spec.candidates or {}) == 0 then ImGui.TextDisabled(ctx, "No track plays over the region yet.") end
    for i, c in ipairs(spec.candidates or {}) do
      local on = c.negative
      if state.overrides[c.track] ~= nil then on = state.overrides[c.track] end
      local label = c.name .. (c.stepfoley and " (StepFoley)" or "") .. "##layer" .. i
      local changed, value = ImGui.Checkbox(ctx, label, on)
      if changed then state.overrides[c.track] = value end
    end
  end
end

-- Draws one frame of the dialog; returns "ok", "cancel" or nil.
local function draw(ImGui, ctx, spec, state)
  ImGui.TextWrapped(ctx, "StepFoley engine: " .. M.engine_words(spec.engine) .. ". Empty fields use the model's defaults.")
  ImGui.Separator(ctx)
  for _, key in ipairs(M.dialog_fields(spec)) do
    if key == "caption" then draw_caption(ImGui, ctx, spec, state)
    elseif key == "method" then draw_method(ImGui, ctx, spec, state)
    elseif key == "negatives" then draw_negatives(ImGui, ctx, spec, state)
    elseif key == "seed" then draw_text_field(ImGui, ctx, spec, state, key, "random")
    elseif key == "count" then draw_text_field(ImGui, ctx, spec, state, key, "1")
    else draw_text_field(ImGui, ctx, spec, state, key, M.default_text(spec.engine.capabilities, key) or "model default")
    end
  end
  if state.error then ImGui.TextWrapped(ctx, "! " .. state.error) end
  ImGui.Separator(ctx)
  if ImGui.Button(ctx, "Generate") then return "ok" end
  ImGui.SameLine(ctx)
  if ImGui.Button(ctx, "Cancel") or ImGui.IsKeyPressed(ctx, ImGui.Key_Escape) then return "cancel" end
  return nil
end

-- The ReaImGui window: a defer loop (REAPER stays usable); on_answer(params, roles) once the
-- user confirms valid values, nothing when the window is closed or cancelled.
function M.ask_imgui(spec, on_answer)
  package.path = reaper.ImGui_GetBuiltinPath() .. "/?.lua;" .. package.path
  local ImGui = require("imgui")("0.9")
  local ctx = ImGui.CreateContext(spec.title)
  local state = { values = {}, overrides = {} }
  for k, v in pairs(spec.values) do state.values[k] = v end
  local function frame()
    ImGui.SetNextWindowSize(ctx, 560, 0, ImGui.Cond_FirstUseEver)
    local visible, open = ImGui.Begin(ctx, spec.title, true)
    local result
    if visible then
      result = draw(ImGui, ctx, spec, state)
      ImGui.End(ctx) -- ReaImGui: End only after a Begin that returned true
    end
    if not open or result == "cancel" then return end
    if result == "ok" then
      local params, err = M.parse_form(state.values, spec)
      if params then
        M.remember(state.values, spec)
        -- the layers' ticks are the choice only in "layers" mode: switched to another, they are
        -- hidden, and an untick stored then left that track out of every later generation
        local roles = params.negatives == "layers" and M.roles_from_overrides(spec.candidates or {}, state.overrides)
        return on_answer(params, roles or {})
      end
      state.error = err
    end
    reaper.defer(frame)
  end
  reaper.defer(frame)
end

-- Asks for the parameters: ReaImGui where installed, else GetUserInputs.
-- on_answer(params, roles) runs only when the user confirmed valid values.
function M.ask_params(spec, on_answer)
  if M.has_imgui() then return M.ask_imgui(spec, on_answer) end
  return M.ask_plain(spec, on_answer)
end

return VERSION
end
