-- @noindex
-- @description StepFoley: Generate Foley track following selected envelope
--[[
Generate Foley track following selected envelope: "footsteps that get louder as he comes
closer". Draw the loudness you want on a track's Volume envelope over the time selection
(0 dB = -23 LUFS, the level of StepFoley's other tracks; an empty track is best, since the
envelope also acts on a track's own audio), select that envelope, run this action: the new
track follows the curve in time and absolute level. The engine shapes the stem (the embedded
model and MMAudio alike apply the curve as gain automation, and say so in the take's
metadata); the envelope itself is left as it is. One undo point. Needs an engine of protocol 2.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local t0, t1 = SF.require_time_selection(proj)
  if not t0 then return end
  local env, err = SF.selected_volume_envelope(proj)
  if not env then return SF.alert(err) end
  local dialog = { negatives = true }
  dialog.values = SF.initial_values(dialog)
  SF.generate({ proj = proj, t0 = t0, t1 = t1, title = "StepFoley: Foley track following the envelope",
    dialog = dialog, feature = "follow a loudness curve",
    extra_fields = function(region, caps)
      local curve, curve_err = SF.loudness_curve(proj, env, region, caps)
      if not curve then return nil, curve_err end
      return { protocol = 2, loudness_curve = curve }
    end,
    undo = function(params) return "StepFoley: add Foley track \"" .. params.caption .. "\" following the envelope" end })
end

main()
