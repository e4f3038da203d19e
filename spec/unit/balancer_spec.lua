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
end)
