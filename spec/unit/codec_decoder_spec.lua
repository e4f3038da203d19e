-- The decoders over every provider fixture, in every direction: what the
-- client gets (same-format answers byte for byte), the usage learnt, and the
-- same result for any chunking. Then a randomised property test: truncated
-- and corrupted answers in random splits never raise and give well-formed
-- output or an error return.
local fx = require("spec.support.codec_fixtures")
local cjson = require("cjson.safe")

local read, run, events = fx.read, fx.run, fx.events
local JSON, SSE = "application/json", "text/event-stream"

-- the estimate for fx.REQUEST ("Hello there, how are you?": 25 characters)
local PROMPT_EST = 7

local function usage_is(res, p, c, cached, estimated, reasoning)
  local u = res.usage
  assert.is_table(u, "no usage")
  assert.equal(p, u.prompt_tokens, "prompt_tokens")
  assert.equal(c, u.completion_tokens, "completion_tokens")
  assert.equal(cached or 0, u.cached_tokens, "cached_tokens")
  assert.equal(estimated and true or false, u.estimated, "estimated")
  if reasoning ~= nil then assert.equal(reasoning, u.reasoning_tokens, "reasoning_tokens") end
end

local function body_json(res)
  assert.is_nil(res.err, res.err)
  local doc = cjson.decode(res.out or "")
  assert.is_table(doc, "not JSON: " .. tostring(res.out))
  return doc
end

-- OpenAI chunks of an output: their text, tool call arguments by index, the finish reason, the usage
local function openai_stream(res)
  local evs = events(res.out)
  local text, args, names, finish, usage, done = {}, {}, {}, nil, nil, false
  for i, ev in ipairs(evs) do
    if ev.data == "[DONE]" then
      assert.equal(#evs, i, "[DONE] is not last")
      done = true
    else
      local c = ev.json
      assert.equal("chat.completion.chunk", c.object)
      if c.usage and c.usage ~= cjson.null then usage = c.usage end
      for _, ch in ipairs(c.choices) do
        local d = ch.delta
        if type(d.content) == "string" then text[#text + 1] = d.content end
        for _, tc in ipairs(d.tool_calls or {}) do
          local k = tc.index + 1
          if tc["function"] and tc["function"].name then names[k] = tc["function"].name end
          args[k] = (args[k] or "") .. ((tc["function"] or {}).arguments or "")
        end
        if ch.finish_reason ~= cjson.null and ch.finish_reason then finish = ch.finish_reason end
      end
    end
  end
  return { text = table.concat(text), args = args, names = names, finish = finish, usage = usage, done = done,
           events = evs }
end

-- Anthropic events of an output: names in order, text, tool inputs, stop reason, final usage
local function anthropic_stream(res)
  local evs = events(res.out)
  local names, text, tools, stop, usage, start = {}, {}, {}, nil, nil, nil
  local open = {}
  for _, ev in ipairs(evs) do
    local d = ev.json
    assert.equal(ev.event, d.type)
    names[#names + 1] = ev.event
    if d.type == "message_start" then start = d.message
    elseif d.type == "content_block_start" then
      assert.is_nil(open[d.index], "block opened twice")
      open[d.index] = d.content_block.type
      if d.content_block.type == "tool_use" then tools[d.index] = { name = d.content_block.name, json = "" } end
    elseif d.type == "content_block_delta" then
      assert.is_string(open[d.index], "delta for a block not started")
      assert.not_equal("stopped", open[d.index], "delta for a block already stopped")
      for k, v in pairs(open) do
        if k ~= d.index then assert.equal("stopped", v, "a delta while block " .. k .. " is open") end
      end
      if d.delta.type == "text_delta" then text[#text + 1] = d.delta.text end
      if d.delta.type == "input_json_delta" then tools[d.index].json = tools[d.index].json .. d.delta.partial_json end
    elseif d.type == "content_block_stop" then
      open[d.index] = "stopped"
    elseif d.type == "message_delta" then
      stop = d.delta.stop_reason
      usage = d.usage
    end
  end
  return { names = names, text = table.concat(text), tools = tools, stop = stop, usage = usage, start = start }
end

-- the stream without its usage-only chunk (choices: [] and a usage object)
local function without_usage_chunk(text)
  local out = {}
  for ev in text:gmatch("(.-\n\n)") do
    if not (ev:find('"choices":[]', 1, true) and ev:find('"usage":{', 1, true)) then out[#out + 1] = ev end
  end
  return table.concat(out)
end

local CASES = {
  -- ===== OpenAI client, OpenAI wire: byte for byte =====
  { "openai chat, same format, byte-exact with usage",
    { client = "openai", wire = "openai", endpoint = "chat" }, 200, JSON, "openai/chat.json",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, 1117, 46, 1024, false, 12)
    end },
  { "openai chat without usage: estimated",
    { client = "openai", wire = "openai", endpoint = "chat" }, 200, JSON, "openai/chat_no_usage.json",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, PROMPT_EST, 13, 0, true)
    end },
  { "openai chat with malformed usage: estimated",
    { client = "openai", wire = "openai", endpoint = "chat" }, 200, JSON, "openai/chat_malformed_usage.json",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, PROMPT_EST, 4, 0, true)
    end },
  { "openai stream, same format, usage chunk the gateway asked for dropped",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, drop_usage_chunk = true },
    200, SSE, "openai/chat_stream.sse",
    function(res, text)
      assert.is_nil(res.err)
      assert.equal(without_usage_chunk(text), res.out)
      assert.are_not.equal(text, res.out)
      usage_is(res, 9, 12, 0, false)
    end },
  { "openai stream, same format, usage chunk the client asked for kept",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, wants_usage = true },
    200, SSE, "openai/chat_stream.sse",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, 9, 12, 0, false)
    end },
  { "openai stream without usage: estimated from the text",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, drop_usage_chunk = true },
    200, SSE, "openai/chat_stream_no_usage.sse",
    function(res, text)
      assert.is_nil(res.err)
      assert.equal(text, res.out)
      usage_is(res, PROMPT_EST, 5, 0, true)   -- "Four words of text": 18 characters
    end },
  { "openai stream with malformed usage: estimated, its chunk still dropped",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, drop_usage_chunk = true },
    200, SSE, "openai/chat_stream_malformed_usage.sse",
    function(res)
      assert.is_nil(res.err)
      assert.is_nil(res.out:find('"choices":[]', 1, true))
      usage_is(res, PROMPT_EST, 1, 0, true)
    end },
  { "openai stream with an error event: kept back for the stream's error end",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, drop_usage_chunk = true },
    200, SSE, "openai/chat_stream_error.sse",
    function(res)
      assert.matches("The server had an error", res.err, 1, true)
      assert.is_nil(res.out:find('"error"', 1, true))
      assert.equal(2, #events(res.out))
    end },
  { "groq stream: usage from x_groq",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, drop_usage_chunk = true,
      usage_path = { "x_groq", "usage" } }, 200, SSE, "openai/groq_stream.sse",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, 40, 2, 0, false)
    end },
  { "azure stream: the prompt filter chunk kept, the usage chunk dropped",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true, drop_usage_chunk = true },
    200, SSE, "azure/chat_stream.sse",
    function(res, text)
      assert.equal(without_usage_chunk(text), res.out)
      assert.truthy(res.out:find("prompt_filter_results", 1, true))
      usage_is(res, 20, 4, 0, false)
    end },
  { "azure chat, same format",
    { client = "openai", wire = "openai", endpoint = "chat" }, 200, JSON, "azure/chat.json",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, 20, 5, 0, false)
    end },
  { "openai error, same format: passed through",
    { client = "openai", wire = "openai", endpoint = "chat" }, 429, JSON, "openai/error_429.json",
    function(res, text)
      assert.equal(429, res.status)
      assert.is_false(res.d.buffer)
      assert.equal(text, res.out)
    end },
  { "openai embeddings: prompt tokens only",
    { client = "openai", wire = "openai", endpoint = "embeddings" }, 200, JSON, "openai/embeddings.json",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, 8, 0, 0, false)
    end },
  { "a streamed request answered with JSON: 502",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true }, 200, JSON, "openai/chat.json",
    function(res)
      assert.equal(502, res.status)
      assert.is_nil(res.out)
      assert.matches("text/event%-stream", res.err)
    end },
  { "garbage for a chat completion: an error, not a crash",
    { client = "openai", wire = "openai", endpoint = "chat" }, 200, "text/html", "anthropic/stream_error.sse",
    function(res)
      assert.is_nil(res.out)
      assert.matches("not a JSON object", res.err)
    end },

  -- ===== OpenAI client, Anthropic wire =====
  { "anthropic message to an OpenAI client",
    { client = "openai", wire = "anthropic", endpoint = "chat", model = "claude" }, 200, JSON, "anthropic/message.json",
    function(res)
      local doc = body_json(res)
      assert.equal("chat.completion", doc.object)
      assert.equal("msg_013Zva2CMHLNnXjNJJKqJ2EF", doc.id)
      assert.equal("Hi! My name is Claude.", doc.choices[1].message.content)
      assert.equal("stop", doc.choices[1].finish_reason)
      assert.equal(3995, doc.usage.prompt_tokens)
      assert.equal(1800, doc.usage.prompt_tokens_details.cached_tokens)
      assert.equal(JSON, res.headers["content-type"])
      usage_is(res, 3995, 503, 1800, false)
    end },
  { "anthropic tool use to an OpenAI client, numbers and empty arrays kept",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 200, JSON, "anthropic/message_tool_use.json",
    function(res)
      assert.truthy(res.out:find('12345678901234567890', 1, true))
      local doc = body_json(res)
      local m = doc.choices[1].message
      assert.equal("tool_calls", doc.choices[1].finish_reason)
      assert.equal("I need to call the get_weather function.", m.content)
      assert.equal("toolu_01A09q90qw90lq917835lq9", m.tool_calls[1].id)
      assert.equal("get_weather", m.tool_calls[1]["function"].name)
      assert.equal('{"location":"San Francisco, CA","unit":"celsius","seed":12345678901234567890,"tags":[]}',
        m.tool_calls[1]["function"].arguments)
      usage_is(res, 384, 93, 0, false)
    end },
  { "anthropic without usage: estimated",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 200, JSON, "anthropic/message_no_usage.json",
    function(res)
      local doc = body_json(res)
      assert.equal("length", doc.choices[1].finish_reason)
      usage_is(res, PROMPT_EST, 4, 0, true)
      assert.equal(4, doc.usage.completion_tokens)
    end },
  { "anthropic with malformed usage: estimated",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 200, JSON, "anthropic/message_malformed_usage.json",
    function(res)
      local doc = body_json(res)
      assert.equal("stop", doc.choices[1].finish_reason)
      usage_is(res, PROMPT_EST, 4, 0, true)
    end },
  { "anthropic stream to an OpenAI client, with the usage chunk it asked for",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true, wants_usage = true },
    200, SSE, "anthropic/message_stream.sse",
    function(res)
      assert.is_nil(res.err)
      local s = openai_stream(res)
      assert.equal("Hello! café", s.text)
      assert.equal("stop", s.finish)
      assert.is_true(s.done)
      assert.equal(30, s.usage.prompt_tokens)
      assert.equal(15, s.usage.completion_tokens)
      assert.equal(5, s.usage.prompt_tokens_details.cached_tokens)
      assert.equal("assistant", s.events[1].json.choices[1].delta.role)
      assert.equal(SSE, res.headers["content-type"])
      usage_is(res, 30, 15, 5, false)
    end },
  { "anthropic stream to an OpenAI client that did not ask for usage: no usage chunk",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true }, 200, SSE, "anthropic/message_stream.sse",
    function(res)
      local s = openai_stream(res)
      assert.is_nil(s.usage)
      assert.is_true(s.done)
      usage_is(res, 30, 15, 5, false)
    end },
  { "anthropic tool use stream: argument deltas",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true, wants_usage = true },
    200, SSE, "anthropic/message_tool_use_stream.sse",
    function(res)
      local s = openai_stream(res)
      assert.equal("Okay, let's check the weather.", s.text)
      assert.equal("get_weather", s.names[1])
      assert.equal('{"location": "San Francisco, CA", "n": 12345678901234567890}', s.args[1])
      assert.equal("tool_calls", s.finish)
      usage_is(res, 472, 89, 0, false)
    end },
  { "anthropic stream error event: the stream ends with an error",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true }, 200, SSE, "anthropic/stream_error.sse",
    function(res)
      assert.matches("Overloaded", res.err)
      assert.is_true(fx.well_formed_sse(res.out))
      assert.equal("Par", openai_stream(res).text)
    end },
  { "anthropic stream without usage: estimated",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true, wants_usage = true },
    200, SSE, "anthropic/message_stream_no_usage.sse",
    function(res)
      assert.is_nil(res.err)
      assert.equal(2, openai_stream(res).usage.completion_tokens)
      usage_is(res, PROMPT_EST, 2, 0, true)
    end },
  { "anthropic 529 overloaded: a 503 in OpenAI's shape",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 529, JSON, "anthropic/error_overloaded.json",
    function(res)
      assert.equal(503, res.status)
      local doc = body_json(res)
      assert.equal("Overloaded", doc.error.message)
      assert.equal("server_error", doc.error.type)
    end },
  { "anthropic 400 in OpenAI's shape",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true }, 400, JSON, "anthropic/error_invalid.json",
    function(res)
      assert.equal(400, res.status)
      local doc = body_json(res)
      assert.matches("roles must alternate", doc.error.message)
      assert.equal("invalid_request_error", doc.error.type)
    end },
  { "anthropic 429 in OpenAI's shape",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 429, JSON, "anthropic/error_rate_limit.json",
    function(res)
      assert.equal(429, res.status)
      assert.equal("rate_limit_error", body_json(res).error.type)
    end },
  { "anthropic non-JSON error: wrapped in OpenAI's shape",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 502, "text/html", "gemini/stream.sse",
    function(res)
      assert.equal(502, res.status)
      assert.matches("provider answered 502", body_json(res).error.message)
    end },
  { "anthropic error without a type: code is the status",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 500, JSON, "anthropic/error_no_type.json",
    function(res)
      local doc = body_json(res)
      assert.equal("something odd happened", doc.error.message)
      assert.equal("500", doc.error.code)
    end },
  { "a non-JSON error's snippet without the provider's trailing newline",
    { client = "openai", wire = "anthropic", endpoint = "chat" }, 503, "text/html", "anthropic/garbage.html",
    function(res)
      local doc = body_json(res)
      assert.matches("^provider answered 503: %S", doc.error.message)
      assert.matches("%S$", doc.error.message)
      assert.equal("503", doc.error.code)
    end },
  { "anthropic stream, tools without arguments: '{}' for the OpenAI SDK",
    { client = "openai", wire = "anthropic", endpoint = "chat", stream = true }, 200, SSE,
    "anthropic/tool_use_no_input_stream.sse",
    function(res)
      assert.is_nil(res.err, res.err)
      local st = openai_stream(res)
      assert.same({ "get_time", "get_city" }, st.names)
      assert.same({ "{}", '{"country": "FR"}' }, st.args)
      assert.equal("tool_calls", st.finish)
    end },
  { "openai stream with interleaved parallel tool calls: one Anthropic block at a time",
    { client = "anthropic", wire = "openai", endpoint = "chat", stream = true }, 200, SSE,
    "openai/chat_tool_calls_interleaved_stream.sse",
    function(res)
      assert.is_nil(res.err, res.err)
      local st = anthropic_stream(res)
      assert.equal("weather", st.tools[0].name)
      assert.equal('{"city":"Paris"}', st.tools[0].json)
      assert.equal("time", st.tools[1].name)
      assert.equal('{"tz":"CET"}', st.tools[1].json)
      assert.equal("tool_use", st.stop)
    end },
  { "openai refusal to an Anthropic client: its text, stop_reason refusal",
    { client = "anthropic", wire = "openai", endpoint = "chat" }, 200, JSON, "openai/chat_refusal.json",
    function(res)
      local doc = body_json(res)
      assert.same({ { type = "text", text = "I cannot help with that." } }, doc.content)
      assert.equal("refusal", doc.stop_reason)
    end },
  { "openai streamed refusal to an Anthropic client: its text, stop_reason refusal",
    { client = "anthropic", wire = "openai", endpoint = "chat", stream = true }, 200, SSE,
    "openai/chat_refusal_stream.sse",
    function(res)
      assert.is_nil(res.err, res.err)
      local st = anthropic_stream(res)
      assert.equal("I cannot help with that.", st.text)
      assert.equal("refusal", st.stop)
    end },
  { "an OpenAI provider's model-list error to the Anthropic SDK: in Anthropic's shape",
    { client = "openai", wire = "openai", endpoint = "models", models_style = "anthropic" }, 429, JSON,
    "openai/error_429.json",
    function(res)
      assert.equal(429, res.status)
      local doc = body_json(res)
      assert.equal("error", doc.type)
      assert.equal("rate_limit_error", doc.error.type)
    end },
  { "anthropic model list to the OpenAI SDK",
    { client = "openai", wire = "anthropic", endpoint = "models", models_style = "openai" }, 200, JSON,
    "anthropic/models.json",
    function(res)
      local doc = body_json(res)
      assert.equal("list", doc.object)
      assert.equal("claude-3-5-sonnet-20241022", doc.data[1].id)
      assert.equal(1729555200, doc.data[1].created)
    end },

  -- ===== Anthropic client, OpenAI wire =====
  { "openai completion to an Anthropic client",
    { client = "anthropic", wire = "openai", endpoint = "messages", model = "gpt" }, 200, JSON, "openai/chat.json",
    function(res)
      local doc = body_json(res)
      assert.equal("message", doc.type)
      assert.equal("assistant", doc.role)
      assert.equal("text", doc.content[1].type)
      assert.equal("end_turn", doc.stop_reason)
      assert.equal(93, doc.usage.input_tokens)
      assert.equal(1024, doc.usage.cache_read_input_tokens)
      assert.equal(46, doc.usage.output_tokens)
      usage_is(res, 1117, 46, 1024, false, 12)
    end },
  { "openai tool calls to an Anthropic client",
    { client = "anthropic", wire = "openai", endpoint = "messages" }, 200, JSON, "openai/chat_tool_calls.json",
    function(res)
      assert.truthy(res.out:find('"days":12345678901234567890', 1, true))
      local doc = body_json(res)
      assert.equal("tool_use", doc.stop_reason)
      assert.equal("tool_use", doc.content[1].type)
      assert.equal("call_abc123", doc.content[1].id)
      assert.equal("Boston, MA", doc.content[1].input.location)
    end },
  { "openai stream to an Anthropic client",
    { client = "anthropic", wire = "openai", endpoint = "messages", stream = true }, 200, SSE, "openai/chat_stream.sse",
    function(res)
      assert.is_nil(res.err)
      local s = anthropic_stream(res)
      assert.same({ "message_start", "content_block_start", "content_block_delta" }, { unpack(s.names, 1, 3) })
      assert.equal("message_stop", s.names[#s.names])
      assert.equal("message_delta", s.names[#s.names - 1])
      assert.equal("content_block_stop", s.names[#s.names - 2])
      assert.equal("Hello! How can I help café?", s.text)
      assert.equal("end_turn", s.stop)
      assert.equal(12, s.usage.output_tokens)
      assert.equal(9, s.usage.input_tokens)
      assert.same({}, s.start.content)
      assert.truthy(res.out:find('"content":[]', 1, true))
      usage_is(res, 9, 12, 0, false)
    end },
  { "openai tool call stream to an Anthropic client: input_json_delta",
    { client = "anthropic", wire = "openai", endpoint = "messages", stream = true }, 200, SSE,
    "openai/chat_tool_calls_stream.sse",
    function(res)
      local s = anthropic_stream(res)
      assert.equal("get_weather", s.tools[0].name)
      assert.equal('{"location":"Paris","days":12345678901234567890}', s.tools[0].json)
      assert.equal("get_time", s.tools[1].name)
      assert.equal("{}", s.tools[1].json)
      assert.equal("tool_use", s.stop)
    end },
  { "openai stream without usage to an Anthropic client: estimated",
    { client = "anthropic", wire = "openai", endpoint = "messages", stream = true }, 200, SSE,
    "openai/chat_stream_no_usage.sse",
    function(res)
      assert.is_nil(res.err)
      local s = anthropic_stream(res)
      assert.equal("Four words of text", s.text)
      usage_is(res, PROMPT_EST, 5, 0, true)
      assert.equal(5, s.usage.output_tokens)
    end },
  { "openai stream error to an Anthropic client",
    { client = "anthropic", wire = "openai", endpoint = "messages", stream = true }, 200, SSE,
    "openai/chat_stream_error.sse",
    function(res)
      assert.matches("The server had an error", res.err)
      assert.is_true(fx.well_formed_sse(res.out))
    end },
  { "openai 429 to an Anthropic client",
    { client = "anthropic", wire = "openai", endpoint = "messages" }, 429, JSON, "openai/error_429.json",
    function(res)
      assert.equal(429, res.status)
      local doc = body_json(res)
      assert.equal("error", doc.type)
      assert.equal("rate_limit_error", doc.error.type)
      assert.matches("Rate limit reached", doc.error.message)
    end },
  { "azure content filter 400 to an Anthropic client",
    { client = "anthropic", wire = "openai", endpoint = "messages" }, 400, JSON, "azure/error_content_filter.json",
    function(res)
      assert.equal(400, res.status)
      assert.matches("content management policy", body_json(res).error.message)
    end },
  { "openai model list to the Anthropic SDK",
    { client = "openai", wire = "openai", endpoint = "models", models_style = "anthropic" }, 200, JSON,
    "openai/models.json",
    function(res)
      local doc = body_json(res)
      assert.equal("model", doc.data[1].type)
      assert.equal("gpt-4o-mini", doc.data[1].id)
      assert.equal("2024-07-16T23:32:21Z", doc.data[1].created_at)
      assert.equal(false, doc.has_more)
      assert.equal("text-embedding-3-small", doc.last_id)
    end },

  -- ===== Gemini wire =====
  { "gemini answer to an OpenAI client, thoughts counted as reasoning",
    { client = "openai", wire = "gemini", endpoint = "chat", model = "gemini-2.5-flash" }, 200, JSON,
    "gemini/generate.json",
    function(res)
      local doc = body_json(res)
      assert.equal("Hello! How can I help you today?", doc.choices[1].message.content)
      assert.equal("stop", doc.choices[1].finish_reason)
      assert.equal("mFhaaPbDBYiRz7IPnc6SqAM", doc.id)
      assert.equal(29, doc.usage.completion_tokens)
      assert.equal(20, doc.usage.completion_tokens_details.reasoning_tokens)
      usage_is(res, 4, 29, 2, false, 20)
    end },
  { "gemini function call to an OpenAI client",
    { client = "openai", wire = "gemini", endpoint = "chat" }, 200, JSON, "gemini/generate_tool_call.json",
    function(res)
      local doc = body_json(res)
      local tc = doc.choices[1].message.tool_calls[1]
      assert.equal("tool_calls", doc.choices[1].finish_reason)
      assert.equal("get_weather", tc["function"].name)
      assert.equal('{"location":"Paris","days":12345678901234567890,"opts":[]}', tc["function"].arguments)
      assert.matches("^call_", tc.id)
      usage_is(res, 50, 7, 0, false)
    end },
  { "gemini without usage: estimated",
    { client = "openai", wire = "gemini", endpoint = "chat" }, 200, JSON, "gemini/generate_no_usage.json",
    function(res)
      assert.equal("length", body_json(res).choices[1].finish_reason)
      usage_is(res, PROMPT_EST, 4, 0, true)
    end },
  { "gemini with malformed usage: estimated",
    { client = "openai", wire = "gemini", endpoint = "chat" }, 200, JSON, "gemini/generate_malformed_usage.json",
    function(res)
      body_json(res)
      usage_is(res, PROMPT_EST, 4, 0, true)
    end },
  { "gemini blocked prompt: content_filter",
    { client = "openai", wire = "gemini", endpoint = "chat" }, 200, JSON, "gemini/blocked.json",
    function(res)
      local doc = body_json(res)
      assert.equal("content_filter", doc.choices[1].finish_reason)
      assert.equal(cjson.null, doc.choices[1].message.content)
      assert.equal(12, res.usage.prompt_tokens)
    end },
  { "gemini stream to an OpenAI client, usage at the end",
    { client = "openai", wire = "gemini", endpoint = "chat", stream = true, wants_usage = true }, 200, SSE,
    "gemini/stream.sse",
    function(res)
      assert.is_nil(res.err)
      local s = openai_stream(res)
      assert.equal("The sky is blue, café.", s.text)
      assert.equal("stop", s.finish)
      assert.is_true(s.done)
      assert.equal(12, s.usage.completion_tokens)
      usage_is(res, 8, 12, 0, false)
    end },
  { "gemini stream with a function call",
    { client = "openai", wire = "gemini", endpoint = "chat", stream = true }, 200, SSE, "gemini/stream_tool_call.sse",
    function(res)
      local s = openai_stream(res)
      assert.equal("Let me check.", s.text)
      assert.equal('{"location":"Paris","n":12345678901234567890}', s.args[1])
      assert.equal("tool_calls", s.finish)
      usage_is(res, 30, 10, 0, false)
    end },
  { "gemini stream without usage: estimated",
    { client = "openai", wire = "gemini", endpoint = "chat", stream = true, wants_usage = true }, 200, SSE,
    "gemini/stream_no_usage.sse",
    function(res)
      assert.is_nil(res.err)
      usage_is(res, PROMPT_EST, 2, 0, true)
    end },
  { "gemini stream cut before a finish reason: an error end",
    { client = "openai", wire = "gemini", endpoint = "chat", stream = true }, 200, SSE, "gemini/stream_truncated.sse",
    function(res)
      assert.matches("before a finish reason", res.err)
      assert.is_true(fx.well_formed_sse(res.out))
      assert.is_false(openai_stream(res).done)
      usage_is(res, 8, 1, 0, true)
    end },
  { "gemini 400 to an OpenAI client",
    { client = "openai", wire = "gemini", endpoint = "chat" }, 400, JSON, "gemini/error_400.json",
    function(res)
      assert.equal(400, res.status)
      local doc = body_json(res)
      assert.matches("API key not valid", doc.error.message)
      assert.equal("INVALID_ARGUMENT", doc.error.code)
    end },
  { "gemini 429 to an Anthropic client",
    { client = "anthropic", wire = "gemini", endpoint = "messages" }, 429, JSON, "gemini/error_429.json",
    function(res)
      assert.equal(429, res.status)
      local doc = body_json(res)
      assert.equal("rate_limit_error", doc.error.type)
      assert.matches("quota", doc.error.message)
    end },
  { "gemini model list to the OpenAI SDK",
    { client = "openai", wire = "gemini", endpoint = "models", models_style = "openai", owned_by = "gemini" },
    200, JSON, "gemini/models.json",
    function(res)
      local doc = body_json(res)
      assert.equal("gemini-2.0-flash", doc.data[1].id)
      assert.equal("google", doc.data[1].owned_by)
    end },
  { "gemini model list to the Anthropic SDK",
    { client = "anthropic", wire = "gemini", endpoint = "models", models_style = "anthropic" }, 200, JSON,
    "gemini/models.json",
    function(res)
      local doc = body_json(res)
      assert.equal("Gemini 2.0 Flash", doc.data[1].display_name)
      assert.equal("text-embedding-004", doc.last_id)
    end },
  { "gemini embeddings to an OpenAI client, digits kept, prompt estimated",
    { client = "openai", wire = "gemini", endpoint = "embeddings", model = "text-embedding-004" }, 200, JSON,
    "gemini/embed.json",
    function(res)
      assert.truthy(res.out:find("[0.013168523,-0.008711934,-0.046782676,1e-7]", 1, true))
      local doc = body_json(res)
      assert.equal(2, #doc.data)
      assert.equal(1, doc.data[2].index)
      assert.equal(PROMPT_EST, doc.usage.prompt_tokens)
      usage_is(res, PROMPT_EST, 0, 0, true)
    end },
  { "gemini embeddings as base64 float32",
    { client = "openai", wire = "gemini", endpoint = "embeddings", model = "m", embeddings_base64 = true },
    200, JSON, "gemini/embed.json",
    function(res)
      local doc = body_json(res)
      -- 0.5, -0.25, 0.125, 0 as little-endian float32
      assert.equal("AAAAPwAAgL4AAAA+AAAAAA==", doc.data[2].embedding)
    end },
  { "gemini stream to an Anthropic client",
    { client = "anthropic", wire = "gemini", endpoint = "messages", stream = true }, 200, SSE, "gemini/stream.sse",
    function(res)
      assert.is_nil(res.err)
      local s = anthropic_stream(res)
      assert.equal("The sky is blue, café.", s.text)
      assert.equal("end_turn", s.stop)
      assert.equal(8, s.start.usage.input_tokens)
      assert.equal(12, s.usage.output_tokens)
    end },
  { "gemini function call stream to an Anthropic client",
    { client = "anthropic", wire = "gemini", endpoint = "messages", stream = true }, 200, SSE,
    "gemini/stream_tool_call.sse",
    function(res)
      local s = anthropic_stream(res)
      assert.equal("get_weather", s.tools[1].name)
      assert.equal('{"location":"Paris","n":12345678901234567890}', s.tools[1].json)
      assert.equal("tool_use", s.stop)
    end },
  { "gemini answer to an Anthropic client",
    { client = "anthropic", wire = "gemini", endpoint = "messages" }, 200, JSON, "gemini/generate.json",
    function(res)
      local doc = body_json(res)
      assert.equal("Hello! How can I help you today?", doc.content[1].text)
      assert.equal(2, doc.usage.input_tokens)
      assert.equal(2, doc.usage.cache_read_input_tokens)
      assert.equal(29, doc.usage.output_tokens)
    end },

  -- ===== Anthropic client, Anthropic wire: byte for byte =====
  { "anthropic message, same format",
    { client = "anthropic", wire = "anthropic", endpoint = "messages" }, 200, JSON, "anthropic/message.json",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, 3995, 503, 1800, false)
    end },
  { "anthropic stream, same format",
    { client = "anthropic", wire = "anthropic", endpoint = "messages", stream = true }, 200, SSE,
    "anthropic/message_stream.sse",
    function(res, text)
      assert.is_nil(res.err)
      assert.equal(text, res.out)
      usage_is(res, 30, 15, 5, false)
    end },
  { "anthropic stream error, same format: kept back for the error end",
    { client = "anthropic", wire = "anthropic", endpoint = "messages", stream = true }, 200, SSE,
    "anthropic/stream_error.sse",
    function(res)
      assert.matches("Overloaded", res.err)
      assert.is_nil(res.out:find("event: error", 1, true))
      assert.is_true(fx.well_formed_sse(res.out))
    end },
  { "anthropic stream without usage, same format: estimated",
    { client = "anthropic", wire = "anthropic", endpoint = "messages", stream = true }, 200, SSE,
    "anthropic/message_stream_no_usage.sse",
    function(res, text)
      assert.equal(text, res.out)
      usage_is(res, PROMPT_EST, 2, 0, true)
    end },
  { "openai stream that ends after its finish reason without [DONE]: ended for the client",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true }, 200, SSE, "openai/chat_stream_no_usage.sse",
    function(res)
      assert.is_nil(res.err)
      assert.matches("data: %[DONE%]\n\n$", res.out)
    end, function(text) return (text:gsub("data: %[DONE%]\n\n$", "")) end },
  { "openai stream cut before its finish reason: an error end",
    { client = "openai", wire = "openai", endpoint = "chat", stream = true }, 200, SSE, "openai/chat_stream_no_usage.sse",
    function(res)
      assert.matches("before %[DONE%]", res.err)
    end, function(text) return (text:match("^(.-\n\n.-\n\n)")) end },
  { "anthropic stream cut before message_stop: an error end",
    { client = "anthropic", wire = "anthropic", endpoint = "messages", stream = true }, 200, SSE,
    "anthropic/message_stream.sse",
    function(res)
      assert.matches("before message_stop", res.err)
    end, function(text) return (text:gsub("event: message_stop.*$", "")) end },
}

describe("codec decoders over the provider fixtures", function()
  for _, case in ipairs(CASES) do
    local name, opts, status, ct, file, check, edit = unpack(case)
    it(name, function()
      local text = read(file)
      if edit then text = edit(text) end
      local whole = run(opts, status, ct, text, nil)
      assert.is_nil(whole.crashed, whole.crashed)
      check(whole, text)
      -- any chunking gives the same client bytes and the same usage
      for _, split in ipairs({ 1, 7, function(k) return (k * 37) % 101 + 1 end }) do
        local res = run(opts, status, ct, text, split)
        assert.is_nil(res.crashed, res.crashed)
        assert.equal(fx.timeless(whole.out), fx.timeless(res.out))
        assert.equal(whole.err, res.err)
        assert.same(whole.usage, res.usage)
      end
    end)
  end
end)

-- ====================== the property test ======================

describe("codec decoders on broken answers (property test)", function()
  local SEED = 5150
  local DIRECTIONS = {
    { client = "openai", wire = "openai", endpoint = "chat", drop_usage_chunk = true },
    { client = "openai", wire = "anthropic", endpoint = "chat", wants_usage = true },
    { client = "openai", wire = "gemini", endpoint = "chat", wants_usage = true },
    { client = "anthropic", wire = "openai", endpoint = "messages" },
    { client = "anthropic", wire = "anthropic", endpoint = "messages" },
    { client = "anthropic", wire = "gemini", endpoint = "messages" },
  }
  local FILES = {
    openai = { "openai/chat.json", "openai/chat_tool_calls.json", "openai/chat_stream.sse",
               "openai/chat_tool_calls_stream.sse", "azure/chat_stream.sse", "openai/groq_stream.sse" },
    anthropic = { "anthropic/message.json", "anthropic/message_tool_use.json", "anthropic/message_stream.sse",
                  "anthropic/message_tool_use_stream.sse" },
    gemini = { "gemini/generate.json", "gemini/generate_tool_call.json", "gemini/stream.sse",
               "gemini/stream_tool_call.sse", "gemini/embed.json" },
  }
  local NOISE = { "{", "}", "[", "]", '"', "\\", ":", ",", "\n", "\n\n", "\r", "data: ", "event: error\n",
                  "\0", "\255", "null", "-1", "1e999", "data: [DONE]\n\n" }

  local function mutate(text)
    local r = math.random(1, 4)
    if r == 1 then return text:sub(1, math.random(0, #text)) end          -- truncated
    local out = text
    for _ = 1, math.random(1, 6) do                                       -- corrupted
      local at = math.random(1, #out + 1)
      local kind = math.random(1, 3)
      if kind == 1 then
        out = out:sub(1, at - 1) .. NOISE[math.random(1, #NOISE)] .. out:sub(at)
      elseif kind == 2 then
        out = out:sub(1, at - 1) .. out:sub(at + math.random(1, 20))
      else
        out = out:sub(1, at - 1) .. string.char(math.random(0, 255)) .. out:sub(at + 1)
      end
    end
    if r == 4 then out = out:sub(1, math.random(0, #out)) end
    return out
  end

  it("never raises; the output is well-formed or the answer is refused (seed " .. SEED .. ")", function()
    print("codec decoder property test seed " .. SEED)
    math.randomseed(SEED)
    local runs = 0
    for _, dir in ipairs(DIRECTIONS) do
      for _, file in ipairs(FILES[dir.wire]) do
        local original = read(file)
        local is_stream = file:match("%.sse$") ~= nil
        for _ = 1, 60 do
          local text = mutate(original)
          local opts = {}
          for k, v in pairs(dir) do opts[k] = v end
          opts.stream = is_stream
          if file:match("embed") then opts.endpoint = "embeddings" end
          local split = function() return math.random(1, 64) end
          local ok, res = pcall(run, opts, 200, is_stream and SSE or JSON, text, split)
          assert.is_true(ok, "raised on " .. file .. ": " .. tostring(res))
          assert.is_nil(res.crashed, "the safety net fired on " .. file .. ": " .. tostring(res.crashed) ..
            "\ninput: " .. text)
          if is_stream then
            if dir.client == dir.wire then
              -- same format: bytes pass as they came, an error end when they were not a whole stream
              assert.is_true(res.err ~= nil or res.out ~= nil)
            else
              local wf, why = fx.well_formed_sse(res.out)
              assert.is_true(wf, (why or "") .. " on " .. file .. "\ninput: " .. text .. "\noutput: " .. res.out)
            end
          else
            if res.out then
              if dir.client ~= dir.wire then
                assert.is_table(cjson.decode(res.out), "not JSON from " .. file .. ": " .. res.out)
              end
            else
              assert.is_string(res.err)
            end
          end
          assert.is_true(res.usage == nil or type(res.usage.prompt_tokens) == "number")
          runs = runs + 1
        end
      end
    end
    assert.truthy(runs > 1000)
  end)

  it("request translators never raise on odd client input (seed " .. SEED .. ")", function()
    local J = require("moongate.codec.json")
    local common = require("moongate.codec.common")
    local an = require("moongate.codec.anthropic")
    local ge = require("moongate.codec.gemini")
    math.randomseed(SEED)
    local ATOMS = { '"x"', '""', "1", "-2.5", "12345678901234567890", "true", "false", "null", "[]", "{}",
      '"user"', '"assistant"', '"tool"', '"system"', '"text"', '"image_url"', '"function"', '"data:image/png;base64,AA"' }
    local KEYS = { "role", "content", "type", "text", "image_url", "url", "tool_calls", "function", "name",
      "arguments", "tool_call_id", "id", "input", "source", "tool_use_id", "messages", "tools", "tool_choice",
      "system", "max_tokens", "stop", "temperature", "n", "parameters", "input_schema", "response_format",
      "stream", "json_schema", "schema", "media_type", "data", "parallel_tool_calls" }
    local function gen(depth)
      local r = math.random(1, depth > 3 and 2 or 4)
      if r <= 2 then return ATOMS[math.random(1, #ATOMS)] end
      local parts = {}
      if r == 3 then
        for i = 1, math.random(0, 3) do parts[i] = gen(depth + 1) end
        return "[" .. table.concat(parts, ",") .. "]"
      end
      for i = 1, math.random(0, 4) do
        parts[i] = '"' .. KEYS[math.random(1, #KEYS)] .. '":' .. gen(depth + 1)
      end
      return "{" .. table.concat(parts, ",") .. "}"
    end
    local translators = {
      function(doc, p) return an.request_from_hub(doc, { policy = p }) end,
      function(doc, p) return an.request_to_hub(doc, { policy = p }) end,
      function(doc, p) return ge.request_from_hub(doc, { policy = p }) end,
      function(doc, p) return ge.embeddings_from_hub(doc, { policy = p, model = "m" }) end,
    }
    for _ = 1, 3000 do
      local text = '{"model":"m","messages":' .. gen(1) .. "," .. '"' .. KEYS[math.random(1, #KEYS)] .. '":' .. gen(1) .. "}"
      local doc = J.decode(text)
      if doc then
        for _, tr in ipairs(translators) do
          local ok, out, refusal = pcall(common.run, tr, doc, common.policy("t", math.random() < 0.5))
          assert.is_true(ok, "raised on " .. text .. ": " .. tostring(out))
          if out then
            assert.is_string(J.encode(out))
          else
            assert.equal(400, refusal.status)
          end
        end
      end
    end
  end)

  it("refuses a whole answer that is not JSON, in every direction", function()
    for _, dir in ipairs(DIRECTIONS) do
      for _, garbage in ipairs({ "", "<html>502 Bad Gateway</html>", '{"truncated": ', "null", "[1,2]" }) do
        local res = run(dir, 200, JSON, garbage)
        assert.is_nil(res.crashed)
        assert.is_nil(res.out, dir.client .. "<-" .. dir.wire .. ": " .. garbage)
        assert.is_string(res.err)
      end
    end
  end)

  it("ends a stream that is not SSE with an error, in every direction", function()
    for _, dir in ipairs(DIRECTIONS) do
      local opts = { stream = true }
      for k, v in pairs(dir) do opts[k] = v end
      local res = run(opts, 200, SSE, "<html>oops</html>", 3)
      assert.is_nil(res.crashed)
      assert.is_string(res.err, dir.client .. "<-" .. dir.wire)
      local res2 = run(opts, 200, SSE, "", 3)
      assert.is_string(res2.err, "an empty stream ended cleanly: " .. dir.client .. "<-" .. dir.wire)
    end
  end)
end)

describe("codec decoder hand-over to the C relay", function()
  local decoder = require("moongate.codec.decoder")
  local function stream_decoder(client, wire)
    local ctx = { request = { json = fx.REQUEST, headers = {} } }
    local d = decoder.new({ ctx = ctx, client = client, wire = wire, endpoint = client == "anthropic" and "messages"
                            or "chat", stream = true, request_doc = fx.REQUEST })
    assert.equal(200, d:head(200, { ["content-type"] = SSE }))
    return d, ctx
  end
  local DELTA = 'data: {"choices":[{"index":0,"delta":{"content":"abcd"},"finish_reason":null}]}\n\n'

  it("offers a same-format stream with the partial event its reader holds, forgotten once taken", function()
    local d = stream_decoder("openai", "openai")
    assert.equal(DELTA, d:chunk(DELTA .. 'data: {"choi'))
    local fmt, pending = d:relay()
    assert.equal(1, fmt)
    assert.equal('data: {"choi', pending)
    assert.equal('data: {"choi', select(2, d:relay()))   -- not taken: still the reader's
    d:relay_taken()
    -- the reader starts afresh: what the relay hands back is whole events from their start
    assert.equal(DELTA, d:chunk(DELTA))
    local f2, p2 = d:relay()
    assert.equal(1, f2)
    assert.equal("", p2)
    assert.equal(2, (stream_decoder("anthropic", "anthropic"):relay()))
  end)

  it("counts what the relay passed on into the usage it publishes", function()
    local d, ctx = stream_decoder("openai", "openai")
    d:chunk(DELTA)
    local before = ctx.usage.completion_tokens
    d:relayed(400)   -- 400 characters of text: about 100 tokens more
    assert.is_true(ctx.usage.estimated)
    assert.is_true(ctx.usage.completion_tokens >= before + 90, tostring(ctx.usage.completion_tokens))
  end)

  it("offers nothing for a translated stream, after a failure, or with a partial event past 64 KB", function()
    assert.is_nil((stream_decoder("openai", "anthropic"):relay()))
    local d = stream_decoder("openai", "openai")
    d:chunk("data: not json\n\n")
    assert.is_string(d.failed)
    assert.is_nil((d:relay()))
    d = stream_decoder("openai", "openai")
    local big = 'data: {"x":"' .. string.rep("y", 70000)
    assert.equal("", d:chunk(big))
    assert.is_nil((d:relay()))
    assert.equal(big, d.reader.split.buf)   -- kept for Lua
  end)
end)

describe("codec decoder on a same-format stream's last event left without its blank line", function()
  local decoder = require("moongate.codec.decoder")
  local function finish_of(client, text)
    local ctx = { request = { json = fx.REQUEST, headers = {} } }
    local d = decoder.new({ ctx = ctx, client = client, wire = client, stream = true, request_doc = fx.REQUEST,
                            endpoint = client == "anthropic" and "messages" or "chat" })
    d:head(200, { ["content-type"] = SSE })
    local out = d:chunk(text)
    local tail, err = d:finish()
    return out .. (tail or ""), err
  end
  local DELTA = 'data: {"choices":[{"index":0,"delta":{"content":"ab"},"finish_reason":null}]}\n\n'

  it("ends it, with the line ends it had, so that a client's SSE parser does not drop it", function()
    assert.equal(DELTA .. "data: [DONE]\n\n", (finish_of("openai", DELTA .. "data: [DONE]\n")))
    assert.equal(DELTA .. "data: [DONE]\n\n", (finish_of("openai", DELTA .. "data: [DONE]")))
    assert.equal(DELTA .. "data: [DONE]\r\n\r\n", (finish_of("openai", DELTA .. "data: [DONE]\r\n")))
    local stop = 'event: message_stop\ndata: {"type":"message_stop"}'
    local out, err = finish_of("anthropic", stop .. "\n")
    assert.is_nil(err)
    assert.equal(stop .. "\n\n", out)
  end)

  it("still fails a stream whose cut event is not whole", function()
    local out, err = finish_of("openai", DELTA .. 'data: {"choi')
    assert.is_string(err)
    assert.equal(DELTA, out)
  end)
end)
