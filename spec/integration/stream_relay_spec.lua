-- Same-format streams relayed from C (runtime/sse.c, mg_up_relay): when no plugin reads a stream's
-- chunks, its text deltas go from the provider's socket to the client's without Lua, and every
-- other event (the role, usage, finish, [DONE], errors, anything unusual) still goes through the
-- decoder. What a client sees and what the gateway accounts must be the same as through Lua: each
-- stream here goes once through a route whose inline plugin has an on_chunk hook (Lua sees every
-- event) and once through one without (the relay), cut into pieces of a few bytes so that events
-- and their line ends arrive split across reads.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = "stdout"

providers = {
  oa = { type = "openai", base_url = "${UP}/v1", api_key = "k" },
  an = { type = "anthropic", base_url = "${UP}", api_key = "k" },
}
backends = {
  oa = { provider = "oa", model = "gpt-4o-mini", prices = { input = 2.5, output = 10 } },
  an = { provider = "an", model = "claude-x", prices = { input = 3, output = 15 } },
}
-- cost has an on_chunk hook, which declines the chunks of a stream whose usage the gateway keeps
plugins = { { name = "cost" } }
local lua_path = { { name = "reads_chunks", handler = { on_chunk = function(ctx, conf, chunk) end } } }
routes = {
  { name = "oa-lua", match = { path_prefix = "/v1/chat", headers = { ["x-path"] = "lua" } }, backend = "oa",
    plugins = lua_path },
  { name = "oa-c", match = { path_prefix = "/v1/chat" }, backend = "oa" },
  { name = "an-lua", match = { path_prefix = "/v1/messages", headers = { ["x-path"] = "lua" } }, backend = "an",
    plugins = lua_path },
  { name = "an-c", match = { path_prefix = "/v1/messages" }, backend = "an" },
}
]]

-- %XX for every byte a header value must not hold as it is (and % itself)
local function pct(s)
  return (s:gsub("[^%w _%-%.:{},\"%[%]]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function oa_delta(text, nl)
  return 'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,' ..
    '"delta":{"content":' .. cjson.encode(text) .. '},"finish_reason":null}]}' .. (nl or "\n\n")
end

local FINISH = 'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},' ..
  '"finish_reason":"stop"}]}\n\n'

-- what the client gets of a same-format stream: all of it but the comment-only events
local function as_sent(sse)
  return (sse:gsub(": keep%-alive\n\n", ""))
end

-- An OpenAI stream with what a compatible server may send: a role chunk, deltas (unicode, escapes,
-- CRLF and CR line ends), "usage": null, a comment, an event with an id line, the finish, [DONE].
local function openai_stream(opts)
  local p = {
    'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,' ..
      '"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
  }
  for i = 1, 12 do p[#p + 1] = oa_delta("word " .. i .. " ") end
  p[#p + 1] = oa_delta("h\u{e9}llo \u{1F600} \"quoted\" \\ back", "\r\n\r\n")
  p[#p + 1] = oa_delta("cr ends", "\r\r")
  p[#p + 1] = 'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":' ..
    '{"content":"with null usage"},"finish_reason":null}],"usage":null}\n\n'
  p[#p + 1] = ": keep-alive\n\n"
  p[#p + 1] = 'id: 7\n' .. oa_delta("after an id line")
  for i = 13, 20 do p[#p + 1] = oa_delta("more " .. i .. " ") end
  if opts.error then
    p[#p + 1] = 'data: {"error":{"message":"overloaded mid-stream","type":"server_error"}}\n\n'
    return table.concat(p)
  end
  if opts.no_done then
    -- some compatible servers end after the finish reason: the gateway adds [DONE]
    p[#p + 1] = FINISH
    return table.concat(p)
  end
  if opts.garbage then
    p[#p + 1] = "data: this is not json\n\n"
    return table.concat(p)
  end
  p[#p + 1] = FINISH
  if opts.usage then
    p[#p + 1] = 'data: {"id":"c1","object":"chat.completion.chunk","choices":[],' ..
      '"usage":{"prompt_tokens":11,"completion_tokens":57,"total_tokens":68}}\n\n'
  end
  p[#p + 1] = "data: [DONE]\n\n"
  return table.concat(p)
end

local function anthropic_stream()
  local p = {
    'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","type":"message",' ..
      '"role":"assistant","model":"claude-x","content":[],"usage":{"input_tokens":21,"output_tokens":1}}}\n\n',
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,' ..
      '"content_block":{"type":"text","text":""}}\n\n',
    'event: ping\ndata: {"type": "ping"}\n\n',
  }
  for i = 1, 15 do
    p[#p + 1] = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' ..
      '"delta":{"type":"text_delta","text":' .. cjson.encode("token " .. i .. " \u{e9} ") .. '}}' ..
      (i % 5 == 0 and "\r\n\r\n" or "\n\n")
  end
  p[#p + 1] = 'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
  p[#p + 1] = 'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},' ..
    '"usage":{"output_tokens":42}}\n\n'
  p[#p + 1] = 'event: message_stop\ndata: {"type":"message_stop"}\n\n'
  return table.concat(p)
end

local function access_line(gw, id)
  return helpers.wait_until(function()
    for line in gw:log():gmatch("[^\n]+") do
      if line:find('"id":"' .. id .. '"', 1, true) then return cjson.decode(line) end
    end
  end, 10, "the access log line of " .. id)
end

local n = 0
-- one stream through the gateway: its body as the client got it, how it ended, its access log line
local function run(gw, path, body, sse, lua, piece)
  n = n + 1
  local id = "relay-" .. n
  local s = helpers.stream(gw.port, { method = "POST", path = path, timeout = 15,
    headers = { ["Content-Type"] = "application/json", ["X-Request-Id"] = id, ["x-path"] = lua and "lua" or "c",
                ["x-fake-sse"] = pct(sse), ["x-fake-sse-piece"] = tostring(piece),
                ["x-fake-chunk-delay-ms"] = "1", ["anthropic-version"] = "2023-06-01" },
    body = body })
  assert.equal(200, s.status)
  local got, ended = s:read_body(15)
  return got, ended, access_line(gw, id)
end

-- the same stream through the Lua path, then the relay: the client gets the same bytes and the
-- same end from both. -> those bytes, that end, the Lua path's access log line, the relay's
local function both(gw, path, body, sse, piece)
  local a, ea, la = run(gw, path, body, sse, true, piece)
  local b, eb, lb = run(gw, path, body, sse, false, piece)
  assert.equal(ea, eb)
  assert.equal(a, b)
  return b, eb, la, lb
end

-- the worker answers the next request (it is not stuck on the last one)
local function serves_on(gw)
  local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions", timeout = 5,
    headers = { ["Content-Type"] = "application/json" },
    body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}' })
  assert.equal(200, res.status)
end

local CHAT = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
local CHAT_USAGE = '{"model":"m","stream":true,"stream_options":{"include_usage":true},' ..
  '"messages":[{"role":"user","content":"hi"}]}'
local MESSAGES = '{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}'

describe("same-format streams relayed from C", function()
  local up, gw

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("the fake's stream arrives intact through either path (the comment aside)", function()
    local sse = openai_stream({})
    local got, ended = run(gw, "/v1/chat/completions", CHAT, sse, false, 7)
    assert.equal("eof", ended)
    -- Lua's SSE reader drops comment-only events; everything else passes byte for byte
    assert.equal(as_sent(sse), got)
  end)

  for _, piece in ipairs({ 1, 7, "event", 100000 }) do
    it("an OpenAI stream without usage: the same bytes and the same estimate, in pieces of " .. piece, function()
      local sse = openai_stream({})
      local b, eb, la, lb = both(gw, "/v1/chat/completions", CHAT, sse, piece)
      assert.equal("eof", eb)
      assert.equal("oa-lua", la.route)
      assert.equal("oa-c", lb.route)
      -- estimated from the text's characters: the relay counted the same text Lua did
      assert.is_true(la.completion_tokens > 20, tostring(la.completion_tokens))
      assert.equal(la.completion_tokens, lb.completion_tokens)
      assert.equal(la.prompt_tokens, lb.prompt_tokens)
      assert.is_number(lb.cost_usd)
      assert.equal(la.cost_usd, lb.cost_usd)
    end)
  end

  it("an OpenAI stream with usage asked for by the client: its usage, through either path", function()
    local sse = openai_stream({ usage = true })
    local b, _, la, lb = both(gw, "/v1/chat/completions", CHAT_USAGE, sse, "event")
    assert.truthy(b:find('"completion_tokens":57', 1, true))
    assert.equal(57, la.completion_tokens)
    assert.equal(57, lb.completion_tokens)
    assert.equal(11, lb.prompt_tokens)
  end)

  it("an OpenAI stream without stream_options: the usage chunk the gateway asked for is dropped", function()
    local sse = openai_stream({ usage = true })
    local b, _, la, lb = both(gw, "/v1/chat/completions", CHAT, sse, "event")
    assert.falsy(b:find('"usage":{', 1, true))
    assert.equal(57, la.completion_tokens)
    assert.equal(57, lb.completion_tokens)
  end)

  it("a provider error after relayed deltas: the deltas, the error event as it came, a cut stream", function()
    local sse = openai_stream({ error = true })
    local b, eb = both(gw, "/v1/chat/completions", CHAT, sse, "event")
    assert.equal("closed", eb)
    assert.truthy(b:find("more 20", 1, true))
    assert.truthy(b:find('"message":"overloaded mid-stream"', 1, true))
  end)

  it("an event that is not JSON after relayed deltas is never passed on", function()
    local sse = openai_stream({ garbage = true })
    local b, eb = both(gw, "/v1/chat/completions", CHAT, sse, "event")
    assert.equal("closed", eb)
    assert.falsy(b:find("this is not json", 1, true))
    assert.truthy(b:find("more 20", 1, true))
  end)

  it("a stream that ends after its finish reason without [DONE] gets one, through either path", function()
    local sse = openai_stream({ no_done = true })
    local b, eb = both(gw, "/v1/chat/completions", CHAT, sse, "event")
    assert.equal("eof", eb)
    assert.equal(as_sent(sse) .. "data: [DONE]\n\n", b)
  end)

  it("a long stream to a client that pauses reading arrives whole and in order", function()
    local block = {}
    for i = 1, 20 do block[i] = oa_delta("block text " .. i .. " ") end
    block = table.concat(block)
    local tail = FINISH .. "data: [DONE]\n\n"
    local times = 800   -- ~1.9 MB: more than the sockets and the write queue hold
    local bodies, lines = {}, {}
    for k, lua in ipairs({ true, false }) do
      n = n + 1
      local id = "relay-" .. n
      local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions", timeout = 30,
        headers = { ["Content-Type"] = "application/json", ["X-Request-Id"] = id,
                    ["x-path"] = lua and "lua" or "c", ["x-fake-sse"] = pct(block), ["x-fake-sse-repeat"] = tostring(times),
                    ["x-fake-sse-tail"] = pct(tail), ["x-fake-sse-piece"] = "65536" },
        body = CHAT })
      assert.equal(200, s.status)
      require("socket").sleep(0.5)   -- not reading: the socket buffers fill and the gateway pauses
      local got, ended = s:read_body(120)   -- generous: valgrind runs this too
      assert.equal("eof", ended)
      bodies[k], lines[k] = got, access_line(gw, id)
    end
    assert.equal(#block * times + #tail, #bodies[2])
    assert.equal(string.rep(block, times) .. tail, bodies[2])
    assert.equal(bodies[1], bodies[2])
    assert.equal(lines[1].completion_tokens, lines[2].completion_tokens)
  end)

  -- the relay holds the start of an event when the transfer ends: the rest, and the end, are Lua's
  it("a last event without its blank line ends the stream as through Lua, and the request is logged", function()
    for _, piece in ipairs({ "event", 5, 100000 }) do
      local sse = openai_stream({}):gsub("\n\n$", "\n")   -- "data: [DONE]\n"
      local b, eb, la, lb = both(gw, "/v1/chat/completions", CHAT, sse, piece)
      assert.equal("eof", eb)
      -- ended for the client, whose SSE parser would drop an event without its blank line
      assert.equal(as_sent(sse) .. "\n", b)
      assert.equal(la.completion_tokens, lb.completion_tokens)
    end
  end)

  it("a provider that closes in the middle of an event: an error event, no clean end, logged", function()
    local sse = openai_stream({}):gsub("data: %[DONE%]\n\n$", "") .. 'data: {"id":"c1","choi'
    for _, piece in ipairs({ "event", 5 }) do
      local b, eb, _, lb = both(gw, "/v1/chat/completions", CHAT, sse, piece)
      assert.equal("closed", eb)
      assert.truthy(b:find('"error"', 1, true))
      assert.equal(200, lb.status)
    end
    serves_on(gw)
  end)

  it("a client that leaves while the relay holds half an event: the request is logged", function()
    local block = {}
    for i = 1, 20 do block[i] = oa_delta("leaving " .. i .. " ") end
    block = table.concat(block)
    n = n + 1
    local id = "relay-" .. n
    local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions", timeout = 15,
      headers = { ["Content-Type"] = "application/json", ["X-Request-Id"] = id,
                  ["x-fake-sse"] = pct(block), ["x-fake-sse-repeat"] = "3000", ["x-fake-sse-piece"] = "65536" },
      body = CHAT })
    assert.equal(200, s.status)
    assert.is_string(s:read_event(10))
    s:close()
    local line = access_line(gw, id)
    assert.equal(200, line.status)   -- what the client was sent; it left midway
    assert.is_true(line.completion_tokens > 0)
    serves_on(gw)
  end)

  for _, piece in ipairs({ 3, 64, "event" }) do
    it("an Anthropic stream: the same bytes and usage through either path, in pieces of " .. piece, function()
      local sse = anthropic_stream()
      local b, eb, la, lb = both(gw, "/v1/messages", MESSAGES, sse, piece)
      assert.equal("eof", eb)
      assert.equal(sse, b)
      assert.equal("an-c", lb.route)
      assert.equal(42, la.completion_tokens)
      assert.equal(42, lb.completion_tokens)
      assert.equal(21, lb.prompt_tokens)
      assert.near((21 * 3 + 42 * 15) / 1e6, lb.cost_usd, 1e-12)
    end)
  end
end)
