-- plugins/health.lua: an unhealthy_condition sees each variable it names (SPEC §4), while the
-- variables it does not name are not built for it.
local health = require("health")

local function ctx_for(status)
  return {
    request = { method = "POST", path = "/v1/chat/completions", model = "gpt-x", stream = true,
                headers = { ["x-tier"] = "gold" } },
    consumer = { name = "ann", team = "blue" },
    target = { name = "t1", provider = "p1", model = "m1" },
    response = status and { status = status, headers = {}, upstream_headers = { ["retry-after"] = "3" } } or nil,
    vars = {}, timings = { ttfb = 0.0123 }, attempt = 2,
  }
end

local function judge(src, ctx, err)
  local p = health.judge_policy({ name = "b-" .. src, health = { unhealthy_condition = src } })
  assert(p.cond, "the condition compiles: " .. src)
  return p.cond(health.expr_vars(ctx, err, p.roots)) == true
end

describe("health unhealthy_condition variables", function()
  it("reads every variable it names", function()
    assert.is_true(judge('response.code == 429 && response.headers["retry-after"] == "3"', ctx_for(429)))
    assert.is_true(judge('request.model == "gpt-x" && request.stream && request.method == "POST"', ctx_for(200)))
    assert.is_true(judge('request.headers["x-tier"] == "gold" && request.path.startsWith("/v1")', ctx_for(200)))
    assert.is_true(judge('consumer.team == "blue" && consumer.name == "ann"', ctx_for(200)))
    assert.is_true(judge('error.kind == "timeout"', ctx_for(nil), { kind = "timeout" }))
    assert.is_true(judge('target.name == "t1" && target.provider == "p1" && attempt == 2 && latency_ms == 12',
      ctx_for(200)))
    assert.is_false(judge('response.code == 404 || response.code == 429', ctx_for(200)))
  end)

  it("leaves out what it does not name, and a missing one is null", function()
    local ctx = ctx_for(429)
    assert.is_true(judge("response.code == 429", ctx))
    local p = health.judge_policy({ name = "b-only-response", health = { unhealthy_condition = "response.code == 429" } })
    local v = health.expr_vars(ctx, nil, p.roots)
    assert.is_nil(v.request)
    assert.is_nil(v.consumer)
    assert.is_not_nil(v.response)
    -- without a response (an error), response.code is null: unequal to everything
    assert.is_false(judge("response.code == 429", ctx_for(nil), { kind = "reset" }))
  end)
end)
