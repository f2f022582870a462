--[[
Test driver: lua5.4 run_scenario.lua SCENARIO.json RESULT.json

Builds the fake project described by the scenario, runs the scenario's ReaScript actions
the way REAPER does (each in its own environment, sharing `reaper` and ExtState), runs the
defer loop on a clock that advances with real time, and writes what the project looks like
afterwards (tracks, items, takes, messages, undo points, render settings ...) as JSON.

Scenario fields: scripts_dir, project_path, resource_path, exec_log, time_selection [t0,t1],
render (initial numbers/strings), master_fx_gain, extstate {section: {key: value}},
dialog_answers [{ok, values}], tracks [{name, selected, ext, fxen, items [{position, length,
selected, takes [{file, length, section {offs,len,rev}, startoffs, playrate, stretch_markers,
ext, name}]}]}], actions [{script, at_s | when_running}], gfx_key_when_running, max_s, tick_s.
]]

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local fake = dofile(here .. "reaper_fake.lua")

local scenario_path, result_path = arg[1], arg[2]
local function slurp(p) local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s end
local scenario = assert(dofile(here .. "json.lua").decode(slurp(scenario_path)))
local json = dofile(here .. "json.lua")

fake.project.path = scenario.project_path or "/tmp"
fake.resource_path = scenario.resource_path or fake.resource_path
fake.exec_log = scenario.exec_log or fake.exec_log
fake.project.master_fx_gain = scenario.master_fx_gain or 1.0
local ts = scenario.time_selection or { 0, 0 }
fake.project.ts0, fake.project.ts1 = ts[1], ts[2]
for k, v in pairs((scenario.render or {}).numbers or {}) do fake.project.numbers[k] = v end
for k, v in pairs((scenario.render or {}).strings or {}) do fake.project.strings[k] = v end
for section, kv in pairs(scenario.extstate or {}) do
  for k, v in pairs(kv) do reaper.SetExtState(section, k, tostring(v), true) end
end
fake.dialog_answers = scenario.dialog_answers or {}

for _, t in ipairs(scenario.tracks or {}) do
  local tr = fake.add_track(t.name)
  tr.selected = t.selected and true or false
  tr.fxen = t.fxen or 1
  for k, v in pairs(t.ext or {}) do tr.ext[k] = v end
  for _, i in ipairs(t.items or {}) do
    local item = fake.add_item(tr, i.position, i.length)
    item.selected = i.selected and true or false
    item.notes = i.notes or ""
    for _, tk in ipairs(i.takes or {}) do
      local src = fake.file_source(tk.file, tk.length)
      if tk.section then src = fake.section_source(src, tk.section.offs, tk.section.len, tk.section.rev) end
      local take = fake.add_take(item, src, tk.startoffs or 0, tk.playrate or 1)
      take.stretch_markers = tk.stretch_markers or 0
      take.name = tk.name or ""
      for k, v in pairs(tk.ext or {}) do take.ext[k] = v end
    end
  end
end

local function run_action(script)
  -- every ReaScript gets its own globals, as in REAPER; `reaper` and `gfx` are shared
  local env = setmetatable({}, { __index = _G })
  local chunk = assert(loadfile(script, "t", env))
  local ok, err = pcall(chunk)
  if not ok then fake.script_errors = fake.script_errors or {}; table.insert(fake.script_errors, script .. ": " .. tostring(err)) end
end

local function any_running()
  local list = json.decode(reaper.GetExtState("StepFoley", "running_status_files") or "") or {}
  for _, path in ipairs(list) do
    local f = io.open(path, "rb")
    if f then
      local status = json.decode(f:read("a")) or {}
      f:close()
      if status.state == "running" and (status.step or 0) >= 1 then return true end
    end
  end
  return false
end

local tick = scenario.tick_s or 0.05
local start = fake.clock
local pending = {}
for _, a in ipairs(scenario.actions or {}) do pending[#pending + 1] = a end
local key_sent = false
while true do
  local elapsed = fake.clock - start
  local still = {}
  for _, a in ipairs(pending) do
    if (a.when_running and any_running()) or (not a.when_running and elapsed >= (a.at_s or 0)) then
      run_action(scenario.scripts_dir .. "/" .. a.script)
    else
      still[#still + 1] = a
    end
  end
  pending = still
  if scenario.gfx_key_when_running and not key_sent and any_running() then
    fake.gfx_key, key_sent = scenario.gfx_key_when_running, true
  end
  local now = fake.deferred
  fake.deferred = {}
  for _, fn in ipairs(now) do
    local ok, err = pcall(fn)
    if not ok then fake.script_errors = fake.script_errors or {}; table.insert(fake.script_errors, "deferred: " .. tostring(err)) end
  end
  if #fake.deferred == 0 and #pending == 0 then break end
  if elapsed > (scenario.max_s or 60) then fake.timed_out = true; break end
  os.execute("sleep " .. tick)
  fake.clock = fake.clock + tick
end

local function take_out(take)
  return { name = take.name, ext = take.ext, startoffs = take.startoffs, playrate = take.playrate,
    source_file = take.source and (take.source.file or "") or json.null }
end

local out = { tracks = json.array({}), messages = json.array(fake.messages), console = table.concat(fake.console),
  undo = json.array(fake.undo), undo_depth = fake.undo_depth, edits_outside_undo = json.array(fake.edits_outside_undo),
  ui_refresh = fake.ui_refresh, exec = json.array(fake.exec), dialogs = json.array(fake.dialogs),
  modal_prompts = json.array(fake.modal_prompts), renders = json.array(fake.renders),
  commands = json.array(fake.commands), render = { numbers = fake.project.numbers, strings = fake.project.strings },
  master_fxen = fake.project.master.fxen, extstate = fake.extstate, gfx_text = json.array(fake.gfx_text),
  gfx_open = fake.gfx_open and true or false, script_errors = json.array(fake.script_errors or {}),
  timed_out = fake.timed_out or false, elapsed_s = fake.clock - start }
for _, tr in ipairs(fake.project.tracks) do
  local t = { name = tr.name, selected = tr.selected, ext = tr.ext, items = json.array({}) }
  for _, item in ipairs(tr.items) do
    local i = { position = item.position, length = item.length, notes = item.notes, takes = json.array({}) }
    for k, take in ipairs(item.takes) do
      i.takes[#i.takes + 1] = take_out(take)
      if item.active == take then i.active_take = k end
    end
    t.items[#t.items + 1] = i
  end
  out.tracks[#out.tracks + 1] = t
end
local f = assert(io.open(result_path, "wb"))
f:write(json.encode(out))
f:close()
