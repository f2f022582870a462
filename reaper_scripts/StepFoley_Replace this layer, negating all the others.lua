-- @noindex
-- @description StepFoley: Replace this layer, negating all the others
--[[
Replace this layer, negating all the others: generates the selected StepFoley item again so
that it complements every other layer over it now, also the layers made after it (an early
layer was made hearing only what existed then). Same caption, values and seed, so what
changes is what it negates: the layers that count as negatives (StepFoley's tracks unless
excluded, and the tracks included with "Toggle selected tracks as negatives"), never its own
track. The method is the item's when it hears the layers (e.g. nag), else the model's default
one that does (a take made to sound like a reference keeps only its alpha and steps: its
method and beta were about that recording). No dialog; the result is a new, active take of the item. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

-- The values of `meta` that carry over to a method that negates the layers. A take made by
-- "Make selected item sound like this" stored the reference method and, as beta, the pull
-- toward a recording that is not kept: neither means anything here, so, as Regenerate does
-- (values_from_meta), they are left for the engine's defaults.
local function carried_values(meta)
  if meta.reference then return { alpha = meta.alpha, steps = meta.steps } end
  return { method = meta.method, alpha = meta.alpha, beta = meta.beta, steps = meta.steps }
end

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local item, meta = SF.selected_stepfoley_item(proj, "it is generated again, negating all the other layers.")
  if not item then return end
  local values = carried_values(meta)
  SF.generate(SF.job_for_item(proj, item, { title = "StepFoley: replace layer",
    feature = "follow a loudness curve or focus on part of the picture",
    extra_fields = function(region) return SF.stored_controls(meta, region) end,
    params_for = function(engine)
      local method, err = SF.negating_method(engine.capabilities, values.method)
      if err then return nil, err end
      -- read as Regenerate's dialog reads them, before anything is bounced: a value edited by
      -- hand in the take's metadata was found only by the engine, after the bounce
      local function text(v) return v == nil and "" or type(v) == "number" and SF.number_text(v) or tostring(v) end
      local params, why = SF.parse_form({ caption = text(meta.caption), alpha = text(values.alpha),
        beta = text(values.beta), steps = text(values.steps), seed = text(meta.seed) },
        { engine = engine, fixed_method = method })
      if not params then
        return nil, "The selected item's stored settings cannot be used: " .. why .. "\n\nRun \"StepFoley: " ..
          "Regenerate selected Foley item\", which shows them to correct."
      end
      return params
    end,
    undo = function(params) return "StepFoley: replace layer \"" .. params.caption .. "\"" end }))
end

main()
