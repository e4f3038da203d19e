-- The official clients, as applications use them: the `openai` and
-- `@anthropic-ai/sdk` npm packages (pinned in spec/sdk/package.json) drive a
-- gateway whose /v1 routes go to the in-process mock provider. spec/sdk/smoke.mjs
-- runs every call and prints what the clients saw as one JSON object.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

local TEXT = "Hello from the mock, in four pieces"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin = { listen = "127.0.0.1:${ADMIN_PORT}" }
providers = { mock = { type = "mock", text = "]] .. TEXT .. [[", chunks = 4 } }
backends = { main = { provider = "mock", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
]]

local function is_count(n)
  return type(n) == "number" and n > 0 and n == math.floor(n)
end

describe("official SDKs", function()
  local gw, out

  lazy_setup(function()
    local sdk = helpers.root .. "/spec/sdk"
    local f = io.open(sdk .. "/node_modules/openai/package.json")
    assert(f, "the SDKs are not installed: run `npm ci --prefix spec/sdk` (scripts/deps.sh --test does)")
    f:close()
    gw = helpers.start_gateway(CONFIG)
    local code, output = helpers.run({ "node", sdk .. "/smoke.mjs", tostring(gw.port) }, { timeout = 60 })
    assert(code == 0, "smoke.mjs failed (" .. tostring(code) .. "):\n" .. tostring(output) .. "\n" .. gw:log())
    local line = output:match("(%b{})%s*$")
    out = assert(cjson.decode(line or ""), "smoke.mjs printed no JSON:\n" .. output)
  end)

  lazy_teardown(function()
    local code, err = gw:stop()
    local log = gw:log()
    helpers.cleanup()
    assert(code == 0, "gateway exit code on SIGTERM: " .. tostring(code) .. " " .. tostring(err) .. "\n" .. log)
  end)

  it("openai: chat completion with usage, request id and target headers", function()
    assert.equal(TEXT, out.chat.text)
    assert.equal("gpt-4o", out.chat.model)
    local u = out.chat.usage
    assert.is_true(is_count(u.prompt_tokens) and is_count(u.completion_tokens))
    assert.equal(u.prompt_tokens + u.completion_tokens, u.total_tokens)
    assert.matches("^%x+$", out.chat.request_id)
    assert.equal(32, #out.chat.request_id)
    assert.equal("mock", out.chat.target)
  end)

  it("openai: streamed chat completion reassembles the text and reports usage", function()
    assert.equal(TEXT, out.chat_stream.text)
    assert.is_true(out.chat_stream.chunks >= 4)
    local u = out.chat_stream.usage
    assert.is_true(is_count(u.prompt_tokens) and is_count(u.completion_tokens))
    assert.equal(u.prompt_tokens + u.completion_tokens, u.total_tokens)
  end)

  it("openai: embeddings and the model list", function()
    assert.equal(2, out.embeddings.count)
    assert.is_true(is_count(out.embeddings.dims))
    assert.is_true(is_count(out.embeddings.usage.prompt_tokens))
    local seen = {}
    for _, id in ipairs(out.models) do seen[id] = true end
    assert.is_true(seen["gpt-4o"])
  end)

  it("openai: a provider's 429 reaches the client as the SDK's RateLimitError", function()
    local e = out.openai_error
    assert.is_true(e.raised)
    assert.equal(429, e.status)
    assert.equal("RateLimitError", e.name)
    assert.equal("rate_limit_exceeded", e.body.type)
  end)

  it("anthropic: message and streamed message", function()
    assert.equal(TEXT, out.message.text)
    assert.equal("end_turn", out.message.stop_reason)
    assert.is_true(is_count(out.message.usage.input_tokens) and is_count(out.message.usage.output_tokens))
    assert.equal(TEXT, out.message_stream.text)
    assert.equal(TEXT, out.message_stream.final_text)
    assert.is_true(is_count(out.message_stream.usage.output_tokens))
  end)

  it("anthropic: an overloaded provider reaches the client as a 529 in Anthropic's shape", function()
    local e = out.anthropic_error
    assert.is_true(e.raised)
    assert.equal(529, e.status)
    assert.equal("error", e.body.type)
    assert.equal("overloaded_error", e.body.error.type)
  end)

  it("anthropic: count_tokens", function()
    assert.is_true(is_count(out.count_tokens))
  end)
end)
