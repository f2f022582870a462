-- The driver's JSON: the library's own codec (its round trips against Python's json module
-- are tested in tests/test_reaper_lib.py, so the driver can rely on it). A file name that is not
-- UTF-8 text crosses as Python writes one (os.fsdecode's surrogateescape, "\udce9" for the byte
-- 0xE9): read here as that byte, written back as the byte, which the harness reads as Python does.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
local SF = dofile(here .. "../../reaper_scripts/StepFoley_lib.lua")

-- U+DC80..U+DCFF as the library decodes them (UTF-8 ED B2 80 .. ED B3 BF) -> the bytes 0x80..0xFF
local function escaped_bytes(value)
  if type(value) == "string" then
    return (value:gsub("\xED([\xB2\xB3])([\x80-\xBF])", function(hi, lo)
      return string.char(0x80 + (hi:byte() - 0xB2) * 64 + (lo:byte() - 0x80))
    end))
  elseif type(value) == "table" then
    local out = {}
    for k, v in pairs(value) do out[escaped_bytes(k)] = escaped_bytes(v) end
    return setmetatable(out, getmetatable(value))
  end
  return value
end

local function decode(text)
  return escaped_bytes(SF.json_decode(text))
end

return { encode = SF.json_encode, decode = decode, array = SF.array, null = SF.null }
