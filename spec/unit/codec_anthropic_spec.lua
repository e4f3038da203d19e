-- moongate.codec.anthropic: requests both ways (what is translated, what is
-- refused with the field named, what drop_unsupported drops), usage, errors.
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local an = require("moongate.codec.anthropic")
local cjson = require("cjson.safe")
local function dec(s) return cjson.decode(s) end

-- OpenAI request text -> Anthropic request text | nil, refusal
local function from_openai(text, opts)
  opts = opts or {}
  local policy = common.policy("anthropic", opts.drop)
  local doc = assert(J.decode(text))
  local out, refusal = common.run(an.request_from_hub, doc, { policy = policy, model = opts.model,
    max_tokens = opts.max_tokens })
  if not out then return nil, refusal end
  return J.encode(out), policy
end

local function to_openai(text, opts)
  opts = opts or {}
  local policy = common.policy(opts.type or "openai", opts.drop)
  local doc = assert(J.decode(text))
  local o = { policy = policy, model = opts.model, max_tokens_field = opts.field, top_k = opts.top_k,
    stream_usage = opts.stream_usage }
  local out, refusal = common.run(an.request_to_hub, doc, o)
  if not out then return nil, refusal end
  return J.encode(out), policy
end

describe("codec.anthropic requests from OpenAI chat", function()
  it("moves system prompts out, keeps turns, and defaults max_tokens", function()
    local out = from_openai([[{"model":"gpt-4o","messages":[
      {"role":"system","content":"Be brief."},
      {"role":"user","content":"Hi"},
      {"role":"assistant","content":"Hello!"},
      {"role":"user","content":[{"type":"text","text":"Again"}]}]}]], { model = "claude-3-5-haiku-latest", max_tokens = 4096 })
    assert.equal('{"model":"claude-3-5-haiku-latest","max_tokens":4096,"system":"Be brief.","messages":[' ..
      '{"role":"user","content":[{"type":"text","text":"Hi"}]},' ..
      '{"role":"assistant","content":[{"type":"text","text":"Hello!"}]},' ..
      '{"role":"user","content":[{"type":"text","text":"Again"}]}]}', out)
  end)

  it("keeps the client's max_tokens, temperature and top_p digit for digit", function()
    local out = from_openai('{"model":"m","max_completion_tokens":123,"temperature":0.70000000000000001,' ..
      '"top_p":0.9999999999999999999,"stop":["\\n\\nHuman:"],"messages":[{"role":"user","content":"x"}]}')
    local doc = cjson.decode(out)
    assert.equal(123, doc.max_tokens)
    assert.truthy(out:find('"temperature":0.70000000000000001', 1, true))
    assert.truthy(out:find('"top_p":0.9999999999999999999', 1, true))
    assert.same({ "\n\nHuman:" }, doc.stop_sequences)
  end)

  it("turns a stop string into stop_sequences and user into metadata.user_id", function()
    local doc = dec(from_openai('{"model":"m","stop":"END","user":"u-1","messages":[{"role":"user","content":"x"}]}'))
    assert.same({ "END" }, doc.stop_sequences)
    assert.equal("u-1", doc.metadata.user_id)
  end)

  it("turns image URLs and data: URLs into image blocks", function()
    local doc = dec(from_openai([[{"model":"m","messages":[{"role":"user","content":[
      {"type":"text","text":"What is this?"},
      {"type":"image_url","image_url":{"url":"https://example.com/cat.png","detail":"high"}},
      {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}]]))
    local c = doc.messages[1].content
    assert.same({ type = "url", url = "https://example.com/cat.png" }, c[2].source)
    assert.same({ type = "base64", media_type = "image/png", data = "iVBORw0KGgo=" }, c[3].source)
  end)

  it("translates tools, tool calls and tool results, merging tool results into one user turn", function()
    local out = from_openai([[{"model":"m","messages":[
      {"role":"user","content":"Weather in Paris and Rome?"},
      {"role":"assistant","content":null,"tool_calls":[
        {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"n\":12345678901234567890}"}},
        {"id":"call_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"18C"},
      {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"21C"}]}],
      "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather now",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
        {"type":"function","function":{"name":"noargs"}}],
      "tool_choice":"required","parallel_tool_calls":false}]])
    assert.truthy(out:find('"n":12345678901234567890', 1, true))
    local doc = cjson.decode(out)
    assert.equal(3, #doc.messages)
    local a = doc.messages[2]
    assert.equal("assistant", a.role)
    assert.same({ type = "tool_use", id = "call_1", name = "get_weather",
                  input = { city = "Paris", n = 12345678901234567890 } }, a.content[1])
    local u = doc.messages[3]
    assert.equal("user", u.role)
    assert.same({ type = "tool_result", tool_use_id = "call_1", content = "18C" }, u.content[1])
    assert.same({ type = "tool_result", tool_use_id = "call_2", content = "21C" }, u.content[2])
    assert.equal("get_weather", doc.tools[1].name)
    assert.equal("Weather now", doc.tools[1].description)
    assert.same({ "city" }, doc.tools[1].input_schema.required)
    -- a tool without parameters still gets an object schema, its properties an object
    assert.truthy(out:find('"input_schema":{"type":"object","properties":{}}', 1, true))
    assert.same({ type = "any", disable_parallel_tool_use = true }, doc.tool_choice)
  end)

  it("names a tool choice of one function", function()
    local doc = dec(from_openai([[{"model":"m","messages":[{"role":"user","content":"x"}],
      "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"f"}}}]]))
    assert.same({ type = "tool", name = "f" }, doc.tool_choice)
  end)

  it("accepts the fields that need no honouring (n = 1, logprobs false, zero penalties, stream_options)", function()
    local out = from_openai([[{"model":"m","n":1,"logprobs":false,"presence_penalty":0,"frequency_penalty":0,
      "logit_bias":{},"stream":true,"stream_options":{"include_usage":true},"store":false,
      "response_format":{"type":"text"},"messages":[{"role":"user","content":"x"}]}]])
    local doc = cjson.decode(out)
    assert.is_true(doc.stream)
    assert.is_nil(doc.n)
    assert.is_nil(doc.stream_options)
  end)

  local REFUSED = {
    { '"n":2', "n", "one choice" },
    { '"logprobs":true', "logprobs", "log probabilities" },
    { '"top_logprobs":3', "top_logprobs", "log probabilities" },
    { '"presence_penalty":0.5', "presence_penalty", "presence penalty" },
    { '"logit_bias":{"50256":-100}', "logit_bias", "logit bias" },
    { '"temperature":1.5', "temperature", "0 to 1" },
    { '"response_format":{"type":"json_object"}', "response_format", "no JSON response format" },
    { '"seed":42', "seed", "anthropic" },
    { '"audio":{"voice":"alloy"}', "audio", "anthropic" },
  }
  for _, r in ipairs(REFUSED) do
    it("refuses " .. r[2] .. " with a 400 naming it, or drops it when asked", function()
      local body = '{"model":"m",' .. r[1] .. ',"messages":[{"role":"user","content":"x"}]}'
      local out, refusal = from_openai(body)
      assert.is_nil(out)
      assert.equal(400, refusal.status)
      assert.equal(r[2], refusal.field)
      assert.matches("^" .. r[2] .. ": ", refusal.message)
      assert.matches(r[3], refusal.message, 1, true)
      local dropped, policy = from_openai(body, { drop = true })
      assert.is_string(dropped)
      assert.is_nil(cjson.decode(dropped)[r[2]])
      assert.same({ r[2] }, policy.dropped)
    end)
  end

  it("refuses a content part it cannot send", function()
    local _, refusal = from_openai([[{"model":"m","messages":[{"role":"user","content":[
      {"type":"input_audio","input_audio":{"data":"AAA","format":"wav"}}]}]}]])
    assert.equal("messages[0].content[0]", refusal.field)
  end)

  it("answers wrong input with a 400, drop_unsupported or not", function()
    for _, body in ipairs({
      '{"model":"m"}',
      '{"model":"m","messages":{}}',
      '{"model":"m","messages":[{"role":"wizard","content":"x"}]}',
      '{"model":"m","messages":[{"role":"tool","content":"x"}]}',
      '{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{oops"}}]}]}',
      '{"model":"m","max_tokens":"many","messages":[]}',
      '{"model":"m","messages":[{"role":"user","content":42}]}',
    }) do
      local out, refusal = from_openai(body, { drop = true })
      assert.is_nil(out, body)
      assert.equal(400, refusal.status)
      assert.equal("invalid_request", refusal.code)
    end
  end)
end)

describe("codec.anthropic requests to OpenAI chat", function()
  it("turns system, blocks, images, tool use and tool results into OpenAI messages", function()
    local out = to_openai([[{"model":"claude","max_tokens":1024,"system":[{"type":"text","text":"Be brief.",
      "cache_control":{"type":"ephemeral"}}],"messages":[
      {"role":"user","content":[{"type":"text","text":"Look"},
        {"type":"image","source":{"type":"base64","media_type":"image/jpeg","data":"/9j/4AAQ"}}]},
      {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"x"},
        {"type":"text","text":"Checking."},
        {"type":"tool_use","id":"toolu_1","name":"lookup","input":{"q":"cat","n":12345678901234567890,"tags":[]}}]},
      {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"a cat"},
        {"type":"text","text":"Thanks"}]}],
      "stop_sequences":["END"],"temperature":0.5,"metadata":{"user_id":"u-9"},
      "tools":[{"name":"lookup","description":"Look up","input_schema":{"type":"object","properties":{}}}],
      "tool_choice":{"type":"any","disable_parallel_tool_use":true}}]], { model = "gpt-4o-mini",
      field = "max_completion_tokens" })
    local doc = cjson.decode(out)
    assert.equal("gpt-4o-mini", doc.model)
    assert.equal(1024, doc.max_completion_tokens)
    assert.same({ role = "system", content = "Be brief." }, doc.messages[1])
    assert.equal("data:image/jpeg;base64,/9j/4AAQ", doc.messages[2].content[2].image_url.url)
    local a = doc.messages[3]
    assert.equal("Checking.", a.content)
    assert.equal("toolu_1", a.tool_calls[1].id)
    assert.equal('{"q":"cat","n":12345678901234567890,"tags":[]}', a.tool_calls[1]["function"].arguments)
    assert.same({ role = "tool", tool_call_id = "toolu_1", content = "a cat" }, doc.messages[4])
    assert.same({ role = "user", content = "Thanks" }, doc.messages[5])
    assert.same({ "END" }, doc.stop)
    assert.equal("u-9", doc.user)
    assert.equal("required", doc.tool_choice)
    assert.is_false(doc.parallel_tool_calls)
    assert.equal("lookup", doc.tools[1]["function"].name)
    assert.truthy(out:find('"parameters":{"type":"object","properties":{}}', 1, true))
  end)

  it("asks for stream usage unless the provider's quirk says not to", function()
    local body = '{"model":"c","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"x"}]}'
    assert.same({ include_usage = true }, dec(to_openai(body)).stream_options)
    assert.is_nil(dec(to_openai(body, { stream_usage = false })).stream_options)
  end)

  it("refuses top_k, thinking and server tools unless the target takes them", function()
    local base = '"model":"c","max_tokens":10,"messages":[{"role":"user","content":"x"}]'
    local _, r1 = to_openai("{" .. base .. ',"top_k":5}')
    assert.equal("top_k", r1.field)
    assert.equal(5, dec(to_openai("{" .. base .. ',"top_k":5}', { top_k = true })).top_k)
    local _, r2 = to_openai("{" .. base .. ',"thinking":{"type":"enabled","budget_tokens":2048}}')
    assert.equal("thinking", r2.field)
    local _, r3 = to_openai("{" .. base .. ',"tools":[{"type":"web_search_20250305","name":"web_search"}]}')
    assert.equal("tools[0].type", r3.field)
    local out, policy = to_openai("{" .. base .. ',"top_k":5,"thinking":{"type":"enabled"}}', { drop = true })
    assert.is_nil(cjson.decode(out).top_k)
    assert.same({ "thinking", "top_k" }, policy.dropped)
  end)

  it("needs max_tokens, as the Messages API does", function()
    local _, r = to_openai('{"model":"c","messages":[{"role":"user","content":"x"}]}', { drop = true })
    assert.equal("max_tokens", r.field)
  end)
end)

describe("codec.anthropic usage and errors", function()
  it("counts cache reads and writes in the prompt", function()
    assert.same({ prompt_tokens = 130, completion_tokens = 5, cached_tokens = 100 },
      an.usage(J.decode('{"input_tokens":10,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"output_tokens":5}')))
    assert.same({ completion_tokens = 7 }, an.usage(J.decode('{"output_tokens":7}')))
    assert.is_nil(an.usage(J.decode('"n/a"')))
    assert.is_nil(an.usage(J.decode('{"input_tokens":-1}')))
  end)

  it("reads Anthropic error bodies", function()
    local info = an.error_info('{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert.equal("Overloaded", info.message)
    assert.equal("overloaded_error", info.type)
    assert.is_nil(an.error_info("<html>"))
  end)
end)
