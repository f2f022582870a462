-- @noindex
-- @description StepFoley: Verify setup
--[[
Verify setup: checks, one after the other, everything a generation needs, and prints what it
found and what to do: where the `stepfoley` client was looked for and found (Settings, PATH,
~/stepfoley-venv, pip --user, Homebrew, python.org; never the Microsoft Store's python.exe
alias), whether it starts, whether the engine answers and what it offers, whether the project
is saved and its StepFoley folder writable, and a 1 s test bounce (rendered, checked, deleted,
every render setting compared before and after). The engine is asked in the background;
REAPER stays usable. The full report goes to the console, a summary to a message box.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local lines, problems = {}, {}
local function say(line) lines[#lines + 1] = line end
local function problem(what, todo) problems[#problems + 1] = what .. "\n   What to do: " .. todo end

local function check_client(settings)
  local prefix, found, searched = SF.client_prefix(settings)
  say("1. The StepFoley client")
  if settings.client ~= "" then say("   Set in Settings: " .. settings.client) end
  for _, c in ipairs((prefix and found or searched or {}).searched or {}) do
    say(string.format("   %s %s (%s)", c.found and "[found]" or "[  -  ]", c.path, c.where))
  end
  if not prefix then
    say("   " .. found:gsub("\n", "\n   "))
    problem("No StepFoley client was found.", "install StepFoley (docs/reaper.md, step 1) or enter the full path " ..
      "of `stepfoley` in \"StepFoley: Settings\".")
    return nil
  end
  say("   Using: " .. table.concat(prefix, " ") .. " (from " .. found.where .. ")")
  return prefix
end

local function check_engine(settings, engine)
  say("2. The engine")
  say("   " .. SF.describe_engine(engine, settings):gsub("\n", "\n   "))
  if not engine.client_ok then
    problem("The client does not start.", "see its message above; set the path of the `stepfoley` in your " ..
      "StepFoley venv in \"StepFoley: Settings\".")
  elseif not engine.ok then
    problem("The engine does not answer on port " .. math.floor(settings.port) .. ".",
      "start it in a terminal: stepfoley serve --port " .. math.floor(settings.port) ..
      " (or set its port in \"StepFoley: Settings\").")
  end
end

-- The tracks a generation over [a, b] leaves out of the negatives: the picture's, whose sound
-- is the production sound, not a layer.
local function picture_track(proj, a, b)
  local item = SF.find_video_item(proj, a, b)
  return item and { [reaper.GetMediaItem_Track(item)] = true } or {}
end

local function check_project(proj, settings)
  say("3. The project")
  local folder = SF.project_folder(proj)
  if not folder then
    problem("The project is not saved, so stems would not be kept with it.", "save the project (File > Save project).")
    return
  end
  local output = SF.join(folder, "StepFoley")
  reaper.RecursiveCreateDirectory(output, 0)
  local probe = SF.join(output, "stepfoley-verify.tmp")
  local f = io.open(probe, "wb")
  if f then f:close(); os.remove(probe); say("   Stems go to " .. output .. " (writable).")
  else problem("Cannot write into " .. output .. ".", "make the project folder writable, or save the project elsewhere.") end
  local t0, t1 = SF.time_selection(proj)
  if not t0 then say("   No time selection yet (make one over the picture to generate).") return end
  local region, err = SF.region_for(proj, t0, t1)
  if region then
    say(string.format("   Time selection %.3f-%.3f s: picture %s, file %.3f-%.3f s.", SF.on_ruler(proj, t0), SF.on_ruler(proj, t1),
      SF.basename(region.video), region.file_in, region.file_out))
    local negatives = SF.choose_negatives(proj, region.project_start, region.project_end,
      picture_track(proj, region.project_start, region.project_end), "layers")
    say("   Layers counted as negatives there: " .. (#negatives.names > 0 and table.concat(negatives.names, ", ") or "none"))
  else
    say("   Time selection: " .. err:gsub("\n", " "))
  end
end

local function differences(before, after)
  local changed = {}
  for key, v in pairs(before.numbers) do if after.numbers[key] ~= v then changed[#changed + 1] = key end end
  for key, v in pairs(before.strings) do if after.strings[key] ~= v then changed[#changed + 1] = key end end
  for i, t in ipairs(before.tracks) do
    local a = after.tracks[i]
    if not a or a.solo ~= t.solo or a.solo_defeat ~= t.solo_defeat then changed[#changed + 1] = "track solo" end
  end
  if before.master_fx ~= after.master_fx or before.master_mute ~= after.master_mute
      or before.master_vol ~= after.master_vol then
    changed[#changed + 1] = "master"
  end
  if before.solo_in_front ~= after.solo_in_front then changed[#changed + 1] = "solo in front" end
  return changed
end

local function check_bounce(proj)
  say("4. A 1 s test bounce")
  local t0 = SF.time_selection(proj) or 0
  local sample_rate = SF.project_sample_rate(proj)
  local folder = SF.join(SF.join(SF.join(reaper.GetResourcePath(), "StepFoley"), "queries"), "verify-" .. SF.new_job_id())
  reaper.RecursiveCreateDirectory(folder, 0)
  local tracks = SF.choose_negatives(proj, t0, t0 + 1, picture_track(proj, t0, t0 + 1), "layers").tracks
  local before = SF.mix_state(proj)
  local path, err = SF.bounce(proj, tracks, t0, t0 + 1, folder, "test_bounce", sample_rate)
  local changed = differences(before, SF.mix_state(proj))
  if path then
    local info = SF.wav_info(path)
    if info and info.sample_rate == sample_rate and info.channels == 2 and math.abs(info.seconds - 1) < 1e-3 then
      say(string.format("   OK: %.3f s, %d Hz, %d channels, %d layer(s).", info.seconds, info.sample_rate,
        info.channels, #tracks))
    else
      problem("The test bounce is not 1 s of stereo at the project rate (" .. tostring(info and info.seconds) .. " s).",
        "check Preferences > Rendering; report this with the console text.")
    end
  elseif folder:find(";", 1, true) then -- generation bounces into the project's folder when it can
    problem(err, "move REAPER's resource folder to a path without \";\" to verify rendering here; generation " ..
      "still works in a saved project whose folder has none.")
  else
    problem(err, "close REAPER's render window if it is open and make sure nothing else renders; then try again.")
  end
  if #changed > 0 then
    problem("The bounce did not put back: " .. table.concat(changed, ", ") .. ".", "report this with the console text.")
  else
    say("   Every render, solo and master setting is back as it was.")
  end
  SF.remove_tree(folder)
end

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local settings = SF.load_settings()
  say("StepFoley " .. SF.VERSION .. " on REAPER " .. reaper.GetAppVersion() .. " (" .. reaper.GetOS() .. ")")
  local prefix = check_client(settings)
  local function finish(engine)
    if engine then check_engine(settings, engine) end
    if SF.project_is_open(proj) then
      check_project(proj, settings)
      check_bounce(proj)
    else -- its tab was closed while the engine was asked
      problem("The project was closed during the check, so neither it nor a test bounce was checked.",
        "run \"StepFoley: Verify setup\" again with the project open.")
    end
    SF.log("setup check\n" .. table.concat(lines, "\n"))
    if #problems == 0 then
      SF.alert("Everything is ready. (The console shows what was checked.)", "StepFoley: verify setup")
    else
      SF.alert(string.format("%d problem(s) found:\n\n- %s\n\nThe console shows everything that was checked.",
        #problems, table.concat(problems, "\n\n- ")), "StepFoley: verify setup")
    end
  end
  if not prefix then return finish(nil) end
  SF.query_engine(settings, prefix, finish)
end

main()
