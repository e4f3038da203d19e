-- Routing, priority failover, balancing, health and circuit breaking, as a
-- client and the providers see them. One fake upstream plays every provider:
-- a provider's own `headers` steer it (x-fake-status and the like), so "bad"
-- and "good" are two providers of one fake process, told apart by the
-- x-which header each sends.

local helpers = require "spec.support.helpers"
local socket = require "socket"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 2
access_log = false
shutdown_timeout = "5s"

local function fake(which, extra)
  local h = { ["x-which"] = which }
  for k, v in pairs(extra or {}) do h[k] = v end
  return { type = "openai", base_url = "${UP}/v1", api_key = "sk-" .. which, headers = h }
end

providers = {
  good   = fake("good"),
  good2  = fake("good2"),
  r429   = fake("r429", { ["x-fake-status"] = "429" }),
  r429ra = fake("r429ra", { ["x-fake-status"] = "429", ["x-fake-retry-after"] = "30" }),
  r500   = fake("r500", { ["x-fake-status"] = "500" }),
  r503   = fake("r503", { ["x-fake-status"] = "503", ["x-fake-retry-after"] = "7" }),
  r400   = fake("r400", { ["x-fake-status"] = "400" }),
  r404   = fake("r404", { ["x-fake-status"] = "404" }),
  slow   = fake("slow", { ["x-fake-delay-ms"] = "3000" }),
  slowfirst = fake("slowfirst", { ["x-fake-first-delay-ms"] = "3000" }),
  cut    = fake("cut", { ["x-fake-close-before-first"] = "1" }),
  gappy  = fake("gappy", { ["x-fake-chunk-delay-ms"] = "3000" }),
  cutmid = fake("cutmid", { ["x-fake-close-after-first"] = "1" }),
  dead   = { type = "openai", base_url = "http://127.0.0.1:${DEAD}/v1" },
}

backends = {
  failover = { groups = {
    { targets = { { provider = "r429", model = "first" } } },
    { targets = { { provider = "good", model = "second" } } } } },
  no_retry_400 = { groups = {
    { targets = { { provider = "r400", model = "a" } } },
    { targets = { { provider = "good", model = "b" } } } } },
  all_fail = { groups = {
    { targets = { { provider = "r500", model = "a" } } },
    { targets = { { provider = "r503", model = "b" } } } } },
  connect = { groups = {
    { targets = { { provider = "dead", model = "a" } } },
    { targets = { { provider = "good", model = "b" } } } } },
  connect_only = { provider = "dead", model = "a" },
  backoff_gone = { groups = {
      { targets = { { provider = "r429", model = "a" } } },
      { targets = { { provider = "good", model = "b" } } } },
    retry = { attempts = 2, backoff = "1500ms" } },
  two_dead = { targets = { { provider = "dead", model = "a" }, { provider = "dead", model = "b" } } },
  ttfb = { groups = {
      { targets = { { provider = "slow", model = "a" } } },
      { targets = { { provider = "good", model = "b" } } } },
    timeout = { ttfb = "300ms" } },
  ttfb_only = { provider = "slow", model = "a", timeout = { ttfb = "300ms" } },
  total = { groups = {
      { targets = { { provider = "slow", model = "a" }, { provider = "slow", model = "b" } } } },
    timeout = { total = "400ms" } },
  stream_first = { groups = {
      { targets = { { provider = "slowfirst", model = "a" } } },
      { targets = { { provider = "good", model = "b" } } } },
    timeout = { ttfb = "300ms" } },
  stream_cut = { groups = {
      { targets = { { provider = "cut", model = "a" } } },
      { targets = { { provider = "good", model = "b" } } } } },
  idle = { groups = {
      { targets = { { provider = "gappy", model = "a" } } },
      { targets = { { provider = "good", model = "b" } } } },
    timeout = { stream_idle = "300ms" } },
  midway = { groups = {
      { targets = { { provider = "cutmid", model = "a" } } },
      { targets = { { provider = "good", model = "b" } } } } },
  evict = { groups = {
      { targets = { { provider = "r404", model = "a", name = "flaky" } } },
      { targets = { { provider = "good", model = "b", name = "steady" } } } },
    health = { unhealthy_condition = "response.code == 404 || response.code == 429",
               eviction = { duration = "1s", consecutive_failures = 1 } } },
  hinted = { groups = {
      { targets = { { provider = "r429ra", model = "a", name = "limited" } } },
      { targets = { { provider = "good", model = "b", name = "steady" } } } },
    health = { eviction = { duration = "1s" } } },
  panic = { targets = { { provider = "r429", model = "a", name = "p1" }, { provider = "r429", model = "b", name = "p2" } },
    health = { eviction = { duration = "30s" } }, retry = { attempts = 2 } },
  nopanic = { targets = { { provider = "r429", model = "a", name = "p1" } },
    health = { eviction = { duration = "30s" }, panic = false }, retry = { attempts = 1 } },
  -- attempts left but no target: the one target is evicted by its own 429
  gone429 = { targets = { { provider = "r429ra", model = "a", name = "only" } },
    health = { eviction = { duration = "30s" }, panic = false }, retry = { attempts = 3 } },
  gone_pair = { targets = { { provider = "r500", model = "a", name = "x" }, { provider = "r503", model = "b", name = "y" } },
    health = { eviction = { duration = "30s" }, panic = false }, retry = { attempts = 5 } },
  manual = { targets = { { provider = "good", model = "a", name = "one" }, { provider = "good2", model = "b", name = "two" } } },
  weighted = { targets = { { provider = "good", model = "a", name = "light", weight = 1 },
                           { provider = "good2", model = "b", name = "heavy", weight = 2 } } },
  canary = { targets = { { provider = "good", model = "stable", name = "stable", weight = 90 },
                         { provider = "good2", model = "canary", name = "canary", weight = 10 } } },
  sticky = { strategy = "sticky", sticky = { header = "x-session-id" },
             targets = { { provider = "good", model = "a", name = "s1" }, { provider = "good2", model = "b", name = "s2" },
                         { provider = "good", model = "c", name = "s3" } } },
  capped = { targets = { { provider = "good", model = "a", name = "only", max_inflight = 1 } },
             queue = { max = 10, timeout = "5s" } },
  capped_short = { targets = { { provider = "good", model = "a", name = "only", max_inflight = 1 } },
             queue = { max = 10, timeout = "200ms" } },
  least = { strategy = "least_busy",
            targets = { { provider = "good", model = "a", name = "l1" }, { provider = "good2", model = "b", name = "l2" } } },
  random = { strategy = "random", targets = { { provider = "good", model = "a", name = "ninety", weight = 9 },
                                             { provider = "good2", model = "b", name = "ten", weight = 1 } } },
  -- users' configurations: three OpenAI models in priority order ...
  priority3 = { groups = {
    { targets = { { provider = "r429", model = "gpt-4o" } } },
    { targets = { { provider = "r500", model = "gpt-4o-mini" } } },
    { targets = { { provider = "good", model = "gpt-3.5-turbo" } } } } },
  -- ... and a cheap group balanced over two targets, falling back to a premium group
  cheap_premium = { groups = {
      { strategy = "round_robin", targets = { { provider = "good", model = "gpt-3.5-turbo", name = "cheap-a" },
                                              { provider = "good2", model = "claude-3-5-haiku", name = "cheap-b" } } },
      { targets = { { provider = "good", model = "gpt-4o", name = "premium" } } } },
    health = { eviction = { duration = "30s" } } },
  cheap_down = { groups = {
      { targets = { { provider = "r503", model = "gpt-3.5-turbo", name = "cheap-a" },
                    { provider = "r429", model = "claude-3-5-haiku", name = "cheap-b" } } },
      { targets = { { provider = "good", model = "gpt-4o", name = "premium" } } } } },
  fast = { provider = "good", model = "fast-model" },
  quality = { provider = "good2", model = "quality-model" },
}

routes = {
  { name = "openai-alias", match = { path_prefix = "/openai" }, rewrite = "/v1/chat/completions", backend = "fast" },
  { match = { path = "/v1/chat/completions", headers = { ["x-model-tier"] = "fast" } }, backend = "fast" },
  { match = { path = "/v1/chat/completions", headers = { ["x-model-tier"] = "quality" } }, backend = "quality" },
  { name = "by-expression", match = { path_prefix = "/v1", when = "request.headers['x-backend'].startsWith('weigh')" },
    backend = "weighted" },
  { match = { path_prefix = "/v1", model = { "m-a", "m-b" } }, backend = "quality" },
  { match = { path_prefix = "/v1" }, backend = "failover",
    model_map = { failover = "failover", no_retry_400 = "no_retry_400", all_fail = "all_fail",
      connect = "connect", connect_only = "connect_only", backoff_gone = "backoff_gone", two_dead = "two_dead", ttfb = "ttfb", ttfb_only = "ttfb_only",
      total = "total", stream_first = "stream_first", stream_cut = "stream_cut", evict = "evict",
      idle = "idle", midway = "midway",
      hinted = "hinted", panic = "panic", nopanic = "nopanic", gone429 = "gone429", gone_pair = "gone_pair", manual = "manual", weighted = "weighted",
      canary = "canary", sticky = "sticky", capped = "capped", capped_short = "capped_short",
      least = "least", random = "random", priority3 = "priority3", cheap_premium = "cheap_premium",
      cheap_down = "cheap_down" } },
}

-- A plugin at the default priority (below health's 950) that judges nothing: on requests with
-- x-observe it notes every attempt's outcome, shows them in a header of the answer that is
-- forwarded, and after the last failed attempt answers itself.
plugins = { { name = "observer", handler = {
  on_response = function(ctx)
    if not ctx.request.headers["x-observe"] then return end
    local seen = ctx.vars.seen or {}
    ctx.vars.seen = seen
    seen[#seen + 1] = tostring(ctx.response.status)
    ctx.response.headers["x-seen"] = table.concat(seen, ",")
  end,
  on_error = function(ctx, conf, err)
    if ctx.request.headers["x-classify"] then err.kind = "timeout" end   -- SPEC §5: on_error classifies
    if not ctx.request.headers["x-observe"] then return end
    local seen = ctx.vars.seen or {}
    ctx.vars.seen = seen
    seen[#seen + 1] = err.kind
    if ctx.attempt >= ctx.max_attempts then return gw.respond(502, "seen: " .. table.concat(seen, ",")) end
  end,
} } }
]]

local function body(model, stream)
  return '{"model":"' .. model .. '",' .. (stream and '"stream":true,' or '') ..
    '"messages":[{"role":"user","content":"hi"}]}'
end

local function chat(gw, model, opts)
  opts = opts or {}
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(opts.headers or {}) do h[k] = v end
  return helpers.http(gw.port, { method = "POST", path = opts.path or "/v1/chat/completions",
    headers = h, body = body(model, opts.stream), timeout = opts.timeout or 15 })
end

local function whom(up)
  local out = {}
  for _, r in ipairs(up:requests()) do out[#out + 1] = r.headers["x-which"] end
  return out
end

local function admin(gw, method, path, req_body)
  local res = helpers.http(gw.admin_port, { method = method, path = path, body = req_body,
    headers = { Authorization = "Bearer admin-secret", ["Content-Type"] = "application/json" } })
  return res, res.body ~= "" and helpers.json(res) or nil
end

local function target_state(gw, backend, name)
  local _, doc = admin(gw, "GET", "/admin/backends")
  for _, b in ipairs(doc.backends) do
    if b.name == backend then
      for _, g in ipairs(b.groups) do
        for _, t in ipairs(g.targets) do
          if t.name == name then return t, doc.now end
        end
      end
    end
  end
end

describe("routing and failover", function()
  local up, gw

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, DEAD = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  before_each(function() up:reset() end)

  describe("failover", function()
    it("turns a 429 from the first group and a 200 from the second into one 200", function()
      local res = chat(gw, "failover")
      assert.equal(200, res.status)
      assert.equal("good/second", res.headers["x-moongate-target"])
      assert.equal("2", res.headers["x-moongate-attempts"])
      assert.same({ "r429", "good" }, whom(up))
      local reqs = up:requests()
      assert.truthy(reqs[1].body:find('"model":"first"', 1, true))
      assert.truthy(reqs[2].body:find('"model":"second"', 1, true))
      assert.equal("Bearer sk-good", reqs[2].headers.authorization)
    end)

    it("does not retry a status outside the defaults (400 goes to the client)", function()
      local res = chat(gw, "no_retry_400")
      assert.equal(400, res.status)
      assert.equal("1", res.headers["x-moongate-attempts"])
      assert.same({ "r400" }, whom(up))
    end)

    it("answers the last attempt's status and Retry-After when every attempt failed", function()
      local res = chat(gw, "all_fail")
      assert.equal(503, res.status)
      assert.equal("7", res.headers["retry-after"])
      assert.equal("2", res.headers["x-moongate-attempts"])
      assert.same({ "r500", "r503" }, whom(up))
      assert.is_table(helpers.json(res).error)
    end)

    it("runs a default-priority plugin's on_response and on_error on every attempt (health votes retry first)", function()
      local res = chat(gw, "all_fail", { headers = { ["x-observe"] = "1" } })
      assert.equal(503, res.status)
      assert.equal("500,503", res.headers["x-seen"])   -- both attempts seen, the header on the answer sent
      res = chat(gw, "two_dead", { headers = { ["x-observe"] = "1" } })
      assert.equal(502, res.status)
      assert.equal("seen: connect-failure,connect-failure", res.body)
    end)

    it("makes no further attempt for a client that left during the backoff, and logs 499", function()
      local c = assert(socket.connect("127.0.0.1", gw.port))
      local b = body("backoff_gone")
      c:send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
        "Content-Length: " .. #b .. "\r\n\r\n" .. b)
      helpers.wait_until(function() return #up:requests() >= 1 end, 10, "the first attempt never came")
      c:close()   -- well inside the 1.5 s backoff
      helpers.wait_until(function()
        local m = helpers.http(gw.admin_port, { path = "/metrics" }).body
        return m:find('backend="backoff_gone",target="r429/a",code="499"', 1, true)
      end, 10, "no 499 for the request whose client left")
      assert.same({ "r429" }, whom(up))   -- the second group never saw it
    end)

    it("answers as on_error classified the last failure (a connect failure called a timeout: 504)", function()
      local res = chat(gw, "connect_only", { headers = { ["x-classify"] = "1" } })
      assert.equal(504, res.status)
    end)

    it("fails over on a connection failure", function()
      local res = chat(gw, "connect")
      assert.equal(200, res.status)
      assert.equal("good/b", res.headers["x-moongate-target"])
      assert.equal("2", res.headers["x-moongate-attempts"])
    end)

    it("answers 502 naming the target when the only one cannot be reached", function()
      local res = chat(gw, "connect_only")
      assert.equal(502, res.status)
      local err = helpers.json(res).error
      assert.truthy(err.message:find("dead/a", 1, true), err.message)
      assert.truthy(err.message:find("connect-failure", 1, true), err.message)
    end)

    it("names every target it tried when all of them failed", function()
      local res = chat(gw, "two_dead")
      assert.equal(502, res.status)
      assert.equal("2", res.headers["x-moongate-attempts"])
      local msg = helpers.json(res).error.message
      assert.truthy(msg:find("dead/a (connect-failure)", 1, true), msg)
      assert.truthy(msg:find("dead/b (connect-failure)", 1, true), msg)
    end)

    it("fails over when the first target misses timeout.ttfb", function()
      local res = chat(gw, "ttfb")
      assert.equal(200, res.status)
      assert.equal("good/b", res.headers["x-moongate-target"])
    end)

    it("answers 504 when the only target misses timeout.ttfb", function()
      local t0 = socket.gettime()
      local res = chat(gw, "ttfb_only")
      assert.equal(504, res.status)
      assert.truthy(socket.gettime() - t0 < 2.5, "the 3 s answer was waited for")
    end)

    it("answers 504 when timeout.total runs out across attempts", function()
      local res = chat(gw, "total")
      assert.equal(504, res.status)
      assert.equal("upstream_timeout", helpers.json(res).error.code)
    end)

    it("fails a stream over when its first event does not come within timeout.ttfb", function()
      local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json" }, body = body("stream_first", true), timeout = 10 })
      assert.equal(200, s.status)
      assert.equal("good/b", s.headers["x-moongate-target"])
      local events, reason = s:read_all(10)
      assert.equal("eof", reason)
      assert.equal("[DONE]", helpers.parse_sse(events[#events]).data)
    end)

    it("fails a stream over when the provider closes it before the first event", function()
      local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json" }, body = body("stream_cut", true), timeout = 10 })
      assert.equal(200, s.status)
      assert.equal("good/b", s.headers["x-moongate-target"])
      assert.equal("2", s.headers["x-moongate-attempts"])
      local events, reason = s:read_all(10)
      assert.equal("eof", reason)
      assert.equal("[DONE]", helpers.parse_sse(events[#events]).data)
    end)
    it("ends a stream that goes silent past stream_idle with an error event, never a clean end", function()
      local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json" }, body = body("idle", true), timeout = 10 })
      assert.equal(200, s.status)
      assert.equal("gappy/a", s.headers["x-moongate-target"])
      local events, reason = s:read_all(10)
      assert.equal("closed", reason)
      local last = helpers.parse_sse(events[#events])
      local err = helpers.json({ body = last.data }).error
      assert.equal("upstream_timeout", err.code)
      assert.truthy(err.message:find("timed out", 1, true), err.message)
      assert.same({ "gappy" }, whom(up))   -- no failover after the first byte
    end)

    it("ends a stream cut after its first event with an error event, without failing over", function()
      local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json" }, body = body("midway", true), timeout = 10 })
      assert.equal(200, s.status)
      local events, reason = s:read_all(10)
      assert.equal("closed", reason)
      assert.is_table(helpers.json({ body = helpers.parse_sse(events[#events]).data }).error)
      assert.same({ "cutmid" }, whom(up))
    end)
  end)

  describe("health", function()
    it("evicts a target on unhealthy_condition and brings it back after eviction.duration", function()
      local res = chat(gw, "evict")
      assert.equal(200, res.status)
      assert.equal("2", res.headers["x-moongate-attempts"])
      local t = target_state(gw, "evict", "flaky")
      assert.equal("evicted", t.state)
      -- while evicted, requests go straight to the second group, on either worker
      for _ = 1, 4 do
        res = chat(gw, "evict")
        assert.equal("steady", res.headers["x-moongate-target"])
        assert.equal("1", res.headers["x-moongate-attempts"])
      end
      assert.same({ "r404", "good", "good", "good", "good", "good" }, whom(up))
      helpers.wait_until(function() return target_state(gw, "evict", "flaky").state ~= "evicted" end, 10,
        "flaky restored after its eviction")
      up:reset()
      helpers.wait_until(function()
        chat(gw, "evict")
        for _, w in ipairs(whom(up)) do if w == "r404" then return true end end
      end, 10, "a restored target gets traffic again")
    end)

    it("evicts for as long as a 429's Retry-After asks when that is longer", function()
      local res = chat(gw, "hinted")
      assert.equal(200, res.status)
      local t, now = target_state(gw, "hinted", "limited")
      assert.equal("evicted", t.state)
      assert.truthy(t.evicted_until - now > 20, "evicted for " .. (t.evicted_until - now) .. " s")
    end)

    it("still tries an evicted target when every target is evicted (panic)", function()
      chat(gw, "panic")
      assert.equal("evicted", target_state(gw, "panic", "p1").state)
      assert.equal("evicted", target_state(gw, "panic", "p2").state)
      up:reset()
      local res = chat(gw, "panic")
      assert.equal(429, res.status)
      assert.truthy(#whom(up) >= 1, "nothing was tried")
    end)

    it("answers 503 when every target is evicted and panic is off", function()
      chat(gw, "nopanic")
      assert.equal("evicted", target_state(gw, "nopanic", "p1").state)
      up:reset()
      local res = chat(gw, "nopanic")
      assert.equal(503, res.status)
      assert.truthy(helpers.json(res).error.message:find("evicted", 1, true))
      assert.equal("0", res.headers["x-moongate-attempts"])
      assert.same({}, whom(up))
    end)

    it("answers the provider's own 429 when its eviction leaves nothing to try, attempts or not", function()
      local res = chat(gw, "gone429")
      assert.equal(429, res.status)
      assert.equal("30", res.headers["retry-after"])
      assert.equal("only", res.headers["x-moongate-target"])
      assert.equal("1", res.headers["x-moongate-attempts"])
      assert.equal("fake upstream error 429", helpers.json(res).error.message)   -- the provider's own error
      assert.same({ "r429ra" }, whom(up))
      -- the same through the Anthropic endpoint: the provider's error in the Anthropic shape
      up:reset()
      res = helpers.http(gw.port, { method = "POST", path = "/v1/messages",
        headers = { ["content-type"] = "application/json", ["anthropic-version"] = "2023-06-01" },
        body = '{"model":"gone_pair","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}' })
      assert.equal(503, res.status)
      assert.equal("7", res.headers["retry-after"])
      assert.equal("2", res.headers["x-moongate-attempts"])
      local doc = helpers.json(res)
      assert.equal("error", doc.type)
      assert.equal("fake upstream error 503", doc.error.message)
      assert.same({ "r500", "r503" }, whom(up))
    end)

    it("drains a target by hand and returns it", function()
      local res = admin(gw, "POST", "/admin/backends/manual/targets/one/evict")
      assert.equal(200, res.status)
      local doc = helpers.json(res)   -- the target as GET /admin/backends shows it
      assert.equal("one", doc.name)
      assert.equal("evicted", doc.state)
      assert.equal(1, doc.group)
      for _ = 1, 4 do assert.equal("two", chat(gw, "manual").headers["x-moongate-target"]) end
      res = admin(gw, "POST", "/admin/backends/manual/targets/one/restore")
      assert.equal(200, res.status)
      assert.equal(1, helpers.json(res).group)
      helpers.wait_until(function() return chat(gw, "manual").headers["x-moongate-target"] == "one" end, 10,
        "a restored target gets traffic again")
      assert.equal(404, (admin(gw, "POST", "/admin/backends/manual/targets/nope/evict")).status)
      assert.equal(404, (admin(gw, "POST", "/admin/backends/nope/targets/one/evict")).status)
      assert.equal(405, (admin(gw, "GET", "/admin/backends/manual/targets/one/evict")).status)
    end)

    it("reports moongate_target_healthy", function()
      admin(gw, "POST", "/admin/backends/manual/targets/two/evict")
      local text = helpers.http(gw.admin_port, { path = "/metrics" }).body
      assert.truthy(text:find('moongate_target_healthy{backend="manual",target="two"} 0', 1, true))
      assert.truthy(text:find('moongate_target_healthy{backend="manual",target="one"} 1', 1, true))
      admin(gw, "POST", "/admin/backends/manual/targets/two/restore")
    end)
  end)

  describe("balancing", function()
    it("splits 1:2 by weight exactly over 210 requests, across workers and fresh connections", function()
      local counts = {}
      for _ = 1, 210 do
        local n = chat(gw, "weighted").headers["x-moongate-target"]
        counts[n] = (counts[n] or 0) + 1
      end
      assert.same({ light = 70, heavy = 140 }, counts)
    end)

    it("splits 90/10 at random within 5 points over 1,000 requests", function()
      local conn = helpers.connect(gw.port)
      local ten = 0
      for _ = 1, 1000 do
        local res = helpers.http(gw.port, { conn = conn, keepalive = true, method = "POST",
          path = "/v1/chat/completions", headers = { ["Content-Type"] = "application/json" }, body = body("random") })
        if res.headers["x-moongate-target"] == "ten" then ten = ten + 1 end
      end
      conn:close()
      assert.truthy(ten >= 50 and ten <= 150, "ten got " .. ten .. " of 1000")
    end)

    it("sends a 90/10 canary split", function()
      local counts = {}
      for _ = 1, 100 do
        local n = chat(gw, "canary").headers["x-moongate-target"]
        counts[n] = (counts[n] or 0) + 1
      end
      assert.same({ stable = 90, canary = 10 }, counts)
    end)

    it("keeps a session on one target with sticky, and spreads sessions", function()
      local seen = {}
      for i = 1, 12 do
        local first
        for _ = 1, 3 do
          local t = chat(gw, "sticky", { headers = { ["x-session-id"] = "session-" .. i } }).headers["x-moongate-target"]
          first = first or t
          assert.equal(first, t)
        end
        seen[first] = true
      end
      local n = 0
      for _ in pairs(seen) do n = n + 1 end
      assert.truthy(n >= 2, "12 sessions all on one target")
    end)

    it("sends the next request to the least busy target", function()
      local held = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json", ["x-fake-hold"] = "least" },
        body = body("least", true), timeout = 10 })
      assert.equal(200, held.status)
      local busy = held.headers["x-moongate-target"]
      local idle = busy == "l1" and "l2" or "l1"
      for _ = 1, 3 do
        -- a finished request leaves the count in on_log, just after its client got the answer
        helpers.wait_until(function() return target_state(gw, "least", idle).inflight == 0 end, 5)
        assert.equal(1, target_state(gw, "least", busy).inflight)
        assert.equal(idle, chat(gw, "least").headers["x-moongate-target"])
      end
      up:release("least")
      held:read_all(10)
    end)

    it("queues a request while the target is at max_inflight, then serves it", function()
      local held = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json", ["x-fake-hold"] = "cap" },
        body = body("capped", true), timeout = 10 })
      assert.equal(200, held.status)
      -- a second request waits; release the first from another connection meanwhile
      local conn = helpers.connect(gw.port)
      local b = body("capped")
      assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #b .. "\r\n\r\n" .. b))
      helpers.wait_until(function() return #up:requests() == 1 end, 5)
      socket.sleep(0.3)
      assert.equal(1, #up:requests(), "the queued request went past max_inflight")
      up:release("cap")
      held:read_all(10)
      local res = helpers.read_response(conn, { timeout = 10 })
      assert.equal(200, res.status)
      conn:close()
    end)

    it("sends nothing upstream for a client that left while queued, and logs 499", function()
      local held = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json", ["x-fake-hold"] = "cap3" },
        body = body("capped", true), timeout = 10 })
      assert.equal(200, held.status)
      local function gone_count()
        local m = helpers.http(gw.admin_port, { path = "/metrics" }).body
        return tonumber(m:match('backend="capped",target="",code="499"} (%d+)')) or 0
      end
      local before = gone_count()
      local conn = helpers.connect(gw.port)
      local b = body("capped")
      assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #b .. "\r\n\r\n" .. b))
      helpers.wait_until(function()   -- it is in the gateway, queued behind the held stream
        local m = helpers.http(gw.admin_port, { path = "/metrics" }).body
        return tonumber(m:match("\nmoongate_inflight (%d+)")) == 2
      end, 5, "the second request never arrived")
      conn:close()
      helpers.wait_until(function() return gone_count() == before + 1 end, 10, "no 499 for the queued client")
      up:release("cap3")
      held:read_all(10)
      assert.equal(1, #up:requests(), "the abandoned request was sent upstream")
    end)

    it("answers 503 when the queue times out", function()
      local held = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json", ["x-fake-hold"] = "cap2" },
        body = body("capped_short", true), timeout = 10 })
      assert.equal(200, held.status)
      local res = chat(gw, "capped_short")
      assert.equal(503, res.status)
      assert.truthy(helpers.json(res).error.message:find("max_inflight", 1, true))
      up:release("cap2")
      held:read_all(10)
    end)
  end)

  describe("configurations users bring", function()
    it("three OpenAI models in priority order: the first that answers wins", function()
      local res = chat(gw, "priority3")
      assert.equal(200, res.status)
      assert.equal("good/gpt-3.5-turbo", res.headers["x-moongate-target"])
      assert.equal("3", res.headers["x-moongate-attempts"])
      assert.same({ "r429", "r500", "good" }, whom(up))
    end)

    it("a cheap group balanced over two targets", function()
      local counts = {}
      for _ = 1, 10 do
        local n = chat(gw, "cheap_premium").headers["x-moongate-target"]
        counts[n] = (counts[n] or 0) + 1
      end
      assert.same({ ["cheap-a"] = 5, ["cheap-b"] = 5 }, counts)
    end)

    it("falls back to the premium group when the cheap group fails", function()
      local res = chat(gw, "cheap_down")
      assert.equal(200, res.status)
      assert.equal("premium", res.headers["x-moongate-target"])
      assert.equal("3", res.headers["x-moongate-attempts"])
      local w = whom(up)
      table.sort(w, function(a, b) return a > b end)
      assert.same({ "r503", "r429", "good" }, w)
    end)
  end)

  describe("routes", function()
    it("rewrites /openai to /v1/chat/completions", function()
      local res = chat(gw, "x", { path = "/openai" })
      assert.equal(200, res.status)
      assert.equal("good/fast-model", res.headers["x-moongate-target"])
      assert.equal("/v1/chat/completions", up:requests()[1].path)
    end)

    it("routes on x-model-tier", function()
      assert.equal("good/fast-model", chat(gw, "x", { headers = { ["x-model-tier"] = "fast" } }).headers["x-moongate-target"])
      assert.equal("good2/quality-model",
        chat(gw, "x", { headers = { ["x-model-tier"] = "quality" } }).headers["x-moongate-target"])
    end)

    it("routes on a when expression and on a list of models", function()
      local t = chat(gw, "x", { headers = { ["x-backend"] = "weighted" } }).headers["x-moongate-target"]
      assert.truthy(t == "light" or t == "heavy", t)
      assert.equal("good2/quality-model", chat(gw, "m-b").headers["x-moongate-target"])
    end)

    it("answers 404 in the client's format when no route matches", function()
      local res = helpers.http(gw.port, { method = "GET", path = "/nothing" })
      assert.equal(404, res.status)
      assert.is_table(helpers.json(res).error)
    end)
  end)
end)
