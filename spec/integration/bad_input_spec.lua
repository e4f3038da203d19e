-- Bad input from clients and failures the gateway must report: each answer
-- has the right status and error shape, and the gateway keeps serving (every
-- case is followed by a normal request on the same gateway).

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"
local socket  = require "socket"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = "stdout"
shutdown_timeout = "10s"
limits = { max_body = "1KB", max_header = "2KB", header_timeout = "1s", idle_timeout = "2s" }

providers = {
  fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk-provider-secret" },
  dead = { type = "openai", base_url = "http://127.0.0.1:${DEAD_PORT}/v1", api_key = "sk-dead" },
}

backends = {
  main = { provider = "fake", model = "gpt-4o-mini" },
  gone = { provider = "dead", model = "gpt-4o-mini" },
}

routes = {
  { match = { path_prefix = "/v1", headers = { ["x-route"] = "gone" } }, backend = "gone" },
  { match = { path_prefix = "/v1" }, backend = "main" },
}

plugins = {
  { name = "exploder", handler = { on_request = function(ctx)
      if ctx.request.headers["x-explode"] then error("kaboom-secret-detail") end
    end } },
}
]]

local CHAT = '{"model":"client-model","messages":[{"role":"user","content":"hi"}]}'

local function post(port, body, headers, path)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return helpers.http(port, { method = "POST", path = path or "/v1/chat/completions",
                              headers = h, body = body })
end

-- An OpenAI-shaped error: {"error":{"message","type","code"}}.
local function assert_openai_error(res, status)
  assert.equal(status, res.status, res.body)
  assert.matches("application/json", res.headers["content-type"] or "", 1, true)
  local obj = helpers.json(res)
  assert.is_table(obj.error, res.body)
  assert.is_string(obj.error.message, res.body)
  assert.is_string(obj.error.type, res.body)
  assert.is_not_nil(obj.error.code, "error.code missing: " .. res.body)
  assert.is_nil(obj.type, res.body)
  return obj.error
end

local function assert_anthropic_error(res, status)
  assert.equal(status, res.status, res.body)
  local obj = helpers.json(res)
  assert.equal("error", obj.type, res.body)
  assert.is_table(obj.error, res.body)
  assert.is_string(obj.error.type, res.body)
  assert.is_string(obj.error.message, res.body)
  return obj.error
end

-- The raw answer's status code, or nil.
local function raw_status(bytes)
  return tonumber(bytes:match("^HTTP/1%.%d (%d%d%d)"))
end

describe("bad input", function()
  local up, gw

  local function assert_still_serving()
    local res = post(gw.port, CHAT)
    assert.equal(200, res.status, "the gateway stopped serving: " .. tostring(res.body))
    assert.equal("fake reply", helpers.json(res).choices[1].message.content)
  end

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, DEAD_PORT = helpers.free_port() } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  before_each(function()
    up:reset()
  end)

  it("answers invalid JSON with 400 in OpenAI's error shape", function()
    local res = post(gw.port, '{"model":"x","messages":[')
    local e = assert_openai_error(res, 400)
    assert.equal("invalid_request_error", e.type)
    assert.equal(0, #up:requests(), "invalid JSON was sent upstream")
    assert.is_string(res.headers["x-request-id"])
    assert_still_serving()
  end)

  it("answers invalid JSON on /v1/messages with 400 in Anthropic's error shape", function()
    local res = post(gw.port, '{"model": "claude", "max_tokens": 5, nope}',
                     { ["anthropic-version"] = "2023-06-01" }, "/v1/messages")
    local e = assert_anthropic_error(res, 400)
    assert.equal("invalid_request_error", e.type)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("answers an unrouted path with 404 in the error shape", function()
    local res = post(gw.port, CHAT, nil, "/nowhere/chat/completions")
    assert_openai_error(res, 404)
    local res2 = helpers.http(gw.port, { path = "/" })
    assert_openai_error(res2, 404)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("answers 502 naming the target when the provider is unreachable", function()
    local t0 = socket.gettime()
    local res = post(gw.port, CHAT, { ["x-route"] = "gone" })
    local e = assert_openai_error(res, 502)
    assert.matches("dead/gpt-4o-mini", e.message, 1, true)
    assert.truthy(socket.gettime() - t0 < 8, "a refused connection took too long to report")
    assert.is_nil(res.body:find("sk-dead", 1, true))
    assert_still_serving()
  end)

  it("answers 502 in Anthropic's shape on /v1/messages when the provider is unreachable", function()
    local res = post(gw.port, '{"model":"claude","max_tokens":5,"messages":[]}',
                     { ["x-route"] = "gone" }, "/v1/messages")
    local e = assert_anthropic_error(res, 502)
    assert.matches("dead/gpt-4o-mini", e.message, 1, true)
    assert_still_serving()
  end)

  it("refuses Content-Length together with Transfer-Encoding and closes", function()
    local out, closed = helpers.raw(gw.port,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
      .. string.format("%x\r\n%s\r\n0\r\n\r\n", #CHAT, CHAT), { timeout = 5 })
    assert.equal(400, raw_status(out), out)
    assert.is_true(closed, "connection left open after a smuggling attempt")
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("refuses two different Content-Lengths", function()
    local out, closed = helpers.raw(gw.port,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "Content-Length: " .. #CHAT .. "\r\nContent-Length: 3\r\n\r\n" .. CHAT, { timeout = 5 })
    assert.equal(400, raw_status(out), out)
    assert.is_true(closed)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("refuses an obs-fold header continuation", function()
    local out, closed = helpers.raw(gw.port,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "X-Folded: first\r\n  second\r\nContent-Length: " .. #CHAT .. "\r\n\r\n" .. CHAT,
      { timeout = 5 })
    assert.equal(400, raw_status(out), out)
    assert.is_true(closed)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("refuses a garbage request line with 400 and closes", function()
    local out, closed = helpers.raw(gw.port, "HELLO THERE\r\n\r\n", { timeout = 5 })
    assert.equal(400, raw_status(out), out)
    assert.is_true(closed)
    assert_still_serving()
  end)

  it("refuses a non-numeric Content-Length with 400", function()
    local out, closed = helpers.raw(gw.port,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12x\r\n\r\n" .. CHAT,
      { timeout = 5 })
    assert.equal(400, raw_status(out), out)
    assert.is_true(closed)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("refuses a bad chunk size with 400", function()
    local out, closed = helpers.raw(gw.port,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "Transfer-Encoding: chunked\r\n\r\nzz\r\n" .. CHAT .. "\r\n0\r\n\r\n", { timeout = 5 })
    assert.equal(400, raw_status(out), out)
    assert.is_true(closed)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("sends nothing upstream for a client that leaves in the middle of its body", function()
    local conn = helpers.connect(gw.port)
    assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      .. "Content-Type: application/json\r\nContent-Length: " .. #CHAT .. "\r\n\r\n"
      .. CHAT:sub(1, 10)))
    conn:close()
    assert_still_serving()
    assert.equal(1, #up:requests())
  end)

  it("serves a client that sends its headers slowly within header_timeout", function()
    local head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      .. "Content-Type: application/json\r\nContent-Length: " .. #CHAT .. "\r\n\r\n"
    local pieces = { head:sub(1, 20), head:sub(21, 50), head:sub(51), CHAT }
    local out = helpers.raw(gw.port, pieces, { pause = 0.15, timeout = 5, until_pattern = "fake reply" })
    assert.equal(200, raw_status(out), out)
  end)

  it("answers a request line over max_header with 414 or 431", function()
    local res = post(gw.port, CHAT, nil, "/v1/chat/completions?pad=" .. string.rep("p", 3000))
    assert.truthy(res.status == 431 or res.status == 414, "status " .. res.status)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("answers a header section over max_header with 431", function()
    local res = post(gw.port, CHAT, { ["X-Big"] = string.rep("a", 3000) })
    assert_openai_error(res, 431)
    assert.equal(0, #up:requests())
    -- Many small headers count too.
    local many = {}
    for i = 1, 60 do many["X-Filler-" .. i] = string.rep("b", 40) end
    local res2 = post(gw.port, CHAT, many)
    assert.equal(431, res2.status)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("serves a header section just under max_header", function()
    local res = post(gw.port, CHAT, { ["X-Big"] = string.rep("a", 1500) })
    assert.equal(200, res.status)
    assert.equal(string.rep("a", 1500), up:requests()[1].headers["x-big"])
  end)

  it("answers a body over max_body by Content-Length with 413", function()
    local big = '{"model":"m","messages":[{"role":"user","content":"' .. string.rep("x", 1100) .. '"}]}'
    local res = post(gw.port, big)
    assert_openai_error(res, 413)
    assert.equal(0, #up:requests())
    assert.matches("^%x+$", res.headers["x-request-id"] or "")   -- one of its own
    -- the client's own id, as on every other answer
    res = post(gw.port, big, { ["X-Request-Id"] = "mine-413" })
    assert.equal(413, res.status)
    assert.equal("mine-413", res.headers["x-request-id"])
    assert_still_serving()
  end)

  it("answers a body over max_body by Content-Length with 413 before reading it", function()
    -- Only the head is sent: the size is known from Content-Length.
    local out = helpers.raw(gw.port,
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      .. "Content-Length: 1000000\r\n\r\n", { timeout = 5, until_pattern = "\r\n\r\n" })
    assert.equal(413, raw_status(out), out)
    assert_still_serving()
  end)

  it("answers a chunked body over max_body with 413", function()
    local piece = string.rep("y", 400)
    local framed = {}
    for i = 1, 4 do framed[i] = string.format("%x\r\n%s\r\n", #piece, piece) end
    framed[#framed + 1] = "0\r\n\r\n"
    local res = helpers.http(gw.port, {
      method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json", ["Transfer-Encoding"] = "chunked" },
      body = table.concat(framed),
    })
    assert_openai_error(res, 413)
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("serves a body just under max_body", function()
    local body = '{"model":"m","messages":[{"role":"user","content":"'
    body = body .. string.rep("z", 1000 - #body - 4) .. '"}]}'
    assert.equal(1000, #body)
    local res = post(gw.port, body)
    assert.equal(200, res.status)
    assert.equal((body:gsub('"m"', '"gpt-4o-mini"', 1)), up:requests()[1].body)
  end)

  it("closes a client that never finishes its headers after header_timeout", function()
    local conn = helpers.connect(gw.port)
    local t0 = socket.gettime()
    assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "))
    -- Keep trickling bytes: the header deadline is for the whole section.
    local closed_at
    helpers.wait_until(function()
      if conn:closed(0.1) then closed_at = socket.gettime() return true end
      conn:send("a")
      return false
    end, 8, "connection closed by header_timeout")
    local elapsed = closed_at - t0
    conn:close()
    assert.truthy(elapsed >= 0.8, string.format("closed too early: after %.2fs", elapsed))
    assert.truthy(elapsed < 5, string.format("closed too late: after %.2fs", elapsed))
    assert_still_serving()
  end)

  it("closes a connection that never sends anything", function()
    local conn = helpers.connect(gw.port)
    local t0 = socket.gettime()
    assert.is_true(conn:closed(6), "silent connection still open after 6s (header_timeout 1s, idle 2s)")
    local elapsed = socket.gettime() - t0
    conn:close()
    assert.truthy(elapsed >= 0.8, string.format("closed too early: after %.2fs", elapsed))
    assert_still_serving()
  end)

  it("closes a client that stalls in the middle of its body", function()
    local conn = helpers.connect(gw.port)
    local t0 = socket.gettime()
    assert.truthy(conn:send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      .. "Content-Type: application/json\r\nContent-Length: " .. #CHAT .. "\r\n\r\n"
      .. CHAT:sub(1, 10)))
    assert.is_true(conn:closed(8), "stalled upload still open after 8s (idle_timeout 2s)")
    local elapsed = socket.gettime() - t0
    conn:close()
    assert.truthy(elapsed >= 0.8, string.format("closed too early: after %.2fs", elapsed))
    assert.equal(0, #up:requests())
    assert_still_serving()
  end)

  it("answers 500 when a plugin raises, naming the plugin in the log only", function()
    local res = post(gw.port, CHAT, { ["x-explode"] = "1", ["X-Request-Id"] = "explode-1" })
    local e = assert_openai_error(res, 500)
    assert.is_nil(res.body:find("exploder", 1, true), "plugin name shown to the client")
    assert.is_nil(res.body:find("kaboom", 1, true), "plugin error shown to the client")
    assert.is_string(e.message)
    assert.equal(0, #up:requests())
    helpers.wait_until(function()
      local log = gw:log()
      for line in log:gmatch("[^\n]+") do
        if line:find("exploder", 1, true) and line:find("kaboom-secret-detail", 1, true) then
          return true
        end
      end
    end, 5, "plugin name and error in the gateway log")
    assert_still_serving()
  end)
end)
