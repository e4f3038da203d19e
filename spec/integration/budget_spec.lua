-- Budgets and cost in the real binary: the cost of each request (x-moongate-cost-usd, metrics),
-- a consumer's and a team's budget exhausted (429 insufficient_quota, both formats), a hard budget
-- ending a stream, and the spend in /admin/limits. Prices are set per target so that every token
-- costs $0.001: the mock's answer to "hi" is 1 prompt + 7 completion tokens = $0.008.

local helpers = require "spec.support.helpers"
local cjson = require "cjson.safe"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 1   -- one request at a time: each is settled (on_log) before the next is admitted
access_log = false
providers = { m = { type = "mock" }, f = { type = "openai", base_url = "${UP}/v1", api_key = "sk-f" } }
backends = {
  main = { provider = "m", model = "priced", prices = { input = 1000, output = 1000 } },
  hard = { provider = "m", model = "priced", prices = { input = 0, output = 1000 } },
  dear = { provider = "f", model = "priced", prices = { input = 0, output = 100000 } },   -- $0.1 a token
}
routes = {
  { name = "hard", match = { path_prefix = "/v1", headers = { ["x-route"] = "hard" } }, backend = "hard" },
  { name = "dear", match = { path_prefix = "/v1", headers = { ["x-route"] = "dear" } }, backend = "dear" },
  { name = "v1", match = { path_prefix = "/v1" }, backend = "main" },
}
teams = {
  search = { budget = { usd = 0.02, period = "1d" } },
  ads = { budget = { usd = 0.01, period = "1mo", hard = true } },
  lab = { budget = { usd = 0.5, period = "1mo", hard = true } },
  other = {},
}
consumers = {
  { name = "alice", key = "sk-alice-0123456789", team = "other", budget = { usd = 0.02, period = "1mo" } },
  { name = "sam", key = "sk-sam-0123456789", team = "search" },
  { name = "sue", key = "sk-sue-0123456789", team = "search" },
  { name = "hank", key = "sk-hank-0123456789", team = "ads" },
  { name = "olga", key = "sk-olga-0123456789", team = "other" },
  { name = "lee", key = "sk-lee-0123456789", team = "lab" },
}
plugins = { { name = "auth" } }   -- cost and budget switch themselves on
]]

local CHAT = '{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'
local MSG = '{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'

local function chat(gw, key, body, path, extra)
  local headers = { ["Content-Type"] = "application/json", Connection = "close",
                    Authorization = "Bearer " .. key }
  for k, v in pairs(extra or {}) do headers[k] = v end
  local res = helpers.http(gw.port, { method = "POST", path = path or "/v1/chat/completions",
    headers = headers, body = body or CHAT })
  return res.status, cjson.decode(res.body), res.headers
end

local function admin(gw, path)
  local res = helpers.http(gw.admin_port, { path = path, headers = { Authorization = "Bearer admin-secret" } })
  return res.status, cjson.decode(res.body), res
end

describe("budget", function()
  local gw

  local up

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
    up:stop()
  end)

  it("prices each request (x-moongate-cost-usd) from the provider's usage", function()
    local status, doc, h = chat(gw, "sk-olga-0123456789")
    assert.equal(200, status)
    assert.equal(1, doc.usage.prompt_tokens)
    assert.equal(7, doc.usage.completion_tokens)
    assert.equal("0.008", h["x-moongate-cost-usd"])
    -- on_log runs after the client has its answer
    local res
    helpers.wait_until(function()
      res = select(3, admin(gw, "/metrics"))
      return res.body:find("moongate_request_cost_dollars_sum", 1, true)
    end, 5, "no cost metric")
    assert.matches('moongate_tokens_total{model="priced",team="other",direction="input"} 1\n', res.body, 1, true)
    assert.matches('moongate_tokens_total{model="priced",team="other",direction="output"} 7\n', res.body, 1, true)
    assert.matches('moongate_request_cost_dollars_bucket{model="priced",team="other",le="0.01"} 1\n', res.body, 1, true)
    assert.matches('moongate_request_cost_dollars_sum{model="priced",team="other"} 0.008', res.body, 1, true)
  end)

  it("refuses a consumer over its budget with 429 insufficient_quota", function()
    local served = 0
    local status, doc
    for _ = 1, 10 do
      status, doc = chat(gw, "sk-alice-0123456789")
      if status ~= 200 then break end
      served = served + 1
    end
    assert.equal(3, served)          -- $0, $0.008, $0.016 are below $0.02
    assert.equal(429, status)
    assert.equal("insufficient_quota", doc.error.code)
    assert.matches("consumer alice", doc.error.message)
    -- in the Anthropic format on /v1/messages
    local s2, d2 = chat(gw, "sk-alice-0123456789", MSG, "/v1/messages")
    assert.equal(429, s2)
    assert.equal("error", d2.type)
    assert.equal("rate_limit_error", d2.error.type)
    -- someone else in the same (budget-less) team is not affected
    assert.equal(200, (chat(gw, "sk-olga-0123456789")))
  end)

  it("refuses every member of a team over the team's budget", function()
    assert.equal(200, (chat(gw, "sk-sam-0123456789")))
    assert.equal(200, (chat(gw, "sk-sam-0123456789")))
    assert.equal(200, (chat(gw, "sk-sue-0123456789")))    -- $0.016 < $0.02: served, crosses it
    local status, doc = chat(gw, "sk-sue-0123456789")
    assert.equal(429, status)
    assert.equal("insufficient_quota", doc.error.code)
    assert.matches("team search", doc.error.message)
    status, doc = chat(gw, "sk-sam-0123456789")
    assert.equal(429, status)
    assert.equal("insufficient_quota", doc.error.code)
  end)

  it("shows the spend in /admin/limits", function()
    local status, doc = admin(gw, "/admin/limits?consumer=sam")
    assert.equal(200, status)
    assert.equal(1, #doc.budgets)
    local b = doc.budgets[1]
    assert.equal("team", b.scope)
    assert.equal("search", b.name)
    assert.equal("1d", b.period)
    assert.near(0.024, b.spent_usd, 1e-9)
    assert.is_true(b.exhausted)
    assert.matches("T00:00:00Z$", b.resets_at)
    local _, a = admin(gw, "/admin/limits?consumer=alice")
    assert.equal("consumer", a.budgets[1].scope)
    assert.near(0.024, a.budgets[1].spent_usd, 1e-9)
    assert.matches("%-01T00:00:00Z$", a.budgets[1].period_start)
  end)

  it("ends a stream that crosses a hard budget with an error event", function()
    local words = {}
    for i = 1, 40 do words[i] = string.format("w%02d", i) end
    local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", Authorization = "Bearer sk-hank-0123456789",
                  ["x-route"] = "hard", ["x-mock-text"] = table.concat(words, " "), ["x-mock-chunks"] = "10" },
      body = '{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}' })
    assert.equal(200, s.status)
    local events = s:read_all(10)
    local text, err, done = {}, nil, false
    for _, ev in ipairs(events) do
      local data = helpers.parse_sse(ev).data
      if data == "[DONE]" then
        done = true
      elseif data then
        local d = cjson.decode(data)
        if d.error then err = d.error
        elseif d.choices and d.choices[1] and d.choices[1].delta.content then
          text[#text + 1] = d.choices[1].delta.content
        end
      end
    end
    assert.truthy(err, "no error event in:\n" .. table.concat(events, "\n\n"))
    assert.equal("insufficient_quota", err.code)
    assert.is_false(done)
    local got = table.concat(text)
    assert.truthy(#got > 0 and #got < 80, "text before the cut: " .. got)
    -- and the team's spend now includes the whole answer: the next request is refused
    helpers.wait_until(function()
      local status = chat(gw, "sk-hank-0123456789", nil, nil, { ["x-route"] = "hard" })
      return status == 429
    end, 5, "the hard budget did not refuse the next request")
  end)

  it("delivers what came before the crossing when the whole stream arrives in one read", function()
    -- two content events (estimated at 3 tokens, $0.3), the usage chunk (10 tokens: $1, against
    -- lab's hard $0.5) and [DONE], in one write
    local evs = {
      'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n',
      'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" world"}}]}\n\n',
      'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":0,"completion_tokens":10,"total_tokens":10}}\n\n',
      "data: [DONE]\n\n" }
    local body = table.concat(evs)
    local raw = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: " .. #body ..
      "\r\n\r\n" .. body
    local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", Authorization = "Bearer sk-lee-0123456789",
                  ["x-route"] = "dear",
                  ["x-fake-raw"] = (raw:gsub("[^%w]", function(c) return string.format("%%%02X", c:byte()) end)) },
      body = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}' })
    assert.equal(200, s.status)
    local got = s:read_all(10)
    local text, err = {}, nil
    for _, ev in ipairs(got) do
      local d = cjson.decode(helpers.parse_sse(ev).data or "")
      if d and d.error then err = d.error
      elseif d and d.choices and d.choices[1] then text[#text + 1] = d.choices[1].delta.content end
    end
    assert.equal("Hello world", table.concat(text), table.concat(got, "|"))
    assert.equal("insufficient_quota", err and err.code)
  end)
end)
