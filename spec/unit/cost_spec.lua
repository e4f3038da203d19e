-- The cost plugin: its price table, x-moongate-cost-usd before the headers go out, ctx.cost_usd.
local cost = require("cost")

local function tmpfile(text)
  local f = os.tmpname()
  local h = io.open(f, "w")
  h:write(text)
  h:close()
  return f
end

describe("cost", function()
  local conf

  before_each(function()
    conf = {}
    assert(cost.init(conf))
  end)

  local function ctx_for(model, usage)
    return { vars = {}, request = { model = model, body = "{}" }, target = { model = model },
             response = { status = 200, headers = {} }, usage = usage }
  end

  it("loads config/pricing.lua, or the file it is given", function()
    assert.equal(2.5, conf._table["gpt-4o"].input)
    local f = tmpfile('return { mine = { source = "https://x", checked = "2026-01-01", ' ..
      'models = { ["m-1"] = { input = 1, output = 2 } } } }')
    local c2 = { pricing = f }
    assert(cost.init(c2))
    os.remove(f)
    assert.equal(1, c2._table["m-1"].input)
    local ok, err = cost.init({ pricing = "/nonexistent/prices.lua" })
    assert.is_nil(ok)
    assert.matches("^pricing: ", err)
  end)

  it("sets x-moongate-cost-usd when usage is known before the headers go out", function()
    local ctx = ctx_for("gpt-4o-mini", { prompt_tokens = 6, completion_tokens = 7, cached_tokens = 0 })
    assert.is_nil(cost.on_chunk(ctx, conf, '{"usage":{}}'))
    assert.equal("0.0000051", ctx.response.headers["x-moongate-cost-usd"])
    -- once the headers are out, nothing is set
    ctx = ctx_for("gpt-4o", { prompt_tokens = 1000, completion_tokens = 0 })
    ctx.response.headers_sent = true
    cost.on_chunk(ctx, conf, "x")
    assert.is_nil(ctx.response.headers["x-moongate-cost-usd"])
    -- without usage yet: nothing, but the text is counted for an estimate
    ctx = ctx_for("gpt-4o", nil)
    cost.on_chunk(ctx, conf, 'data: {"choices":[{"delta":{"content":"abcdefgh"}}]}\n\n')
    assert.is_nil(ctx.response.headers["x-moongate-cost-usd"])
    assert.equal(8, ctx.vars._mg_text_bytes)
  end)

  it("declines the chunks of a stream whose usage the gateway keeps, once its headers are out", function()
    local ctx = ctx_for("gpt-4o", nil)
    assert.is_true(cost.wants_chunks(ctx, conf))                -- headers not out: it may set one
    ctx.response.headers_sent = true
    assert.is_true(cost.wants_chunks(ctx, conf))                -- nobody keeps the usage: it counts
    ctx.upstream = { decoder = { tracks_usage = function() return true end } }
    assert.is_false(cost.wants_chunks(ctx, conf))
    ctx.upstream = { decoder = { tracks_usage = function() return false end } }
    assert.is_true(cost.wants_chunks(ctx, conf))
    ctx.usage = { prompt_tokens = 1, completion_tokens = 1 }
    assert.is_false(cost.wants_chunks(ctx, conf))
  end)

  it("computes ctx.cost_usd in on_log, a target's prices first", function()
    local ctx = ctx_for("gpt-4o", { prompt_tokens = 1000, completion_tokens = 100, cached_tokens = 400 })
    cost.on_log(ctx, conf)
    assert.near((600 * 2.5 + 400 * 1.25 + 100 * 10) / 1e6, ctx.cost_usd, 1e-15)
    ctx = ctx_for("gpt-4o", { prompt_tokens = 1000, completion_tokens = 0 })
    ctx.target.prices = { input = 1, output = 1 }
    cost.on_log(ctx, conf)
    assert.near(0.001, ctx.cost_usd, 1e-15)
    -- unknown model: 0, not an error
    ctx = ctx_for("local-llama", { prompt_tokens = 1000, completion_tokens = 10 })
    cost.on_log(ctx, conf)
    assert.equal(0, ctx.cost_usd)
    -- no provider answered: no cost at all
    ctx = { vars = {}, request = { model = "gpt-4o", body = "{}" } }
    cost.on_log(ctx, conf)
    assert.is_nil(ctx.cost_usd)
  end)

  it("estimates usage from sizes when the provider reported none", function()
    local ctx = ctx_for("gpt-4o", nil)
    ctx.request.body = string.rep("x", 400)                      -- 100 prompt tokens
    cost.on_chunk(ctx, conf, '{"content":"' .. string.rep("y", 40) .. '"}')   -- 10 completion
    cost.on_log(ctx, conf)
    assert.is_true(ctx.usage.estimated)
    assert.near((100 * 2.5 + 10 * 10) / 1e6, ctx.cost_usd, 1e-15)
  end)
end)
