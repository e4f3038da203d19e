-- Hardening of the client side beyond bad_input_spec: more smuggling shapes,
-- every client-controlled size (docs/security.md), slow senders and slow
-- readers, max_connections, and read-ahead of pipelined bytes. Each refusal
-- is followed by a normal request: the gateway keeps serving.

local helpers = require "spec.support.helpers"
local socket  = require "socket"

local CHAT = '{"model":"client-model","messages":[{"role":"user","content":"hi"}]}'

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = false
shutdown_timeout = "5s"
limits = { max_body = "1MB", max_header = "64KB", header_timeout = "1s", idle_timeout = "1s" }
providers = { fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk" } }
backends = { main = { provider = "fake", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = { { name = "big", handler = { on_request = function(ctx)
  local n = tonumber(ctx.request.headers["x-big"])
  if n then return gw.respond(200, string.rep("x", n)) end   -- one write of n bytes
end } } }
]]

local function raw_status(bytes)
  return tonumber(bytes:match("^HTTP/1%.%d (%d%d%d)"))
end

local HEAD = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

describe("hardening", function()
  local up, gw

  local function assert_still_serving()
    local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions",
      headers = { ["Content-Type"] = "application/json" }, body = CHAT })
    assert.equal(200, res.status, "the gateway stopped serving: " .. tostring(res.body))
  end

  -- bytes are refused with status (and message part), the connection closed,
  -- nothing sent upstream
  local function refused(bytes, status, part)
    up:reset()
    local out, closed = helpers.raw(gw.port, bytes, { timeout = 5 })
    assert.equal(status, raw_status(out), out)
    if part then assert.matches(part, out, 1, true) end
    assert.matches("connection: close", out, 1, true)
    assert.is_true(closed, "connection left open")
    assert.equal(0, #up:requests(), "something reached the provider")
    assert_still_serving()
  end

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    up:stop()
    helpers.stop_and_check(gw)
  end)

  describe("request smuggling", function()
    it("refuses a header line ended by a bare LF", function()
      refused(HEAD .. "X-A: b\nContent-Length: 2\r\n\r\n{}", 400, "malformed request")
    end)

    it("refuses a request line ended by a bare LF", function()
      refused("POST /v1/chat/completions HTTP/1.1\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 400,
              "bare LF")
    end)

    it("refuses a bare CR inside a header value", function()
      refused(HEAD .. "X-A: b\rContent-Length: 99\r\nContent-Length: 2\r\n\r\n{}", 400, "malformed request")
    end)

    it("refuses a folded Transfer-Encoding after an empty first line", function()
      refused(HEAD .. "Transfer-Encoding:\r\n chunked\r\nContent-Length: 2\r\n\r\n{}", 400)
      refused(HEAD .. "Transfer-Encoding:\r\n chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, "folding")
    end)

    it("serves a request with an empty header value (what an SDK sends for a header set to \"\")", function()
      up:reset()
      local out = helpers.raw(gw.port, HEAD .. "X-Empty:\r\nOpenAI-Organization: \r\nContent-Length: " ..
        #CHAT .. "\r\n\r\n" .. CHAT, { timeout = 5 })
      assert.equal(200, raw_status(out), out)
      local got = up:requests()
      assert.equal(1, #got)
      assert.is_nil(got[1].headers["x-empty"])   -- not sent on (docs/http.md), as libcurl would not
    end)

    it("refuses Transfer-Encoding before Content-Length as after it", function()
      refused(HEAD .. "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400)
    end)

    it("refuses two equal Content-Lengths, a signed one, a list", function()
      refused(HEAD .. "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400)
      refused(HEAD .. "Content-Length: +2\r\n\r\n{}", 400)
      refused(HEAD .. "Content-Length: 2, 2\r\n\r\n{}", 400)
      refused(HEAD .. "Content-Length : 2\r\n\r\n{}", 400)
    end)

    it("refuses a transfer coding other than a final chunked", function()
      refused(HEAD .. "Transfer-Encoding: gzip\r\n\r\n{}", 400)
      refused(HEAD .. "Transfer-Encoding: chunked, gzip\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400)
    end)

    it("refuses bad chunk framing: overflow, negative, 0x, missing CRLF, bare LF", function()
      local te = HEAD .. "Transfer-Encoding: chunked\r\n\r\n"
      refused(te .. "ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", 400)
      refused(te .. "-2\r\n{}\r\n0\r\n\r\n", 400)
      refused(te .. "0x2\r\n{}\r\n0\r\n\r\n", 400)
      refused(te .. "2\r\n{}XX0\r\n\r\n", 400)
      refused(te .. "2\n{}\r\n0\r\n\r\n", 400)
    end)

    it("refuses a request without Host or with two", function()
      refused("GET /v1/models HTTP/1.1\r\n\r\n", 400, "no Host header")
      refused("GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host header")
    end)

    it("refuses other HTTP versions and CONNECT", function()
      refused("GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n", 400)
      refused("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400)
      refused("CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n", 501, "CONNECT")
    end)

    it("serves an Upgrade request as plain HTTP, then closes: nothing after it is read", function()
      up:reset()
      local out, closed = helpers.raw(gw.port,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        .. "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: smuggled\r\n\r\n", { timeout = 5 })
      assert.equal(200, raw_status(out), out)
      assert.matches("connection: close", out, 1, true)
      assert.is_nil(out:find("smuggled", 1, true), out)
      assert.is_true(closed)
      assert.equal(1, #up:requests())
    end)

    it("drops trailers: a header sent after the body never reaches plugins or the provider", function()
      up:reset()
      local out = helpers.raw(gw.port, HEAD .. "Transfer-Encoding: chunked\r\n\r\n"
        .. string.format("%x\r\n%s\r\n", #CHAT, CHAT) .. "0\r\nX-Late: 1\r\nAuthorization: Bearer x\r\n\r\n",
        { timeout = 5, until_pattern = "chat%.completion" })
      assert.equal(200, raw_status(out), out)
      local reqs = up:requests()
      assert.equal(1, #reqs)
      assert.is_nil(reqs[1].headers["x-late"])
    end)
  end)

  describe("client-controlled sizes", function()
    it("answers a request target over 8 KB with 414", function()
      refused("GET /v1/models?q=" .. string.rep("a", 8200) .. " HTTP/1.1\r\nHost: x\r\n\r\n", 414,
              "uri_too_long")
    end)

    it("serves a request target just under 8 KB", function()
      up:reset()
      local res = helpers.http(gw.port, { path = "/v1/models?q=" .. string.rep("a", 8000) })
      assert.equal(200, res.status)
    end)

    it("answers more than 256 header fields with 431", function()
      local h = {}
      for i = 1, 300 do h[#h + 1] = "X-H" .. i .. ": v\r\n" end
      refused("GET /v1/models HTTP/1.1\r\nHost: x\r\n" .. table.concat(h) .. "\r\n", 431,
              "too many request headers")
    end)

    it("answers a chunk extension over 1 KB with 400", function()
      refused(HEAD .. "Transfer-Encoding: chunked\r\n\r\n2;ext=" .. string.rep("e", 1100) .. "\r\n{}\r\n0\r\n\r\n",
              400, "chunk extension")
    end)

    it("answers trailers that push the header section over max_header with 431", function()
      refused(HEAD .. "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: " .. string.rep("t", 66000)
              .. "\r\n\r\n", 431)
    end)

    it("answers a chunk announced over max_body with 413 before its bytes", function()
      local out = helpers.raw(gw.port, HEAD .. "Transfer-Encoding: chunked\r\n\r\n200000\r\n",
                              { timeout = 5, until_pattern = "\r\n\r\n" })
      assert.equal(413, raw_status(out), out)
      assert_still_serving()
    end)

    it("reads ahead at most 64 KB of pipelined bytes, and answers everything in order", function()
      up:reset()
      local big = '{"model":"m","pad":"' .. string.rep("p", 600 * 1024) .. '"}'
      local bytes = HEAD .. "X-Request-Id: first\r\nx-fake-delay-ms: 300\r\nContent-Length: 2\r\n\r\n{}"
        .. HEAD .. "X-Request-Id: second\r\nContent-Length: " .. #big .. "\r\n\r\n" .. big
      local conn = helpers.connect(gw.port)
      assert.truthy(conn:send(bytes))
      local r1 = helpers.read_response(conn)
      local r2 = helpers.read_response(conn)
      conn:close()
      assert.equal("first", r1.headers["x-request-id"])
      assert.equal("second", r2.headers["x-request-id"])
      assert.equal(200, r2.status)
      assert.equal(#big, #up:requests()[2].body)
    end)
  end)

  describe("slow clients", function()
    it("answers a body that trickles below the rate floor with 408", function()
      local conn = helpers.connect(gw.port)
      local t0 = socket.gettime()
      assert.truthy(conn:send(HEAD .. "Content-Length: 100000\r\n\r\n{"))
      -- one byte every 0.2 s: never idle_timeout (1 s) without a byte, but far below 16 KB/s
      local closed_at
      helpers.wait_until(function()
        if conn:closed(0.2) then closed_at = socket.gettime() return true end
        conn:send("a")
        return false
      end, 10, "the trickling body cut off")
      local elapsed = closed_at - t0
      assert.matches("^HTTP/1.1 408", conn.buf)
      assert.matches("request body not received in time", conn.buf, 1, true)
      conn:close()
      assert.truthy(elapsed >= 0.8 and elapsed < 5, string.format("cut after %.2fs", elapsed))
      assert_still_serving()
    end)

    it("keeps a client that reads a big answer slowly but steadily", function()
      local SIZE = 16 * 1048576
      local conn = helpers.connect(gw.port)
      assert.truthy(conn:send("GET /v1/models HTTP/1.1\r\nHost: x\r\nx-big: " .. SIZE .. "\r\n\r\n"))
      local t0, got = socket.gettime(), 0
      -- 256 KB every 50 ms: the one 16 MB write takes seconds, far over idle_timeout (1 s)
      while got < SIZE and socket.gettime() - t0 < 30 do
        socket.sleep(0.05)
        conn.sock:settimeout(0)
        local data, err, partial = conn.sock:receive(262144)
        got = got + #(data or partial or "")
        if err == "closed" then break end
      end
      local elapsed = socket.gettime() - t0
      conn:close()
      assert.is_true(got >= SIZE, "got " .. got .. " of " .. SIZE .. " bytes in " .. elapsed .. "s")
      assert.is_true(elapsed > 1.5, string.format("read in %.2fs: too fast to show anything", elapsed))
    end)

    it("closes a client that reads nothing of a big answer, with memory bounded", function()
      up:reset()
      local SIZE = 64 * 1048576
      local rss = function()
        local st = helpers.read_file("/proc/" .. gw.proc.pid .. "/status") or ""
        return tonumber(st:match("VmRSS:%s*(%d+)"))
      end
      local before = rss()
      local conn = helpers.connect(gw.port)
      assert.truthy(conn:send("POST /v1/files HTTP/1.1\r\nHost: x\r\nx-fake-size: " .. SIZE
        .. "\r\nContent-Length: 2\r\n\r\n{}"))
      helpers.wait_until(function()
        return gw:log():find("read nothing for idle_timeout; closing", 1, true)
      end, 20, "the stalled reader closed")
      local grown = rss() - before
      assert.is_true(grown < 32 * 1024, "the gateway grew by " .. grown .. " KB")
      local sent = up:stats().size_sent
      assert.is_true(sent < SIZE / 2, "the provider wrote " .. sent .. " bytes")
      local res = helpers.read_response(conn, { timeout = 30 })
      assert.equal("closed", res.incomplete)
      assert.is_true(#res.body < SIZE)
      conn:close()
      assert_still_serving()
    end)
  end)
end)

describe("max_connections", function()
  local up, gw

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway([[
listen = { "127.0.0.1:${PORT}" }
admin = { listen = "127.0.0.1:${ADMIN_PORT}" }
access_log = false
limits = { max_connections = 2, header_timeout = "20s", idle_timeout = "20s" }
providers = { fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk" } }
backends = { main = { provider = "fake", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
]], { vars = { UP = up.url } })
  end)

  lazy_teardown(function()
    up:stop()
    helpers.stop_and_check(gw)
  end)

  it("closes a connection over the limit at once, and accepts again when one leaves", function()
    -- wait until the readiness probe's connection is gone
    local c1, c2
    helpers.wait_until(function()
      if c1 then c1:close() end
      if c2 then c2:close() end
      c1 = helpers.connect(gw.port)
      c2 = helpers.connect(gw.port)
      -- long enough for a slow (valgrind) gateway to refuse them if the last pair still counted
      return not c1:closed(1) and not c2:closed(1)
    end, 20, "two connections held open")
    local c3 = helpers.connect(gw.port)
    assert.is_true(c3:closed(5), "a third connection stayed open")
    assert.equal("", c3.buf)
    c3:close()
    assert.matches("refused, max_connections (2) reached", gw:log(), 1, true)
    -- the admin listener's connections are not among them: the probes still answer
    assert.equal(200, helpers.http(gw.admin_port, { path = "/health", timeout = 5 }).status)
    assert.equal(200, helpers.http(gw.admin_port, { path = "/ready", timeout = 5 }).status)
    -- the held ones still work
    local res = helpers.http(gw.port, { conn = c1, path = "/v1/models" })
    assert.equal(200, res.status)
    c2:close()
    helpers.wait_until(function()
      local ok, r = pcall(helpers.http, gw.port, { path = "/v1/models", timeout = 2 })
      return ok and r.status == 200
    end, 10, "a new connection served once one left")
    c1:close()
  end)
end)
