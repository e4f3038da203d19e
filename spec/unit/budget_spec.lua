-- The budget plugin: which budgets apply, reservation at admission, settlement with the real
-- cost, insufficient_quota, and hard budgets ending a stream (gw.shared is moongate.shared_lua).
local budget = require("budget")
local gw = require("gw")
local cjson = require("cjson.safe")

local PRICES = { input = 1.00, output = 2.00 }   -- USD per 1M tokens: easy sums

local CFG = {
  teams = { search = { budget = { usd = 1, period = { months = 1 } } },
            ads = { budget = { usd = 100, period = { months = 1 }, hard = true } } },
  model_budgets = { ["gpt-4o"] = { usd = 0.5, period = { seconds = 86400 } } },
}

local function ctx_for(consumer, opts)
  opts = opts or {}
  local body = opts.body or string.rep("x", 4000)          -- 1000 prompt tokens
  return {
    config = CFG, vars = {}, format = opts.format or "openai",
    consumer = consumer,
    target = { model = opts.model or "m", prices = PRICES },
    request = { path = "/v1/chat/completions", body = body, model = opts.client_model or "m",
                json = { max_tokens = opts.max_tokens or 1000 }, headers = {} },
  }
end

local function finish(ctx, usage, status)
  ctx.response = { status = status or 200, headers = {} }
  ctx.usage = usage
  budget.on_log(ctx, {})
end

describe("budget", function()
  before_each(function()
    gw.shared._reset()
  end)

  it("applies the consumer's, its team's and the models' budgets", function()
    local c = { name = "alice", team = "search", budget = { usd = 2, period = { months = 1 } } }
    local list = budget.applicable(ctx_for(c, { model = "gpt-4o", client_model = "chat" }))
    local got = {}
    for _, b in ipairs(list) do got[#got + 1] = b.scope .. ":" .. b.name end
    assert.same({ "consumer:alice", "team:search", "model:gpt-4o" }, got)
    list = budget.applicable(ctx_for({ name = "bob" }, { client_model = "gpt-4o" }))
    assert.equal("model:gpt-4o", list[1].scope .. ":" .. list[1].name)
    assert.same({}, budget.applicable(ctx_for(nil)))
  end)

  it("reserves an estimate, admits while spend is below the budget, then answers insufficient_quota", function()
    local alice = { name = "alice", budget = { usd = 0.009, period = { months = 1 } } }
    -- estimate: 1000 prompt * $1 + 1000 completion * $2 per 1M = $0.003
    local served = 0
    for _ = 1, 10 do
      local ctx = ctx_for(alice)
      local rv = budget.on_upstream_request(ctx, {})
      if rv then
        assert.equal(429, rv.status)
        local err = cjson.decode(rv.body).error
        assert.equal("insufficient_quota", err.code)
        assert.matches("consumer alice", err.message)
        break
      end
      served = served + 1
      -- each really costs $0.002 (1000 prompt + 500 completion)
      finish(ctx, { prompt_tokens = 1000, completion_tokens = 500, cached_tokens = 0 })
      assert.near(0.002, ctx.cost_usd, 1e-12)
    end
    assert.equal(5, served)   -- spend 0, .002, ..., .008 < .009: the 5th crosses to .010
    local key = budget.key("consumer", "alice", alice.budget.period, gw.now())
    assert.near(0.010, gw.shared.get(key), 1e-12)
  end)

  it("lets concurrent requests overshoot by at most one each", function()
    local alice = { name = "alice", budget = { usd = 0.01, period = { months = 1 } } }
    local inflight = {}
    for _ = 1, 10 do
      local ctx = ctx_for(alice)
      if not budget.on_upstream_request(ctx, {}) then inflight[#inflight + 1] = ctx end
    end
    assert.equal(4, #inflight)    -- 0, .003, .006, .009 are below .01
    for _, ctx in ipairs(inflight) do finish(ctx, { prompt_tokens = 0, completion_tokens = 0 }) end
    assert.is_nil(budget.on_upstream_request(ctx_for(alice), {}))   -- nothing was really spent
  end)

  it("gives back a refused request's reservations on the other budgets", function()
    local c = { name = "carol", team = "search", budget = { usd = 10, period = { months = 1 } } }
    local ctx = ctx_for(c, { model = "gpt-4o" })
    assert.is_nil(budget.on_upstream_request(ctx, {}))
    finish(ctx, { prompt_tokens = 250000, completion_tokens = 0 })     -- $0.25... of gpt-4o's $0.5
    ctx = ctx_for(c, { model = "gpt-4o" })
    assert.is_nil(budget.on_upstream_request(ctx, {}))
    finish(ctx, { prompt_tokens = 250000, completion_tokens = 0 })     -- gpt-4o at $0.5: exhausted
    local now = gw.now()
    local before = gw.shared.get(budget.key("consumer", "carol", c.budget.period, now))
    local rv = budget.on_upstream_request(ctx_for(c, { model = "gpt-4o" }), {})
    assert.equal(429, rv.status)
    assert.matches("model gpt%-4o", cjson.decode(rv.body).error.message)
    assert.equal(before, gw.shared.get(budget.key("consumer", "carol", c.budget.period, now)))
    -- another model is still fine
    assert.is_nil(budget.on_upstream_request(ctx_for(c, { model = "m" }), {}))
  end)

  it("names the budget with every digit configured", function()
    local tiny = { name = "tiny", budget = { usd = 0.00001, period = { seconds = 3600 } } }
    local rv = budget.on_upstream_request(ctx_for(tiny), {})   -- the estimate passes it at once
    assert.is_nil(rv)
    rv = budget.on_upstream_request(ctx_for(tiny), {})
    assert.equal(429, rv.status)
    assert.matches("$0.00001 per 1h", cjson.decode(rv.body).error.message, 1, true)
  end)

  it("answers in the Anthropic format on /v1/messages", function()
    local c = { name = "dan", budget = { usd = 0, period = { seconds = 3600 } } }
    local rv = budget.on_upstream_request(ctx_for(c, { format = "anthropic" }), {})
    local doc = cjson.decode(rv.body)
    assert.equal("error", doc.type)
    assert.equal("rate_limit_error", doc.error.type)
  end)

  describe("rebuild at start", function()
    -- a ledger whose aggregates answer `exact` as told, and whose records are `recs`
    local function fake_ledger(rows, exact, recs)
      return {
        totals = function(dim) return rows[dim] or {}, exact end,
        each_record = function(since, fn)
          local n = 0
          for _, r in ipairs(recs) do
            if r.time >= since then n = n + 1; fn(r) end
          end
          return n
        end,
      }
    end

    it("sums a period the aggregates cannot cut from the records, not the whole hour", function()
      local now = gw.now()
      local period = { seconds = 1800 }
      local start = math.floor(now / 1800) * 1800
      local cfg = { consumers = { { name = "bob", key_sha256 = string.rep("ab", 32), budget = { usd = 5, period = period } } } }
      local led = fake_ledger({ consumer = { bob = { cost_usd = 4 } } }, false, {
        { time = start - 1, consumer = "bob", cost_usd = 3 },       -- the period before
        { time = start, consumer = "bob", cost_usd = 0.25 },
        { time = now - 0.001, consumer = "bob", cost_usd = 0.5 },
        { time = start + 1, consumer = "eve", cost_usd = 9 },
        { time = start + 1, consumer = "bob", cost_usd = gw.json.null },
      })
      assert.equal(1, budget.rebuild(cfg, led))
      assert.equal(0.75, gw.shared.get(budget.key("consumer", "bob", period, now)))
    end)

    it("counts a model budget's billed and asked names, as admission does", function()
      local now = gw.now()
      local period = { seconds = 86400 }
      local cfg = { model_budgets = { alias = { usd = 1, period = period }, priced = { usd = 1, period = period } } }
      local led = fake_ledger({ model = { priced = { cost_usd = 0.5 } },
                                asked_model = { alias = { cost_usd = 0.25 } } }, true, {})
      assert.equal(2, budget.rebuild(cfg, led))
      assert.equal(0.25, gw.shared.get(budget.key("model", "alias", period, now)))
      assert.equal(0.5, gw.shared.get(budget.key("model", "priced", period, now)))
    end)
  end)

  describe("hard budgets", function()
    local function stream_ctx(team)
      local ctx = ctx_for({ name = "erin", team = team }, { max_tokens = 10 })
      assert.is_nil(budget.on_upstream_request(ctx, {}))
      ctx.response = { status = 200, headers = { ["content-type"] = "text/event-stream" } }
      return ctx
    end

    local function event(text)
      return 'data: {"choices":[{"delta":{"content":"' .. text .. '"}}]}\n\n'
    end

    it("end a stream that crosses the budget with an error event, then drop the rest", function()
      local key = budget.key("team", "ads", CFG.teams.ads.budget.period, gw.now())
      local ctx = stream_ctx("ads")
      assert.is_nil(budget.on_chunk(ctx, {}, event("hello")))
      -- someone else spends almost all of it meanwhile
      gw.shared.incr(key, 99.99999)
      local out
      for _ = 1, 100 do
        out = budget.on_chunk(ctx, {}, event(string.rep("z", 400)))   -- ~100 tokens each: $0.0002
        if out ~= nil then break end
      end
      assert.is_string(out)
      assert.matches("^data: ", out)
      local doc = cjson.decode(out:match("^data: (.-)\n\n$"))
      assert.equal("insufficient_quota", doc.error.code)
      assert.is_false(budget.on_chunk(ctx, {}, event("more")))
      assert.is_false(budget.on_chunk(ctx, {}, "data: [DONE]\n\n"))
    end)

    it("want a stream's chunks only under a hard budget", function()
      assert.is_true(budget.wants_chunks(stream_ctx("ads"), {}))
      assert.is_false(budget.wants_chunks(stream_ctx("search"), {}))
      assert.is_false(budget.wants_chunks({ vars = {} }, {}))   -- no budget applies
    end)

    it("leave streams under a soft budget alone", function()
      local key = budget.key("team", "search", CFG.teams.search.budget.period, gw.now())
      local ctx = stream_ctx("search")
      gw.shared.incr(key, 5)
      assert.is_nil(budget.on_chunk(ctx, {}, event(string.rep("z", 4000))))
    end)

    it("end Anthropic streams with an error event", function()
      local key = budget.key("team", "ads", CFG.teams.ads.budget.period, gw.now())
      local ctx = stream_ctx("ads")
      ctx.format = "anthropic"
      gw.shared.incr(key, 200)
      local out = budget.on_chunk(ctx, {}, 'event: content_block_delta\ndata: {"delta":{"text":"x"}}\n\n')
      assert.matches("^event: error\ndata: ", out)
    end)
  end)
end)
