-- moongate.shared_lua — gw.shared in plain Lua, for code that runs outside
-- the gateway binary (unit specs, tools): the same operations and results as
-- moongate.shared (runtime/shared.c), in one process's memory, unbounded.
-- `_M.clock` may be replaced to drive TTLs from a test's own clock.
local type, tostring = type, tostring

local _M = { _VERSION = "0.1" }

_M.clock = os.time
local data = {}   -- key -> { v = value, exp = time | nil }

local function live(key)
  local e = data[key]
  if e and e.exp and _M.clock() >= e.exp then
    data[key] = nil
    return nil
  end
  return e
end

local function put(key, v, ttl)
  data[key] = { v = v, exp = (ttl and ttl > 0) and (_M.clock() + ttl) or nil }
end

local function check_key(key, fn)
  if type(key) ~= "string" or key == "" then
    error("gw.shared." .. fn .. ": key must be a non-empty string", 3)
  end
end

function _M.get(key)
  check_key(key, "get")
  local e = live(key)
  return e and e.v
end

function _M.set(key, value, ttl)
  check_key(key, "set")
  local tv = type(value)
  if value == nil then
    data[key] = nil
  elseif tv == "number" or tv == "string" then
    put(key, value, ttl)
  else
    return nil, "gw.shared.set: only numbers and strings are stored, not " .. tv
  end
  return true
end

function _M.delete(key)
  check_key(key, "delete")
  local had = live(key) ~= nil
  data[key] = nil
  return had
end

function _M.incr(key, n, ttl)
  check_key(key, "incr")
  n = n or 1
  local e = live(key)
  if not e then
    put(key, n, ttl)
    return n
  end
  if type(e.v) ~= "number" then return nil, "gw.shared.incr: " .. key .. " holds a string" end
  e.v = e.v + n
  return e.v
end

function _M.reserve(key, n, limit, ttl)
  check_key(key, "reserve")
  local e = live(key)
  local cur = 0
  if e then
    if type(e.v) ~= "number" then return nil, "gw.shared.reserve: " .. key .. " holds a string" end
    cur = e.v
  end
  if cur >= limit then return false, limit - cur end
  if e then e.v = cur + n else put(key, n, ttl) end
  return true, limit - (cur + n)
end

function _M.settle(key, reserved, actual)
  check_key(key, "settle")
  local e = live(key)
  if not e then return 0 end
  if type(e.v) ~= "number" then return nil, "gw.shared.settle: " .. key .. " holds a string" end
  e.v = e.v + (actual - reserved)
  return e.v
end

function _M._reset()
  data = {}
end

return _M
