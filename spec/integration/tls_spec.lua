-- TLS: listeners with certificates and SNI (mbedTLS, runtime/tls.c), the
-- versions refused, HTTP over TLS as over TCP (keep-alive, pipelining,
-- streams, back-pressure), certificates re-read on reload and refused when
-- broken; and upstream TLS through libcurl (verified, ca_file, insecure).
--
-- Certificates are made for each run with the openssl command line (EC
-- P-256, self-signed) in the test's own temporary folder; luasec is not
-- available, so the clients are curl and openssl s_client.

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"
local socket  = require "socket"

local CHAT = '{"model":"x","messages":[{"role":"user","content":"hi"}]}'

local function run(argv, timeout)
  return helpers.run(argv, { timeout = timeout or 20 })
end

-- A self-signed certificate for cn (with SANs) as dir/<name>.pem and dir/<name>.key.
local function make_cert(dir, name, cn, sans)
  local code, out = run({ "openssl", "req", "-x509", "-newkey", "ec",
    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
    "-keyout", dir .. "/" .. name .. ".key", "-out", dir .. "/" .. name .. ".pem",
    "-subj", "/CN=" .. cn, "-addext", "subjectAltName=" .. sans })
  assert(code == 0, "openssl req failed: " .. tostring(out))
end

-- curl over HTTPS: code, output (body on stdout; -v diagnostics with verbose)
local function curl(args, timeout)
  local argv = { "curl", "-sS", "--max-time", "10" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return run(argv, timeout)
end

-- The subject CN the server presents for servername (nil: no SNI sent).
local function served_cn(port, servername)
  local argv = { "openssl", "s_client", "-connect", "127.0.0.1:" .. port }
  if servername then
    argv[#argv + 1] = "-servername"
    argv[#argv + 1] = servername
  else
    argv[#argv + 1] = "-noservername"
  end
  local _, out = run(argv)
  return out:match("subject=CN%s*=%s*([%w%.%-%*]+)"), out
end

local function metric(admin_port, line)
  local res = helpers.http(admin_port, { path = "/metrics" })
  return tonumber(res.body:match(line:gsub("[%-%.%[%]%(%)%+%*%?%^%$]", "%%%0") .. " (%d+)")) or 0
end

local function gateway_config(extra)
  return [[
listen = { { address = "127.0.0.1:${PORT}", tls = { cert = "default.pem", key = "default.key",
             sni = { ["api.test"] = { cert = "api.pem", key = "api.key" },
                     ["*.wild.test"] = { cert = "wild.pem", key = "wild.key" } } } } }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-token" }
workers = 2
access_log = false
limits = { header_timeout = "2s", idle_timeout = "5s" }
providers = { m = { type = "mock" },
              fake = { type = "openai", base_url = "http://127.0.0.1:${UP_PORT}/v1", api_key = "sk" } }
backends = { main = { provider = "m", model = "mock-model" }, fake = { provider = "fake", model = false } }
routes = { { match = { path_prefix = "/v1", headers = { ["x-route"] = "fake" } }, backend = "fake" },
           { match = { path_prefix = "/v1" }, backend = "main" } }
]] .. (extra or "")
end

local function reload(gw)
  local res = helpers.http(gw.admin_port, { method = "POST", path = "/admin/reload",
    headers = { Authorization = "Bearer admin-token" } })
  return res.status, cjson.decode(res.body) or {}
end

describe("TLS listener", function()
  local gw, up, dir, url

  lazy_setup(function()
    dir = helpers.tmpdir()
    make_cert(dir, "default", "default.test", "DNS:default.test,IP:127.0.0.1")
    make_cert(dir, "api", "api.test", "DNS:api.test")
    make_cert(dir, "wild", "wild.test", "DNS:*.wild.test")
    up = helpers.start_fake_upstream()
    gw = helpers.start_gateway(gateway_config(), { dir = dir, vars = { UP_PORT = up.port } })
    url = "https://127.0.0.1:" .. gw.port
  end)

  lazy_teardown(function()
    up:stop()
    helpers.stop_and_check(gw)
  end)

  it("serves HTTPS with the configured certificate, TLS 1.2, ECDHE AEAD and ALPN http/1.1", function()
    local code, out = curl({ "-v", "--cacert", dir .. "/default.pem", url .. "/v1/chat/completions",
                             "-H", "content-type: application/json", "-d", CHAT })
    assert.equal(0, code, out)
    assert.matches('"object":"chat.completion"', out, 1, true)
    assert.matches("SSL connection using TLSv1.2 / ECDHE%-ECDSA%-[%w%-]+", out)
    assert.truthy(out:find("AES128-GCM", 1, true) or out:find("AES256-GCM", 1, true)
                  or out:find("CHACHA20-POLY1305", 1, true), out)
    assert.matches("ALPN: server accepted http/1.1", out, 1, true)
  end)

  it("picks the certificate by SNI, with the default for none or an unknown name", function()
    assert.equal("api.test", (served_cn(gw.port, "api.test")))
    assert.equal("api.test", (served_cn(gw.port, "API.Test")))
    assert.equal("wild.test", (served_cn(gw.port, "a.wild.test")))
    assert.equal("default.test", (served_cn(gw.port, "a.b.wild.test")))
    assert.equal("default.test", (served_cn(gw.port, "unknown.test")))
    assert.equal("default.test", (served_cn(gw.port, nil)))
    -- and a client that verifies the name is satisfied
    local code, out = curl({ "--cacert", dir .. "/api.pem", "--resolve", "api.test:" .. gw.port .. ":127.0.0.1",
                             "https://api.test:" .. gw.port .. "/v1/models" })
    assert.equal(0, code, out)
    assert.matches('"object":"list"', out, 1, true)
  end)

  it("refuses TLS 1.0 and 1.1 and counts it", function()
    local before = metric(gw.admin_port, 'moongate_tls_errors_total{reason="version"}')
    for _, v in ipairs({ "-tls1", "-tls1_1" }) do
      local code, out = run({ "openssl", "s_client", "-connect", "127.0.0.1:" .. gw.port, v,
                              "-cipher", "DEFAULT@SECLEVEL=0" })
      assert.is_not.equal(0, code, out)
      assert.matches("alert protocol version", out, 1, true)
      assert.is_nil(out:find("Cipher is ECDHE", 1, true), out)
    end
    local code, out = run({ "openssl", "s_client", "-connect", "127.0.0.1:" .. gw.port, "-tls1_2" })
    assert.equal(0, code, out)
    assert.matches("Protocol%s*:%s*TLSv1.2", out)
    helpers.wait_until(function()
      return metric(gw.admin_port, 'moongate_tls_errors_total{reason="version"}') >= before + 2
    end, 5, "moongate_tls_errors_total{reason=\"version\"} counted")
  end)

  it("answers plain HTTP on the TLS port with a plain 400 and closes", function()
    local out, closed = helpers.raw(gw.port, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 5 })
    assert.matches("^HTTP/1.1 400 ", out)
    assert.matches("plain HTTP request sent to a TLS port", out, 1, true)
    assert.is_true(closed)
    helpers.wait_until(function()
      return metric(gw.admin_port, 'moongate_tls_errors_total{reason="plaintext_http"}') >= 1
    end, 5, "plaintext_http counted")
  end)

  it("closes a TLS connection whose handshake does not finish within header_timeout", function()
    local conn = helpers.connect(gw.port)
    local t0 = socket.gettime()
    assert.truthy(conn:send("\22\3\1\0\200"))   -- a record header promising a ClientHello
    assert.is_true(conn:closed(8), "half a handshake still open after 8s (header_timeout 2s)")
    local elapsed = socket.gettime() - t0
    conn:close()
    assert.truthy(elapsed >= 1.8, string.format("closed too early: %.2fs", elapsed))
    helpers.wait_until(function()
      return metric(gw.admin_port, 'moongate_tls_errors_total{reason="timeout"}') >= 1
    end, 5, "timeout counted")
    -- and one that sends nothing at all is counted too, and logged
    local before = metric(gw.admin_port, 'moongate_tls_errors_total{reason="timeout"}')
    local silent = helpers.connect(gw.port)
    assert.is_true(silent:closed(8), "a silent connection still open after 8s (header_timeout 2s)")
    silent:close()
    helpers.wait_until(function()
      return metric(gw.admin_port, 'moongate_tls_errors_total{reason="timeout"}') >= before + 1
    end, 5, "the silent connection's timeout counted")
    assert.matches("TLS handshake and first request not done in time", gw:log(), 1, true)
  end)

  it("keeps a TLS connection alive across requests", function()
    local code, out = curl({ "-v", "--cacert", dir .. "/default.pem", url .. "/v1/models", url .. "/v1/models" })
    assert.equal(0, code, out)
    assert.matches("Re%-using existing connection", out)
    local n = select(2, out:gsub('"object":"list"', ""))
    assert.equal(2, n)
  end)

  it("answers pipelined requests over TLS in order", function()
    local reqs = "GET /v1/models HTTP/1.1\\r\\nHost: x\\r\\nX-Request-Id: p-1\\r\\n\\r\\n"
              .. "POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\nX-Request-Id: p-2\\r\\n"
              .. "Content-Length: " .. #CHAT .. "\\r\\n\\r\\n" .. CHAT
              .. "GET /v1/models HTTP/1.1\\r\\nHost: x\\r\\nX-Request-Id: p-3\\r\\nConnection: close\\r\\n\\r\\n"
    local code, out = run({ "sh", "-c", "printf '" .. reqs .. "' | openssl s_client -quiet -connect 127.0.0.1:"
                            .. gw.port .. " 2>/dev/null" })
    assert.equal(0, code, out)
    local ids = {}
    for id in out:gmatch("x%-request%-id: (p%-%d)") do ids[#ids + 1] = id end
    assert.same({ "p-1", "p-2", "p-3" }, ids)
  end)

  it("streams event by event over TLS", function()
    up:reset()
    local log = dir .. "/stream.out"
    local p = helpers.spawn({ "curl", "-sSN", "--max-time", "20", "--cacert", dir .. "/default.pem",
      url .. "/v1/chat/completions", "-H", "x-route: fake", "-H", "x-fake-hold: tls-stream",
      "-H", "content-type: application/json",
      "-d", '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}' }, { log = log })
    -- the first event is through while the provider holds the rest
    helpers.wait_until(function() return (helpers.read_file(log) or ""):find("data: ", 1, true) end,
      10, "the first event over TLS")
    assert.is_nil((helpers.read_file(log) or ""):find("[DONE]", 1, true))
    up:release("tls-stream")
    assert.equal(0, p:wait(15))
    local out = helpers.read_file(log)
    assert.matches("data: %[DONE%]", out)
    assert.truthy(select(2, out:gsub("data: ", "")) >= 3, out)
  end)

  it("applies back-pressure over TLS: a client that stops reading stalls the provider", function()
    up:reset()
    local SIZE = 48 * 1048576
    local gate, log = dir .. "/gate", dir .. "/bp.out"
    -- curl writes into a pipe nobody reads until the gate file exists
    local p = helpers.spawn({ "sh", "-c", "curl -sS --max-time 60 --cacert " .. dir .. "/default.pem -H 'x-route: fake' "
      .. "-H 'x-fake-size: " .. SIZE .. "' -d '{}' " .. url .. "/v1/files | "
      .. "(while [ ! -e " .. gate .. " ]; do sleep 0.05; done; wc -c)" }, { log = log })
    local last, still = -1, 0
    helpers.wait_until(function()
      local sent = up:stats().size_sent
      if sent > 0 and sent == last then still = still + 1 else still = 0 end
      last = sent
      return still >= 5
    end, 30, "the provider never stalled")
    assert.is_true(last < SIZE / 2, "the provider wrote " .. last .. " of " .. SIZE .. " bytes")
    helpers.write_file(gate, "")
    assert.equal(0, p:wait(60))
    assert.equal(tostring(SIZE), (helpers.read_file(log) or ""):match("(%d+)"))
  end)

  it("uses a renewed certificate for new connections after a reload", function()
    make_cert(dir, "default", "renewed.test", "DNS:renewed.test,IP:127.0.0.1")
    local status, doc = reload(gw)
    assert.equal(200, status, cjson.encode(doc))
    assert.equal("renewed.test", (served_cn(gw.port, nil)))
    assert.equal("api.test", (served_cn(gw.port, "api.test")))
    local code, out = curl({ "--cacert", dir .. "/default.pem", url .. "/v1/models" })
    assert.equal(0, code, out)
  end)

  it("refuses a reload with a broken certificate, naming the file, and keeps the old ones", function()
    local good = helpers.read_file(dir .. "/api.pem")
    helpers.write_file(dir .. "/api.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    local status, doc = reload(gw)
    assert.equal(400, status)
    local errs = doc.error and doc.error.errors or {}
    assert.equal(1, #errs, cjson.encode(doc))
    assert.matches('listen[1].tls.sni["api.test"].cert: ' .. dir .. "/api.pem: ", errs[1], 1, true)
    assert.equal("api.test", (served_cn(gw.port, "api.test")))
    -- a key that does not match its certificate, through SIGHUP this time
    helpers.write_file(dir .. "/api.pem", good)
    local wild_key = helpers.read_file(dir .. "/wild.key")
    helpers.write_file(dir .. "/wild.key", helpers.read_file(dir .. "/api.key"))
    gw.proc:kill(require("posix.signal").SIGHUP)
    helpers.wait_until(function()
      return gw:log():find('listen[1].tls.sni["*.wild.test"].key: ' .. dir .. "/wild.key: the key does not match",
                          1, true)
    end, 10, "SIGHUP refusal logged with the key's path")
    assert.equal("wild.test", (served_cn(gw.port, "x.wild.test")))
    assert.is_nil(gw:log():find("BEGIN", 1, true), "key material in the log")
    helpers.write_file(dir .. "/wild.key", wild_key)
    assert.equal(200, (reload(gw)))
  end)
end)

describe("TLS listener start-up", function()
  local dir

  before_each(function()
    dir = helpers.tmpdir()
    make_cert(dir, "default", "default.test", "DNS:default.test")
    make_cert(dir, "other", "other.test", "DNS:other.test")
  end)

  after_each(function() helpers.cleanup() end)

  local function start(cert, key)
    local cfg = dir .. "/gateway.lua"
    helpers.write_file(cfg, string.format([[
listen = { { address = "127.0.0.1:%d", tls = { cert = %q, key = %q } } }
admin = { listen = false }
providers = { m = { type = "mock" } }
backends = { main = { provider = "m" } }
routes = { { match = { path_prefix = "/" }, backend = "main" } }
]], helpers.free_port(), cert, key))
    return helpers.run({ helpers.bin(), "-c", cfg }, { timeout = 20 })
  end

  it("refuses to start with a missing certificate, naming the file", function()
    local code, out = start("missing.pem", "default.key")
    assert.equal(1, code, out)
    assert.matches("listen[1].tls.cert: " .. dir .. "/missing.pem: No such file or directory", out, 1, true)
  end)

  it("refuses to start with a file that is not a certificate", function()
    helpers.write_file(dir .. "/junk.pem", "hello\n")
    local code, out = start("junk.pem", "default.key")
    assert.equal(1, code, out)
    assert.matches("listen[1].tls.cert: " .. dir .. "/junk.pem: not a valid certificate", out, 1, true)
  end)

  it("refuses to start with a key that does not match, naming the key", function()
    local code, out = start("default.pem", "other.key")
    assert.equal(1, code, out)
    assert.matches("listen[1].tls.key: " .. dir .. "/other.key: the key does not match the certificate",
                   out, 1, true)
    assert.is_nil(out:find("PRIVATE KEY", 1, true))
  end)

  it("refuses to start with a key file that is not a key", function()
    local code, out = start("default.pem", "default.pem")
    assert.equal(1, code, out)
    assert.matches("listen[1].tls.key: " .. dir .. "/default.pem: not a valid private key", out, 1, true)
  end)
end)

describe("upstream TLS", function()
  local back, front, dir

  lazy_setup(function()
    dir = helpers.tmpdir()
    make_cert(dir, "default", "default.test", "DNS:default.test,IP:127.0.0.1")
    make_cert(dir, "api", "api.test", "DNS:api.test")
    make_cert(dir, "wild", "wild.test", "DNS:*.wild.test")
    make_cert(dir, "otherca", "other.test", "DNS:other.test,IP:127.0.0.1")
    -- the provider: a second moongate on a TLS listener with a mock provider
    -- (a handshake under valgrind can take longer than the first listener's 2s)
    back = helpers.start_gateway(gateway_config('limits = { header_timeout = "20s" }\n'),
      { dir = dir, vars = { UP_PORT = helpers.free_port() } })
    local fdir = helpers.tmpdir()
    front = helpers.start_gateway([[
listen = { "127.0.0.1:${PORT}" }
admin = { listen = false }
access_log = false
providers = {
  verified = { type = "openai", base_url = "https://127.0.0.1:${BACK}/v1", api_key = "k", ca_file = "${DIR}/default.pem" },
  system   = { type = "openai", base_url = "https://127.0.0.1:${BACK}/v1", api_key = "k" },
  wrongca  = { type = "openai", base_url = "https://127.0.0.1:${BACK}/v1", api_key = "k", ca_file = "${DIR}/otherca.pem" },
  insecure = { type = "openai", base_url = "https://127.0.0.1:${BACK}/v1", api_key = "k", insecure = true },
}
backends = { verified = { provider = "verified", model = "m" }, system = { provider = "system", model = "m" },
             wrongca = { provider = "wrongca", model = "m" }, insecure = { provider = "insecure", model = "m" } }
routes = {
  { match = { path_prefix = "/v1", headers = { ["x-p"] = "system" } }, backend = "system" },
  { match = { path_prefix = "/v1", headers = { ["x-p"] = "wrongca" } }, backend = "wrongca" },
  { match = { path_prefix = "/v1", headers = { ["x-p"] = "insecure" } }, backend = "insecure" },
  { match = { path_prefix = "/v1" }, backend = "verified" },
}
]], { dir = fdir, vars = { BACK = back.port, DIR = dir } })
  end)

  lazy_teardown(function()
    local code, err = front:stop()
    assert(code == 0, "front gateway: " .. tostring(code) .. " " .. tostring(err) .. "\n" .. front:log())
    helpers.stop_and_check(back)
  end)

  local function chat(p)
    return helpers.http(front.port, { method = "POST", path = "/v1/chat/completions",
      headers = { ["content-type"] = "application/json", ["x-p"] = p }, body = CHAT, timeout = 15 })
  end

  it("verifies the provider's certificate against ca_file", function()
    local res = chat(nil)
    assert.equal(200, res.status, res.body .. "\n" .. front:log())
    assert.equal("chat.completion", helpers.json(res).object)
  end)

  it("refuses a provider whose certificate the system store does not know", function()
    local res = chat("system")
    assert.equal(502, res.status, res.body)
    assert.matches("failed: tls", helpers.json(res).error.message, 1, true)
  end)

  it("refuses a provider whose certificate ca_file does not vouch for", function()
    local res = chat("wrongca")
    assert.equal(502, res.status, res.body)
    assert.matches("failed: tls", helpers.json(res).error.message, 1, true)
  end)

  it("accepts an unverified certificate only with insecure = true", function()
    local res = chat("insecure")
    assert.equal(200, res.status, res.body)
  end)
end)
