-- moongate.codec.openai (the hub) and moongate.codec.usage: usage shapes,
-- the stream_options splice, errors, estimates.
local J = require("moongate.codec.json")
local oa = require("moongate.codec.openai")
local usage = require("moongate.codec.usage")

describe("codec.openai stream usage splice", function()
  it("appends stream_options, keeping every other byte", function()
    local body = '{ "model" : "m", "stream":true, "n": 12345678901234567890, "stop": [] }'
    assert.equal('{ "model" : "m", "stream":true, "n": 12345678901234567890, "stop": [] ,' ..
      '"stream_options":{"include_usage":true}}', oa.with_stream_usage(body))
    assert.equal('{"stream_options":{"include_usage":true}}', oa.with_stream_usage("{}"))
    assert.equal('{"a":1,"stream_options":{"include_usage":true}}\n', oa.with_stream_usage('{"a":1}\n'))
  end)

  it("rewrites stream_options that does not ask, keeping its other members", function()
    assert.equal('{"stream":true,"stream_options":{"include_usage":true,"x":1}}',
      oa.with_stream_usage('{"stream":true,"stream_options":{"include_usage":false,"x":1}}'))
    assert.equal('{"stream_options":{"include_usage":true}}', oa.with_stream_usage('{"stream_options":null}'))
  end)

  it("tells whether the client asked", function()
    assert.is_true(oa.wants_stream_usage('{"stream_options":{"include_usage":true}}'))
    assert.is_false(oa.wants_stream_usage('{"stream_options":{"include_usage":false}}'))
    assert.is_false(oa.wants_stream_usage('{"stream":true}'))
    assert.is_false(oa.wants_stream_usage('{"x":{"stream_options":{"include_usage":true}}}'))
  end)
end)

describe("codec.openai usage", function()
  it("normalises chat usage with its details", function()
    assert.same({ prompt_tokens = 10, completion_tokens = 5, cached_tokens = 3, reasoning_tokens = 2 },
      oa.usage(J.decode('{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,' ..
        '"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":2}}')))
  end)

  it("reads embeddings usage as no completion", function()
    assert.same({ prompt_tokens = 8, completion_tokens = 0 },
      oa.usage(J.decode('{"prompt_tokens":8,"total_tokens":8}')))
  end)

  it("ignores usage that is not counts", function()
    assert.is_nil(oa.usage(J.decode('null')))
    assert.is_nil(oa.usage(J.decode('"lots"')))
    assert.is_nil(oa.usage(J.decode('{"prompt_tokens":"x","completion_tokens":-1}')))
    assert.same({ completion_tokens = 4 }, oa.usage(J.decode('{"prompt_tokens":1.5,"completion_tokens":4}')))
  end)
end)

describe("codec.openai errors", function()
  it("reads OpenAI error bodies and the shapes compatible servers send", function()
    assert.same({ message = "m", type = "t", code = "c" }, oa.error_info('{"error":{"message":"m","type":"t","code":"c"}}'))
    assert.equal("plain", oa.error_info('{"error":"plain"}').message)
    assert.equal("vllm says", oa.error_info('{"object":"error","message":"vllm says","type":"BadRequestError","code":400}').message)
    assert.equal("400", oa.error_info('{"object":"error","message":"x","code":400}').code)
    assert.is_nil(oa.error_info("Internal Server Error"))
  end)
end)

describe("codec.usage", function()
  it("estimates ~4 characters per token from the request's text", function()
    assert.equal(3, usage.prompt_tokens({ messages = { { role = "user", content = "123456789" } } }))
    assert.equal(1, usage.prompt_tokens({}))
    assert.equal(2, usage.prompt_tokens({ system = "abcd", messages = { { role = "user",
      content = { { type = "text", text = "abcd" }, { type = "image", source = { data = string.rep("A", 9999) } } } } } }))
  end)

  it("counts answer text in JSON without decoding it", function()
    -- an escape counts as the two characters it is written with: close enough for an estimate
    assert.equal(10, usage.scan_chars('{"delta":{"content":"café\\"x"},"text":"abc","id":"ignored"}'))
  end)

  it("merges what the provider reports and estimates the rest", function()
    local ctx = {}
    local t = usage.tracker(ctx, { messages = { { content = "12345678" } } })
    t:output(10)
    t:report({ prompt_tokens = 20 })
    assert.same({ prompt_tokens = 20, completion_tokens = 3, cached_tokens = 0, estimated = true }, t:publish())
    t:report({ completion_tokens = 4, cached_tokens = 5 })
    t:publish()
    assert.same({ prompt_tokens = 20, completion_tokens = 4, cached_tokens = 5, estimated = false }, ctx.usage)
  end)
end)
