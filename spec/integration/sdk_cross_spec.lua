-- The official openai and @anthropic-ai/sdk clients against targets that
-- speak the other format (fake native providers), with failover, keys and a
-- rate limit: what an application sees (spec/sdk/cross.mjs drives them).

local helpers = require "spec.support.helpers"
local cjson = require "cjson.safe"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
workers = 2
access_log = false
providers = {
  anthropic = { type = "anthropic", base_url = "${FAKE}", api_key = "sk-ant-provider" },
  openai    = { type = "openai", base_url = "${FAKE}/v1", api_key = "sk-oa-provider" },
  limited   = { type = "openai", base_url = "${FAKE}/v1", api_key = "sk-oa-provider",
                headers = { ["x-fixture"] = "openai/error_429.json", ["x-fixture-status"] = "429" } },
}
backends = {
  to_anthropic = { provider = "anthropic", model = "claude-3-5-haiku-latest" },
  to_openai = { provider = "openai", model = "gpt-4o" },
  failover = { groups = { { targets = { { provider = "limited", model = "gpt-4o" } } },
                          { targets = { { provider = "openai", model = "gpt-4o-mini" } } } } },
}
consumers = {
  { name = "alice", key = "sk-alice-key-0123456789" },
  { name = "bob", key = "sk-bob-key-0123456789" },
}
plugins = {
  { name = "auth" },
  { name = "rate_limit", rules = { { by = "consumer", requests = 2, window = "1h",
      when = "request.model == 'limited'" } } },
}
routes = {
  { match = { path_prefix = "/v1" }, backend = "to_openai",
    model_map = { ["to-anthropic"] = "to_anthropic", ["to-openai"] = "to_openai", failover = "failover",
                  limited = "to_openai" } },
}
]]

describe("official SDKs across formats", function()
  local gw, out, fake

  lazy_setup(function()
    local sdk = helpers.root .. "/spec/sdk"
    assert(io.open(sdk .. "/node_modules/openai/package.json"), "the SDKs are not installed: scripts/deps.sh --test")
    fake = helpers.start_fake_upstream({ script = "spec/support/fake_providers.lua" })
    gw = helpers.start_gateway(CONFIG, { vars = { FAKE = fake.url } })
    local code, output = helpers.run({ "node", sdk .. "/cross.mjs", tostring(gw.port) }, { timeout = 60 })
    assert(code == 0, "node spec/sdk/cross.mjs failed (exit " .. tostring(code) .. "):\n" .. tostring(output)
      .. "\n--- gateway log:\n" .. gw:log())
    out = assert(cjson.decode(output:match("(%b{})%s*$") or ""), "cross.mjs printed no JSON:\n" .. output)
  end)

  lazy_teardown(function()
    if not gw then return helpers.cleanup() end
    helpers.stop_and_check(gw)
  end)

  it("openai client, Anthropic target: a chat.completion with the provider's text and usage", function()
    assert.equal("chat.completion", out.oa_to_an.object)
    assert.equal("Hi! My name is Claude.", out.oa_to_an.text)
    assert.equal("stop", out.oa_to_an.finish)
    assert.is_number(out.oa_to_an.usage.prompt_tokens)
    assert.is_number(out.oa_to_an.usage.completion_tokens)
    assert.equal("anthropic/claude-3-5-haiku-latest", out.oa_to_an.target)
  end)

  it("openai client, Anthropic target, streamed: text reassembled, usage in the last chunk", function()
    assert.is_string(out.oa_to_an_stream.text)
    assert.truthy(#out.oa_to_an_stream.text > 0)
    assert.equal("stop", out.oa_to_an_stream.finish)
    assert.is_table(out.oa_to_an_stream.usage)
    assert.truthy(out.oa_to_an_stream.usage.completion_tokens > 0)
  end)

  it("anthropic client, OpenAI target: a message, streamed or not", function()
    assert.equal("message", out.an_to_oa.type)
    assert.equal("The image shows a wooden boardwalk path running through a lush green field.", out.an_to_oa.text)
    assert.equal("end_turn", out.an_to_oa.stop)
    assert.is_number(out.an_to_oa.usage.input_tokens)
    assert.is_number(out.an_to_oa.usage.output_tokens)
    assert.truthy(#out.an_to_oa_stream.text > 0)
    assert.equal(out.an_to_oa_stream.text, out.an_to_oa_stream.final)
    assert.equal("end_turn", out.an_to_oa_stream.stop)
    assert.truthy(out.an_to_oa_stream.usage.output_tokens > 0)
  end)

  it("fails over invisibly: the second group's answer, after 2 attempts", function()
    assert.equal("openai/gpt-4o-mini", out.failover.target)
    assert.equal("2", out.failover.attempts)
    assert.is_string(out.failover.text)
  end)

  it("a wrong key is the SDKs' AuthenticationError in each format", function()
    assert.equal(401, out.oa_bad_key.status)
    assert.equal("AuthenticationError", out.oa_bad_key.name)
    assert.equal(401, out.an_bad_key.status)
    assert.equal("AuthenticationError", out.an_bad_key.name)
    assert.equal("error", out.an_bad_key.body.type)
  end)

  it("the request past the limit is the SDKs' RateLimitError with Retry-After and x-ratelimit headers", function()
    assert.same({ true, true }, out.bob_ok)
    assert.equal(429, out.bob_limited.status)
    assert.equal("RateLimitError", out.bob_limited.name)
    assert.truthy(tonumber(out.bob_limited.retry_after) >= 1)
    assert.equal("2", out.bob_limited.limit)
    assert.equal("0", out.bob_limited.remaining)
    assert.equal(429, out.bob_limited_anthropic.status)
    assert.equal("RateLimitError", out.bob_limited_anthropic.name)
    assert.equal("rate_limit_error", out.bob_limited_anthropic.body.error.type)
  end)
end)
