-- moongate.codec.sse — the one Server-Sent Events codec the provider codecs
-- share: moongate.sse's bounded splitter cuts the byte stream into events,
-- this module reads each event's fields and writes events back.
--
--   r = sse.reader(max)          max: bytes an event may hold (default 4 MB)
--   for _, ev in ipairs(r:feed(data)) do ... end
--   rest = r:finish()            list: a last event left without its blank line
--   ev = { event = name|nil, data = text|nil, raw = the event's bytes, partial = true|nil }
--
-- An event longer than `max` comes out in pieces (the splitter does not hold
-- more), which the codecs then see as data that is not JSON: an error, never
-- unbounded memory.
local splitter = require("moongate.sse")
local find, sub = string.find, string.sub
local concat = table.concat

local _M = { _VERSION = "0.1" }

local DEFAULT_MAX = 4 * 1048576

-- parse(raw) -> { event, data, id, raw }: SSE field rules (WHATWG): lines end
-- in \r\n, \n or \r; "field: value" with one optional space; data lines join
-- with \n; lines starting with ":" are comments.
local function parse(raw)
  local ev = { raw = raw }
  local first, data, nd = nil, nil, 0   -- the one data line of the usual event needs no table
  local i, n = 1, #raw
  -- plain finds (a character class is a pattern, which the JIT does not compile); lf and cr
  -- are the next \n and \r at or after i, nil once there is none left (so no line rescans
  -- the rest of the event for the one it does not hold)
  local lf, cr = find(raw, "\n", 1, true), find(raw, "\r", 1, true)
  while i <= n do
    if lf and lf < i then lf = find(raw, "\n", i, true) end
    if cr and cr < i then cr = find(raw, "\r", i, true) end
    local e = lf
    if cr and (not e or cr < e) then e = cr end
    local line = sub(raw, i, (e or n + 1) - 1)
    if not e then
      i = n + 1
    elseif sub(raw, e, e + 1) == "\r\n" then
      i = e + 2
    else
      i = e + 1
    end
    if line ~= "" and sub(line, 1, 1) ~= ":" then
      local c = find(line, ":", 1, true)
      local field, value
      if c then
        field = sub(line, 1, c - 1)
        value = sub(line, c + 1)
        if sub(value, 1, 1) == " " then value = sub(value, 2) end
      else
        field, value = line, ""
      end
      if field == "data" then
        nd = nd + 1
        if nd == 1 then
          first = value
        else
          if nd == 2 then data = { first } end
          data[nd] = value
        end
      elseif field == "event" then
        ev.event = value
      elseif field == "id" then
        ev.id = value
      end
    end
  end
  if nd == 1 then ev.data = first elseif nd > 1 then ev.data = concat(data, "\n", 1, nd) end
  return ev
end
_M.parse = parse

local Reader = {}
Reader.__index = Reader

function _M.reader(max)
  return setmetatable({ split = splitter.new(max or DEFAULT_MAX) }, Reader)
end

-- feed(data) -> list of parsed events (those without data are left out)
function Reader:feed(data)
  local raw = self.split:feed(data)
  local out = {}
  for i = 1, #raw do
    local ev = parse(raw[i])
    if ev.data or ev.event then out[#out + 1] = ev end
  end
  return out
end

-- finish() -> list: an event the stream ended in without its blank line
-- (marked partial), or nothing
function Reader:finish()
  local rest = self.split:finish()
  if not rest or not find(rest, "%S") then return {} end
  local ev = parse(rest)
  ev.partial = true
  if ev.data or ev.event then return { ev } end
  return {}
end

-- data(text) -> "data: text\n\n" (text must not hold line breaks: JSON from
-- the codecs never does)
function _M.data(text)
  return "data: " .. text .. "\n\n"
end

-- event(name, text) -> "event: name\ndata: text\n\n"
function _M.event(name, text)
  return "event: " .. name .. "\ndata: " .. text .. "\n\n"
end

return _M
