-- moongate.shared — gw.shared, the store every worker shares (SPEC §5), and with cluster.redis
-- every instance (docs/cluster.md).
--
-- Local calls are plain FFI calls into runtime/shared.c (atomic under a shard lock; they never
-- yield). With cluster.redis, use_redis() routes each key by its class:
--
--   shared   (the default: rate limits rl:, budgets budget:, consumers consumer:, plugins' own
--            keys) — in Redis, atomic there (runtime/redis.c); the call yields the request's
--            coroutine until the answer is in, and is a blocking round trip outside one
--   mirrored (evictions: hev|, hwhy|, hej|) — written here and to Redis (fire-and-forget),
--            read here; a read older than cluster.refresh asks Redis for the key in the
--            background, so another instance's eviction shows within about that time and no
--            request ever waits for it
--   local    (per-request balancing figures: brr|, bq|, hin|, hlat|, hok|, hbad|, hfail|,
--            htok|, hprobe|; consumers' load claim; anything starting "local:") — here only
--
-- When Redis cannot be reached (refused, lost, no answer within cluster.timeout), a shared key's
-- operation falls back to this instance's store with cluster.fail_open (the default), or returns
-- nil, "cluster unavailable" without it.
--
--   gw.shared.get(key)                      -> number | string | nil (, err)
--   gw.shared.set(key, value, ttl)          -> true | nil, err
--   gw.shared.delete(key)                   -> true when it existed (, err)
--   gw.shared.incr(key, n, ttl)             -> new value | nil, err
--   gw.shared.reserve(key, n, limit, ttl)   -> ok, remaining | nil, err
--   gw.shared.settle(key, reserved, actual) -> new value (0 when the key expired) | nil, err
--
-- ttl in seconds (0 or nil: none) applies when the key is created; incr, reserve and settle
-- keep it, so a counting window ends on time.
local ffi = require("ffi")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local ffi_string = ffi.string
local match, tostring, type = string.match, tostring, type

local _M = { _VERSION = "0.1" }

local MISSING, NUMBER, STRING = 0, 1, 2
local num = ffi.new("double[1]")
local str = ffi.new("const char *[1]")
local len = ffi.new("size_t[1]")

_M.UNAVAILABLE = "cluster unavailable"

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

---------------------------------------------------------------------------------------------------
-- This process's store (runtime/shared.c)
---------------------------------------------------------------------------------------------------

local function l_get(key)
  local t = C.mg_shared_get(key, #key, num, str, len)
  if t == NUMBER then return num[0] end
  if t == STRING then return ffi_string(str[0], len[0]) end
  return nil
end

local function l_set(key, value, ttl)
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

local function l_delete(key)
  return C.mg_shared_delete(key, #key) == 1
end

local function l_incr(key, n, ttl)
  if C.mg_shared_incr(key, #key, n, ttl or 0, num) ~= 0 then
    return nil, "gw.shared.incr: " .. key .. " holds a string"
  end
  return num[0]
end

local function l_reserve(key, n, limit, ttl)
  local rc = C.mg_shared_reserve(key, #key, n, limit, ttl or 0, num)
  if rc < 0 then return nil, "gw.shared.reserve: " .. key .. " holds a string" end
  return rc == 1, num[0]
end

local function l_settle(key, reserved, actual)
  local rc = C.mg_shared_settle(key, #key, reserved, actual, num)
  if rc < 0 then return nil, "gw.shared.settle: " .. key .. " holds a string" end
  return num[0]
end

---------------------------------------------------------------------------------------------------
-- Key classes (cluster.redis)
---------------------------------------------------------------------------------------------------

local SHARED, MIRRORED, LOCAL = 1, 2, 3
_M.SHARED, _M.MIRRORED, _M.LOCAL = SHARED, MIRRORED, LOCAL

-- By the key's first segment (up to and with its first "|" or ":"), or by the whole key.
_M.classes = {
  ["hev|"] = MIRRORED, ["hwhy|"] = MIRRORED, ["hej|"] = MIRRORED,
  ["brr|"] = LOCAL, ["bq|"] = LOCAL, ["hin|"] = LOCAL, ["hlat|"] = LOCAL, ["hok|"] = LOCAL,
  ["hbad|"] = LOCAL, ["hfail|"] = LOCAL, ["htok|"] = LOCAL, ["hprobe|"] = LOCAL,
  ["local:"] = LOCAL,
  -- consumers.lua's "load data_dir once per process" claim: per process by nature
  ["consumers:loaded"] = LOCAL, ["consumers:loading"] = LOCAL,
}

local memo, nmemo = {}, 0

local function class_of(key)
  local c = memo[key]
  if c then return c end
  local classes = _M.classes
  c = classes[match(key, "^[^|:]*[|:]") or ""] or classes[key] or SHARED
  nmemo = nmemo + 1
  if nmemo > 20000 then memo, nmemo = {}, 0 end
  memo[key] = c
  return c
end
_M.class_of = class_of

---------------------------------------------------------------------------------------------------
-- Redis (moongate.redis, runtime/redis.c)
---------------------------------------------------------------------------------------------------

local redis            -- moongate.redis once use_redis() ran; nil: everything is local
local call
local fail_open = true
local refresh_every = 0.25
local OK, DOWN, TIMEOUT = 0, -1, -2
local R_GET, R_SET, R_DELETE, R_INCR, R_RESERVE, R_SETTLE = 1, 2, 3, 4, 5, 6
local fetched, nfetched = {}, 0   -- mirrored key -> when it was last asked of Redis

-- use_redis{ fail_open =, refresh = }: from now on this thread's gw.shared goes through its
-- Redis client (moongate.redis.start calls it).
function _M.use_redis(opts)
  redis = require("moongate.redis")
  call = redis.call
  fail_open = opts.fail_open ~= false
  refresh_every = opts.refresh or 0.25
end

-- The error of a status that is not OK, or nil when the operation should fall back here.
local function failure(status, fn)
  if status == DOWN or status == TIMEOUT then
    if fail_open then return nil end
    return _M.UNAVAILABLE
  end
  return "gw.shared." .. fn .. ": Redis: " .. ffi_string(redis.str[0], redis.len[0])
end

local function refresh(key)
  local now = C.mg_monotonic()
  local t = fetched[key]
  if t and now - t < refresh_every then return end
  if not t then
    nfetched = nfetched + 1
    if nfetched > 10000 then fetched, nfetched = {}, 0 end
  end
  fetched[key] = now
  C.mg_redis_fetch(key, #key)
end

local function r_value()
  local t = redis.type[0]
  if t == NUMBER then return redis.num[0] end
  if t == STRING then return ffi_string(redis.str[0], redis.len[0]) end
  return nil
end

local function r_holds_string(fn, key)
  return nil, "gw.shared." .. fn .. ": " .. key .. " holds a string"
end

---------------------------------------------------------------------------------------------------
-- gw.shared
---------------------------------------------------------------------------------------------------

function _M.get(key)
  check_key(key, "get")
  if redis then
    local cls = class_of(key)
    if cls == SHARED then
      local st = call(R_GET, key, 0, 0, 0, nil)
      if st == OK then return r_value() end
      local err = failure(st, "get")
      if err then return nil, err end
    elseif cls == MIRRORED then
      refresh(key)
    end
  end
  return l_get(key)
end

function _M.set(key, value, ttl)
  check_key(key, "set")
  if redis then
    local cls = class_of(key)
    if cls ~= LOCAL then
      local tv = type(value)
      if tv ~= "number" and tv ~= "string" and value ~= nil then
        return nil, "gw.shared.set: only numbers and strings are stored, not " .. tv
      end
      if cls == SHARED then
        local st
        if value == nil then
          st = call(R_DELETE, key, 0, 0, 0, nil)
        elseif tv == "number" then
          st = call(R_SET, key, NUMBER, value, ttl or 0, nil)
        else
          st = call(R_SET, key, STRING, 0, ttl or 0, value)
        end
        if st == OK then return true end
        local err = failure(st, "set")
        if err then return nil, err end
      elseif value == nil then
        C.mg_redis_send(R_DELETE, key, #key, 0, 0, 0, nil, 0)
      elseif tv == "number" then
        C.mg_redis_send(R_SET, key, #key, NUMBER, value, ttl or 0, nil, 0)
      else
        C.mg_redis_send(R_SET, key, #key, STRING, 0, ttl or 0, value, #value)
      end
    end
  end
  return l_set(key, value, ttl)
end

function _M.delete(key)
  check_key(key, "delete")
  if redis then
    local cls = class_of(key)
    if cls == SHARED then
      local st = call(R_DELETE, key, 0, 0, 0, nil)
      if st == OK then return redis.rc[0] == 1 end
      local err = failure(st, "delete")
      if err then return nil, err end
    elseif cls == MIRRORED then
      C.mg_redis_send(R_DELETE, key, #key, 0, 0, 0, nil, 0)
    end
  end
  return l_delete(key)
end

function _M.incr(key, n, ttl)
  check_key(key, "incr")
  n = n or 1
  check_number(n, "n", "incr")
  if redis then
    local cls = class_of(key)
    if cls == SHARED then
      local st = call(R_INCR, key, n, ttl or 0, 0, nil)
      if st == OK then
        if redis.rc[0] < 0 then return r_holds_string("incr", key) end
        return redis.num[0]
      end
      local err = failure(st, "incr")
      if err then return nil, err end
    elseif cls == MIRRORED then
      C.mg_redis_send(R_INCR, key, #key, n, ttl or 0, 0, nil, 0)
    end
  end
  return l_incr(key, n, ttl)
end

function _M.reserve(key, n, limit, ttl)
  check_key(key, "reserve")
  check_number(n, "n", "reserve")
  check_number(limit, "limit", "reserve")
  if redis then
    local cls = class_of(key)
    if cls == SHARED then
      local st = call(R_RESERVE, key, n, limit, ttl or 0, nil)
      if st == OK then
        local rc = redis.rc[0]
        if rc < 0 then return r_holds_string("reserve", key) end
        return rc == 1, redis.num[0]
      end
      local err = failure(st, "reserve")
      if err then return nil, err end
    elseif cls == MIRRORED then
      C.mg_redis_send(R_RESERVE, key, #key, n, limit, ttl or 0, nil, 0)
    end
  end
  return l_reserve(key, n, limit, ttl)
end

function _M.settle(key, reserved, actual)
  check_key(key, "settle")
  check_number(reserved, "reserved", "settle")
  check_number(actual, "actual", "settle")
  if redis then
    local cls = class_of(key)
    if cls == SHARED then
      local st = call(R_SETTLE, key, reserved, actual, 0, nil)
      if st == OK then
        local rc = redis.rc[0]
        if rc < 0 then return r_holds_string("settle", key) end
        if rc == 1 then return 0 end
        return redis.num[0]
      end
      local err = failure(st, "settle")
      if err then return nil, err end
    elseif cls == MIRRORED then
      C.mg_redis_send(R_SETTLE, key, #key, reserved, actual, 0, nil, 0)
    end
  end
  return l_settle(key, reserved, actual)
end

return _M
