-- The driver's JSON: the library's own codec (its round trips against Python's json module
-- are tested in tests/test_reaper_lib.py, so the driver can rely on it).
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local SF = dofile(here .. "../../reaper_scripts/StepFoley_lib.lua")
return { encode = SF.json_encode, decode = SF.json_decode, array = SF.array, null = SF.null }
