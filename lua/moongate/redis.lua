-- moongate.redis — cluster.redis (SPEC §2, §5, §8): the Redis URL, this thread's client
-- (runtime/redis.c, on the thread's libuv loop), the calls gw.shared makes through it, and a
-- stream for the ledger. docs/cluster.md tells the whole story.
--
--   redis.parse_url("redis://:pw@host:6379/0") -> { host, port, user, password, db } | nil, err
--   redis.start(cfg.cluster)                   -> true | nil, err  (once per thread, at start)
--   redis.enabled()                            -> true once started on this thread
--   redis.up()                                 -> true while this thread's connection is ready
--   redis.call(op, key, a, b, c, s)            -> status (gw.shared's, moongate.shared)
--   redis.xadd(stream, fields)                 -> true | nil, err  (fire-and-forget)
--
-- xadd appends one entry to the Redis stream <prefix><stream> (XADD ... MAXLEN ~
-- cluster.stream_maxlen *), e.g. redis.xadd("ledger", { "id", id, "cost", "0.0012" }): fields
-- as a list of names and values, or a table of name = value (sent in name order). Values are
-- sent as text (tostring). It never waits: the entry goes out with the thread's next write to
-- Redis, and is lost (returns nil, "cluster unavailable") while Redis is unreachable.
local ffi = require("ffi")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local co_running, co_yield = coroutine.running, coroutine.yield
local char, find, lower, match, sub = string.char, string.find, string.lower, string.match,
  string.sub
local ipairs, pairs, sort, tonumber, tostring, type = ipairs, pairs, table.sort, tonumber, tostring, type

local _M = { _VERSION = "0.1" }

_M.GET, _M.SET, _M.DELETE, _M.INCR, _M.RESERVE, _M.SETTLE = 1, 2, 3, 4, 5, 6
_M.OK, _M.DOWN, _M.TIMEOUT, _M.ERROR = 0, -1, -2, -3

local EV_WAKE = 7
local started = false
local stream_maxlen

-- The defaults of the cluster options (docs/cluster.md).
_M.defaults = { fail_open = true, timeout = 0.25, connect_timeout = 1, prefix = "moongate:",
                refresh = 0.25, stream_maxlen = 1000000 }

-- options(cluster) -> the cluster table with every default filled in (a copy)
function _M.options(cluster)
  local o = {}
  for k, v in pairs(_M.defaults) do o[k] = v end
  for k, v in pairs(cluster or {}) do o[k] = v end
  return o
end

---------------------------------------------------------------------------------------------------
-- The URL
---------------------------------------------------------------------------------------------------

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- parse_url(url) -> { host, port, user, password, db } | nil, err
--   redis://[[user]:password@]host[:port][/db]   (host: a name, an IPv4 address or [IPv6])
-- "password@" without a colon is a password (a user alone cannot AUTH); user and password are
-- percent-decoded. Defaults: port 6379, db 0. rediss:// (TLS) and unix sockets are refused.
function _M.parse_url(url)
  if type(url) ~= "string" then return nil, "must be a redis:// URL" end
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "must be a redis:// URL (redis://[:password@]host[:port][/db])" end
  scheme = lower(scheme)
  if scheme == "rediss" then
    return nil, "rediss:// (TLS) is not supported; reach a TLS Redis through a local TLS proxy " ..
      "(stunnel, spiped) with redis://"
  end
  if scheme ~= "redis" then
    return nil, "unsupported scheme " .. scheme .. ":// (only redis://)"
  end
  local out = { port = 6379, db = 0 }
  local slash = find(rest, "/", 1, true)
  local authority, path = rest, ""
  if slash then authority, path = sub(rest, 1, slash - 1), sub(rest, slash + 1) end
  if find(path, "?", 1, true) or find(path, "#", 1, true) then
    return nil, "a redis:// URL takes no query or fragment"
  end
  local at = authority:match(".*()@")
  if at then
    local userinfo = sub(authority, 1, at - 1)
    authority = sub(authority, at + 1)
    local colon = find(userinfo, ":", 1, true)
    local user, password
    if colon then
      user, password = sub(userinfo, 1, colon - 1), sub(userinfo, colon + 1)
    else
      password = userinfo
    end
    if user and user ~= "" then out.user = unescape(user) end
    if password ~= "" then out.password = unescape(password) end
  end
  local host, port
  if sub(authority, 1, 1) == "[" then
    host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
    if not host then return nil, "bad [IPv6]:port " .. authority end
  else
    host, port = match(authority, "^([^:]*):?(%d*)$")
    if not host then return nil, "bad host:port " .. authority end
  end
  if host == "" then return nil, "no host" end
  if not match(host, "^[%w%.%-_:]+$") then return nil, "bad host " .. host end
  out.host = host
  if port ~= "" then
    local p = tonumber(port)
    if not p or p < 1 or p > 65535 then return nil, "port must be 1-65535, not " .. port end
    out.port = p
  elseif match(authority, ":$") then
    return nil, "no port after ':'"
  end
  if path ~= "" then
    local db = match(path, "^(%d+)/?$")
    if not db then return nil, "the path must be a database number (/0), not /" .. path end
    out.db = tonumber(db)
    if out.db > 100000 then return nil, "database number too large: " .. db end
  end
  return out
end

-- For messages: the address without the password.
function _M.describe(u)
  local host = find(u.host, ":", 1, true) and ("[" .. u.host .. "]") or u.host
  return host .. ":" .. u.port .. (u.db ~= 0 and ("/" .. u.db) or "")
end

---------------------------------------------------------------------------------------------------
-- The client
---------------------------------------------------------------------------------------------------

-- start(cluster) -> true | nil, err: this thread's client, and gw.shared routed through it.
-- cluster: the config's `cluster` table (redis, fail_open, timeout, connect_timeout, prefix,
-- refresh, stream_maxlen), as moongate.config normalises it.
function _M.start(cluster)
  if started then return true end
  if not C then return nil, "Redis needs the moongate binary" end
  local o = _M.options(cluster)
  local u, err = _M.parse_url(o.redis)
  if not u then return nil, err end
  local host = u.host == "localhost" and "127.0.0.1" or u.host
  local ebuf = mgffi.errbuf
  if C.mg_redis_start(host, u.port, u.user, u.password, u.db, o.prefix, o.timeout,
       o.connect_timeout, o.fail_open and 1 or 0, ebuf, 256) ~= 0 then
    return nil, ffi.string(ebuf)
  end
  started = true
  stream_maxlen = o.stream_maxlen
  -- closes the client with the Lua state (the thread's end): its handles and operations go
  _M._closer = ffi.gc(ffi.new("char[1]"), function() C.mg_redis_stop() end)
  require("moongate.shared").use_redis({ fail_open = o.fail_open, refresh = o.refresh })
  return true
end

function _M.enabled()
  return started
end

function _M.up()
  return started and C.mg_redis_up() == 1
end

local rc = ffi.new("int[1]")
local typ = ffi.new("int[1]")
local num = ffi.new("double[1]")
local str = ffi.new("const char *[1]")
local len = ffi.new("size_t[1]")
_M.rc, _M.type, _M.num, _M.str, _M.len = rc, typ, num, str, len

-- call(op, key, a, b, c, s) -> status (MG_REDIS_*); the results are in _M.rc, type, num, str,
-- len until the next call. Inside one of the runtime's coroutines it yields until the answer
-- (the loop serves everyone else meanwhile); elsewhere (start-up, a plugin's init, a coroutine
-- of a plugin's own) it is a blocking round trip bounded by cluster.timeout.
function _M.call(op, key, a, b, c, s)
  local sl = s and #s or 0
  local co = co_running()
  local gw = package.loaded.gw
  local id = co and gw and gw._waiter_new and gw._waiter_new(co)
  local o
  if id then
    o = C.mg_redis_call(id, op, key, #key, a, b, c, s, sl)
    if o == nil then
      gw._waiter_done(co, id)
      return _M.DOWN
    end
    repeat
      local kind = co_yield()
    until kind == EV_WAKE
    gw._waiter_done(co, id)
  else
    o = C.mg_redis_call(0, op, key, #key, a, b, c, s, sl)
    if o == nil then return _M.DOWN end
  end
  return C.mg_redis_result(o, rc, typ, num, str, len)
end

-- Arrays for xadd, grown as needed (one set per Lua state; the call copies what it needs).
local argv, lens, cap = nil, nil, 0

function _M.xadd(stream, fields)
  if not started then return nil, "cluster.redis is off" end
  if type(stream) ~= "string" or stream == "" then error("redis.xadd: stream must be a non-empty string", 2) end
  if type(fields) ~= "table" then error("redis.xadd: fields must be a table", 2) end
  local list = {}
  if #fields > 0 then
    for i, v in ipairs(fields) do list[i] = tostring(v) end
    if #list % 2 ~= 0 then error("redis.xadd: fields must come in name, value pairs", 2) end
  else
    local names = {}
    for k in pairs(fields) do names[#names + 1] = tostring(k) end
    sort(names)
    for _, k in ipairs(names) do
      list[#list + 1] = k
      list[#list + 1] = tostring(fields[k])
    end
  end
  local n = #list
  if n == 0 then error("redis.xadd: no fields", 2) end
  if n > cap then
    cap = n < 32 and 32 or n
    argv = ffi.new("const char *[?]", cap)
    lens = ffi.new("size_t[?]", cap)
  end
  for i = 1, n do
    argv[i - 1] = list[i]
    lens[i - 1] = #list[i]
  end
  local r = C.mg_redis_xadd(stream, #stream, stream_maxlen, argv, lens, n)
  for i = 0, n - 1 do argv[i] = nil end
  if r ~= 0 then return nil, "cluster unavailable" end
  return true
end

return _M
