-- The test harness checked against itself: the fake upstream served to the
-- HTTP client, the stream reader and the raw socket helper. If these pass,
-- a failing integration spec points at the gateway, not at the harness.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"

describe("harness: fake upstream", function()
  local up

  setup(function()
    up = helpers.start_fake_upstream()
  end)

  teardown(function()
    helpers.cleanup()
  end)

  before_each(function()
    up:reset()
  end)

  it("prints its port and answers a canned chat completion", function()
    assert.is_number(up.port)
    local res = helpers.http(up.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" },
      body = '{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}',
    })
    assert.equal(200, res.status)
    assert.matches("application/json", res.headers["content-type"], 1, true)
    assert.equal(tostring(#res.body), res.headers["content-length"])
    local body = helpers.json(res)
    assert.equal("chatcmpl-fake", body.id)
    assert.equal("chat.completion", body.object)
    assert.equal("gpt-test", body.model)
    assert.equal("fake reply", body.choices[1].message.content)
    assert.equal("stop", body.choices[1].finish_reason)
    assert.same({ prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 }, body.usage)
  end)

  it("lists models", function()
    local res = helpers.http(up.port, { path = "/v1/models" })
    assert.equal(200, res.status)
    local body = helpers.json(res)
    assert.equal("list", body.object)
    assert.truthy(#body.data > 0)
  end)

  it("records a chunked request body byte-exact, with the query and lowercased headers", function()
    local body = '{"model":"m","seed":12345678901234567890,"tools":[],"x":1.50}'
    -- Split awkwardly so chunk boundaries fall inside tokens.
    local a, b, c = body:sub(1, 7), body:sub(8, 30), body:sub(31)
    local framed = string.format("%x\r\n%s\r\n%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n",
                                 #a, a, #b, b, #c, c)
    local res = helpers.http(up.port, {
      method = "POST", path = "/v1/chat/completions?api-version=2024-10-21",
      headers = { ["Transfer-Encoding"] = "chunked", ["X-Custom-Thing"] = "Value" },
      body = framed,
    })
    assert.equal(200, res.status)

    local reqs = up:requests()
    assert.equal(1, #reqs)
    assert.equal("POST", reqs[1].method)
    assert.equal("/v1/chat/completions?api-version=2024-10-21", reqs[1].path)
    assert.equal(body, reqs[1].body)
    assert.equal("Value", reqs[1].headers["x-custom-thing"])
    assert.equal("chunked", reqs[1].headers["transfer-encoding"])
    assert.is_number(reqs[1].conn)
  end)

  it("records a Content-Length body byte-exact", function()
    local body = '{"n":98765432109876543210,"a":[],"s":"\\u00e9"}'
    helpers.http(up.port, { method = "POST", path = "/v1/embeddings", body = body })
    local reqs = up:requests()
    assert.equal(1, #reqs)
    assert.equal(body, reqs[1].body)
    assert.equal(tostring(#body), reqs[1].headers["content-length"])
  end)

  it("serves several requests on one kept-alive connection and counts it once", function()
    local conn = helpers.connect(up.port)
    for i = 1, 3 do
      local res = helpers.http(nil, { conn = conn, method = "POST", path = "/v1/chat/completions",
                                      body = '{"model":"m' .. i .. '"}' })
      assert.equal(200, res.status)
      assert.equal("m" .. i, helpers.json(res).model)
      assert.is_false(conn:closed())
    end
    -- A second connection is counted separately.
    helpers.http(up.port, { method = "POST", path = "/v1/chat/completions", body = "{}" })
    local stats = up:stats()
    assert.equal(2, stats.connections)
    assert.equal(4, stats.requests)
    local reqs = up:requests()
    assert.equal(reqs[1].conn, reqs[3].conn)
    assert.are_not.equal(reqs[1].conn, reqs[4].conn)

    conn:close()
    assert.is_true(conn:closed())
  end)

  it("answers the status asked for with x-fake-status, as an OpenAI error", function()
    local res = helpers.http(up.port, {
      method = "POST", path = "/v1/chat/completions", body = "{}",
      headers = { ["x-fake-status"] = "503", ["x-fake-retry-after"] = "7" },
    })
    assert.equal(503, res.status)
    assert.equal("7", res.headers["retry-after"])
    local body = helpers.json(res)
    assert.is_table(body.error)
    assert.is_string(body.error.message)
  end)

  it("answers x-fake-body verbatim, and without Content-Length when asked", function()
    local res = helpers.http(up.port, {
      method = "POST", path = "/v1/chat/completions", body = "{}",
      headers = { ["x-fake-body"] = "not json at all", ["x-fake-content-type"] = "text/plain" },
    })
    assert.equal(200, res.status)
    assert.equal("not json at all", res.body)
    assert.equal("text/plain", res.headers["content-type"])

    res = helpers.http(up.port, {
      method = "POST", path = "/v1/chat/completions", body = '{"model":"nl"}',
      headers = { ["x-fake-no-length"] = "1" },
    })
    assert.equal(200, res.status)
    assert.is_nil(res.headers["content-length"])
    assert.is_nil(res.headers["transfer-encoding"])
    assert.equal("close", res.framing)
    assert.equal("nl", helpers.json(res).model)
  end)

  it("delays one answer without blocking others", function()
    local gettime = require("socket").gettime
    local t0 = gettime()
    local slow = helpers.connect(up.port)
    assert(slow:send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" ..
                     "x-fake-delay-ms: 1500\r\nContent-Length: 2\r\n\r\n{}"))
    -- Make sure the delayed request is in before the fast one.
    helpers.wait_until(function() return #up:requests() == 1 end, 5, "delayed request recorded")
    local fast = helpers.http(up.port, { path = "/v1/models" })
    assert.equal(200, fast.status)
    assert.truthy(gettime() - t0 < 1.4, "the fast request waited for the slow one")

    local res = helpers.read_response(slow, { timeout = 10 })
    assert.equal(200, res.status)
    assert.truthy(gettime() - t0 >= 1.45)
    slow:close()
  end)

  it("streams SSE events as chunks ending with [DONE] and a clean end", function()
    local s = helpers.stream(up.port, {
      method = "POST", path = "/v1/chat/completions",
      body = '{"model":"sm","stream":true}',
    })
    assert.equal(200, s.status)
    assert.matches("text/event-stream", s.headers["content-type"], 1, true)
    assert.equal("chunked", s.headers["transfer-encoding"])
    local events, why = s:read_all(10)
    assert.equal("eof", why)
    assert.equal(4, #events)
    local text = {}
    for i = 1, 3 do
      local ev = helpers.parse_sse(events[i])
      local chunk = assert(cjson.decode(ev.data))
      assert.equal("chat.completion.chunk", chunk.object)
      assert.equal("sm", chunk.model)
      text[#text + 1] = chunk.choices[1].delta.content or ""
    end
    assert.equal("fake reply", table.concat(text))
    assert.equal("data: [DONE]", events[4])
  end)

  it("holds a stream after its first event until released from another connection", function()
    local s = helpers.stream(up.port, {
      method = "POST", path = "/v1/chat/completions", body = '{"stream":true}',
      headers = { ["x-fake-hold"] = "h1" },
    })
    assert.equal(200, s.status)
    local first = assert(s:read_event(5))
    assert.matches("^data: {", first)

    -- Held: nothing more arrives, while other connections are still served.
    local ev, err = s:read_event(0.3)
    assert.is_nil(ev)
    assert.equal("timeout", err)
    assert.equal(200, helpers.http(up.port, { path = "/v1/models" }).status)
    ev, err = s:read_event(0.1)
    assert.is_nil(ev)
    assert.equal("timeout", err)

    local rel = up:release("h1")
    assert.equal(1, rel.waiting)

    local rest, why = s:read_all(5)
    assert.equal("eof", why)
    assert.equal(3, #rest)
    assert.equal("data: [DONE]", rest[3])
  end)

  it("closes a stream after its first event without the terminating chunk", function()
    local s = helpers.stream(up.port, {
      method = "POST", path = "/v1/chat/completions", body = '{"stream":true}',
      headers = { ["x-fake-close-after-first"] = "1" },
    })
    assert.equal(200, s.status)
    assert.matches("^data: {", assert(s:read_event(5)))
    local ev, err = s:read_event(5)
    assert.is_nil(ev)
    assert.equal("closed", err)

    -- The same seen through the plain client: a body cut short.
    local res = helpers.http(up.port, {
      method = "POST", path = "/v1/chat/completions", body = '{"stream":true}',
      headers = { ["x-fake-close-after-first"] = "1" },
    })
    assert.equal(200, res.status)
    assert.equal("closed", res.incomplete)
    assert.matches("^data: {", res.body)
    assert.is_nil(res.body:find("[DONE]", 1, true))
  end)

  it("serves many concurrent connections, one of them held", function()
    local held = helpers.stream(up.port, {
      method = "POST", path = "/v1/chat/completions", body = '{"stream":true}',
      headers = { ["x-fake-hold"] = "many" },
    })
    assert(held:read_event(5))
    local conns = {}
    for i = 1, 40 do conns[i] = helpers.connect(up.port) end
    for i = 40, 1, -1 do
      local res = helpers.http(nil, { conn = conns[i], method = "POST",
                                      path = "/v1/chat/completions", body = "{}" })
      assert.equal(200, res.status)
    end
    for i = 1, 40 do conns[i]:close() end
    up:release("many")
    local rest, why = held:read_all(5)
    assert.equal("eof", why)
    assert.equal(3, #rest)
  end)

  it("reports a malformed request with a 400 and a close, via raw bytes", function()
    local out, closed = helpers.raw(up.port, "NONSENSE\r\n\r\n", { timeout = 5 })
    assert.is_true(closed)
    assert.matches("^HTTP/1.1 400 ", out)
  end)

  it("answers raw bytes on a kept-alive connection, stopping at until_pattern", function()
    local out, closed = helpers.raw(up.port,
      { "GET /v1/models HTTP/1.1\r\n", "Host: x\r\n\r\n" },
      { timeout = 5, pause = 0.05, until_pattern = '"list"' })
    assert.is_false(closed)
    assert.matches("^HTTP/1.1 200 OK\r\n", out)
  end)
end)

describe("harness: processes", function()
  teardown(function()
    helpers.cleanup()
  end)

  it("runs a command and returns its exit code and output", function()
    local code, out = helpers.run({ "sh", "-c", "echo out; echo err >&2; exit 3" })
    assert.equal(3, code)
    assert.matches("out\n", out, 1, true)
    assert.matches("err\n", out, 1, true)
  end)

  it("passes the environment and times out", function()
    local code, out = helpers.run({ "sh", "-c", 'printf "%s" "$HARNESS_X"' },
                                  { env = { HARNESS_X = "yes" } })
    assert.equal(0, code)
    assert.equal("yes", out)
    code, out = helpers.run({ "sleep", "30" }, { timeout = 0.3 })
    assert.is_nil(code)
    assert.matches("killed after", out, 1, true)
  end)

  it("spawns, signals and reaps a process", function()
    local p = helpers.spawn({ "sleep", "30" })
    assert.is_true(p:alive())
    assert.is_nil(p:wait(0.1))
    p:kill()
    local code, how = p:wait(5)
    assert.equal(128 + 15, code)
    assert.equal("killed", how)
    assert.is_false(p:alive())
  end)

  it("gives a temporary directory under spec/tmp and frees ports", function()
    local dir = helpers.tmpdir()
    assert.equal(helpers.root .. "/spec/tmp/", dir:sub(1, #helpers.root + 10))
    helpers.write_file(dir .. "/x", "y")
    assert.equal("y", helpers.read_file(dir .. "/x"))
    local port = helpers.free_port()
    assert.truthy(port > 0 and port < 65536)
  end)

  it("wait_until polls until true and fails with the message", function()
    local n = 0
    assert.equal(3, helpers.wait_until(function() n = n + 1; return n >= 3 and n end, 5))
    local ok, err = pcall(helpers.wait_until, function() return false end, 0.1, "never true")
    assert.is_false(ok)
    assert.matches("never true", err, 1, true)
  end)

  it("fails clearly when the gateway binary is missing or exits early", function()
    local stdlib = require "posix.stdlib"
    local old = os.getenv("MOONGATE_BIN")
    finally(function() stdlib.setenv("MOONGATE_BIN", old) end)

    stdlib.setenv("MOONGATE_BIN", helpers.root .. "/spec/tmp/no-such-moongate")
    local ok, err = pcall(helpers.start_gateway, "listen = { '127.0.0.1:${PORT}' }")
    assert.is_false(ok)
    assert.matches("gateway binary not found", err, 1, true)

    -- A "gateway" that dies at once: its output is in the error.
    local dir = helpers.tmpdir()
    local fake_bin = dir .. "/dies"
    helpers.write_file(fake_bin, "#!/bin/sh\necho \"bad config: $2\"\nexit 1\n")
    os.execute("chmod +x '" .. fake_bin .. "'")
    stdlib.setenv("MOONGATE_BIN", fake_bin)
    ok, err = pcall(helpers.start_gateway, "listen = { '127.0.0.1:${PORT}:${UP}' }",
                    { vars = { UP = 4242 } })
    assert.is_false(ok)
    assert.matches("exited (code 1) before becoming ready", err, 1, true)
    assert.matches("bad config: " .. helpers.root .. "/spec/tmp/", err, 1, true)
    local cfg = helpers.read_file(err:match("bad config: (%S+)"))
    assert.matches("^listen = { '127.0.0.1:%d+:4242' }$", cfg)

    -- Unknown placeholders are refused before anything starts.
    ok, err = pcall(helpers.start_gateway, "x = '${NOPE}'")
    assert.is_false(ok)
    assert.matches("${NOPE}", err, 1, true)
  end)

  it("starts a gateway stand-in, waiting for the main port or the admin /ready", function()
    local stdlib = require "posix.stdlib"
    local old = os.getenv("MOONGATE_BIN")
    finally(function() stdlib.setenv("MOONGATE_BIN", old) end)
    -- The stand-in "gateway" is the fake upstream listening on the port
    -- named in the config (it answers GET /ready with 200).
    local dir = helpers.tmpdir()
    local fake_bin = dir .. "/gw"
    helpers.write_file(fake_bin, string.format(
      "#!/bin/sh\nport=$(sed -n 's/^port=//p' \"$2\")\nexec %s %s/spec/support/fake_upstream.lua \"$port\"\n",
      os.getenv("LUAJIT") or "luajit", helpers.root))
    os.execute("chmod +x '" .. fake_bin .. "'")
    stdlib.setenv("MOONGATE_BIN", fake_bin)

    -- No ${ADMIN_PORT} in the config: ready when the main port accepts.
    local gw = helpers.start_gateway("port=${PORT}\n")
    assert.is_nil(gw.admin_port)
    assert.equal(200, helpers.http(gw.port, { path = "/v1/models" }).status)
    assert.matches("listening " .. gw.port, gw:log(), 1, true)
    assert.equal(128 + 15, gw:stop())
    assert.is_false(gw.proc:alive())

    -- With ${ADMIN_PORT}: ready when GET /ready answers 200 there.
    gw = helpers.start_gateway("port=${ADMIN_PORT}\nmain=${PORT}\n")
    assert.is_number(gw.admin_port)
    assert.equal(200, helpers.http(gw.admin_port, { path = "/ready" }).status)
    assert.matches("main=" .. gw.port, helpers.read_file(gw.config_path), 1, true)
    assert.equal(128 + 15, gw:stop())
  end)

end)
