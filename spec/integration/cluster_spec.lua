-- cluster.redis in the real binary, against a redis-server of the spec's own (a free port, no
-- persistence): two gateway processes sharing one Redis enforce one rate limit and one budget
-- together, count one counter exactly, and see each other's evictions; Redis stopped mid-run
-- with fail_open = true keeps serving (limits become per instance, one warning, the gauge at 0)
-- and with fail_open = false refuses limited requests with 503 cluster_unavailable; when Redis
-- comes back, the gateways reconnect. docs/cluster.md describes what is tested here.

local helpers = require "spec.support.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local function have_redis()
  local ok = os.execute("command -v redis-server > /dev/null 2>&1")
  return ok == true or ok == 0
end

---------------------------------------------------------------------------------------------------
-- redis-server, and a few commands to look at what the gateways stored
---------------------------------------------------------------------------------------------------

-- cmd(port, ...) -> the reply (string, number, table, nil), or nil, error text
local function cmd(port, ...)
  local s = socket.tcp()
  s:settimeout(5)
  local ok, err = s:connect("127.0.0.1", port)
  if not ok then
    s:close()
    error("redis 127.0.0.1:" .. port .. ": " .. tostring(err))
  end
  local args = { ... }
  local parts = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  assert(s:send(table.concat(parts)))
  local function read()
    local line = assert(s:receive("*l"))
    local t, rest = line:sub(1, 1), line:sub(2)
    if t == "+" then return rest end
    if t == "-" then return nil, rest end
    if t == ":" then return tonumber(rest) end
    if t == "$" then
      local n = tonumber(rest)
      if n < 0 then return nil end
      return assert(s:receive(n + 2)):sub(1, n)
    end
    if t == "*" then
      local n = tonumber(rest)
      if n < 0 then return nil end
      local out = {}
      for i = 1, n do out[i] = read() end
      return out
    end
    error("not RESP: " .. line)
  end
  local v, e = read()
  s:close()
  return v, e
end

local Redis = {}
Redis.__index = Redis

local function start_redis(port)
  local dir = helpers.tmpdir()
  port = port or helpers.free_port()
  local proc = helpers.spawn({ "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
    "--appendonly", "no", "--dir", dir }, { log = dir .. "/redis.log" })
  helpers.wait_until(function() return cmd(port, "PING") == "PONG" end, 10,
    "redis-server on port " .. port .. " did not answer PING")
  return setmetatable({ port = port, proc = proc, url = "redis://127.0.0.1:" .. port }, Redis)
end

function Redis:stop()
  self.proc:kill()
  assert(self.proc:wait(10), "redis-server did not stop")
end

function Redis:restart()
  local again = start_redis(self.port)
  self.proc = again.proc
end

---------------------------------------------------------------------------------------------------
-- the gateways
---------------------------------------------------------------------------------------------------

-- Prices make each token cost $0.001: the mock's answer to "hi" is 1 prompt + 7 completion
-- tokens = $0.008.
local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 2
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = "priced", prices = { input = 1000, output = 1000 } } }
routes = { { name = "v1", match = { path_prefix = "/v1" }, backend = "main" } }
teams = { t = {} }
consumers = {
  { name = "ann", key = "sk-ann-0123456789", team = "t" },
  { name = "bea", key = "sk-bea-0123456789", team = "t", budget = { usd = 0.02, period = "1mo" } },
  { name = "cal", key = "sk-cal-0123456789", team = "t" },
  { name = "dan", key = "sk-dan-0123456789", team = "t" },
  { name = "eve", key = "sk-eve-0123456789", team = "t", budget = { usd = 5, period = "1mo" } },
}
-- 1s: generous enough for the valgrind run, short enough for the "stops answering" case
cluster = { redis = "${REDIS_URL}", fail_open = ${FAIL_OPEN}, timeout = "1s" }
plugins = {
  { name = "auth" },
  -- a window of 30 days: the test never sees two windows (their sliding estimate)
  { name = "rate_limit", rules = { { by = "consumer", requests = 3, window = "30d", name = "per-consumer",
      when = "request.headers['x-limit'] == 'on'" } } },
  { name = "counter", handler = { on_request = function(ctx)
      local q = ctx.request.query
      if q == "op=incr" then
        local v, err = gw.shared.incr("hits", 1)
        return gw.respond(200, { value = v, err = err })
      elseif q == "op=xadd" then
        local ok, err = require("moongate.redis").xadd("probe", { "id", ctx.id, "cost", 0.5 })
        return gw.respond(200, { ok = ok, err = err })
      end
    end } },
}
]]

local CHAT = '{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'

local function chat(gw, who, limited)
  local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions",
    headers = { ["Content-Type"] = "application/json", Connection = "close",
                Authorization = "Bearer sk-" .. who .. "-0123456789", ["x-limit"] = limited and "on" or nil },
    body = CHAT })
  return res.status, cjson.decode(res.body), res.headers
end

local function admin(gw, method, path)
  local res = helpers.http(gw.admin_port, { method = method, path = path,
    headers = { Authorization = "Bearer admin-secret" } })
  return res.status, cjson.decode(res.body), res
end

local function metric(gw, name)
  local res = helpers.http(gw.admin_port, { path = "/metrics" })
  return tonumber(res.body:match("\n" .. name .. " ([%d.e+-]+)"))
end

local function count(text, plain)
  local n, at = 0, 1
  while true do
    local s, e = text:find(plain, at, true)
    if not s then return n end
    n, at = n + 1, e + 1
  end
end

-- Polls Redis for the budget counter of `who` this month until it is about `usd` (each request is
-- settled in on_log, after the client got its answer).
local function wait_spent(redis, who, usd)
  local key = "moongate:budget:consumer:" .. who .. ":" .. os.date("!%Y-%m")
  helpers.wait_until(function()
    local v = tonumber((cmd(redis.port, "GET", key)))
    return v and math.abs(v - usd) < 1e-9
  end, 10, key .. " never reached " .. usd)
end

local function start_pair(redis, fail_open)
  local vars = { REDIS_URL = redis.url, FAIL_OPEN = tostring(fail_open) }
  local a = helpers.start_gateway(CONFIG, { vars = vars })
  local b = helpers.start_gateway(CONFIG, { vars = vars })
  for _, gw in ipairs({ a, b }) do
    helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 1 end, 10,
      "the gateway did not connect to Redis")
  end
  return a, b
end

local describe_redis = have_redis() and describe or function(name)
  describe(name, function()
    pending("redis-server is not installed (scripts/deps.sh --test installs it)")
  end)
end

---------------------------------------------------------------------------------------------------
-- specs
---------------------------------------------------------------------------------------------------

describe_redis("cluster.redis with two gateways", function()
  local redis, a, b

  lazy_setup(function()
    redis = start_redis()
    a, b = start_pair(redis, true)
  end)

  lazy_teardown(function()
    local ca, ea = a:stop()
    local cb, eb = b:stop()
    local la, lb = a:log(), b:log()
    helpers.cleanup()
    assert(ca == 0, "gateway A exit code " .. tostring(ca) .. " " .. tostring(ea) .. "\n" .. la)
    assert(cb == 0, "gateway B exit code " .. tostring(cb) .. " " .. tostring(eb) .. "\n" .. lb)
  end)

  it("enforce one rate limit together: the 4th request is refused on either", function()
    assert.equal(200, (chat(a, "ann", true)))
    assert.equal(200, (chat(b, "ann", true)))
    local s3, _, h3 = chat(a, "ann", true)
    assert.equal(200, s3)
    assert.equal("0", h3["x-ratelimit-remaining-requests"])
    local s4, d4, h4 = chat(b, "ann", true)
    assert.equal(429, s4)
    assert.equal("rate_limit_exceeded", d4.error.code)
    assert.truthy(tonumber(h4["retry-after"]))
    assert.equal(429, (chat(a, "ann", true)))
    -- another consumer has its own count; ann's requests without the rule's header pass
    assert.equal(200, (chat(b, "dan", true)))
    assert.equal(200, (chat(a, "ann", false)))
    -- the counter is in Redis, under the prefix
    local keys = cmd(redis.port, "KEYS", "moongate:rl:*:ann:*")
    assert.equal(1, #keys)
  end)

  it("enforce one budget together (429 insufficient_quota)", function()
    -- $0.02 for bea: admitted while spend is below it, so 3 requests of $0.008 pass
    assert.equal(200, (chat(a, "bea")))
    wait_spent(redis, "bea", 0.008)
    assert.equal(200, (chat(b, "bea")))
    wait_spent(redis, "bea", 0.016)
    assert.equal(200, (chat(a, "bea")))
    wait_spent(redis, "bea", 0.024)
    for _, gw in ipairs({ b, a }) do
      local status, doc = chat(gw, "bea")
      assert.equal(429, status)
      assert.equal("insufficient_quota", doc.error.code)
    end
    -- both instances report the same spend in /admin/limits
    for _, gw in ipairs({ a, b }) do
      local _, doc = admin(gw, "GET", "/admin/limits?consumer=bea")
      assert.near(0.024, doc.budgets[1].spent_usd, 1e-9)
      assert.is_true(doc.budgets[1].exhausted)
    end
  end)

  it("keep a budget's spend in Redis when one of them restarts (its ledger holds only its share)", function()
    local key = "moongate:budget:consumer:bea:" .. os.date("!%Y-%m")
    local function restart(gw)
      assert.equal(0, (gw:stop()))
      gw = helpers.start_gateway(CONFIG, { dir = gw.dir, port = gw.port, admin_port = gw.admin_port,
        vars = { REDIS_URL = redis.url, FAIL_OPEN = "true" } })
      helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 1 end, 10,
        "the gateway did not connect to Redis")
      return gw
    end
    local function restart_a() a = restart(a) end
    -- A served $0.016 of bea's $0.024 (the spec above): the restart leaves Redis's total alone
    restart_a()
    assert.near(0.024, tonumber((cmd(redis.port, "GET", key))), 1e-9)
    assert.equal(429, (chat(a, "bea")))
    -- a counter Redis lost gets this instance's share back, added (never set over another's)
    assert.equal(1, cmd(redis.port, "DEL", key))
    restart_a()
    assert.near(0.016, tonumber((cmd(redis.port, "GET", key))), 1e-9)
    -- Redis loses everything of bea's (the counter and every instance's mark on it), then both
    -- restart: each brings its own share back, the second too (B served $0.008)
    for _, k in ipairs(cmd(redis.port, "KEYS", key .. "*")) do cmd(redis.port, "DEL", k) end
    restart_a()
    assert.near(0.016, tonumber((cmd(redis.port, "GET", key))), 1e-9)
    b = restart(b)
    assert.near(0.024, tonumber((cmd(redis.port, "GET", key))), 1e-9)
    -- and a restart with the counter and its marks in place adds nothing
    b = restart(b)
    assert.near(0.024, tonumber((cmd(redis.port, "GET", key))), 1e-9)
  end)

  it("count a counter exactly, under concurrent requests to both", function()
    local before = tonumber((cmd(redis.port, "GET", "moongate:hits"))) or 0
    local conns = {}
    for i = 1, 40 do
      local gw = i % 2 == 0 and a or b
      local c = helpers.connect(gw.port)
      assert(c:send("GET /v1/x?op=incr HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-ann-0123456789\r\n" ..
        "Connection: close\r\n\r\n"))
      conns[i] = c
    end
    local seen = {}
    for _, c in ipairs(conns) do
      local res = helpers.read_response(c)
      assert.equal(200, res.status, res.body)
      local doc = helpers.json(res)
      assert.is_nil(doc.err)
      assert.is_nil(seen[doc.value], "value " .. tostring(doc.value) .. " handed out twice")
      seen[doc.value] = true
      c:close()
    end
    for v = before + 1, before + 40 do assert.is_true(seen[v], "value " .. v .. " missing") end
    assert.equal(before + 40, tonumber((cmd(redis.port, "GET", "moongate:hits"))))
  end)

  it("load their script again when Redis lost it (NOSCRIPT)", function()
    assert.equal("OK", cmd(redis.port, "SCRIPT", "FLUSH"))
    local before = tonumber((cmd(redis.port, "GET", "moongate:hits"))) or 0
    for i = 1, 4 do
      local res = helpers.http((i % 2 == 0 and a or b).port, { path = "/v1/x?op=incr",
        headers = { Authorization = "Bearer sk-ann-0123456789" } })
      assert.equal(before + i, helpers.json(res).value)
    end
  end)

  it("share consumers created at run time, and publish data_dir's at start-up", function()
    local res = helpers.http(a.admin_port, { method = "POST", path = "/admin/consumers",
      headers = { Authorization = "Bearer admin-secret", ["Content-Type"] = "application/json" },
      body = '{"name":"runtime-1","team":"t"}' })
    assert.equal(201, res.status, res.body)
    local key = helpers.json(res).key
    local function with_key(gw)
      return helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions", body = CHAT,
        headers = { ["Content-Type"] = "application/json", Authorization = "Bearer " .. key } }).status
    end
    assert.equal(200, with_key(b))         -- B found it in Redis
    -- the name and the key are taken on B too (409), and B's admin API shows the consumer
    local function create_on_b(body)
      return helpers.http(b.admin_port, { method = "POST", path = "/admin/consumers", body = body,
        headers = { Authorization = "Bearer admin-secret", ["Content-Type"] = "application/json" } }).status
    end
    assert.equal(409, create_on_b('{"name":"runtime-1","team":"t"}'))
    assert.equal(409, create_on_b('{"name":"runtime-2","key":"' .. key .. '"}'))
    assert.equal(200, (admin(b, "GET", "/admin/consumers/runtime-1")))
    -- and B's admin API knows it too, though B's data_dir does not
    local status, doc = admin(b, "GET", "/admin/limits?consumer=runtime-1")
    assert.equal(200, status, cjson.encode(doc))
    -- Redis forgets everything; A, restarted on the same data_dir, publishes its consumers
    -- again from init (outside any coroutine: a blocking round trip)
    assert.equal("OK", cmd(redis.port, "FLUSHALL"))
    assert.equal(401, with_key(b))
    assert.equal(0, (a:stop()))
    a = helpers.start_gateway(CONFIG, { dir = a.dir, port = a.port, admin_port = a.admin_port,
      vars = { REDIS_URL = redis.url, FAIL_OPEN = "true" } })
    assert.equal(200, with_key(b))
  end)

  it("append to a Redis stream without waiting (redis.xadd)", function()
    for _ = 1, 3 do
      local res = helpers.http(a.port, { path = "/v1/x?op=xadd",
        headers = { Authorization = "Bearer sk-ann-0123456789" } })
      assert.is_true(helpers.json(res).ok)
    end
    helpers.wait_until(function() return cmd(redis.port, "XLEN", "moongate:probe") == 3 end, 5,
      "the stream did not get 3 entries")
    local entries = cmd(redis.port, "XRANGE", "moongate:probe", "-", "+")
    assert.equal("id", entries[1][2][1])
    assert.equal(32, #entries[1][2][2])
    assert.same({ "cost", "0.5" }, { entries[1][2][3], entries[1][2][4] })
  end)

  it("send every ledger record to the moongate:ledger stream too", function()
    local before = cmd(redis.port, "XLEN", "moongate:ledger")
    local res = helpers.http(a.port, { method = "POST", path = "/v1/chat/completions",
      headers = { Authorization = "Bearer sk-ann-0123456789", ["Content-Type"] = "application/json",
                  ["x-request-id"] = "ledger-to-redis-1" },
      body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}' })
    assert.equal(200, res.status)
    local found
    helpers.wait_until(function()
      for _, e in ipairs(cmd(redis.port, "XRANGE", "moongate:ledger", "-", "+")) do
        if e[2][1] == "record" and e[2][2]:find('"id":"ledger-to-redis-1"', 1, true) then found = e[2][2] end
      end
      return found
    end, 5, "no ledger record in the stream (it had " .. tostring(before) .. ")")
    assert.truthy(found:find('"consumer":"ann"', 1, true), found)
  end)

  it("treat a Redis that stops answering as gone after cluster.timeout, and come back", function()
    local signal = require "posix.signal"
    redis.proc:kill(signal.SIGSTOP)
    local t0 = socket.gettime()
    assert.equal(200, (chat(a, "dan", true)))      -- waited at most the timeout, then local
    assert.truthy(socket.gettime() - t0 < 4, "a request waited " .. (socket.gettime() - t0) .. " s")
    helpers.wait_until(function() return metric(a, "moongate_cluster_up") == 0 end, 5, "gauge still 1")
    assert.truthy(a:log():find("no answer within cluster.timeout", 1, true), a:log())
    redis.proc:kill(signal.SIGCONT)
    helpers.wait_until(function() return metric(a, "moongate_cluster_up") == 1 end, 15,
      "the gateway did not reconnect")
  end)

  it("see each other's evictions within cluster.refresh", function()
    local status = admin(a, "POST", "/admin/backends/main/targets/m%2Fpriced/evict")
    assert.equal(200, status)
    helpers.wait_until(function()
      local _, doc = admin(b, "GET", "/admin/backends")
      return doc.backends[1].groups[1].targets[1].state == "evicted"
    end, 10, "B never saw A's eviction")
    helpers.wait_until(function() return chat(b, "eve") == 503 end, 10, "B still used the evicted target")
    assert.equal(200, (admin(a, "POST", "/admin/backends/main/targets/m%2Fpriced/restore")))
    helpers.wait_until(function() return chat(b, "eve") == 200 end, 10, "B never saw the restore")
  end)

  it("keep serving when Redis stops (fail_open): limits per instance, one warning, then reconnect", function()
    local warned = { count(a:log(), "is unreachable"), count(b:log(), "is unreachable") }
    local back = { count(a:log(), "is reachable again"), count(b:log(), "is reachable again") }
    redis:stop()
    -- cal's limit of 3 is now counted by each instance on its own
    for i, gw in ipairs({ a, b }) do
      for _ = 1, 3 do assert.equal(200, (chat(gw, "cal", true))) end
      assert.equal(429, (chat(gw, "cal", true)))
      assert.equal(200, (chat(gw, "eve")))                     -- budgets go on, locally
      local doc = helpers.json(helpers.http(gw.port, { path = "/v1/x?op=incr",
        headers = { Authorization = "Bearer sk-ann-0123456789" } }))
      assert.is_nil(doc.err)                                    -- a plugin's key: local too
      assert.truthy(doc.value >= 1)
      helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 0 end, 5, "gauge still 1")
      assert.truthy(metric(gw, "moongate_cluster_unavailable_total") > 0)
      assert.equal(warned[i] + 1, count(gw:log(), "is unreachable"), gw:log())   -- once per outage
      assert.truthy(gw:log():find("fail_open", 1, true))
    end

    redis:restart()
    for i, gw in ipairs({ a, b }) do
      helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 1 end, 15,
        "the gateway did not reconnect")
      assert.equal(back[i] + 1, count(gw:log(), "is reachable again"), gw:log())
    end
    -- one limit again, in the new Redis
    assert.equal(200, (chat(a, "dan", true)))
    assert.equal(200, (chat(b, "dan", true)))
    assert.equal(200, (chat(a, "dan", true)))
    assert.equal(429, (chat(b, "dan", true)))
  end)
end)

describe_redis("cluster.redis with fail_open = false", function()
  local redis, gw

  lazy_setup(function()
    redis = start_redis()
    gw = helpers.start_gateway(CONFIG, { vars = { REDIS_URL = redis.url, FAIL_OPEN = "false" } })
    helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 1 end, 10,
      "the gateway did not connect to Redis")
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("refuses rate-limited and budgeted requests with 503 while Redis is down, and recovers", function()
    assert.equal(200, (chat(gw, "ann", true)))
    local logged = #gw:log()   -- count this outage's warnings only (a slow start may have its own)
    redis:stop()
    helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 0 end, 5, "gauge still 1")
    local status, doc, h = chat(gw, "ann", true)
    assert.equal(503, status)
    assert.equal("cluster_unavailable", doc.error.code)
    assert.matches("Redis", doc.error.message)
    assert.equal("1", h["retry-after"])
    status, doc = chat(gw, "eve")                         -- a budget cannot be checked either
    assert.equal(503, status)
    assert.equal("cluster_unavailable", doc.error.code)
    -- a plugin's own shared key: nil, "cluster unavailable"
    local res = helpers.http(gw.port, { path = "/v1/x?op=incr",
      headers = { Authorization = "Bearer sk-ann-0123456789" } })
    assert.equal("cluster unavailable", helpers.json(res).err)
    -- a request no limit or budget applies to is served
    assert.equal(200, (chat(gw, "cal")))
    assert.equal(1, count(gw:log():sub(logged + 1), "is unreachable"))

    redis:restart()
    helpers.wait_until(function() return chat(gw, "ann", true) == 200 end, 15,
      "still refused after Redis came back")
    -- the gauge says every client of the instance is back: the worker that answered may
    -- have reconnected before the others
    helpers.wait_until(function() return metric(gw, "moongate_cluster_up") == 1 end, 15,
      "moongate_cluster_up stayed 0 after Redis came back")
  end)
end)
