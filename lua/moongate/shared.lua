-- moongate.shared — gw.shared, the store every worker shares (SPEC §5).
--
-- Local calls are plain FFI calls into runtime/shared.c (atomic under a
-- shard lock; they never yield). The same functions will be backed by Redis
-- with cluster.redis (a later issue), where they yield to the event loop.
--
--   gw.shared.get(key)                      -> number | string | nil
--   gw.shared.set(key, value, ttl)          -> true | nil, err
--   gw.shared.delete(key)                   -> true when it existed
--   gw.shared.incr(key, n, ttl)             -> new value | nil, err
--   gw.shared.reserve(key, n, limit, ttl)   -> ok, remaining | nil, err
--   gw.shared.settle(key, reserved, actual) -> new value (0 when the key expired) | nil, err
--
-- ttl in seconds (0 or nil: none) applies when the key is created; incr,
-- reserve and settle keep it, so a counting window ends on time.
local ffi = require("ffi")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local ffi_string = ffi.string
local tostring, type = tostring, type

local _M = { _VERSION = "0.1" }

local MISSING, NUMBER, STRING = 0, 1, 2
local num = ffi.new("double[1]")
local str = ffi.new("const char *[1]")
local len = ffi.new("size_t[1]")

local function check_key(key, fn)
  if type(key) ~= "string" or key == "" then
    error("gw.shared." .. fn .. ": key must be a non-empty string", 3)
  end
end

local function check_number(v, what, fn)
  if type(v) ~= "number" or v ~= v then
    error("gw.shared." .. fn .. ": " .. what .. " must be a number", 3)
  end
end

function _M.get(key)
  check_key(key, "get")
  local t = C.mg_shared_get(key, #key, num, str, len)
  if t == NUMBER then return num[0] end
  if t == STRING then return ffi_string(str[0], len[0]) end
  return nil
end

function _M.set(key, value, ttl)
  check_key(key, "set")
  local tv = type(value)
  if tv == "number" then
    C.mg_shared_set(key, #key, NUMBER, value, nil, 0, ttl or 0)
  elseif tv == "string" then
    C.mg_shared_set(key, #key, STRING, 0, value, #value, ttl or 0)
  elseif value == nil then
    C.mg_shared_delete(key, #key)
  else
    return nil, "gw.shared.set: only numbers and strings are stored, not " .. tv
  end
  return true
end

function _M.delete(key)
  check_key(key, "delete")
  return C.mg_shared_delete(key, #key) == 1
end

function _M.incr(key, n, ttl)
  check_key(key, "incr")
  n = n or 1
  check_number(n, "n", "incr")
  if C.mg_shared_incr(key, #key, n, ttl or 0, num) ~= 0 then
    return nil, "gw.shared.incr: " .. key .. " holds a string"
  end
  return num[0]
end

function _M.reserve(key, n, limit, ttl)
  check_key(key, "reserve")
  check_number(n, "n", "reserve")
  check_number(limit, "limit", "reserve")
  local rc = C.mg_shared_reserve(key, #key, n, limit, ttl or 0, num)
  if rc < 0 then return nil, "gw.shared.reserve: " .. key .. " holds a string" end
  return rc == 1, num[0]
end

function _M.settle(key, reserved, actual)
  check_key(key, "settle")
  check_number(reserved, "reserved", "settle")
  check_number(actual, "actual", "settle")
  local rc = C.mg_shared_settle(key, #key, reserved, actual, num)
  if rc < 0 then return nil, "gw.shared.settle: " .. key .. " holds a string" end
  return num[0]
end

return _M
