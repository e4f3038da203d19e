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
consumers = { { name = "alice", key = "sk-alice-0123456789", team = "search" } }
plugins = { { name = "auth" } }
]]

local CHAT = '{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'

local function chat(gw)
  return helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions", body = CHAT,
    headers = { ["Content-Type"] = "application/json", Authorization = "Bearer sk-alice-0123456789",
                Connection = "close" } })
end

describe("a budget across a restart", function()
  local data = helpers.tmpdir() .. "/data"

  lazy_teardown(function() helpers.cleanup() end)

  it("stays exhausted: its spend is rebuilt from the ledger", function()
    local gw = helpers.start_gateway(CONFIG, { vars = { DATA = data } })
    -- each answer costs $0.008 (1 + 7 tokens at $1000 per million): the third crosses $0.02
    local served = 0
    for _ = 1, 5 do
      local res = chat(gw)
      if res.status == 200 then
        served = served + 1
      else
        assert.equal(429, res.status)
        assert.equal("insufficient_quota", helpers.json(res).error.code)
        break
      end
    end
    assert.equal(3, served)
    assert.equal(0, (gw:stop()))

    gw = helpers.start_gateway(CONFIG, { vars = { DATA = data } })
    local res = chat(gw)
    assert.equal(429, res.status, "the spend before the restart was forgotten")
    assert.equal("insufficient_quota", helpers.json(res).error.code)
    assert.equal(0, (gw:stop()))
  end)
end)
