-- plugins/balancer.lua: on_balance picks ctx.target for each attempt.
local balancer = require("balancer")

local PROVIDERS = {
  openai = { type = "openai", wire = "openai", base_url = "http://o/v1" },
  anthropic = { type = "anthropic", wire = "anthropic", base_url = "http://a" },
  vllm = { type = "openai", wire = "openai", base_url = "http://v/v1" },
}

-- a fresh backend each time: the balancer keeps its positions per group table
local function backend(groups)
  local b = { name = "chat", groups = {} }
  for g, names in ipairs(groups) do
    local targets = {}
    for i, n in ipairs(names) do
      local provider = type(n) == "table" and n.provider or n:match("^([^/]+)")
      local name = type(n) == "table" and n.name or n
      targets[i] = { name = name, provider = provider, model = name:match("/(.*)$"),
                     weight = type(n) == "table" and n.weight or nil }
    end
    b.groups[g] = { strategy = "round_robin", targets = targets }
  end
  return b
end

local function new_request(b)
  return { backend = b, config = { providers = PROVIDERS }, vars = {} }
end

local function pick(ctx)
  balancer.on_balance(ctx, {})
  return ctx.target and ctx.target.name
end

describe("balancer", function()
  -- positions and health live in gw.shared (plain Lua outside the binary)
  before_each(function() require("gw").shared._reset() end)

  it("is a plugin with a name, a priority and on_balance", function()
    assert.equal("balancer", balancer.name)
    assert.is_number(balancer.priority)
    assert.is_function(balancer.on_balance)
  end)

  it("does nothing without a backend", function()
    local ctx = { config = { providers = PROVIDERS }, vars = {} }
    assert.has_no.errors(function() balancer.on_balance(ctx, {}) end)
    assert.is_nil(ctx.target)
    assert.is_nil(ctx.provider)
  end)

  it("always picks the only target of a single-target backend", function()
    local b = backend({ { "openai/gpt-4o-mini" } })
    for _ = 1, 3 do
      local ctx = new_request(b)
      assert.equal("openai/gpt-4o-mini", pick(ctx))
      assert.equal(PROVIDERS.openai, ctx.provider)
    end
  end)

  it("takes the first group's targets in turn across requests", function()
    local b = backend({ { "openai/a", "anthropic/b", "vllm/c" }, { "vllm/backup" } })
    local got = {}
    for i = 1, 7 do got[i] = pick(new_request(b)) end
    assert.same({ "openai/a", "anthropic/b", "vllm/c", "openai/a", "anthropic/b", "vllm/c", "openai/a" }, got)
  end)

  it("sets ctx.provider from config.providers for the chosen target", function()
    local b = backend({ { "openai/a", "anthropic/b" } })
    local c1, c2 = new_request(b), new_request(b)
    pick(c1)
    pick(c2)
    assert.equal(PROVIDERS.openai, c1.provider)
    assert.equal(PROVIDERS.anthropic, c2.provider)
    assert.equal(b.groups[1].targets[1], c1.target)
    assert.equal(b.groups[1].targets[2], c2.target)
  end)

  it("leaves ctx.provider nil for a provider the config lacks", function()
    local b = backend({ { { name = "ghost/x", provider = "ghost" } } })
    local ctx = new_request(b)
    assert.equal("ghost/x", pick(ctx))
    assert.is_nil(ctx.provider)
  end)

  it("skips targets the same request already tried", function()
    local b = backend({ { "openai/a", "anthropic/b", "vllm/c" } })
    local ctx = new_request(b)
    local seen = { pick(ctx), pick(ctx), pick(ctx) }
    table.sort(seen)
    assert.same({ "anthropic/b", "openai/a", "vllm/c" }, seen)
  end)

  it("keeps the rotation going for other requests while one retries", function()
    local b = backend({ { "openai/a", "anthropic/b", "vllm/c" } })
    local r1 = new_request(b)
    assert.equal("openai/a", pick(r1))
    local r2 = new_request(b)
    assert.equal("anthropic/b", pick(r2))
    local r1_second = pick(r1)              -- r1's retry: a target r1 has not tried
    assert.not_equal("openai/a", r1_second)
    local r2_second = pick(r2)              -- r2's retry
    assert.not_equal("anthropic/b", r2_second)
    local r1_third = pick(r1)               -- r1's third attempt: the one it has not tried
    local r1_all = { "openai/a", r1_second, r1_third }
    table.sort(r1_all)
    assert.same({ "anthropic/b", "openai/a", "vllm/c" }, r1_all)
  end)

  it("moves to the next group once the first group's targets were all tried", function()
    local b = backend({ { "openai/a", "anthropic/b" }, { "vllm/c", "vllm/d" }, { "openai/e" } })
    local ctx = new_request(b)
    local first = { pick(ctx), pick(ctx) }
    table.sort(first)
    assert.same({ "anthropic/b", "openai/a" }, first)
    assert.equal("vllm/c", pick(ctx))
    assert.equal(PROVIDERS.vllm, ctx.provider)
    assert.equal("vllm/d", pick(ctx))
    assert.equal("openai/e", pick(ctx))
    assert.equal(PROVIDERS.openai, ctx.provider)
  end)

  it("starts a new request in the first group again", function()
    local b = backend({ { "openai/a" }, { "vllm/c" } })
    local r1 = new_request(b)
    assert.equal("openai/a", pick(r1))
    assert.equal("vllm/c", pick(r1))
    local r2 = new_request(b)
    assert.equal("openai/a", pick(r2))
  end)

  it("keeps choosing a target once every target was tried", function()
    local b = backend({ { "openai/a" }, { "vllm/c" } })
    local ctx = new_request(b)
    pick(ctx)
    pick(ctx)
    for _ = 1, 4 do
      local name = pick(ctx)
      assert.is_string(name)
      assert.is_table(ctx.provider)
    end
  end)

  it("keeps the tried set in ctx.vars, so a new vars table forgets it", function()
    local b = backend({ { "openai/a", "anthropic/b" } })
    local ctx = new_request(b)
    pick(ctx)
    assert.is_table(ctx.vars.balancer_tried)
    assert.is_true(ctx.vars.balancer_tried["openai/a"])
  end)

  -- SPEC §2: `round_robin` is smooth weighted; the module's own header says
  -- "weighted round robin". A target with weight = 2 gets twice the requests.
  it("honours target weights in round_robin", function()
    local b = backend({ { { name = "openai/a", provider = "openai", weight = 1 },
                          { name = "anthropic/b", provider = "anthropic", weight = 2 } } })
    local counts = {}
    for _ = 1, 30 do
      local n = pick(new_request(b))
      counts[n] = (counts[n] or 0) + 1
    end
    assert.same({ ["openai/a"] = 10, ["anthropic/b"] = 20 }, counts)
  end)

  describe("strategies", function()
    local health = require("moongate.health")
    local function group_backend(strategy, targets, extra)
      local b = { name = "s-" .. strategy, groups = { { strategy = strategy, targets = targets } } }
      for k, v in pairs(extra or {}) do b.groups[1][k] = v end
      return b
    end
    local function T(name, fields)
      local t = { name = name, provider = "openai", model = name }
      for k, v in pairs(fields or {}) do t[k] = v end
      return t
    end
    local function count(b, n, make)
      local c = {}
      for _ = 1, n do
        local ctx = make and make() or new_request(b)
        ctx.backend = b
        local name = pick(ctx)
        balancer.on_log(ctx, {})
        c[name] = (c[name] or 0) + 1
      end
      return c
    end

    it("random follows the weights", function()
      math.randomseed(7)
      local c = count(group_backend("random", { T("a", { weight = 1 }), T("b", { weight = 3 }) }), 4000)
      assert.truthy(c.b > 2700 and c.b < 3300, "b got " .. tostring(c.b))
    end)

    it("least_busy picks the target with fewest in flight", function()
      local b = group_backend("least_busy", { T("a"), T("b") })
      health.acquire(b.name, b.groups[1].targets[1])   -- a has one in flight elsewhere
      for _ = 1, 3 do
        local ctx = new_request(b)
        assert.equal("b", pick(ctx))
        balancer.on_log(ctx, {})
      end
    end)

    it("least_busy splits sequential traffic by weight while every target is idle", function()
      local c = count(group_backend("least_busy", { T("a", { weight = 1 }), T("b", { weight = 3 }) }), 400)
      assert.equal(100, c.a)
      assert.equal(300, c.b)
    end)

    it("latency measures every target first, then prefers the fastest", function()
      math.randomseed(3)
      local b = group_backend("latency", { T("a"), T("b") })
      local first = { pick(new_request(b)), pick(new_request(b)) }
      table.sort(first)
      assert.same({ "a", "b" }, first)
      health.observe_latency(b.name, b.groups[1].targets[1], 0.5)
      health.observe_latency(b.name, b.groups[1].targets[2], 0.05)
      local c = count(b, 200)
      assert.truthy(c.b > 170, "b got " .. tostring(c.b))
      assert.truthy((c.a or 0) > 0, "no exploration of the slower target")
    end)

    it("cost picks the cheapest and round-robins ties", function()
      local b = group_backend("cost", { T("dear", { prices = { input = 5, output = 15 } }),
        T("cheap1", { prices = { input = 0.1, output = 0.4 } }), T("cheap2", { prices = { input = 0.2, output = 0.3 } }) })
      assert.same({ cheap1 = 5, cheap2 = 5 }, count(b, 10))
    end)

    it("usage picks the target with the fewest tokens this minute", function()
      local b = group_backend("usage", { T("a"), T("b") })
      health.add_tokens(b.name, b.groups[1].targets[1], 500)
      assert.equal("b", pick(new_request(b)))
    end)

    it("sticky keeps a key on its target, and only the keys of a removed target move", function()
      local targets = { T("a"), T("b"), T("c"), T("d") }
      local b = group_backend("sticky", targets, { sticky = { header = "x-session-id" } })
      local function route(backend, key)
        local ctx = new_request(backend)
        ctx.request = { headers = { ["x-session-id"] = key } }
        local name = pick(ctx)
        balancer.on_log(ctx, {})
        return name
      end
      local before = {}
      for i = 1, 200 do before[i] = route(b, "k" .. i) end
      for i = 1, 200 do assert.equal(before[i], route(b, "k" .. i)) end
      local b2 = group_backend("sticky", { targets[1], targets[2], targets[4] }, { sticky = { header = "x-session-id" } })
      b2.name = b.name
      local moved = 0
      for i = 1, 200 do
        local now = route(b2, "k" .. i)
        if before[i] ~= "c" then assert.equal(before[i], now) else moved = moved + 1 end
      end
      assert.truthy(moved > 20, "c held " .. moved .. " of 200 keys")
    end)

    it("skips evicted targets and targets at max_inflight", function()
      local b = group_backend("round_robin", { T("a"), T("b", { max_inflight = 1 }), T("c") })
      local ts = b.groups[1].targets
      health.evict(b.name, ts[1], 60, "manual", health.policy(b))
      health.acquire(b.name, ts[2])
      for _ = 1, 4 do
        local ctx = new_request(b)
        assert.equal("c", pick(ctx))
        balancer.on_log(ctx, {})
      end
    end)

    it("spreads an evicted target's share evenly over the others", function()
      local b = group_backend("round_robin", { T("a"), T("b"), T("c") })
      health.evict(b.name, b.groups[1].targets[1], 60, "manual", health.policy(b))
      assert.same({ b = 5, c = 5 }, count(b, 10))
    end)

    it("panics to the target whose eviction ends first, unless panic = false", function()
      local b = group_backend("round_robin", { T("a"), T("b") })
      b.health = { eviction = { duration = 10 } }
      local ts = b.groups[1].targets
      health.evict(b.name, ts[1], 50, "passive", health.policy(b))
      health.evict(b.name, ts[2], 20, "passive", health.policy(b))
      assert.equal("b", pick(new_request(b)))
      local b2 = group_backend("round_robin", ts)
      b2.name = b.name
      b2.health = { panic = false }
      local ctx = new_request(b2)
      assert.is_nil(pick(ctx))
      assert.truthy(ctx.vars.no_target_reason:find("evicted", 1, true))
    end)
  end)
end)
