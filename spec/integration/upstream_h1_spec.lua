-- The native HTTP/1.1 client for plain http:// providers (runtime/upstream_h1.c):
-- its connection pool (reuse, a provider closing idle connections, a reused
-- connection found dead), how answers are framed (chunked, close-delimited,
-- interim 1xx, HEAD-less bodies) and relayed, how broken answers are reported
-- (reset mid-body, malformed status line, oversized headers, a compressed
-- body it did not ask for), and the kill switch MOONGATE_UPSTREAM=curl.

local helpers = require "spec.support.helpers"
local socket  = require "socket"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = false
shutdown_timeout = "10s"
providers = {
  fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk-provider-secret" },
  slow = { type = "openai", base_url = "${UP}/v1", api_key = "sk", timeout = "400ms" },
}
backends = { main = { provider = "fake", model = false }, slow = { provider = "slow", model = false } }
routes = {
  { match = { path_prefix = "/v1", headers = { ["x-route"] = "slow" } }, backend = "slow" },
  { match = { path_prefix = "/v1" }, backend = "main" },
}
]]

local CHAT = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
local STREAM = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

local function pct(s)
  return (s:gsub("[^%w ,.:/{}\"_-]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

local function chat(gw, headers, opts)
  opts = opts or {}
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return helpers.http(gw.port, { method = "POST", path = opts.path or "/v1/chat/completions",
                                 headers = h, body = opts.body or CHAT, conn = opts.conn,
                                 timeout = opts.timeout or 10 })
end

-- A raw answer of the fake: the exact bytes, then (close) the connection closed.
local function raw(gw, bytes, close, opts)
  return chat(gw, { ["x-fake-raw"] = pct(bytes), ["x-fake-raw-close"] = close }, opts)
end

local function error_message(res)
  local obj = helpers.json(res)
  return obj.error and obj.error.message or ""
end

-- Starts a fake and a gateway using it; env for the gateway.
local function setup(env)
  local t = {}
  t.up = helpers.start_fake_upstream()
  t.gw = helpers.start_gateway(CONFIG, { vars = { UP = t.up.url }, env = env })
  return t
end

local function teardown(t)
  helpers.stop_and_check(t.gw)
end

-- What both transports must do alike: the native client for http://, and
-- libcurl under MOONGATE_UPSTREAM=curl.
for _, mode in ipairs({ "native", "curl" }) do
  describe("upstream transfers (" .. mode .. ")", function()
    local t, up, gw

    lazy_setup(function()
      t = setup(mode == "curl" and { MOONGATE_UPSTREAM = "curl" } or nil)
      up, gw = t.up, t.gw
    end)

    lazy_teardown(function() teardown(t) end)

    before_each(function() up:reset() end)

    it("sends the body whole and the provider's credentials, never Expect", function()
      local big = '{"model":"m","messages":[{"role":"user","content":"' .. string.rep("b", 3 * 1048576) .. '"}]}'
      assert.equal(200, chat(gw, nil, { body = big, timeout = 30 }).status)
      local r = up:requests()[1]
      assert.equal("127.0.0.1:" .. up.port, r.headers.host)
      assert.equal(tostring(#big), r.headers["content-length"])
      assert.equal("Bearer sk-provider-secret", r.headers.authorization)
      assert.is_nil(r.headers.expect)
      assert.is_nil(r.headers["transfer-encoding"])
      assert.equal(big, r.body)
    end)

    it("passes a body without a Content-Type on without one (no transport's default)", function()
      local res = helpers.http(gw.port, { method = "POST", path = "/v1/files", body = "raw bytes" })
      assert.equal(200, res.status)
      local r = up:requests()[1]
      assert.equal("raw bytes", r.body)
      assert.is_nil(r.headers["content-type"])
      -- and one the client sent as it sent it
      up:reset()
      helpers.http(gw.port, { method = "POST", path = "/v1/files", body = "x",
        headers = { ["Content-Type"] = "application/octet-stream" } })
      assert.equal("application/octet-stream", up:requests()[1].headers["content-type"])
    end)

    it("keeps the query string and sends a GET without a body", function()
      local res = helpers.http(gw.port, { method = "GET", path = "/v1/models?limit=2&x=y" })
      assert.equal(200, res.status)
      local r = up:requests()[1]
      assert.equal("/v1/models?limit=2&x=y", r.path)
      assert.is_nil(r.headers["content-length"])
      assert.equal("", r.body)
    end)

    it("carries sequential requests over one provider connection", function()
      local conn = helpers.connect(gw.port)   -- one worker, whose pool is its own
      for i = 1, 12 do
        local res = chat(gw, nil, { conn = conn, body = i % 3 == 0 and STREAM or CHAT })
        assert.equal(200, res.status)
        assert.is_nil(res.incomplete)
        if i % 3 == 0 then assert.truthy(res.body:find("[DONE]", 1, true)) end
      end
      conn:close()
      local stats = up:stats()
      assert.equal(12, stats.requests)
      assert.equal(1, stats.connections)
    end)

    it("sends a request again on a new connection when a reused one closes unanswered", function()
      local conn = helpers.connect(gw.port)
      assert.equal(200, chat(gw, nil, { conn = conn }).status)
      local res = chat(gw, { ["x-fake-drop"] = "reused" }, { conn = conn })
      assert.equal(200, res.status)
      assert.equal("fake reply", helpers.json(res).choices[1].message.content)
      conn:close()
      local reqs = up:requests()
      assert.equal(2, #reqs)
      assert.are_not.equal(reqs[1].conn, reqs[2].conn)
    end)

    it("does not reuse a connection answered with Connection: close", function()
      local conn = helpers.connect(gw.port)
      local body = '{"ok":1}'
      assert.equal(200, raw(gw, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: " .. #body
        .. "\r\n\r\n" .. body, nil, { conn = conn }).status)
      assert.equal(200, chat(gw, nil, { conn = conn }).status)
      assert.equal(200, chat(gw, nil, { conn = conn }).status)
      conn:close()
      local reqs = up:requests()
      assert.equal(3, #reqs)
      assert.are_not.equal(reqs[1].conn, reqs[2].conn)
      assert.equal(reqs[2].conn, reqs[3].conn)
    end)

    it("relays a chunked answer decoded and intact, and reuses its connection", function()
      local parts = { '{"id":"chunked",', '"text":"', string.rep("c", 20000), '","n":', '12345678901234567890}' }
      local wire = { "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" }
      for i, p in ipairs(parts) do
        wire[#wire + 1] = string.format("%x", #p) .. (i == 2 and ";ext=1" or "") .. "\r\n" .. p .. "\r\n"
      end
      wire[#wire + 1] = "0\r\nX-Trailer: t\r\n\r\n"
      local conn = helpers.connect(gw.port)
      local res = raw(gw, table.concat(wire), nil, { conn = conn })
      assert.equal(200, res.status)
      assert.is_nil(res.incomplete)
      assert.equal(table.concat(parts), res.body)
      assert.is_nil(res.headers["x-trailer"])
      assert.equal(200, chat(gw, nil, { conn = conn }).status)
      conn:close()
      local reqs = up:requests()
      assert.equal(reqs[1].conn, reqs[2].conn)
    end)

    it("relays a close-delimited answer larger than the gateway's buffers intact", function()
      local size = 3 * 1048576
      local res = helpers.http(gw.port, { method = "POST", path = "/v1/files", timeout = 30,
        headers = { ["x-fake-size"] = tostring(size), ["x-fake-no-length"] = "1" }, body = "{}" })
      assert.equal(200, res.status)
      assert.is_nil(res.incomplete)
      assert.equal(size, #res.body)
      assert.equal(string.rep("x", size), res.body)
    end)

    it("skips an interim 100 Continue and answers the final response", function()
      local body = '{"after":"continue"}'
      local res = raw(gw, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
      assert.equal(200, res.status)
      assert.equal(body, res.body)
    end)

    it("takes a status line without a reason phrase", function()
      for _, line in ipairs({ "HTTP/1.1 200 ", "HTTP/1.1 200" }) do
        local res = raw(gw, line .. "\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        assert.equal(200, res.status)
        assert.equal("{}", res.body)
      end
    end)

    it("passes the provider's status and headers", function()
      local body = '{"error":{"message":"nope","type":"x"}}'
      local res = raw(gw, "HTTP/1.1 418 I'm a teapot\r\nContent-Type: application/json\r\nX-Up:  padded  \r\n"
        .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
      assert.equal(418, res.status)
      assert.equal("padded", res.headers["x-up"])
      assert.equal(body, res.body)
    end)

    it("answers 502 malformed for a malformed status line, naming the target", function()
      local res = raw(gw, "HTTP/1.1 OK\r\nContent-Length: 2\r\n\r\n{}", "1")
      assert.equal(502, res.status)
      local msg = error_message(res)
      assert.truthy(msg:find("upstream fake failed: malformed", 1, true), msg)
    end)

    it("answers 502 reset for a connection closed before any answer", function()
      local res = chat(gw, { ["x-fake-drop"] = "1" })
      assert.equal(502, res.status)
      assert.truthy(error_message(res):find("upstream fake failed: reset", 1, true), error_message(res))
    end)

    it("answers 502 reset when the provider resets the connection in a buffered answer", function()
      local res = raw(gw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        .. '{"partial":', "reset")
      assert.equal(502, res.status)
      assert.truthy(error_message(res):find("upstream fake failed: reset", 1, true), error_message(res))
    end)

    it("cuts the client's answer when the provider resets the connection mid-body", function()
      local res = helpers.http(gw.port, { method = "POST", path = "/v1/files", body = "{}",
        headers = { ["x-fake-raw"] = pct("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
          .. string.rep("y", 5000)), ["x-fake-raw-close"] = "reset" } })
      assert.equal(200, res.status)
      assert.equal("closed", res.incomplete)
      assert.truthy(#res.body < 100000)
      helpers.wait_until(function()
        return gw:log():find("failed mid-response: reset", 1, true)
      end, 10, "no 'failed mid-response: reset' in the log")
    end)

    it("answers 504 when the provider takes longer than the attempt's timeout", function()
      local t0 = socket.gettime()
      local res = chat(gw, { ["x-route"] = "slow", ["x-fake-delay-ms"] = "3000" })
      assert.equal(504, res.status)
      assert.truthy(socket.gettime() - t0 < 2.5)
      assert.truthy(error_message(res):find("timed out", 1, true), error_message(res))
    end)

    it("ends a stream reset by the provider with an error event and no clean end", function()
      local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions", timeout = 10,
        headers = { ["Content-Type"] = "application/json", ["x-fake-close-after-first"] = "reset" },
        body = STREAM })
      assert.equal(200, s.status)
      assert.is_string(s:read_event(10))
      local rest, reason = s:read_all(10)
      assert.equal("closed", reason)
      assert.truthy(#rest >= 1, "no error event after the reset")
      assert.truthy(rest[#rest]:find("failed: reset", 1, true), rest[#rest])
    end)

  end)
end

describe("native upstream client", function()
  local t, up, gw

  lazy_setup(function()
    t = setup(nil)
    up, gw = t.up, t.gw
  end)

  lazy_teardown(function() teardown(t) end)

  before_each(function() up:reset() end)

  -- (libcurl, reusing the connection at once, sometimes answers 502 reset here)
  it("serves the next request when the provider closed the idle connection", function()
    local conn = helpers.connect(gw.port)
    assert.equal(200, chat(gw, { ["x-fake-close-after"] = "1" }, { conn = conn }).status)
    -- whether the gateway saw the close before the next request or only after
    -- sending it, the next request is answered
    assert.equal(200, chat(gw, nil, { conn = conn }).status)
    socket.sleep(0.2)
    assert.equal(200, chat(gw, { ["x-fake-close-after"] = "1" }, { conn = conn }).status)
    socket.sleep(0.2)
    assert.equal(200, chat(gw, nil, { conn = conn }).status)
    conn:close()
    local stats = up:stats()
    assert.equal(4, stats.requests)
    assert.equal(3, stats.connections)
  end)

  it("asks for identity in place of any Accept-Encoding, and sends Accept", function()
    assert.equal(200, chat(gw, { ["Accept-Encoding"] = "gzip" }).status)
    local r = up:requests()[1]
    assert.equal("identity", r.headers["accept-encoding"])
    assert.equal("*/*", r.headers.accept)
    assert.equal("application/json", r.headers["content-type"])
  end)

  it("answers 502 malformed for a compressed body it did not ask for", function()
    local res = raw(gw, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd")
    assert.equal(502, res.status)
    assert.truthy(error_message(res):find("failed: malformed", 1, true))
  end)

  it("answers 502 malformed for a header section over 64 KB", function()
    local res = chat(gw, { ["x-fake-pad-header"] = tostring(70 * 1024) })
    assert.equal(502, res.status)
    assert.truthy(error_message(res):find("failed: malformed", 1, true))
    assert.equal(200, chat(gw, { ["x-fake-pad-header"] = tostring(32 * 1024) }).status)
  end)

  it("does not reuse a connection answered in HTTP/1.0", function()
    local conn = helpers.connect(gw.port)
    local body = '{"ok":1}'
    assert.equal(200, raw(gw, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: " .. #body
      .. "\r\n\r\n" .. body, nil, { conn = conn }).status)
    assert.equal(200, chat(gw, nil, { conn = conn }).status)
    conn:close()
    local reqs = up:requests()
    assert.are_not.equal(reqs[1].conn, reqs[2].conn)
  end)

  it("answers 502 connect-failure for a port nobody listens on", function()
    local dead = helpers.start_gateway(CONFIG, { vars = { UP = "http://127.0.0.1:" .. helpers.free_port() } })
    local res = chat(dead)
    assert.equal(0, dead:stop())
    assert.equal(502, res.status)
    assert.truthy(error_message(res):find("failed: connect-failure", 1, true), error_message(res))
  end)

  it("resolves a host name, trying each of its addresses", function()
    -- localhost may resolve to ::1 first, where the fake does not listen
    local named = helpers.start_gateway(CONFIG, { vars = { UP = "http://localhost:" .. up.port } })
    local res = chat(named)
    assert.equal(0, named:stop())
    assert.equal(200, res.status)
    assert.equal("localhost:" .. up.port, up:requests()[1].headers.host)
  end)
end)
