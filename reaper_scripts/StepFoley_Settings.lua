-- @noindex
-- @description StepFoley: Settings
--[[
Settings: engine port, the StepFoley program to start (path of `stepfoley`, or of the Python
that has StepFoley installed; empty = search the usual places), the watchdogs, how variations
are laid out, and job files. Stored in REAPER's global ExtState (section "StepFoley"), so they
survive restarts. The guidance values are not settings: the dialog shows the engine's model
defaults and remembers what you type there.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local FIELDS = {
  { key = "port", caption = "Engine port (UDP)", min = 1, max = 65535, integer = true },
  { key = "client", caption = "stepfoley or Python path (empty = search)" },
  { key = "watchdog_s", caption = "Give up after no progress for (s)", min = 5, max = 86400 },
  { key = "start_timeout_s", caption = "Client start timeout (s)", min = 1, max = 600 },
  { key = "variations_as", caption = "Variations as (lanes / takes)", choices = { lanes = true, takes = true } },
  { key = "keep_job_files", caption = "Keep job files of finished jobs (0 / 1)", min = 0, max = 1, integer = true },
  { key = "job_days", caption = "Delete job folders after (days)", min = 1, max = 3650, integer = true },
}

-- The new settings from the dialog's answer, or nil and what is wrong.
local function read_fields(given)
  local new = {}
  for i, f in ipairs(FIELDS) do
    local text = given[i] or ""
    if f.min then
      local x, hint = SF.parse_number(text, f.integer)
      if not x or x < f.min or x > f.max or (f.integer and x ~= math.floor(x)) then
        return nil, string.format("%s must be %s between %s and %s, got \"%s\".%s Nothing was changed.",
          f.caption, f.integer and "a whole number" or "a number", f.min, f.max, text, hint or "")
      end
      new[f.key] = math.tointeger(x) or x
    elseif f.choices then
      new[f.key] = SF.lower_ascii(text)
      if not f.choices[new[f.key]] then
        return nil, string.format("%s: \"%s\" is not one of the choices. Nothing was changed.", f.caption, text)
      end
    elseif f.key == "client" then
      new[f.key] = SF.expand_home(text:match('^"(.*)"$') or text)  -- Windows' "Copy as path" quotes the path
    else
      new[f.key] = text
    end
  end
  if new.client ~= "" and not reaper.file_exists(new.client) then
    return nil, "No file at \"" .. new.client .. "\". Enter the full path of `stepfoley` (or of Python). Nothing was changed."
  end
  local problem = new.client ~= "" and SF.client_problem(new.client)
  if problem then return nil, problem .. "\n\nNothing was changed." end
  return new
end

local function main()
  local settings = SF.load_settings()
  local captions, values = {}, {}
  for i, f in ipairs(FIELDS) do
    captions[i] = f.caption
    values[i] = f.min and SF.number_text(settings[f.key]) or tostring(settings[f.key])
  end
  local answer, cut = SF.plain_dialog("StepFoley: settings", captions, values)
  if answer == nil then return end
  if not answer then return SF.alert(cut .. " Nothing was changed.") end
  local given = {}
  for i, v in ipairs(answer) do given[i] = SF.trim(v) end
  local new, err = read_fields(given)
  if not new then return SF.alert(err) end
  SF.save_settings(new)
  local prefix, found = SF.client_prefix(SF.load_settings())
  SF.log(prefix and ("settings saved; client: " .. table.concat(prefix, " ") .. " (from " .. found.where .. ")")
    or ("settings saved, but: " .. found))
end

main()
