-- Streamed answers (stream: true): events reach the client as they arrive,
-- from an OpenAI-type provider (the fake upstream) and from the in-process
-- mock provider; a stream cut by the provider ends with an error event and
-- no clean end.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = "stdout"
shutdown_timeout = "10s"

providers = {
  fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk-provider-secret" },
  mock = { type = "mock", latency = "5ms", interval = "5ms", chunks = 4,
           text = "one two three four five six" },
}

backends = {
  main = { provider = "fake", model = "gpt-4o-mini" },
  mocked = { provider = "mock", model = "mock-model" },
}

routes = {
  { match = { path_prefix = "/v1", headers = { ["x-route"] = "mock" } }, backend = "mocked" },
  { match = { path_prefix = "/v1" }, backend = "main" },
}
]]

local STREAM_BODY = '{"model":"client-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'

local function open_stream(port, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return helpers.stream(port, { method = "POST", path = "/v1/chat/completions",
                                headers = h, body = STREAM_BODY, timeout = 10 })
end

local function data_of(ev)
  return helpers.parse_sse(ev).data
end

local function content_of(ev)
  local obj = cjson.decode(data_of(ev) or "")
  assert.is_table(obj, "event data is not JSON: " .. tostring(ev))
  local choice = obj.choices and obj.choices[1]
  return choice and choice.delta and choice.delta.content, obj
end

describe("streaming", function()
  local up, gw

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    if up then up:reset() end   -- lets any held stream go
    helpers.stop_and_check(gw)
  end)

  before_each(function()
    up:reset()
  end)

  it("forwards the first event before the provider sends the rest", function()
    local s = open_stream(gw.port, { ["x-fake-hold"] = "first" })
    assert.equal(200, s.status)
    assert.matches("text/event-stream", s.headers["content-type"], 1, true)
    assert.equal("chunked", (s.headers["transfer-encoding"] or ""):lower())
    assert.is_nil(s.headers["content-length"])
    assert.equal("fake/gpt-4o-mini", s.headers["x-moongate-target"])
    assert.equal(32, #(s.headers["x-request-id"] or ""))

    -- The fake is holding everything after its first event.
    local ev, err = s:read_event(10)
    assert.is_string(ev, "first event not forwarded while the provider holds the rest: "
                         .. tostring(err))
    local content, obj = content_of(ev)
    assert.equal("fake", content)
    assert.equal("gpt-4o-mini", obj.model)
    -- Nothing else has been produced yet, so nothing else may have arrived.
    local none, why = s:read_event(0)
    assert.is_nil(none)
    assert.equal("timeout", why)

    assert.equal(1, up:release("first").waiting)
    local rest, reason = s:read_all(10)
    assert.equal("eof", reason)
    assert.equal(3, #rest)
    assert.equal(" reply", (content_of(rest[1])))
    local _, last_obj = content_of(rest[2])
    assert.equal("stop", last_obj.choices[1].finish_reason)
    assert.equal("[DONE]", data_of(rest[3]))
    assert.is_nil(s.leftover)

    -- The upstream got stream: true and the target's model.
    local reqs = up:requests()
    assert.equal(1, #reqs)
    -- byte-exact but for the model and the usage request the gateway splices in
    -- (it drops the extra usage chunk again when the client did not ask for it)
    assert.equal((STREAM_BODY:gsub('"client%-model"', '"gpt-4o-mini"'):gsub("}$",
      ',"stream_options":{"include_usage":true}}')), reqs[1].body)
  end)

  it("keeps the client connection usable after a complete stream", function()
    local conn = helpers.connect(gw.port)
    local res = helpers.http(gw.port, {
      conn = conn, method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" }, body = STREAM_BODY,
    })
    assert.equal(200, res.status)
    assert.is_nil(res.incomplete)
    assert.matches("data: %[DONE%]\n\n$", res.body)
    local res2 = helpers.http(gw.port, {
      conn = conn, method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" },
      body = '{"model":"x","messages":[]}',
    })
    assert.equal(200, res2.status)
    assert.equal("fake reply", helpers.json(res2).choices[1].message.content)
    conn:close()
  end)

  it("streams from the in-process mock provider, ending with [DONE]", function()
    local s = open_stream(gw.port, { ["x-route"] = "mock" })
    assert.equal(200, s.status)
    assert.matches("text/event-stream", s.headers["content-type"], 1, true)
    assert.equal("chunked", (s.headers["transfer-encoding"] or ""):lower())
    assert.equal("mock/mock-model", s.headers["x-moongate-target"])
    local events, reason = s:read_all(10)
    assert.equal("eof", reason)
    assert.truthy(#events >= 3, "too few events: " .. #events)
    assert.equal("[DONE]", data_of(events[#events]))
    local text = {}
    for i = 1, #events - 1 do
      local content, obj = content_of(events[i])
      assert.equal("chat.completion.chunk", obj.object)
      if content then text[#text + 1] = content end
    end
    assert.equal("one two three four five six", table.concat(text))
    assert.truthy(#text >= 2, "the mock's text came in one event")
  end)

  it("answers the mock provider without stream as one JSON body", function()
    local res = helpers.http(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", ["x-route"] = "mock" },
      body = '{"model":"client-model","messages":[{"role":"user","content":"hi"}]}',
    })
    assert.equal(200, res.status)
    local body = helpers.json(res)
    assert.equal("chat.completion", body.object)
    assert.equal("one two three four five six", body.choices[1].message.content)
  end)

  it("streams Anthropic messages from the mock provider in Anthropic's event format", function()
    local s = helpers.stream(gw.port, {
      method = "POST", path = "/v1/messages",
      headers = { ["Content-Type"] = "application/json", ["x-route"] = "mock",
                  ["anthropic-version"] = "2023-06-01" },
      body = '{"model":"claude","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}',
    })
    assert.equal(200, s.status)
    assert.matches("text/event-stream", s.headers["content-type"], 1, true)
    local events, reason = s:read_all(10)
    assert.equal("eof", reason)
    local names, text = {}, {}
    for _, e in ipairs(events) do
      local p = helpers.parse_sse(e)
      names[#names + 1] = p.event
      local obj = cjson.decode(p.data or "")
      assert.is_table(obj, e)
      assert.equal(p.event, obj.type)
      if p.event == "content_block_delta" then text[#text + 1] = obj.delta.text end
    end
    assert.equal("message_start", names[1])
    assert.equal("message_stop", names[#names])
    assert.equal("one two three four five six", table.concat(text))
  end)

  it("answers a mock failure in the client's format", function()
    local res = helpers.http(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", ["x-route"] = "mock", ["x-mock-fail"] = "503" },
      body = STREAM_BODY,
    })
    assert.equal(503, res.status)
    assert.is_table(helpers.json(res).error)
    local res2 = helpers.http(gw.port, {
      method = "POST", path = "/v1/messages",
      headers = { ["Content-Type"] = "application/json", ["x-route"] = "mock", ["x-mock-fail"] = "503" },
      body = '{"model":"claude","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}',
    })
    assert.equal(503, res2.status)
    local obj = helpers.json(res2)
    assert.equal("error", obj.type)
    assert.is_table(obj.error)
  end)

  it("ends a stream cut by the provider with an error event and no clean end", function()
    local s = open_stream(gw.port, { ["x-fake-close-after-first"] = "1" })
    assert.equal(200, s.status)
    local first = s:read_event(10)
    assert.is_string(first)
    assert.equal("fake", (content_of(first)))
    local rest, reason = s:read_all(10)
    assert.equal("closed", reason, "the stream ended cleanly after the provider cut it")
    assert.truthy(#rest >= 1, "no error event after the cut")
    local last = cjson.decode(data_of(rest[#rest]) or "")
    assert.is_table(last, "last event is not JSON: " .. tostring(rest[#rest]))
    assert.is_table(last.error, "last event is not an error: " .. tostring(rest[#rest]))
    assert.is_string(last.error.message)
    for _, ev in ipairs(rest) do
      assert.are_not.equal("[DONE]", data_of(ev))
    end
  end)

  -- a provider answering a stream with exactly these events (chunked, never ended)
  local function raw_stream(events)
    local out = { "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" }
    for _, ev in ipairs(events) do out[#out + 1] = string.format("%x\r\n%s\r\n", #ev, ev) end
    return (table.concat(out):gsub("[^%w]", function(c) return string.format("%%%02X", c:byte()) end))
  end
  local FIRST = 'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"fake"}}]}\n\n'

  it("ends with the provider's own error event, as it came, when it fails mid-stream", function()
    local perr = 'data: {"error":{"message":"overloaded mid-stream","type":"server_error","code":"overloaded"}}\n\n'
    local s = open_stream(gw.port, { ["x-fake-raw"] = raw_stream({ FIRST, perr }) })
    assert.equal(200, s.status)
    assert.equal("fake", (content_of(s:read_event(10))))
    local rest, reason = s:read_all(10)
    assert.equal("closed", reason, "the stream ended cleanly after the provider's error")
    assert.equal(1, #rest, table.concat(rest, "|"))
    assert.equal(perr, rest[1] .. "\n\n")   -- byte for byte: the client's SDK raises the provider's error
  end)

  it("never passes on an event that is not JSON: the stream ends with the gateway's error", function()
    local s = open_stream(gw.port, { ["x-fake-raw"] = raw_stream({ FIRST, "data: {not json\n\n",
      'data: {"choices":[]}\n\n' }) })
    assert.equal(200, s.status)
    assert.equal("fake", (content_of(s:read_event(10))))
    local rest, reason = s:read_all(10)
    assert.equal("closed", reason)
    assert.equal(1, #rest, table.concat(rest, "|"))
    local last = cjson.decode(data_of(rest[1]) or "")
    assert.is_table(last and last.error, rest[1])
    assert.matches("malformed", last.error.message, 1, true)
  end)

  it("answers a provider error before the first event as a plain JSON error", function()
    local res = helpers.http(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", ["x-fake-status"] = "400" },
      body = STREAM_BODY,
    })
    assert.equal(400, res.status)
    assert.matches("application/json", res.headers["content-type"] or "", 1, true)
    assert.is_table(helpers.json(res).error)
  end)

  it("answers pipelined requests in order when the first is a stream", function()
    local plain = '{"model":"m","messages":[]}'
    local function req(id, body, extra)
      return "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: " .. id
             .. "\r\nContent-Type: application/json\r\n" .. (extra or "")
             .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
    end
    local conn = helpers.connect(gw.port)
    assert.truthy(conn:send(req("p-stream", STREAM_BODY, "x-fake-chunk-delay-ms: 50\r\n")
                            .. req("p-plain", plain)))
    local r1 = helpers.read_response(conn)
    local r2 = helpers.read_response(conn)
    conn:close()
    assert.equal("p-stream", r1.headers["x-request-id"])
    assert.is_nil(r1.incomplete)
    assert.matches("data: %[DONE%]\n\n$", r1.body)
    assert.equal("p-plain", r2.headers["x-request-id"])
    assert.equal("fake reply", helpers.json(r2).choices[1].message.content)
  end)

  it("streams to an HTTP/1.0 client without chunking, ending with the close", function()
    local out, closed = helpers.raw(gw.port, "POST /v1/chat/completions HTTP/1.0\r\n"
      .. "Content-Type: application/json\r\nContent-Length: " .. #STREAM_BODY .. "\r\n\r\n"
      .. STREAM_BODY, { timeout = 10 })
    assert.is_true(closed)
    assert.matches("^HTTP/1%.[01] 200", out)
    local head, body = out:match("^(.-\r\n\r\n)(.*)$")
    assert.is_string(head, out)
    assert.is_nil(head:lower():find("transfer-encoding", 1, true), head)
    assert.matches("text/event-stream", head, 1, true)
    assert.matches("^data: {", body)
    assert.matches("data: %[DONE%]\n\n$", body)
  end)

  it("keeps serving after cut streams", function()
    local s = open_stream(gw.port, { ["x-fake-close-after-first"] = "1" })
    s:read_all(10)
    local res = helpers.http(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" }, body = STREAM_BODY,
    })
    assert.equal(200, res.status)
    assert.matches("data: %[DONE%]\n\n$", res.body)
  end)
end)
