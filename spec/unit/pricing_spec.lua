-- moongate.pricing and config/pricing.lua: the table, matching models, computing costs, estimating
-- tokens.
local pricing = require("moongate.pricing")

describe("pricing", function()
  local tbl

  setup(function()
    tbl = assert(pricing.load("config/pricing.lua"))
  end)

  describe("config/pricing.lua", function()
    it("covers the five vendors, each entry with a source URL and a date", function()
      local vendors = {}
      local n = 0
      for name, e in pairs(tbl) do
        n = n + 1
        vendors[e.vendor] = true
        assert.matches("^https://", e.source, nil, false, name)
        assert.matches("^%d%d%d%d%-%d%d%-%d%d$", e.checked)
        assert.truthy(e.input >= 0 and e.output >= 0, name)
        if e.cached_input then assert.truthy(e.cached_input <= e.input, name) end
      end
      assert.same({ openai = true, anthropic = true, google = true, mistral = true, deepseek = true }, vendors)
      assert.truthy(n > 40)
    end)

    it("refuses a broken file, naming the entry", function()
      local f = os.tmpname()
      local h = io.open(f, "w")
      h:write('return { x = { source = "s", checked = "d", models = { m = { input = -1, output = 1 } } } }')
      h:close()
      local t, err = pricing.load(f)
      os.remove(f)
      assert.is_nil(t)
      assert.matches('x.models%["m"%].input: expected a number >= 0', err)
    end)
  end)

  describe("lookup", function()
    it("finds exact names, then dated variants by the longest prefix", function()
      assert.equal(2.50, pricing.lookup(tbl, "gpt-4o").input)
      local e, name = pricing.lookup(tbl, "gpt-4o-2024-08-06")
      assert.equal("gpt-4o", name)
      assert.equal(2.50, e.input)
      assert.equal(5.00, pricing.lookup(tbl, "gpt-4o-2024-05-13").input)   -- its own entry
      assert.equal("gpt-4o-mini", select(2, pricing.lookup(tbl, "gpt-4o-mini-2024-07-18")))
      assert.equal("claude-3-5-haiku", select(2, pricing.lookup(tbl, "claude-3-5-haiku-latest")))
      assert.equal("claude-sonnet-4-5", select(2, pricing.lookup(tbl, "claude-sonnet-4-5-20250929")))
      assert.equal("claude-3-5-sonnet", select(2, pricing.lookup(tbl, "claude-3-5-sonnet@20240620")))
      assert.equal("gemini-2.5-flash-lite", select(2, pricing.lookup(tbl, "gemini-2.5-flash-lite-preview-06-17")))
      assert.equal("gpt-4o", select(2, pricing.lookup(tbl, "openai/gpt-4o")))
      assert.equal("deepseek-chat", select(2, pricing.lookup(tbl, "deepseek/deepseek-chat")))
    end)

    it("does not match a prefix that is not followed by a separator", function()
      assert.is_nil(pricing.lookup(tbl, "gpt-4ox"))
      assert.is_nil(pricing.lookup(tbl, "o1x"))
      assert.is_nil(pricing.lookup(tbl, "no-such-model"))
      assert.is_nil(pricing.lookup(tbl, nil))
      assert.is_nil(pricing.lookup(tbl, ""))
    end)

    it("prefers the target's prices, then its model, then the client's model", function()
      local ctx = { request = { model = "gpt-4o" }, target = { model = "gpt-4o-mini" } }
      assert.equal(0.15, pricing.prices(ctx, tbl).input)
      ctx.target.prices = { input = 7, output = 8 }
      assert.equal(7, pricing.prices(ctx, tbl).input)
      ctx = { request = { model = "gpt-4o" }, target = { model = "my-local-llama" } }
      assert.equal(2.50, pricing.prices(ctx, tbl).input)
      ctx = { request = { model = "gpt-4o" }, target = { model = false } }
      assert.equal(2.50, pricing.prices(ctx, tbl).input)
      assert.is_nil(pricing.prices({ request = { model = "llama" }, target = { model = "llama" } }, tbl))
    end)
  end)

  describe("cost", function()
    it("prices cached prompt tokens at cached_input and the rest at input", function()
      local p = { input = 2.50, output = 10.00, cached_input = 1.25 }
      local c = pricing.cost(p, { prompt_tokens = 1000, cached_tokens = 200, completion_tokens = 500 })
      assert.near(0.00725, c, 1e-15)   -- (800 * 2.5 + 200 * 1.25 + 500 * 10) / 1e6
      -- no cached price: input price
      c = pricing.cost({ input = 3, output = 15 }, { prompt_tokens = 100, cached_tokens = 100, completion_tokens = 0 })
      assert.near(0.0003, c, 1e-15)
      -- more cached than prompt (a provider's oddity) never goes negative
      c = pricing.cost(p, { prompt_tokens = 10, cached_tokens = 50, completion_tokens = 0 })
      assert.near(10 * 1.25 / 1e6, c, 1e-15)
      assert.equal(0, pricing.cost(nil, { prompt_tokens = 5 }))
    end)

    it("writes plain decimals, never an exponent", function()
      assert.equal("0.0003175", pricing.decimal(0.0003175))
      assert.equal("0.0003175", pricing.decimal(127 * 2.5 / 1e6))
      assert.equal("0.0000001", pricing.decimal(1e-7))
      assert.equal("0", pricing.decimal(0))
      assert.equal("0", pricing.decimal(1e-14))
      assert.equal("12.5", pricing.decimal(12.5))
      assert.equal("3", pricing.decimal(3))
      assert.is_nil(pricing.decimal(1.5e-9):find("e"))
    end)

    it("computes ctx.cost_usd once, from the provider's usage", function()
      local ctx = { request = { model = "gpt-4o-mini", body = "" }, target = { model = "gpt-4o-mini" },
                    response = { status = 200 }, vars = {},
                    usage = { prompt_tokens = 6, completion_tokens = 7, cached_tokens = 0 } }
      assert.near(0.0000051, pricing.compute(ctx, tbl), 1e-15)
      ctx.usage.completion_tokens = 1000
      assert.near(0.0000051, pricing.compute(ctx, tbl), 1e-15)
    end)
  end)

  describe("token estimates", function()
    it("reserve a quarter of the body's bytes plus max_tokens", function()
      local body = '{"model":"m","max_tokens":100,"messages":[]}'
      local ctx = { request = { path = "/v1/chat/completions", body = body, json = { max_tokens = 100 } }, vars = {} }
      assert.same({ math.ceil(#body / 4), 100 }, { pricing.estimate(ctx) })
      ctx = { request = { path = "/v1/chat/completions", body = "{}", json = { max_completion_tokens = 7, max_tokens = 100 } }, vars = {} }
      assert.same({ 1, 7 }, { pricing.estimate(ctx) })
      ctx = { request = { path = "/v1/chat/completions", body = "{}", json = {} }, vars = {} }
      assert.same({ 1, pricing.DEFAULT_COMPLETION }, { pricing.estimate(ctx) })
      ctx = { request = { path = "/v1/embeddings", body = "{}", json = {} }, vars = {} }
      assert.same({ 1, 0 }, { pricing.estimate(ctx) })
    end)

    it("count the text of answers and stream events", function()
      assert.equal(5, pricing.text_len('data: {"choices":[{"delta":{"content":"Hello"}}]}'))
      assert.equal(9, pricing.text_len('{"content":[{"type":"text","text":"a \\"b\\" c"}],"id":"x"}'))
      assert.equal(0, pricing.text_len('{"id":"chatcmpl-1","object":"x"}'))
      assert.equal(3, pricing.text_len('event: content_block_delta\ndata: {"delta":{"type":"text_delta","text":"abc"}}'))
    end)

    it("estimate usage from sizes when the provider reported none", function()
      local ctx = { request = { body = string.rep("x", 40) }, target = { model = "m" },
                    response = { status = 200 }, vars = {} }
      pricing.track(ctx, '{"content":"' .. string.rep("y", 20) .. '"}')
      local u = pricing.usage(ctx)
      assert.same({ prompt_tokens = 10, completion_tokens = 5, cached_tokens = 0, estimated = true }, u)
      assert.equal(u, ctx.usage)
      -- a gateway-made answer (no provider) or a failed one used nothing
      assert.is_nil(pricing.usage({ request = { body = "x" }, vars = {} }))
      assert.is_nil(pricing.usage({ request = { body = "x" }, target = {}, response = { status = 500 }, vars = {} }))
    end)
  end)
end)
