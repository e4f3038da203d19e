-- The rate_limit plugin in the real binary: a requests limit's 4th request refused with
-- Retry-After and x-ratelimit-* while another consumer passes; the same across two workers with a
-- fresh connection per request; a tokens limit settled on the provider's usage; the counters in
-- /admin/limits and moongate_ratelimited_total.

local helpers = require "spec.support.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = ${WORKERS}
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { name = "v1", match = { path_prefix = "/v1" }, backend = "main" } }
teams = { search = {}, ads = {} }
consumers = {
  { name = "alice", key = "sk-alice-0123456789", team = "search" },
  { name = "bob", key = "sk-bob-0123456789", team = "search" },
  { name = "tina", key = "sk-tina-0123456789", team = "ads" },
  { name = "zoe", key = "sk-zoe-0123456789", team = "ads" },
}
plugins = {
  { name = "auth" },
  { name = "rate_limit", rules = {
      { by = "consumer", requests = 3, window = "${WINDOW}", name = "per-consumer" },
      { by = "team", tokens = 60, window = "1h", name = "team-tokens",
        when = "request.headers['x-tokens'] == 'on'" },
      { by = "consumer", requests = 0, window = "1m", name = "blocked",
        when = "request.headers['x-blocked'] == 'on'" } } },
}
]]

local CHAT = '{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'

local function chat(gw, key, extra, body, path)
  local headers = { ["Content-Type"] = "application/json", Connection = "close",
                    Authorization = "Bearer " .. key }
  for k, v in pairs(extra or {}) do headers[k] = v end
  local res = helpers.http(gw.port, { method = "POST", path = path or "/v1/chat/completions",
    headers = headers, body = body or CHAT })
  return res.status, res.headers, cjson.decode(res.body)
end

local function admin(gw, path)
  local res = helpers.http(gw.admin_port, { path = path, headers = { Authorization = "Bearer admin-secret" } })
  return res.status, cjson.decode(res.body), res
end

-- Waits (polling the clock) until `window` seconds-windows are early enough in their course that
-- a few requests fall in one window: limits are counted in windows aligned on the epoch.
local function early_in_window(window)
  helpers.wait_until(function()
    local pos = socket.gettime() % window
    return pos > 0.02 * window and pos < 0.3 * window
  end, window * 2, "never early in a " .. window .. " s window")
end

local function check_limit_headers(h, remaining)
  assert.equal("3", h["x-ratelimit-limit-requests"])
  assert.equal(tostring(remaining), h["x-ratelimit-remaining-requests"])
  assert.matches("^[%dhms.]+s$", h["x-ratelimit-reset-requests"])   -- "1.5s", "250ms", "6m0s"
end

describe("rate_limit", function()
  describe("on one worker", function()
    local gw

    lazy_setup(function()
      gw = helpers.start_gateway(CONFIG, { vars = { WORKERS = 1, WINDOW = "2s" } })
    end)

    lazy_teardown(function()
      helpers.stop_and_check(gw)
    end)

    it("refuses the 4th request with Retry-After and x-ratelimit-*, while another consumer passes", function()
      early_in_window(2)
      for i = 1, 3 do
        local status, h = chat(gw, "sk-alice-0123456789")
        assert.equal(200, status)
        check_limit_headers(h, 3 - i)
      end
      local status, h, doc = chat(gw, "sk-alice-0123456789")
      assert.equal(429, status)
      assert.equal("rate_limit_error", doc.error.type)
      assert.equal("rate_limit_exceeded", doc.error.code)
      assert.matches("per%-consumer", doc.error.message)
      local wait = tonumber(h["retry-after"])
      assert.truthy(wait and wait >= 1 and wait <= 4 and wait % 1 == 0, h["retry-after"])
      check_limit_headers(h, 0)
      assert.equal(200, (chat(gw, "sk-bob-0123456789")))
      -- the same refusal in the Anthropic format on /v1/messages
      local s2, _, d2 = chat(gw, "sk-alice-0123456789", nil,
        '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}', "/v1/messages")
      assert.equal(429, s2)
      assert.equal("error", d2.type)
      assert.equal("rate_limit_error", d2.error.type)
      -- and alice passes again once the window has moved on
      helpers.wait_until(function() return chat(gw, "sk-alice-0123456789") == 200 end, 10,
        "alice was still refused")
    end)

    it("refuses everything under a rule of 0 requests, with a whole-second Retry-After", function()
      local status, h, doc = chat(gw, "sk-zoe-0123456789", { ["x-blocked"] = "on" })
      assert.equal(429, status)
      assert.equal("60", h["retry-after"])
      assert.equal("0", h["x-ratelimit-limit-requests"])
      assert.equal("0", h["x-ratelimit-remaining-requests"])
      assert.equal("rate_limit_exceeded", doc.error.code)
      assert.truthy(doc.error.message:find("rule blocked", 1, true), doc.error.message)
      assert.truthy(doc.error.message:find("allows none", 1, true), doc.error.message)
    end)

    it("counts refusals per rule in moongate_ratelimited_total", function()
      local _, _, res = admin(gw, "/metrics")
      local n = res.body:match('moongate_ratelimited_total{rule="per%-consumer"} (%d+)')
      assert.truthy(n and tonumber(n) >= 2, res.body:match("moongate_ratelimited[^\n]*") or "no metric")
    end)

    it("counts tokens: an estimate at admission, settled to the provider's usage", function()
      local on = { ["x-tokens"] = "on" }
      local function once(key)
        local status, h
        helpers.wait_until(function()
          status, h = chat(gw, key, on)
          return status ~= 429 or h["x-ratelimit-limit-tokens"] ~= nil
        end, 10, "refused by the requests rule")
        return status, h
      end
      local s1, h1 = once("sk-alice-0123456789")
      assert.equal(200, s1)
      assert.equal("60", h1["x-ratelimit-limit-tokens"])
      local est = math.ceil(#CHAT / 4) + 10
      assert.equal(tostring(60 - est), h1["x-ratelimit-remaining-tokens"])
      local s2, h2 = once("sk-bob-0123456789")     -- same team
      assert.equal(200, s2)
      -- the first request settled to what the mock reported: 1 prompt + 7 completion tokens
      local used = tonumber(h1["x-ratelimit-remaining-tokens"]) - tonumber(h2["x-ratelimit-remaining-tokens"])
      assert.equal(8, used, "the first request was not settled to the provider's usage (8 tokens)")
      -- keep going until the team's 60 tokens are used: 8 per request
      local served, refused_h = 2, nil
      for _ = 1, 20 do
        local s, h = once(served % 2 == 0 and "sk-alice-0123456789" or "sk-bob-0123456789")
        if s == 429 then refused_h = h break end
        served = served + 1
      end
      assert.equal(8, served)                      -- 0, 8, ..., 56 are below 60
      assert.truthy(refused_h, "never refused")
      assert.equal("60", refused_h["x-ratelimit-limit-tokens"])
      assert.equal("0", refused_h["x-ratelimit-remaining-tokens"])
      assert.truthy(tonumber(refused_h["retry-after"]) >= 1)
      -- another team is not affected
      assert.equal(200, (once("sk-tina-0123456789")))
    end)

    it("shows the counters in /admin/limits", function()
      local status, doc = admin(gw, "/admin/limits?consumer=alice")
      assert.equal(200, status)
      assert.equal("alice", doc.consumer)
      assert.equal("search", doc.team)
      local by = {}
      for _, r in ipairs(doc.rate_limits) do by[r.rule] = r end
      assert.equal(3, by["per-consumer"].limit)
      assert.equal("requests", by["per-consumer"].kind)
      assert.equal("tokens", by["team-tokens"].kind)
      assert.equal("search", by["team-tokens"].subject)
      assert.equal(64, by["team-tokens"].used)
      assert.equal(0, by["team-tokens"].remaining)
      assert.is_true(by["team-tokens"].conditional)
      assert.equal(404, (admin(gw, "/admin/limits?consumer=nobody")))
      assert.equal(400, (admin(gw, "/admin/limits")))
    end)
  end)

  describe("on two workers, a fresh connection per request", function()
    local gw

    lazy_setup(function()
      gw = helpers.start_gateway(CONFIG, { vars = { WORKERS = 2, WINDOW = "4s" } })
    end)

    lazy_teardown(function()
      helpers.stop_and_check(gw)
    end)

    it("refuses the 4th request, while another consumer passes", function()
      early_in_window(4)
      for _ = 1, 3 do assert.equal(200, (chat(gw, "sk-alice-0123456789"))) end
      local status, h = chat(gw, "sk-alice-0123456789")
      assert.equal(429, status)
      assert.truthy(tonumber(h["retry-after"]) >= 1)
      check_limit_headers(h, 0)
      for _ = 1, 3 do assert.equal(200, (chat(gw, "sk-bob-0123456789"))) end
      assert.equal(429, (chat(gw, "sk-bob-0123456789")))
      assert.equal(200, (chat(gw, "sk-tina-0123456789")))
    end)

    it("admits exactly the limit of a parallel burst spread over both workers", function()
      early_in_window(4)
      local url = gw:url("/v1/chat/completions?n=[1-40]")
      local code, out = helpers.run({ "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n",
        "--parallel", "--parallel-max", "16", "-H", "Connection: close",
        "-H", "Authorization: Bearer sk-zoe-0123456789", "-H", "Content-Type: application/json",
        "-d", CHAT, url }, { timeout = 60 })
      assert.equal(0, code, out)
      local counts = {}
      for s in out:gmatch("(%d%d%d)\n") do counts[s] = (counts[s] or 0) + 1 end
      assert.same({ ["200"] = 3, ["429"] = 37 }, counts)
    end)
  end)
end)
