-- moongate.sse — splits a Server-Sent Events byte stream into whole events
-- as they arrive, so that on_chunk sees one event at a time (SPEC §5).
--
-- The buffer is bounded: a provider that sends more than `max` bytes without
-- an event boundary gets them passed on as they are rather than held, so a
-- broken stream can never grow memory without limit. Bytes are never changed:
-- each event keeps its own line endings and its terminating blank line.
local find, sub = string.find, string.sub

local _M = { _VERSION = "0.1" }

local Splitter = {}
Splitter.__index = Splitter

-- new(max) -> splitter; max defaults to 1 MB
function _M.new(max)
  return setmetatable({ buf = "", max = max or 1048576 }, Splitter)
end

-- The end index of the first event boundary in s at or after i, or nil.
local function boundary(s, i)
  local a = find(s, "\n\n", i, true)
  local b = find(s, "\r\n\r\n", i, true)
  local c = find(s, "\r\r", i, true)
  local e
  if a then e = a + 1 end
  if b and (not e or b + 3 < e) then e = b + 3 end
  if c and (not e or c + 1 < e) then e = c + 1 end
  return e
end

-- feed(data) -> list of complete events (possibly empty)
function Splitter:feed(data)
  local s = self.buf .. data
  local out, i = {}, 1
  while true do
    local e = boundary(s, i)
    if not e then break end
    out[#out + 1] = sub(s, i, e)
    i = e + 1
  end
  local rest = sub(s, i)
  if #rest > self.max then
    out[#out + 1] = rest
    rest = ""
  end
  self.buf = rest
  return out
end

-- finish() -> what is left (an event without its blank line), or nil
function Splitter:finish()
  local rest = self.buf
  self.buf = ""
  if rest == "" then return nil end
  return rest
end

return _M
