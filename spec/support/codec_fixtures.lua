-- Helpers for the codec specs: provider fixtures (spec/fixtures/<provider>/),
-- a decoder run over them in any chunking, and the SSE events of its output.
local decoder = require("moongate.codec.decoder")
local sse = require("moongate.codec.sse")
local cjson = require("cjson.safe")

local _M = {}

local root = debug.getinfo(1, "S").source:gsub("^@", ""):gsub("spec/support/codec_fixtures%.lua$", "")
if root == "" then root = "./" end

function _M.read(path)
  local f = assert(io.open(root .. "spec/fixtures/" .. path, "rb"), "no fixture " .. path)
  local s = f:read("*a")
  f:close()
  return s
end

-- A client request as the runtime would have decoded it (for the estimates).
_M.REQUEST = { model = "client-model", messages = { { role = "user", content = "Hello there, how are you?" } } }

-- run(opts, status, content_type, text, split) -> result
-- split: nil (one piece), a number (fixed size) or a function(i) -> size.
-- result: status (what the client gets), headers, out (all output), err,
-- usage (ctx.usage), crashed (the decoder's safety net fired), d
function _M.run(opts, status, ct, text, split)
  local ctx = { request = { json = _M.REQUEST, headers = {} } }
  local o = { ctx = ctx, request_doc = _M.REQUEST }
  for k, v in pairs(opts) do o[k] = v end
  local d = decoder.new(o)
  local headers = { ["content-type"] = ct }
  local st = d:head(status, headers) or status
  local res = { status = st, headers = headers, d = d, ctx = ctx }
  if d.buffer then
    res.out, res.err = d:body(text)
  else
    local parts, i, k = {}, 1, 0
    while i <= #text do
      k = k + 1
      local n = #text
      if type(split) == "number" then n = split elseif type(split) == "function" then n = split(k) end
      local out = d:chunk(text:sub(i, i + n - 1))
      if out then parts[#parts + 1] = out end
      i = i + n
    end
    local tail, err = d:finish()
    if tail then parts[#parts + 1] = tail end
    res.out, res.err = table.concat(parts), err
  end
  res.usage = ctx.usage
  res.crashed = d.crashed
  return res
end

-- events(text) -> list of { event, data, json }: the output split into SSE events
function _M.events(text)
  local r = sse.reader()
  local out = {}
  for _, ev in ipairs(r:feed(text or "")) do
    out[#out + 1] = { event = ev.event, data = ev.data, json = ev.data and cjson.decode(ev.data) }
  end
  local rest = r:finish()
  if #rest > 0 then out.leftover = rest end
  return out
end

-- well_formed(text) -> true | false, why: every event complete, its data JSON or [DONE]
function _M.well_formed_sse(text)
  local evs = _M.events(text)
  if evs.leftover then return false, "an event without its blank line" end
  for i, ev in ipairs(evs) do
    if ev.data ~= "[DONE]" and type(ev.json) ~= "table" then
      return false, "event " .. i .. " data is not JSON: " .. tostring(ev.data)
    end
  end
  return true
end

-- same(text) with the clock taken out ("created": N)
function _M.timeless(text)
  return (tostring(text):gsub('"created":%d+', '"created":0'):gsub('"id":"(%a+)[-_]%x+"', '"id":"%1-x"'))
end

return _M
