-- @noindex
-- @description StepFoley: Toggle selected tracks as negatives
--[[
Toggle selected tracks as negatives: whether each selected track counts as a layer the next
generation negates (must complement). By default StepFoley's own tracks count and no other
track does; this switches each selected track to the other state: a Dialogue or Music track
becomes a negative ("include"), a StepFoley track stops being one ("exclude"), and a second
toggle brings it back. Stored in the track (P_EXT:stepfoley_negative), so it is saved with the
project. The console lists the result. One undo point.
]]

local dir = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or ""
local SF = dofile(dir .. "StepFoley_lib.lua")
assert(SF.VERSION == "0.5.39", SF.mixed_versions and SF.mixed_versions("this action", "0.5.39")
  or "StepFoley_lib.lua is older than this action (0.5.39). Install every StepFoley_*.lua file of one release into one folder.")

local function main()
  local proj = reaper.EnumProjects(-1, "")
  local n = reaper.CountSelectedTracks(proj)
  if n == 0 then
    SF.alert("Select the tracks to toggle first: StepFoley's tracks stop counting as negatives, any other track " ..
      "starts counting.")
    return
  end
  local lines = {}
  SF.undoable_edit(proj, "StepFoley: toggle negatives", function()
    for i = 0, n - 1 do
      local track = reaper.GetSelectedTrack(proj, i)
      local want = not SF.counts_as_negative(track)
      SF.set_negative_role(track, SF.role_for(SF.is_stepfoley_track(track), want))
      local folder = reaper.GetMediaTrackInfo_Value(track, "I_FOLDERDEPTH") > 0
      lines[#lines + 1] = SF.track_name(track) .. (want and ": a negative" or ": not a negative") ..
        -- a folder's own items count, its children each by their own choice
        ((want and folder) and " (its own items only: select its child tracks to make them negatives too)" or "") ..
        -- only what is heard is bounced as a negative
        ((want and not SF.track_is_heard(track)) and " (muted, or in a muted folder: not heard, so not negated " ..
          "until unmuted)" or "") ..
        -- the picture's track is never bounced as a layer
        ((want and SF.holds_video(track)) and " (it holds video: while that is the picture under the time " ..
          "selection, this track is not negated)" or "")
    end
  end)
  SF.log("negatives now:\n  " .. table.concat(lines, "\n  "))
end

main()
