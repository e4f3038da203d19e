-- Nothing a user paid for is lost: a budget's spend comes back from the ledger
-- after a restart (SPEC §8), so an exhausted budget stays exhausted.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
workers = 1
access_log = false
data_dir = "${DATA}"
ledger = { flush_interval = "100ms" }
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = "priced", prices = { input = 1000, output = 1000 } } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
teams = { search = { budget = { usd = 0.02, period = "1mo" } } }
-- a period the ledger's hour buckets cannot cut (bob), a model budget on the name the client
-- asks for where the billed model is another (carol asks for "alias", billed as "priced")
model_budgets = { alias = { usd = 0.02, period = "1d" } }
consumers = { { name = "alice", key = "sk-alice-0123456789", team = "search" },
              { name = "bob", key = "sk-bob-0123456789", budget = { usd = 0.02, period = "50m" } },
              { name = "carol", key = "sk-carol-0123456789" } }
plugins = { { name = "auth" } }
]]

local function chat(gw, who, model)
  local body = '{"model":"' .. (model or "m") .. '","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'
  return helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions", body = body,
    headers = { ["Content-Type"] = "application/json", Authorization = "Bearer sk-" .. (who or "alice") ..
                "-0123456789", Connection = "close" } })
end

-- spends until the budget refuses: the number of answers served
local function exhaust(gw, who, model)
  for i = 1, 6 do
    local res = chat(gw, who, model)
    if res.status ~= 200 then
      assert.equal(429, res.status)
      assert.equal("insufficient_quota", helpers.json(res).error.code)
      return i - 1
    end
  end
  return 6
end

describe("a budget across a restart", function()
  local data = helpers.tmpdir() .. "/data"

  lazy_teardown(function() helpers.cleanup() end)

  it("stays exhausted: its spend is rebuilt from the ledger", function()
    local gw = helpers.start_gateway(CONFIG, { vars = { DATA = data } })
    -- each answer costs $0.008 (1 + 7 tokens at $1000 per million): the third crosses $0.02
    assert.equal(3, exhaust(gw, "alice"))
    -- bob's 50-minute period: its 3000 s windows end on the epoch's multiples; one that ends in the
    -- next minute could pass during the restart
    local bob = os.time() % 3000 < 2940
    if bob then assert.equal(3, exhaust(gw, "bob", "plain")) end
    assert.equal(3, exhaust(gw, "carol", "alias"))
    assert.equal(0, (gw:stop()))

    gw = helpers.start_gateway(CONFIG, { vars = { DATA = data } })
    local res = chat(gw)
    assert.equal(429, res.status, "the spend before the restart was forgotten")
    assert.equal("insufficient_quota", helpers.json(res).error.code)
    if bob then
      assert.equal(429, chat(gw, "bob", "plain").status, "a sub-hour period's spend was forgotten")
    end
    res = chat(gw, "carol", "alias")
    assert.equal(429, res.status, "a model budget on the asked name was forgotten")
    assert.truthy(helpers.json(res).error.message:find("model alias", 1, true))
    assert.equal(200, chat(gw, "carol", "other").status)   -- no budget on that name
    assert.equal(0, (gw:stop()))
  end)
end)
