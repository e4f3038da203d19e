-- The official clients, as applications use them: the `openai` and
-- `@anthropic-ai/sdk` npm packages (pinned in spec/sdk/package.json, installed
-- by `scripts/deps.sh --test` or `npm ci --prefix spec/sdk`) drive a gateway
-- whose /v1 routes go to the in-process mock provider. spec/sdk/smoke.mjs runs
-- every call and prints what the clients saw as one JSON object; the tests
-- below check it as a user of each SDK would.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

local TEXT = "Hello from the mock"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin = { listen = "127.0.0.1:${ADMIN_PORT}" }
providers = { mock = { type = "mock", text = "]] .. TEXT .. [[", chunks = 4 } }
backends = { main = { provider = "mock", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
]]

local INSTALL_HINT = "run `npm ci --prefix spec/sdk` (scripts/deps.sh --test does it)"

local function is_count(n)
  return type(n) == "number" and n > 0 and n == math.floor(n)
end

local function assert_openai_usage(u)
  assert.is_table(u, "no usage")
  assert.is_true(is_count(u.prompt_tokens), "prompt_tokens: " .. tostring(u.prompt_tokens))
  assert.is_true(is_count(u.completion_tokens), "completion_tokens: " .. tostring(u.completion_tokens))
  assert.equal(u.prompt_tokens + u.completion_tokens, u.total_tokens)
end

local function assert_anthropic_usage(u)
  assert.is_table(u, "no usage")
  assert.is_true(is_count(u.input_tokens), "input_tokens: " .. tostring(u.input_tokens))
  assert.is_true(is_count(u.output_tokens), "output_tokens: " .. tostring(u.output_tokens))
end

local function assert_request_id(id)
  assert.is_string(id, "no x-request-id")
  assert.matches("^%x+$", id)
  assert.equal(32, #id)
end

describe("official SDKs", function()
  local gw, out

  lazy_setup(function()
    local sdk = helpers.root .. "/spec/sdk"
    for _, pkg in ipairs({ "openai", "@anthropic-ai/sdk" }) do
      local f = io.open(sdk .. "/node_modules/" .. pkg .. "/package.json")
      assert(f, "the SDK " .. pkg .. " is not installed in spec/sdk/node_modules: " .. INSTALL_HINT)
      f:close()
    end
    gw = helpers.start_gateway(CONFIG)
    local code, output = helpers.run({ "node", sdk .. "/smoke.mjs", tostring(gw.port) }, { timeout = 60 })
    assert(code == 0, "node spec/sdk/smoke.mjs failed (exit " .. tostring(code) .. "; is node on the PATH? "
           .. INSTALL_HINT .. "):\n" .. tostring(output) .. "\n--- gateway log:\n" .. gw:log())
    local line = output:match("(%b{})%s*$")
    out = assert(cjson.decode(line or ""), "smoke.mjs printed no JSON:\n" .. output)
  end)

  lazy_teardown(function()
    if not gw then return helpers.cleanup() end
    helpers.stop_and_check(gw)
  end)

  it("ran the pinned SDK versions", function()
    assert.is_string(out.sdk.openai)
    assert.is_string(out.sdk.anthropic)
  end)

  it("openai: chat completion with usage, request id and target headers", function()
    assert.equal(TEXT, out.chat.text)
    assert.equal("stop", out.chat.finish_reason)
    assert.equal("gpt-4o", out.chat.model)
    assert_openai_usage(out.chat.usage)
    assert_request_id(out.chat.request_id)
    assert.equal(out.chat.request_id, out.chat.sdk_request_id)   -- the SDK's _request_id
    assert.equal("mock", out.chat.target)
  end)

  it("openai: the client's own x-request-id comes back", function()
    assert.equal("client-chosen-id-1", out.chat_own_id)
  end)

  it("openai: streamed chat completion reassembles the text and reports usage", function()
    assert.equal(TEXT, out.chat_stream.text)
    assert.equal("stop", out.chat_stream.finish_reason)
    assert.is_true(out.chat_stream.chunks >= 4)
    assert_openai_usage(out.chat_stream.usage)
    assert_request_id(out.chat_stream.request_id)
  end)

  it("openai: embeddings (base64, decoded by the SDK) and the model list", function()
    assert.equal(2, out.embeddings.count)
    assert.is_true(is_count(out.embeddings.dims))
    assert.is_true(out.embeddings.numeric)
    assert.is_true(is_count(out.embeddings.usage.prompt_tokens))
    local seen = {}
    for _, id in ipairs(out.models) do seen[id] = true end
    assert.is_true(seen["gpt-4o"], "gpt-4o not in " .. table.concat(out.models, ", "))
  end)

  it("openai: a provider's 429 reaches the client as the SDK's RateLimitError", function()
    for _, e in ipairs({ out.openai_error, out.openai_stream_error }) do
      assert.is_true(e.raised)
      assert.is_true(e.is_api_error)
      assert.equal("RateLimitError", e.name)
      assert.equal(429, e.status)
      assert.equal("rate_limit_exceeded", e.body.type)
      assert.equal("rate_limit_exceeded", e.body.code)
      assert.equal("1", e.retry_after)
      assert_request_id(e.request_id)
    end
  end)

  it("anthropic: message and streamed message", function()
    assert.equal(TEXT, out.message.text)
    assert.equal("end_turn", out.message.stop_reason)
    assert_anthropic_usage(out.message.usage)
    assert_request_id(out.message.request_id)
    -- the Anthropic SDK takes its request id from request-id: the same id
    assert.equal(out.message.request_id, out.message.sdk_request_id)
    assert.equal(TEXT, out.message_stream.text)
    assert.equal(TEXT, out.message_stream.final_text)
    assert.equal("end_turn", out.message_stream.stop_reason)
    assert_anthropic_usage(out.message_stream.usage)
  end)

  it("anthropic: an overloaded provider reaches the client as a 529 in Anthropic's shape", function()
    local e = out.anthropic_error
    assert.is_true(e.raised)
    assert.is_true(e.is_api_error)
    assert.equal(529, e.status)
    assert.equal("error", e.body.type)
    assert.equal("overloaded_error", e.body.error.type)
    assert_request_id(e.request_id)
  end)

  it("anthropic: count_tokens and the model list in Anthropic's format", function()
    assert.is_true(is_count(out.count_tokens))
    local seen = {}
    for _, m in ipairs(out.anthropic_models) do
      assert.equal("model", m.type)
      seen[m.id] = true
    end
    assert.is_true(seen["gpt-4o"])
  end)
end)
