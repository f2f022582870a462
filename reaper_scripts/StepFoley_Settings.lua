-- @noindex
--[[
Settings: engine port, the StepFoley program to start (path of `stepfoley`, or of the Python
that has StepFoley installed; empty = search PATH), and the defaults of the generate dialog.
Stored in REAPER's global ExtState (section "StepFoley"), so they survive restarts.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")

local FIELDS = {
  { key = "port", caption = "Engine port (UDP)", min = 1, max = 65535, integer = true },
  { key = "client", caption = "stepfoley or Python path (empty = search)" },
  { key = "method", caption = "Default method (nag / independent / negative_prompt)" },
  { key = "alpha", caption = "Default alpha", min = 0, max = 100 },
  { key = "beta", caption = "Default beta", min = 0, max = 100 },
  { key = "steps", caption = "Default steps", min = 1, max = 1000, integer = true },
  { key = "watchdog_s", caption = "Give up after no progress for (s)", min = 5, max = 86400 },
}

local function main()
  local settings = SF.load_settings()
  local captions, values = {}, {}
  for i, f in ipairs(FIELDS) do
    captions[i] = f.caption
    values[i] = tostring(settings[f.key])
  end
  local ok, answer = reaper.GetUserInputs("StepFoley: settings", #FIELDS,
    table.concat(captions, ",") .. ",extrawidth=360,separator=\n", table.concat(values, "\n"))
  if not ok then return end
  local given = {}
  for v in (answer .. "\n"):gmatch("(.-)\n") do given[#given + 1] = v:match("^%s*(.-)%s*$") end
  local new = {}
  for i, f in ipairs(FIELDS) do
    local text = given[i] or ""
    if f.min then
      local x = tonumber(text)
      if not x or x < f.min or x > f.max or (f.integer and x ~= math.floor(x)) then
        SF.alert(string.format("%s must be %s between %s and %s, got \"%s\". Nothing was changed.",
          f.caption, f.integer and "a whole number" or "a number", f.min, f.max, text))
        return
      end
      new[f.key] = x
    else
      new[f.key] = text
    end
  end
  new.method = new.method:lower()
  if new.method ~= "nag" and new.method ~= "independent" and new.method ~= "negative_prompt" then
    SF.alert("Unknown method \"" .. new.method .. "\". Use nag, independent or negative_prompt. Nothing was changed.")
    return
  end
  if new.client ~= "" and not reaper.file_exists(new.client) then
    SF.alert("No file at \"" .. new.client .. "\". Enter the full path of `stepfoley` (or of Python). Nothing was changed.")
    return
  end
  SF.save_settings(new)
  local prefix, err = SF.client_prefix(SF.load_settings())
  SF.log(prefix and ("settings saved; client: " .. table.concat(prefix, " ")) or ("settings saved, but: " .. err))
end

main()
