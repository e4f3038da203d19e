-- Provider types end to end: the real gateway in front of fake OpenAI,
-- Azure, Anthropic and Gemini APIs (spec/support/fake_providers.lua, which
-- answers with the fixtures under spec/fixtures/<provider>/). Each case
-- checks what the client got and what the provider received: the format
-- translated both ways, streamed or not, the model replaced, the provider's
-- key sent and the client's never, errors in the client's shape, usage.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = false
shutdown_timeout = "5s"

providers = {
  oai   = { type = "openai", base_url = "${UP}/v1", api_key = "sk-openai-provider" },
  ant   = { type = "anthropic", base_url = "${UP}", api_key = "sk-ant-provider" },
  antd  = { type = "anthropic", base_url = "${UP}", api_key = "sk-ant-provider", drop_unsupported = true },
  az    = { type = "azure", base_url = "${UP}", api_version = "2024-10-21", api_key = "az-provider-key" },
  gem   = { type = "gemini", base_url = "${UP}", api_key = "g-provider-key" },
  mock  = { type = "mock", chunks = 3, text = "one two three four" },
}

backends = {
  openai    = { provider = "oai", model = "gpt-4o-mini" },
  anthropic = { provider = "ant", model = "claude-3-5-haiku-latest" },
  dropping  = { provider = "antd", model = "claude-3-5-haiku-latest" },
  azure     = { provider = "az", model = "prod-4o" },
  gemini    = { provider = "gem", model = "gemini-2.0-flash" },
  mock      = { provider = "mock", model = "mock-model" },
}

routes = {
  { match = { path_prefix = "/v1", headers = { ["x-to"] = "anthropic" } }, backend = "anthropic" },
  { match = { path_prefix = "/v1", headers = { ["x-to"] = "dropping" } }, backend = "dropping" },
  { match = { path_prefix = "/v1", headers = { ["x-to"] = "azure" } }, backend = "azure" },
  { match = { path_prefix = "/v1", headers = { ["x-to"] = "gemini" } }, backend = "gemini" },
  { match = { path_prefix = "/v1", headers = { ["x-to"] = "mock" } }, backend = "mock" },
  { match = { path_prefix = "/v1" }, backend = "openai" },
}

plugins = {
  { name = "usage_probe", handler = { on_log = function(ctx)
      local gw = require("gw")
      if ctx.usage then gw.log("warn", "usage-probe " .. gw.json.encode(ctx.usage)) end
    end } },
}
]]

local CLIENT_KEY = "gw-client-secret-123"

-- ====================== the fake providers ======================

-- spec/support/fake_providers.lua, through the harness's fake upstream helper
local function start_fake()
  local up = helpers.start_fake_upstream({ script = "spec/support/fake_providers.lua" })
  up.only = function(self)
    local reqs = self:requests()
    assert.equal(1, #reqs, "requests upstream: " .. #reqs)
    return reqs[1], cjson.decode(reqs[1].body or "")
  end
  return up
end

-- ====================== client side ======================

local seq = 0
local function next_id()
  seq = seq + 1
  return "prov-spec-" .. seq
end

local function post(gw, path, body, headers)
  local h = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. CLIENT_KEY,
              ["X-Request-Id"] = next_id() }
  for k, v in pairs(headers or {}) do h[k] = v end
  local res = helpers.http(gw.port, { method = "POST", path = path, headers = h, body = body, timeout = 10 })
  res.id = h["X-Request-Id"]
  return res
end

local function get(gw, path, headers)
  local h = { ["Authorization"] = "Bearer " .. CLIENT_KEY, ["X-Request-Id"] = next_id() }
  for k, v in pairs(headers or {}) do h[k] = v end
  return helpers.http(gw.port, { path = path, headers = h, timeout = 10 })
end

local function events(body)
  local out = {}
  for ev in (body or ""):gmatch("(.-)\r?\n\r?\n") do
    local p = helpers.parse_sse(ev)
    p.json = p.data and cjson.decode(p.data)
    out[#out + 1] = p
  end
  return out
end

-- the usage the gateway learnt for a request (from the usage_probe plugin's log line)
local function usage_of(gw, id)
  local line
  helpers.wait_until(function()
    for l in gw:log():gmatch("[^\n]+") do
      if l:find("[" .. id .. "] usage-probe", 1, true) then line = l end
    end
    return line
  end, 5, "usage logged for " .. id)
  return cjson.decode(line:match("usage%-probe (.*)$"))
end

-- the client's key reached the provider nowhere, and the provider's did
local function assert_keys(req, header, value)
  assert.equal(value, req.headers[header], "provider key in " .. header)
  for name, v in pairs(req.headers) do
    assert.is_nil(v:find(CLIENT_KEY, 1, true), "client key forwarded in " .. name)
  end
  assert.is_nil((req.body or ""):find(CLIENT_KEY, 1, true))
end

local OPENAI_CHAT = '{"model":"client-model","max_tokens":100,"temperature":0.70000000000000001,' ..
  '"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello there"}]}'
local OPENAI_STREAM = '{"model":"client-model","stream":true,"messages":[{"role":"user","content":"Hello there"}]}'
local ANTHROPIC_MSG = '{"model":"claude-client","max_tokens":256,"system":"Be brief.",' ..
  '"messages":[{"role":"user","content":"Hello there"}]}'
local ANTHROPIC_STREAM = '{"model":"claude-client","max_tokens":256,"stream":true,' ..
  '"messages":[{"role":"user","content":"Hello there"}]}'

describe("providers", function()
  local up, gw

  lazy_setup(function()
    up = start_fake()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  before_each(function()
    up:reset()
  end)

  describe("OpenAI client to an Anthropic target", function()
    it("translates the request and the answer", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_CHAT,
        { ["x-to"] = "anthropic", ["x-api-key"] = CLIENT_KEY, ["api-key"] = CLIENT_KEY })
      assert.equal(200, res.status, res.body)
      local doc = helpers.json(res)
      assert.equal("chat.completion", doc.object)
      assert.equal("Hi! My name is Claude.", doc.choices[1].message.content)
      assert.equal("stop", doc.choices[1].finish_reason)
      assert.equal(3995, doc.usage.prompt_tokens)
      assert.equal("ant/claude-3-5-haiku-latest", res.headers["x-moongate-target"])
      local req, sent = up:only()
      assert.equal("POST", req.method)
      assert.equal("/v1/messages", req.path)
      assert_keys(req, "x-api-key", "sk-ant-provider")
      assert.equal("2023-06-01", req.headers["anthropic-version"])
      assert.is_nil(req.headers.authorization)
      assert.equal("claude-3-5-haiku-latest", sent.model)
      assert.equal("Be brief.", sent.system)
      assert.equal(100, sent.max_tokens)
      assert.truthy(req.body:find('"temperature":0.70000000000000001', 1, true))
      local u = usage_of(gw, res.id)
      assert.same({ prompt_tokens = 3995, completion_tokens = 503, cached_tokens = 1800, estimated = false }, u)
    end)

    it("streams the answer as chat.completion.chunk events, with the usage chunk it asked for", function()
      local res = post(gw, "/v1/chat/completions",
        '{"model":"x","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}',
        { ["x-to"] = "anthropic" })
      assert.equal(200, res.status)
      assert.matches("text/event-stream", res.headers["content-type"], 1, true)
      assert.is_nil(res.incomplete)
      local evs = events(res.body)
      assert.equal("[DONE]", evs[#evs].data)
      local text, usage = {}, nil
      for i = 1, #evs - 1 do
        local c = evs[i].json
        assert.equal("chat.completion.chunk", c.object)
        if c.usage then usage = c.usage end
        for _, ch in ipairs(c.choices) do
          if type(ch.delta.content) == "string" then text[#text + 1] = ch.delta.content end
        end
      end
      assert.equal("Hello! café", table.concat(text))
      assert.equal(30, usage.prompt_tokens)
      local req, sent = up:only()
      assert.is_true(sent.stream)
      assert.is_nil(sent.stream_options)
      assert.equal(4096, sent.max_tokens)
      assert.equal(15, usage_of(gw, res.id).completion_tokens)
    end)

    it("refuses a field Anthropic cannot honour with a 400 naming it, sending nothing", function()
      local res = post(gw, "/v1/chat/completions",
        '{"model":"x","n":2,"messages":[{"role":"user","content":"hi"}]}', { ["x-to"] = "anthropic" })
      assert.equal(400, res.status)
      local e = helpers.json(res).error
      assert.matches("^n: ", e.message)
      assert.equal("unsupported_parameter", e.code)
      assert.equal(0, #up:requests())
    end)

    it("drops that field instead when the provider has drop_unsupported", function()
      local res = post(gw, "/v1/chat/completions",
        '{"model":"x","n":2,"logprobs":true,"messages":[{"role":"user","content":"hi"}]}', { ["x-to"] = "dropping" })
      assert.equal(200, res.status, res.body)
      local _, sent = up:only()
      assert.is_nil(sent.n)
      assert.is_nil(sent.logprobs)
    end)

    it("answers embeddings with a 400 saying Anthropic has none", function()
      local res = post(gw, "/v1/embeddings", '{"model":"x","input":"hi"}', { ["x-to"] = "anthropic" })
      assert.equal(400, res.status)
      assert.matches("has no embeddings", helpers.json(res).error.message)
      assert.equal(0, #up:requests())
    end)

    it("answers Anthropic's 529 as a 503 in OpenAI's error shape", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_CHAT, { ["x-to"] = "anthropic",
        ["x-fixture"] = "anthropic/error_overloaded.json", ["x-fixture-status"] = "529" })
      assert.equal(503, res.status)
      local e = helpers.json(res).error
      assert.equal("Overloaded", e.message)
      assert.equal("server_error", e.type)
    end)

    it("answers garbage from the provider with a 502 in OpenAI's shape", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_CHAT, { ["x-to"] = "anthropic",
        ["x-fixture"] = "anthropic/garbage.html", ["x-fixture-type"] = "text/html" })
      assert.equal(502, res.status)
      assert.is_table(helpers.json(res).error)
    end)

    it("ends a stream that stops before message_stop with an error event and no clean end", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_STREAM, { ["x-to"] = "anthropic",
        ["x-fixture"] = "anthropic/stream_error.sse" })
      assert.equal(200, res.status)
      local evs = events(res.body)
      assert.truthy(#evs >= 2)
      local last = evs[#evs].json
      assert.is_table(last and last.error, "last event: " .. tostring(evs[#evs].data))
      for _, ev in ipairs(evs) do assert.are_not.equal("[DONE]", ev.data) end
      -- the provider's own error, in OpenAI's shape: its message, and a type for its overload
      assert.equal("Overloaded", last.error.message)
      assert.equal("server_error", last.error.type)
      -- the usage learnt so far is kept
      assert.equal(10, usage_of(gw, res.id).prompt_tokens)
    end)

    it("lists Anthropic's models in OpenAI's shape for the OpenAI SDK", function()
      local res = get(gw, "/v1/models", { ["x-to"] = "anthropic" })
      assert.equal(200, res.status)
      local doc = helpers.json(res)
      assert.equal("list", doc.object)
      assert.equal("claude-3-5-sonnet-20241022", doc.data[1].id)
      local req = up:only()
      assert.equal("/v1/models", req.path)
      assert_keys(req, "x-api-key", "sk-ant-provider")
    end)
  end)

  describe("Anthropic client to an OpenAI target", function()
    it("translates the request and the answer", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_MSG, { ["anthropic-version"] = "2023-06-01",
        ["x-api-key"] = CLIENT_KEY })
      assert.equal(200, res.status, res.body)
      local doc = helpers.json(res)
      assert.equal("message", doc.type)
      assert.equal("The image shows a wooden boardwalk path running through a lush green field.", doc.content[1].text)
      assert.equal("end_turn", doc.stop_reason)
      assert.equal(93, doc.usage.input_tokens)
      assert.equal(1024, doc.usage.cache_read_input_tokens)
      assert.is_string(res.headers["request-id"])
      local req, sent = up:only()
      assert.equal("/v1/chat/completions", req.path)
      assert_keys(req, "authorization", "Bearer sk-openai-provider")
      assert.is_nil(req.headers["x-api-key"])
      assert.equal("gpt-4o-mini", sent.model)
      assert.equal(256, sent.max_completion_tokens)
      assert.same({ role = "system", content = "Be brief." }, sent.messages[1])
      local u = usage_of(gw, res.id)
      assert.equal(1117, u.prompt_tokens)
      assert.equal(12, u.reasoning_tokens)
    end)

    it("streams the answer as Anthropic events", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_STREAM, { ["anthropic-version"] = "2023-06-01" })
      assert.equal(200, res.status)
      assert.is_nil(res.incomplete)
      local evs = events(res.body)
      assert.equal("message_start", evs[1].event)
      assert.equal("message_stop", evs[#evs].event)
      local text = {}
      for _, ev in ipairs(evs) do
        assert.equal(ev.event, ev.json.type)
        if ev.event == "content_block_delta" then text[#text + 1] = ev.json.delta.text end
        if ev.event == "message_delta" then assert.equal(12, ev.json.usage.output_tokens) end
      end
      assert.equal("Hello! How can I help café?", table.concat(text))
      local _, sent = up:only()
      assert.same({ include_usage = true }, sent.stream_options)
      assert.same({ prompt_tokens = 9, completion_tokens = 12, cached_tokens = 0, reasoning_tokens = 0,
                    estimated = false }, usage_of(gw, res.id))
    end)

    it("answers the OpenAI provider's 429 in Anthropic's error shape", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_MSG, { ["x-fixture"] = "openai/error_429.json",
        ["x-fixture-status"] = "429" })
      assert.equal(429, res.status)
      local doc = helpers.json(res)
      assert.equal("error", doc.type)
      assert.equal("rate_limit_error", doc.error.type)
      assert.matches("Rate limit reached", doc.error.message)
    end)

    it("ends a stream with the provider's error, translated, when the provider fails mid-stream", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_STREAM, { ["x-fixture"] = "openai/chat_stream_error.sse" })
      assert.equal(200, res.status)
      local evs = events(res.body)
      local last = evs[#evs]
      assert.equal("error", last.event, "last event: " .. tostring(last.data))
      assert.equal("error", last.json.type)
      assert.equal("api_error", last.json.error.type)
      assert.equal("The server had an error while processing your request.", last.json.error.message)
      for _, ev in ipairs(evs) do assert.are_not.equal("message_stop", ev.event) end
    end)

    it("answers count_tokens with an estimate when the target is not Anthropic", function()
      local res = post(gw, "/v1/messages/count_tokens",
        '{"model":"c","messages":[{"role":"user","content":"twelve chars"}]}')
      assert.equal(200, res.status)
      assert.same({ input_tokens = 3 }, helpers.json(res))
      assert.equal(0, #up:requests())
    end)

    it("lists an OpenAI target's models in Anthropic's shape for the Anthropic SDK", function()
      local res = get(gw, "/v1/models", { ["anthropic-version"] = "2023-06-01" })
      assert.equal(200, res.status)
      local doc = helpers.json(res)
      assert.equal("model", doc.data[1].type)
      assert.equal("gpt-4o-mini", doc.data[1].id)
      assert.is_false(doc.has_more)
    end)
  end)

  describe("Anthropic client to an Anthropic target", function()
    it("sends the body byte for byte but the model, and passes the answer through", function()
      local body = '{"model":"claude-client", "max_tokens":256,"metadata":{},"n":12345678901234567890,' ..
        '"messages":[{"role":"user","content":"Hello there"}]}'
      local res = post(gw, "/v1/messages", body, { ["x-to"] = "anthropic", ["anthropic-version"] = "2023-01-01",
        ["anthropic-beta"] = "some-beta" })
      assert.equal(200, res.status)
      assert.equal(helpers.read_file(helpers.root .. "/spec/fixtures/anthropic/message.json"), res.body)
      local req = up:only()
      assert.equal((body:gsub('"claude%-client"', '"claude-3-5-haiku-latest"')), req.body)
      assert.equal("2023-01-01", req.headers["anthropic-version"])
      assert.equal("some-beta", req.headers["anthropic-beta"])
      assert_keys(req, "x-api-key", "sk-ant-provider")
      assert.equal(3995, usage_of(gw, res.id).prompt_tokens)
    end)

    it("ends a failing stream with the provider's own error event, byte for byte", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_STREAM, { ["x-to"] = "anthropic",
        ["x-fixture"] = "anthropic/stream_error.sse" })
      assert.equal(200, res.status)
      assert.equal(helpers.read_file(helpers.root .. "/spec/fixtures/anthropic/stream_error.sse"), res.body)
    end)

    it("passes the Anthropic SDK's models.retrieve (GET /v1/models/{id}) through", function()
      local res = get(gw, "/v1/models/claude-3-5-haiku-latest", { ["x-to"] = "anthropic", ["anthropic-version"] = "2023-06-01" })
      local req = up:only()
      assert.equal("/v1/models/claude-3-5-haiku-latest", req.path)
      assert_keys(req, "x-api-key", "sk-ant-provider")
      assert.equal("2023-06-01", req.headers["anthropic-version"])
      -- the fake knows no such path: its 404 reaches the client as it came
      assert.equal(404, res.status)
    end)

    it("forwards count_tokens", function()
      local res = post(gw, "/v1/messages/count_tokens", '{"model":"c","messages":[]}', { ["x-to"] = "anthropic" })
      assert.equal(200, res.status)
      assert.same({ input_tokens = 42 }, helpers.json(res))
    end)
  end)

  describe("Gemini target", function()
    it("answers an OpenAI client", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_CHAT, { ["x-to"] = "gemini" })
      assert.equal(200, res.status, res.body)
      local doc = helpers.json(res)
      assert.equal("Hello! How can I help you today?", doc.choices[1].message.content)
      assert.equal(20, doc.usage.completion_tokens_details.reasoning_tokens)
      local req, sent = up:only()
      assert.equal("/v1beta/models/gemini-2.0-flash:generateContent", req.path)
      assert_keys(req, "x-goog-api-key", "g-provider-key")
      assert.is_nil(req.headers.authorization)
      assert.equal("Be brief.", sent.systemInstruction.parts[1].text)
      assert.equal(100, sent.generationConfig.maxOutputTokens)
      assert.truthy(req.body:find('"temperature":0.70000000000000001', 1, true))
    end)

    it("streams to an OpenAI client", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_STREAM, { ["x-to"] = "gemini" })
      assert.equal(200, res.status)
      assert.is_nil(res.incomplete)
      local evs = events(res.body)
      assert.equal("[DONE]", evs[#evs].data)
      for i = 1, #evs - 1 do
        assert.equal("chat.completion.chunk", evs[i].json.object)
        assert.truthy(#evs[i].json.choices > 0, "a usage chunk the client did not ask for")
      end
      assert.equal("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", up:only().path)
      assert.same({ prompt_tokens = 8, completion_tokens = 12, cached_tokens = 0, estimated = false },
        usage_of(gw, res.id))
    end)

    it("streams to an Anthropic client", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_STREAM, { ["x-to"] = "gemini" })
      assert.equal(200, res.status)
      local evs = events(res.body)
      assert.equal("message_start", evs[1].event)
      assert.equal("message_stop", evs[#evs].event)
      local _, sent = up:only()
      assert.equal(256, sent.generationConfig.maxOutputTokens)
    end)

    it("answers an Anthropic client without streaming", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_MSG, { ["x-to"] = "gemini" })
      assert.equal(200, res.status)
      local doc = helpers.json(res)
      assert.equal("message", doc.type)
      assert.equal(29, doc.usage.output_tokens)
    end)

    it("answers Gemini's 429 in the client's shape, with Retry-After", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_MSG, { ["x-to"] = "gemini",
        ["x-fixture"] = "gemini/error_429.json", ["x-fixture-status"] = "429" })
      assert.equal(429, res.status)
      assert.equal("3", res.headers["retry-after"])
      assert.equal("rate_limit_error", helpers.json(res).error.type)
    end)

    it("ends a stream cut before its finish reason with an error event", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_STREAM, { ["x-to"] = "gemini",
        ["x-fixture"] = "gemini/stream_truncated.sse" })
      assert.equal(200, res.status)
      local evs = events(res.body)
      assert.is_table(evs[#evs].json.error)
    end)

    it("embeds, and lists models", function()
      local res = post(gw, "/v1/embeddings", '{"model":"x","input":["a","b"]}', { ["x-to"] = "gemini" })
      assert.equal(200, res.status, res.body)
      assert.truthy(res.body:find("[0.013168523,-0.008711934,-0.046782676,1e-7]", 1, true))
      assert.equal("/v1beta/models/gemini-2.0-flash:batchEmbedContents", up:only().path)
      local m = get(gw, "/v1/models", { ["x-to"] = "gemini" })
      assert.equal("gemini-2.0-flash", helpers.json(m).data[1].id)
    end)
  end)

  describe("Azure target", function()
    it("sends to the deployment with api-key and api-version, the body byte for byte but the model", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_CHAT, { ["x-to"] = "azure", ["api-key"] = CLIENT_KEY })
      assert.equal(200, res.status, res.body)
      assert.equal(helpers.read_file(helpers.root .. "/spec/fixtures/azure/chat.json"), res.body)
      local req = up:only()
      assert.equal("/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21", req.path)
      assert_keys(req, "api-key", "az-provider-key")
      assert.is_nil(req.headers.authorization)
      assert.equal((OPENAI_CHAT:gsub('"client%-model"', '"prod-4o"')), req.body)
    end)

    it("streams, asking for usage and dropping the usage chunk the client did not ask for", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_STREAM, { ["x-to"] = "azure" })
      assert.equal(200, res.status)
      assert.is_nil(res.body:find('"usage":{', 1, true))
      assert.truthy(res.body:find("prompt_filter_results", 1, true))
      assert.matches("data: %[DONE%]\n\n$", res.body)
      local req = up:only()
      assert.equal((OPENAI_STREAM:gsub('"client%-model"', '"prod-4o"'):gsub("}$", ',"stream_options":{"include_usage":true}}')),
        req.body)
      assert.same({ prompt_tokens = 20, completion_tokens = 4, cached_tokens = 0, reasoning_tokens = 0,
                    estimated = false }, usage_of(gw, res.id))
    end)

    it("takes an Anthropic client", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_MSG, { ["x-to"] = "azure" })
      assert.equal(200, res.status)
      assert.equal("Hello from Azure.", helpers.json(res).content[1].text)
    end)
  end)

  describe("OpenAI client to an OpenAI target", function()
    it("streams byte for byte but the usage chunk it did not ask for, whose usage is kept", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_STREAM)
      assert.equal(200, res.status)
      local fixture = helpers.read_file(helpers.root .. "/spec/fixtures/openai/chat_stream.sse")
      local usage_chunk = fixture:match("\n\n(data: {[^\n]*\"choices\":%[%],\"usage\":{[^\n]*\n\n)")
      assert.is_string(usage_chunk)
      assert.equal((fixture:gsub(usage_chunk:gsub("%p", "%%%0"), "")), res.body)
      assert.equal(9, usage_of(gw, res.id).prompt_tokens)
    end)

    it("keeps the usage chunk a client asked for", function()
      local res = post(gw, "/v1/chat/completions",
        '{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}')
      assert.equal(helpers.read_file(helpers.root .. "/spec/fixtures/openai/chat_stream.sse"), res.body)
    end)
  end)

  describe("the mock provider", function()
    it("reports usage on a stream whose client did not ask for it, without showing it", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_STREAM, { ["x-to"] = "mock" })
      assert.equal(200, res.status)
      assert.is_nil(res.body:find('"usage":{', 1, true))
      assert.matches("data: %[DONE%]\n\n$", res.body)
      local u = usage_of(gw, res.id)
      assert.equal(4, u.completion_tokens)
      assert.is_false(u.estimated)
    end)

    it("reads Anthropic-format usage", function()
      local res = post(gw, "/v1/messages", ANTHROPIC_STREAM, { ["x-to"] = "mock" })
      assert.equal(200, res.status)
      local u = usage_of(gw, res.id)
      assert.equal(4, u.completion_tokens)
      assert.is_false(u.estimated)
    end)

    it("estimates when the mock leaves usage out", function()
      local res = post(gw, "/v1/chat/completions", OPENAI_CHAT, { ["x-to"] = "mock", ["x-mock-no-usage"] = "1" })
      assert.equal(200, res.status)
      local u = usage_of(gw, res.id)
      assert.is_true(u.estimated)
      assert.equal(5, u.completion_tokens)   -- "one two three four": 18 characters
    end)
  end)
end)
