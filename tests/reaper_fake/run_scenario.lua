--[[
Test driver: lua5.4 run_scenario.lua SCENARIO.json RESULT.json

Builds the fake projects described by the scenario, runs the scenario's ReaScript actions
the way REAPER does (each in its own environment, sharing `reaper` and ExtState, each a
script whose defer callbacks and atexit functions are its own), runs the defer loop on a
clock that advances with real time (times `clock_rate`), and writes what the projects look
like afterwards (tracks, items, takes, messages, undo points, render settings ...) as JSON.

Scenario fields: scripts_dir, project_path, project_file ("" = never saved; default
PROJECT_PATH/fake.rpp), record_path (GetProjectPathEx; default the project path),
resource_path, exec_log, os_name, app_version, time_selection [t0,t1], time_offset (the ruler's
start, Project settings > Project start time, in s), play_state (GetPlayStateEx: 1 playing, 2
paused, 4 recording; 5 = recording while playing), render (initial
numbers/strings), master {vol, fxen, fx_gain, mute} (or the older master_fx_gain), toggles
{command id: state}, missing_api [names], render_cancelled, render_cut_short (the share of its
frames a render writes before it returns, as REAPER may on a full disk), extstate {section: {key: value}},
dialog_answers [{ok, values}], file_answers [path] (GetUserFileNameForRead), message_answers
[code] (ShowMessageBox questions: 6 yes, 7 no, 2 cancel), imgui (install
the ReaImGui stand-in; its value is the list of user actions, tests/reaper_fake/imgui/imgui.lua),
tracks [TRACK] (the first project tab), projects [{project_path, time_selection, tracks
[TRACK]}] (more tabs), active_project (1-based), actions [ACTION], gfx_key_when_running,
max_s, tick_s, clock_rate, parent_plays_with_soloed_child.
TRACK: {name, selected, ext, fxen, fx_gain, vol, mute, solo, solo_defeat, folderdepth,
freemode, razor (P_RAZOREDITS), timebase (C_BEATATTACHMODE), items [{position, length, selected,
notes, mute, mute_solo, vol, fadein, fadeout, loopsrc, timebase, autostretch, lane_plays (on a freemode 2 track: item k is on lane k-1,
which plays or not), hidden_lane (elsewhere: on a hidden lane of a track whose fixed lanes were
switched off), takes [{file, length, section {offs,len,rev}, startoffs, playrate, vol,
pan, panlaw, chanmode, pitch, ppitch, pitchmode, takefx_nch, stretch_markers, envelopes (a count),
spectral_edits (a count), fx [name], ext, name}]}], envelopes [{name (as REAPER shows it), chunk (its configuration chunk name, e.g.
"<VOLENV2"; needed where the name is not REAPER's English one), points (each {time, amplitude
or value, shape}), scaling_mode, default, selected}]}.
ACTION: {script, at_s | when_running | after_idle}, {terminate = script, when_running},
{switch_to_project = n, when_running}, {close_project = n, at_s} (its ReaProject* is then
refused by every API function, as a closed project's is), {open_project = {tracks, ...},
when_running} (another project opened in the active tab: the same ReaProject*, none of its
items), {move_item = {track, item, by (s), slip (s of the active take's start offset),
delete_takes (every take of the item)},
when_running} (1-based, in the active tab).
]]

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local fake = dofile(here .. "reaper_fake.lua")

local scenario_path, result_path = arg[1], arg[2]
local function slurp(p) local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s end
local json = dofile(here .. "json.lua")
local scenario = assert(json.decode(slurp(scenario_path)))

fake.resource_path = scenario.resource_path or fake.resource_path
fake.exec_log = scenario.exec_log or fake.exec_log
fake.os_name = scenario.os_name or fake.os_name
for k, v in pairs(scenario.toggles or {}) do fake.toggles[math.tointeger(tonumber(k))] = v end
for _, name in ipairs(scenario.missing_api or {}) do reaper[name] = nil end
for section, kv in pairs(scenario.extstate or {}) do
  for k, v in pairs(kv) do reaper.SetExtState(section, k, tostring(v), true) end
end
fake.dialog_answers = scenario.dialog_answers or {}
fake.file_answers = scenario.file_answers or {}
fake.message_answers = scenario.message_answers or {}
fake.app_version = scenario.app_version or fake.app_version
if scenario.imgui then
  FAKE_REAPER, fake.imgui_actions = fake, scenario.imgui
  function reaper.ImGui_GetBuiltinPath() return here .. "imgui" end
end
fake.render_cancelled = scenario.render_cancelled or false
fake.render_cut_short = scenario.render_cut_short
fake.parent_plays_with_soloed_child = scenario.parent_plays_with_soloed_child or false

local function build_tracks(project, list)
  for _, t in ipairs(list or {}) do
    local tr = fake.add_track(t.name, project)
    tr.selected = t.selected and true or false
    tr.fxen = t.fxen or 1
    tr.fx_gain = t.fx_gain or 1.0
    tr.vol = t.vol or 1.0
    tr.mute = t.mute and true or false
    tr.solo = t.solo or 0
    tr.solo_defeat = t.solo_defeat and true or false
    tr.folderdepth = t.folderdepth or 0
    tr.freemode = t.freemode or 0
    tr.razor = t.razor or ""
    tr.timebase = t.timebase or -1
    if tr.freemode == 2 then tr.numlanes = math.max(1, #(t.items or {})) end
    for k, v in pairs(t.ext or {}) do tr.ext[k] = v end
    for _, e in ipairs(t.envelopes or {}) do
      fake.add_envelope(tr, e.name, e.points, e.scaling_mode, e.default, e.chunk).selected = e.selected and true or false
    end
    for n, i in ipairs(t.items or {}) do
      local item = fake.add_item(tr, i.position, i.length)
      item.selected = i.selected and true or false
      item.notes = i.notes or ""
      item.mute = i.mute and true or false
      item.mute_solo = i.mute_solo or 0
      item.loopsrc = i.loopsrc or 0
      item.lock = i.lock or 0
      item.timebase, item.autostretch = i.timebase or -1, i.autostretch or 0
      item.hidden_lane = i.hidden_lane and true or false
      if tr.freemode == 2 then item.fixedlane, tr.lane_plays[n - 1] = n - 1, i.lane_plays or 0 end
      item.vol = i.vol or 1.0
      item.fadein, item.fadeout = i.fadein or 0.0, i.fadeout or 0.0
      for _, tk in ipairs(i.takes or {}) do
        local src = fake.file_source(tk.file, tk.length)
        if tk.section then src = fake.section_source(src, tk.section.offs, tk.section.len, tk.section.rev) end
        local take = fake.add_take(item, src, tk.startoffs or 0, tk.playrate or 1)
        take.stretch_markers = tk.stretch_markers or 0
        take.envelopes = tk.envelopes or 0
        for _, name in ipairs(tk.fx or {}) do take.fx[#take.fx + 1] = name end
        take.name = tk.name or ""
        take.vol = tk.vol or 1.0
        take.pan, take.chanmode, take.pitch = tk.pan or 0.0, tk.chanmode or 0, tk.pitch or 0.0
        take.ppitch, take.pitchmode = tk.ppitch or 0, tk.pitchmode or -1
        take.panlaw, take.takefx_nch = tk.panlaw or -1.0, tk.takefx_nch or 2
        take.spectral_edits = tk.spectral_edits or 0
        for k, v in pairs(tk.ext or {}) do take.ext[k] = v end
      end
    end
  end
end

local function setup_project(pr, spec)
  pr.path = spec.project_path or "/tmp"
  pr.file = spec.project_file or (pr.path .. "/fake.rpp")
  pr.record_path = spec.record_path or pr.path
  local ts = spec.time_selection or { 0, 0 }
  pr.ts0, pr.ts1 = ts[1], ts[2]
  pr.time_offset = spec.time_offset or 0
  pr.play_state = spec.play_state or 0
  build_tracks(pr, spec.tracks)
end

setup_project(fake.project, scenario)
for k, v in pairs((scenario.render or {}).numbers or {}) do fake.project.numbers[k] = v end
for k, v in pairs((scenario.render or {}).strings or {}) do fake.project.strings[k] = v end
local master = scenario.master or {}
fake.project.master.fx_gain = master.fx_gain or scenario.master_fx_gain or 1.0
fake.project.master.fxen = master.fxen or 1
fake.project.master.vol = master.vol or 1.0
fake.project.master.mute = master.mute and true or false
for _, spec in ipairs(scenario.projects or {}) do setup_project(fake.add_project(), spec) end
fake.active = scenario.active_project or 1

local function run_action(script)
  -- every ReaScript gets its own globals, as in REAPER; `reaper` and `gfx` are shared
  local s = fake.start_script(script)
  local env = setmetatable({}, { __index = _G })
  local chunk, err = loadfile(script, "t", env)
  if not chunk then
    fake.script_errors = fake.script_errors or {}
    table.insert(fake.script_errors, script .. ": " .. tostring(err))
    return
  end
  fake.run_in(s, chunk)
  fake.finish_idle_scripts()
end

local function listed_status_files()
  return json.decode(reaper.GetExtState("StepFoley", "running_status_files") or "") or {}
end

-- A status file's content, {} when unreadable as JSON; nil when it is not there (yet).
local function status_of(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local status = json.decode(f:read("a")) or {}
  f:close()
  return status
end

local function any_running()
  for _, path in ipairs(listed_status_files()) do
    local status = status_of(path)
    if status and status.state == "running" and (status.step or 0) >= 1 then return true end
  end
  return false
end

-- A job of a batch has ended (its status file final) and the next has not started (no job listed
-- with a status file that is not final): the moment between two jobs of a variations run.
local ended_seen = {}
local function between_jobs()
  for _, path in ipairs(listed_status_files()) do ended_seen[path] = true end
  local ended, running = false, false
  for path in pairs(ended_seen) do
    local status = status_of(path)
    if status then
      local final = status.exit_code ~= nil or status.state == "done" or status.state == "error"
        or status.state == "cancelled"
      if final then ended = true else running = true end
    end
  end
  return ended and not running
end

local function perform(a)
  if a.script then run_action(scenario.scripts_dir .. "/" .. a.script)
  elseif a.terminate then fake.terminate(a.terminate)
  elseif a.switch_to_project then fake.active = a.switch_to_project
  elseif a.close_project then -- the user closes that tab; REAPER shows the first one left
    table.remove(fake.projects, a.close_project)
    fake.active = 1
  elseif a.open_project then -- File > Open project in the active tab: REAPER keeps its ReaProject*
    local pr = fake.projects[fake.active]
    pr.tracks = {}
    setup_project(pr, a.open_project)
  elseif a.move_item then fake.move_item(a.move_item)
  else error("driver: unknown action " .. json.encode(a)) end
end

local tick = scenario.tick_s or 0.05
local rate = scenario.clock_rate or 1
local start = fake.clock
-- The stand-in client keeps its time by this clock (standin_send.py, fake_now), so what it
-- does between two of the script's polls does not depend on how loaded the machine is.
local clock_file = os.getenv("STEPFOLEY_FAKE_CLOCK")
local function publish_clock()
  if not clock_file then return end
  local f = assert(io.open(clock_file .. ".tmp", "w"))
  f:write(string.format("%.6f", fake.clock - start))
  f:close()
  assert(os.rename(clock_file .. ".tmp", clock_file))
end
publish_clock()
local pending = {}
for _, a in ipairs(scenario.actions or {}) do pending[#pending + 1] = a end
local key_sent = false
while true do
  local elapsed = fake.clock - start
  local still, ran = {}, false
  for _, a in ipairs(pending) do
    local ready
    if a.when_running then ready = any_running()
    elseif a.when_between_jobs then ready = between_jobs() and #fake.deferred > 0
    elseif a.after_idle then ready = not ran and #fake.deferred == 0 and #still == 0
    else ready = elapsed >= (a.at_s or 0) end
    if ready then perform(a); ran = true else still[#still + 1] = a end
  end
  pending = still
  if scenario.gfx_key_when_running and not key_sent and any_running() then
    fake.gfx_key, key_sent = scenario.gfx_key_when_running, true
  end
  fake.run_deferred_once()
  if #fake.deferred == 0 and #pending == 0 then break end
  if elapsed > (scenario.max_s or 60) then fake.timed_out = true; break end
  os.execute("sleep " .. tick)
  fake.clock = fake.clock + tick * rate
  publish_clock()
end

local function take_out(take)
  local markers = json.array({})
  for i, m in ipairs(take.markers) do markers[i] = { name = m.name, position = m.position } end
  return { name = take.name, ext = take.ext, startoffs = take.startoffs, playrate = take.playrate,
    vol = take.vol, pan = take.pan, chanmode = take.chanmode, pitch = take.pitch, ppitch = take.ppitch,
    pitchmode = take.pitchmode, panlaw = take.panlaw, takefx_nch = take.takefx_nch, fx = json.array(take.fx), source_file = take.source and (take.source.file or "") or json.null, markers = markers }
end

local function tracks_out(pr)
  local list = json.array({})
  for _, tr in ipairs(pr.tracks) do
    local t = { name = tr.name, selected = tr.selected, ext = tr.ext, mute = tr.mute, solo = tr.solo,
      solo_defeat = tr.solo_defeat, vol = tr.vol, fxen = tr.fxen, freemode = tr.freemode, folderdepth = tr.folderdepth,
      items = json.array({}) }
    if tr.freemode == 2 then
      t.lanes = json.array({})
      for lane = 0, tr.numlanes - 1 do
        t.lanes[lane + 1] = { plays = tr.lane_plays[lane] or 0, name = tr.lane_names[lane] or "" }
      end
    end
    for _, item in ipairs(tr.items) do
      local i = { position = item.position, length = item.length, notes = item.notes, mute = item.mute,
        mute_solo = item.mute_solo, loopsrc = item.loopsrc, fixedlane = item.fixedlane, timebase = item.timebase,
        autostretch = item.autostretch, takes = json.array({}) }
      for k, take in ipairs(item.takes) do
        i.takes[#i.takes + 1] = take_out(take)
        if item.active == take then i.active_take = k end
      end
      t.items[#t.items + 1] = i
    end
    list[#list + 1] = t
  end
  return list
end

local m = fake.project.master
local out = { messages = json.array(fake.messages), console = table.concat(fake.console),
  undo = json.array(fake.undo), undo_depth = fake.undo_depth, edits_outside_undo = json.array(fake.edits_outside_undo),
  ui_refresh = fake.ui_refresh, exec = json.array(fake.exec), exec_timeouts = json.array(fake.exec_timeouts),
  dialogs = json.array(fake.dialogs), imgui_frames = json.array(fake.imgui_frames or {}),
  modal_prompts = json.array(fake.modal_prompts), renders = json.array(fake.renders),
  commands = json.array(fake.commands), peaks_built = json.array(fake.peaks_built), render = { numbers = fake.project.numbers, strings = fake.project.strings },
  master_fxen = m.fxen, master = { fxen = m.fxen, mute = m.mute, vol = m.vol },
  toggles = { ["40745"] = fake.toggles[40745] }, extstate = fake.extstate, gfx_text = json.array(fake.gfx_text),
  gfx_open = fake.gfx_open and true or false, script_errors = json.array(fake.script_errors or {}),
  timed_out = fake.timed_out or false, elapsed_s = fake.clock - start, active_project = fake.active,
  tracks = tracks_out(fake.project), projects = json.array({}) }
for _, pr in ipairs(fake.projects) do
  out.projects[#out.projects + 1] = { path = pr.path, tracks = tracks_out(pr) }
end
local f = assert(io.open(result_path, "wb"))
f:write(json.encode(out))
f:close()
