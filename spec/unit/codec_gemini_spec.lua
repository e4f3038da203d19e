-- moongate.codec.gemini: OpenAI chat (and embeddings) requests to Gemini,
-- Gemini usage and errors.
local J = require("moongate.codec.json")
local common = require("moongate.codec.common")
local ge = require("moongate.codec.gemini")
local cjson = require("cjson.safe")

local function to_gemini(text, drop)
  local policy = common.policy("gemini", drop)
  local out, refusal = common.run(ge.request_from_hub, assert(J.decode(text)), { policy = policy })
  if not out then return nil, refusal end
  return J.encode(out), policy
end
local function dec(s) return cjson.decode(s) end

describe("codec.gemini requests from OpenAI chat", function()
  it("moves system prompts to systemInstruction and assistant turns to the model role", function()
    local doc = dec(to_gemini([[{"model":"gemini-2.0-flash","messages":[
      {"role":"system","content":"Be brief."},{"role":"developer","content":"Really."},
      {"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},
      {"role":"user","content":"Again"},{"role":"user","content":"And again"}]}]]))
    assert.same({ parts = { { text = "Be brief." }, { text = "Really." } } }, doc.systemInstruction)
    assert.equal(3, #doc.contents)
    assert.same({ role = "user", parts = { { text = "Hi" } } }, doc.contents[1])
    assert.same({ role = "model", parts = { { text = "Hello!" } } }, doc.contents[2])
    assert.same({ { text = "Again" }, { text = "And again" } }, doc.contents[3].parts)
    assert.is_nil(doc.model)
  end)

  it("sends images inline (data: URLs) or by URI", function()
    local doc = dec(to_gemini([[{"model":"m","messages":[{"role":"user","content":[
      {"type":"image_url","image_url":{"url":"data:image/webp;base64,UklGR"}},
      {"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}]]))
    local p = doc.contents[1].parts
    assert.same({ inlineData = { mimeType = "image/webp", data = "UklGR" } }, p[1])
    assert.same({ fileData = { mimeType = "image/png", fileUri = "https://example.com/a.png" } }, p[2])
  end)

  it("translates tool calls and tool results, finding each result's function name", function()
    local out = to_gemini([[{"model":"m","messages":[
      {"role":"user","content":"Weather?"},
      {"role":"assistant","tool_calls":[{"id":"call_9","type":"function",
        "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"n\":12345678901234567890,\"l\":[]}"}}]},
      {"role":"tool","tool_call_id":"call_9","content":"{\"temp\":18.50}"},
      {"role":"tool","tool_call_id":"call_unknown","content":"plain text"}],
      "tools":[{"type":"function","function":{"name":"get_weather","description":"d",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"additionalProperties":false}}}],
      "tool_choice":{"type":"function","function":{"name":"get_weather"}}}]])
    assert.truthy(out:find('"args":{"city":"Paris","n":12345678901234567890,"l":[]}', 1, true))
    assert.truthy(out:find('"response":{"temp":18.50}', 1, true))
    local doc = dec(out)
    assert.equal("model", doc.contents[2].role)
    assert.equal("get_weather", doc.contents[2].parts[1].functionCall.name)
    assert.equal("user", doc.contents[3].role)
    assert.equal("get_weather", doc.contents[3].parts[1].functionResponse.name)
    assert.same({ content = "plain text" }, doc.contents[3].parts[2].functionResponse.response)
    assert.equal("get_weather", doc.tools[1].functionDeclarations[1].name)
    assert.is_false(doc.tools[1].functionDeclarations[1].parametersJsonSchema.additionalProperties)
    assert.same({ functionCallingConfig = { mode = "ANY", allowedFunctionNames = { "get_weather" } } }, doc.toolConfig)
  end)

  it("puts sampling options in generationConfig, digits kept", function()
    local out = to_gemini([[{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":100,
      "temperature":0.70000000000000001,"top_p":0.9,"top_k":40,"stop":"END","n":2,"seed":12345678901234567890,
      "presence_penalty":0.1,"frequency_penalty":0.2,"response_format":{"type":"json_schema",
      "json_schema":{"name":"r","schema":{"type":"object","properties":{"a":{"type":"number"}},"required":[]}}}}]])
    assert.truthy(out:find('"temperature":0.70000000000000001', 1, true))
    assert.truthy(out:find('"seed":12345678901234567890', 1, true))
    assert.truthy(out:find('"required":[]', 1, true))
    local g = dec(out).generationConfig
    assert.equal(100, g.maxOutputTokens)
    assert.equal(40, g.topK)
    assert.equal(2, g.candidateCount)
    assert.same({ "END" }, g.stopSequences)
    assert.equal("application/json", g.responseMimeType)
    assert.equal("object", g.responseJsonSchema.type)
  end)

  it("refuses logprobs and unknown fields, or drops them when asked", function()
    local body = '{"model":"m","logprobs":true,"messages":[{"role":"user","content":"x"}]}'
    local _, r = to_gemini(body)
    assert.equal("logprobs", r.field)
    local out, policy = to_gemini(body, true)
    assert.is_nil(dec(out).logprobs)
    assert.same({ "logprobs" }, policy.dropped)
    local _, r2 = to_gemini('{"model":"m","prediction":{"type":"content"},"messages":[]}')
    assert.equal("prediction", r2.field)
  end)

  it("answers wrong input with a 400", function()
    local _, r = to_gemini('{"model":"m","messages":[{"role":"tool","content":"x"}]}', true)
    assert.equal("invalid_request", r.code)
  end)
end)

describe("codec.gemini embeddings", function()
  it("batches the inputs for batchEmbedContents", function()
    local policy = common.policy("gemini")
    local out = J.encode(ge.embeddings_from_hub(J.decode('{"model":"e","input":["a","b"],"dimensions":256}'),
      { policy = policy, model = "text-embedding-004" }))
    assert.equal('{"requests":[{"model":"models/text-embedding-004","content":{"parts":[{"text":"a"}]},' ..
      '"outputDimensionality":256},{"model":"models/text-embedding-004","content":{"parts":[{"text":"b"}]},' ..
      '"outputDimensionality":256}]}', out)
  end)

  it("refuses token ids", function()
    local _, r = common.run(ge.embeddings_from_hub, J.decode('{"model":"e","input":[[1,2,3]]}'),
      { policy = common.policy("gemini"), model = "e" })
    assert.equal("input[0]", r.field)
  end)
end)

describe("codec.gemini usage and errors", function()
  it("counts thoughts as completion and reasoning, tool prompts as prompt", function()
    assert.same({ prompt_tokens = 15, completion_tokens = 30, cached_tokens = 4, reasoning_tokens = 20 },
      ge.usage(J.decode('{"promptTokenCount":10,"toolUsePromptTokenCount":5,"candidatesTokenCount":10,' ..
        '"thoughtsTokenCount":20,"cachedContentTokenCount":4,"totalTokenCount":45}')))
  end)

  it("leaves the completion unknown while a stream has reported only its prompt", function()
    local u = ge.usage(J.decode('{"promptTokenCount":8,"totalTokenCount":8}'))
    assert.equal(8, u.prompt_tokens)
    assert.is_nil(u.completion_tokens)
  end)

  it("reads Gemini error bodies, also as a one-element array", function()
    assert.equal("RESOURCE_EXHAUSTED",
      ge.error_info('{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}').code)
    assert.equal("quota", ge.error_info('[{"error":{"code":429,"message":"quota"}}]').message)
    assert.is_nil(ge.error_info("Not Found"))
  end)
end)
