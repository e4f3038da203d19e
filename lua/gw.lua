-- gw — the module plugins program against (SPEC §5).
--
-- Plugins reach it as require("gw") (also a global). What needs the running
-- request (log lines carry its id, sleep yields its coroutine) finds it through
-- gw._current, which the runtime sets whenever it resumes a request.
local cjson = require("cjson.safe")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local co_running, co_yield = coroutine.running, coroutine.yield
local concat, select, tostring, type = table.concat, select, tostring, type
local find, getmetatable, pairs, pcall, setmetatable, tonumber =
  string.find, getmetatable, pairs, pcall, setmetatable, tonumber
local os_time = os.time

local _M = { _VERSION = "0.1", _current = nil }

-- Sentinels returned from hooks: the runner recognises them by metatable.
local RESPOND = {}
local RETRY = setmetatable({}, { __tostring = function() return "gw.retry()" end })
_M.RESPOND_MT = RESPOND
_M.RETRY = RETRY

-- gw.respond(code, body, headers): end the request with this answer.
-- body: a string, or a table sent as JSON; headers: { name = value }.
function _M.respond(code, body, headers)
  if type(code) ~= "number" or code < 100 or code > 599 then
    error("gw.respond: code must be an HTTP status", 2)
  end
  return setmetatable({ status = code, body = body, headers = headers }, RESPOND)
end

-- gw.retry(): from on_response or on_error, try the next attempt.
function _M.retry()
  return RETRY
end

local levels = { error = 0, warn = 1, info = 2, debug = 3 }

-- gw.log(level, ...): one line on the error log, prefixed with the request id.
function _M.log(level, ...)
  local lv = levels[level]
  if lv == nil then error("gw.log: level must be error, warn, info or debug", 2) end
  local n = select("#", ...)
  local parts = { ... }
  for i = 1, n do parts[i] = tostring(parts[i]) end
  local msg = concat(parts, " ", 1, n)
  local ctx = _M._current
  if ctx and ctx.id then msg = "[" .. ctx.id .. "] " .. msg end
  if C then
    C.mg_log_write(lv, msg, #msg)
  else
    io.stderr:write(level, ": ", msg, "\n")
  end
end

-- gw.now(): wall-clock time in seconds, with sub-millisecond precision.
function _M.now()
  if C then return C.mg_now() end
  return os_time()
end

-- gw.json: decode never raises (nil, err). What a plugin decodes and encodes again keeps what
-- SPEC §3 keeps of a body: an empty array stays an array (decoded with gw.json.array_mt, which
-- encode honours, as on any table a plugin makes) and a number is written as the shortest text
-- that reads back as the same double (lua-cjson 2.1 writes 14 digits and every empty table as
-- {}). Integers past 2^53 are doubles in Lua: they keep 17 digits. encode keeps "/" unescaped.
local J = require("moongate.codec.json")
local json = cjson.new()
local ARRAY_MT = J.ARRAY

-- moongate.codec.json's tree (numbers as text, ordered objects, its null) as plain Lua values
local function plain(v)
  if type(v) ~= "table" then return v end
  if v == J.null then return cjson.null end
  local mt = getmetatable(v)
  if mt == J.RAW then return tonumber(v[1]) end
  local out
  if mt == ARRAY_MT then
    out = setmetatable({}, ARRAY_MT)
    for i = 1, #v do out[i] = plain(v[i]) end
  else
    out = {}
    for k, x in pairs(v) do out[k] = plain(x) end
  end
  return out
end

_M.json = {
  -- lua-cjson (C) unless the text holds an empty array, which it would decode as {}
  decode = function(s)
    if type(s) == "string" and find(s, "%[%s*%]") then
      local v, err = J.decode(s)
      if v == nil then return nil, err end
      return plain(v)
    end
    return json.decode(s)
  end,
  encode = function(v)
    local ok, s = pcall(J.encode, v)
    if not ok then return nil, tostring(s) end
    return s
  end,
  null = cjson.null,
  -- a table with this metatable is a list, [] when empty
  array_mt = ARRAY_MT,
}

-- _drained(r): for Lua that writes a long body itself (the mock provider):
-- waits, yielding, until the client has taken its backlog. Returns false when
-- the client is gone.
function _M._drained(r)
  local co = co_running()
  local rc = C.mg_resp_wait_drained(r, _M._waiter_of(co))
  if rc == 0 then return true end
  if rc < 0 then return false end
  repeat
    local kind = co_yield()
  until kind == 6 -- MG_EV_DRAINED
  return C.mg_req_alive(r) == 1
end

-- gw.shared: the store every worker shares (moongate.shared, in C); outside
-- the gateway binary (unit specs) the same operations in plain Lua.
_M.shared = C and require("moongate.shared") or require("moongate.shared_lua")

-- gw.sleep(seconds): yield the request's coroutine to the event loop.
function _M.sleep(seconds)
  local co = co_running()
  local id = co and _M._waiter_new and _M._waiter_new(co)
  if not id then error("gw.sleep: only inside a request", 2) end
  if type(seconds) ~= "number" or seconds ~= seconds then
    _M._waiter_done(co, id)
    error("gw.sleep: seconds must be a number", 2)
  end
  C.mg_sleep(id, seconds)
  repeat
    local kind = co_yield()
  until kind == 5 -- MG_EV_TIMER
  _M._waiter_done(co, id)
end

-- gw.http(url, opts) -> res | nil, err: a subrequest that yields (moongate.subrequest).
if C then _M.http = require("moongate.subrequest").request end

-- gw.expr(src) -> fn | nil, err: the expression compiler of SPEC §4
-- (moongate.expr); fn(vars) evaluates it and never throws.
function _M.expr(src)
  return require("moongate.expr").compile(src)
end

-- gw.worker() -> index, count: which gateway worker runs this code (1..count;
-- 0 on the main thread, which serves the admin API).
function _M.worker()
  if not C then return 1, 1 end
  return C.mg_worker_index(), C.mg_worker_count()
end

return _M
