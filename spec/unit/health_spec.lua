-- lua/moongate/health.lua and plugins/health.lua: eviction arithmetic,
-- provider hints, and how an attempt is judged.
local gw = require("gw")
local health = require("moongate.health")
local plugin = require("health")

local now = 1000
local real_clock = health.clock

local function backend(h, retry)
  return { name = "b", health = h, retry = retry,
           groups = { { targets = { { name = "t1", provider = "p" }, { name = "t2", provider = "p" } } } } }
end

local function ctx_for(b, status, headers)
  return { backend = b, target = b.groups[1].targets[1], attempt = 1, max_attempts = 3,
           request = { method = "POST", path = "/v1/chat/completions", headers = {}, model = "m" },
           response = status and { status = status, headers = {}, upstream_headers = headers or {} } or nil,
           timings = {}, vars = {} }
end

describe("health", function()
  before_each(function()
    gw.shared._reset()
    now = 1000
    health.clock = function() return now end
    require("moongate.shared_lua").clock = function() return now end
  end)
  after_each(function()
    health.clock = real_clock
    require("moongate.shared_lua").clock = os.time
  end)

  describe("retry_hint", function()
    it("reads Retry-After in seconds and as an HTTP date", function()
      assert.equal(30, health.retry_hint({ ["retry-after"] = "30" }, 0))
      -- 1970-01-01T00:01:40Z is 100 s after the epoch
      assert.equal(60, health.retry_hint({ ["retry-after"] = "Thu, 01 Jan 1970 00:01:40 GMT" }, 40))
    end)
    it("reads retry-after-ms and OpenAI's reset durations, taking the longest", function()
      assert.equal(1.5, health.retry_hint({ ["retry-after-ms"] = "1500" }))
      assert.equal(360, health.retry_hint({ ["x-ratelimit-reset-requests"] = "6m0s",
                                            ["x-ratelimit-reset-tokens"] = "20ms" }))
      assert.equal(0.02, health.go_duration("20ms"))
      assert.equal(3723, health.go_duration("1h2m3s"))
    end)
    it("ignores what it cannot read", function()
      assert.is_nil(health.retry_hint({ ["retry-after"] = "soon" }))
      assert.is_nil(health.retry_hint({}))
      assert.is_nil(health.retry_hint(nil))
    end)
  end)

  describe("eviction", function()
    it("evicts after consecutive_failures, for eviction.duration", function()
      local b = backend({ eviction = { duration = 10, consecutive_failures = 2 } })
      local t, pol = b.groups[1].targets[1], health.policy(b)
      assert.is_nil(health.failure("b", t, pol))
      assert.is_false((health.state("b", t, now, pol)))
      assert.equal(1010, health.failure("b", t, pol))
      assert.is_true((health.state("b", t, now + 9, pol)))
      assert.is_false((health.state("b", t, now + 10, pol)))
    end)
    it("resets the count on a success", function()
      local b = backend({ eviction = { duration = 10, consecutive_failures = 2 } })
      local t, pol = b.groups[1].targets[1], health.policy(b)
      health.failure("b", t, pol)
      health.success("b", t)
      assert.is_nil(health.failure("b", t, pol))
    end)
    it("doubles the time on each ejection in a row, up to max_duration", function()
      local b = backend({ eviction = { duration = 10, max_duration = 35 } })
      local t, pol = b.groups[1].targets[1], health.policy(b)
      assert.equal(now + 10, health.failure("b", t, pol))
      now = now + 11
      assert.equal(now + 20, health.failure("b", t, pol))
      now = now + 21
      assert.equal(now + 35, health.failure("b", t, pol))
    end)
    it("takes a longer provider hint", function()
      local b = backend({ eviction = { duration = 10 } })
      local t, pol = b.groups[1].targets[1], health.policy(b)
      assert.equal(now + 60, health.failure("b", t, pol, 60))
    end)
    it("takes a provider hint only up to max_duration", function()
      local b = backend({ eviction = { duration = 10, max_duration = 120 } })
      local t, pol = b.groups[1].targets[1], health.policy(b)
      assert.equal(now + 120, health.failure("b", t, pol, 86400))   -- "come back tomorrow"
    end)
    it("ramps a restored target's share of traffic back up over slow_start", function()
      local b = backend({ eviction = { duration = 10 }, slow_start = 20 })
      local t, pol = b.groups[1].targets[1], health.policy(b)
      health.failure("b", t, pol)
      local _, _, f = health.state("b", t, now + 20, pol)
      assert.equal(0.5, f)
      _, _, f = health.state("b", t, now + 31, pol)
      assert.equal(1, f)
    end)
    it("does not evict without a health block, but still counts", function()
      local b = backend(nil)
      local t, pol = b.groups[1].targets[1], health.policy(b)
      assert.is_false(pol.evicting)
      assert.is_nil(health.failure("b", t, pol))
      assert.equal(1, health.report("b", t, pol).unhealthy_answers)
    end)
    it("keeps a manual eviction until restored", function()
      local b = backend({})
      local t, pol = b.groups[1].targets[1], health.policy(b)
      health.evict("b", t, health.FOREVER, "manual", pol)
      assert.is_true((health.state("b", t, now + 1e6, pol)))
      assert.equal("evicted", health.report("b", t, pol).state)
      health.restore("b", t, pol)
      assert.is_false((health.state("b", t, now, pol)))
    end)
  end)

  describe("the plugin", function()
    it("retries the default statuses without a retry block", function()
      local b = backend(nil)
      for _, code in ipairs({ 429, 500, 502, 503, 504 }) do
        assert.equal(gw.RETRY, plugin.on_response(ctx_for(b, code), {}), code)
      end
      for _, code in ipairs({ 200, 400, 401, 404 }) do
        assert.is_nil(plugin.on_response(ctx_for(b, code), {}), code)
      end
    end)
    it("retries what retry.on names, classes included", function()
      local b = backend(nil, { on = { 404, "4xx", "reset" } })
      assert.equal(gw.RETRY, plugin.on_response(ctx_for(b, 404), {}))
      assert.equal(gw.RETRY, plugin.on_response(ctx_for(b, 418), {}))
      assert.is_nil(plugin.on_response(ctx_for(b, 500), {}))
      assert.equal(gw.RETRY, plugin.on_error(ctx_for(b), {}, { kind = "reset" }))
      assert.is_nil(plugin.on_error(ctx_for(b), {}, { kind = "timeout" }))
    end)
    it("retries and evicts on the unhealthy_condition", function()
      local b = backend({ unhealthy_condition = "response.code == 404 || response.code == 429" },
                        { on = { 500 } })
      local ctx = ctx_for(b, 404)
      assert.equal(gw.RETRY, plugin.on_response(ctx, {}))
      assert.is_true((health.state("b", ctx.target, now, health.policy(b))))
      assert.is_nil(plugin.on_response(ctx_for(b, 200), {}))
    end)
    it("accepts a Lua function as the condition", function()
      local b = backend({ unhealthy_condition = function(ctx) return ctx.response and ctx.response.code == 418 end },
                        { on = {} })
      assert.equal(gw.RETRY, plugin.on_response(ctx_for(b, 418), {}))
      assert.is_nil(plugin.on_response(ctx_for(b, 200), {}))
    end)
    it("evicts for a 429's Retry-After", function()
      local b = backend({ eviction = { duration = 1 } })
      local ctx = ctx_for(b, 429, { ["retry-after"] = "45" })
      plugin.on_response(ctx, {})
      local _, untl = health.state("b", ctx.target, now, health.policy(b))
      assert.equal(now + 45, untl)
    end)
  end)
end)
