-- Several workers on one port: gw.shared agrees across them, and the config
-- is reloaded on all of them (POST /admin/reload, SIGHUP) while they serve —
-- without a failed request or a refused connection; a broken file is refused
-- whole and the old config keeps serving; restart-only keys are kept and
-- named; GET /admin/config shows no secret.

local helpers = require "spec.support.helpers"
local signal  = require "posix.signal"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret-token" }
workers = 2
access_log = false
providers = {
  m = { type = "mock" },
  real = { type = "openai", base_url = "http://127.0.0.1:9/v1", api_key = "sk-literal-provider-key",
           headers = { ["x-api-key"] = "header-secret-value", ["x-team"] = "search" } },
}
backends = { main = { provider = "m", model = "${MODEL}" } }
routes = { { name = "chat", match = { path_prefix = "/v1" }, backend = "main" } }
plugins = {
  { name = "probe", generation = "${GEN}", handler = {
      on_request = function(ctx, conf)
        local s = gw.shared
        local q = (ctx.request.query or ""):match("^op=(%w+)")
        local w = gw.worker()
        if q == "count" then
          s.incr("w:" .. w, 1)
          return gw.respond(200, { value = s.incr("hits", 1), worker = w })
        elseif q == "read" then
          local _, n = gw.worker()
          local per = {}
          for i = 1, n do per[i] = s.get("w:" .. i) or 0 end
          return gw.respond(200, { hits = s.get("hits"), per = per, workers = n,
                                   slots = s.get("slots") })
        elseif q == "reserve" then
          local ok = s.reserve("slots", 1, 50, 60)
          return gw.respond(ok and 200 or 429, { ok = ok })
        end
      end,
      on_response = function(ctx, conf)
        ctx.response.headers["x-generation"] = conf.generation
      end } },
}
]]

local CHAT = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'

local function chat(port)
  return helpers.http(port, { method = "POST", path = "/v1/chat/completions",
    headers = { ["Content-Type"] = "application/json" }, body = CHAT })
end

local function admin(gw, method, path)
  local res = helpers.http(gw.admin_port, { method = method, path = path,
    headers = { Authorization = "Bearer admin-secret-token" } })
  return res.status, helpers.json(res), res
end

-- n requests over fresh connections, 16 at a time (curl --parallel)
local function burst(gw, query, n)
  local url = gw:url("/v1/x?" .. query .. "&n=[1-" .. n .. "]")
  local code, out = helpers.run({ "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\n",
    "--parallel", "--parallel-max", "16", "-H", "Connection: close", url }, { timeout = 60 })
  assert.equal(0, code, out)
  local counts = {}
  for status in out:gmatch("(%d%d%d)\n") do counts[status] = (counts[status] or 0) + 1 end
  return counts
end

describe("workers", function()
  local gw

  lazy_setup(function()
    gw = helpers.start_gateway(CONFIG, { vars = { GEN = "one", MODEL = "mock-1" } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("keep one exact counter in gw.shared, and both serve", function()
    local counts = burst(gw, "op=count", 400)
    assert.same({ ["200"] = 400 }, counts)
    local _, doc = admin(gw, "GET", "/health")  -- the admin thread is up too
    assert.equal("ok", doc.status)
    local res = helpers.http(gw.port, { path = "/v1/x?op=read" })
    local r = helpers.json(res)
    assert.equal(2, r.workers)
    assert.equal(400, r.hits)
    assert.equal(400, r.per[1] + r.per[2])
    assert.truthy(r.per[1] > 0 and r.per[2] > 0,
      "one worker served every connection: " .. r.per[1] .. "/" .. r.per[2])
  end)

  it("never let concurrent reserves pass the limit", function()
    local counts = burst(gw, "op=reserve", 200)
    assert.equal(50, counts["200"])
    assert.equal(150, counts["429"])
    local r = helpers.json(helpers.http(gw.port, { path = "/v1/x?op=read" }))
    assert.equal(50, r.slots)
  end)

  it("reload 20 times under load: no request fails, no connection is refused or reset", function()
    local wrk = helpers.spawn({ "wrk", "-t1", "-c8", "-d60s", "--timeout", "30s", "-s", helpers.root .. "/spec/support/wrk_post.lua",
      gw:url("/v1/chat/completions") }, { log = gw.dir .. "/wrk.log" })
    -- wrk is running once it has sent requests
    local function served()
      local body = helpers.http(gw.admin_port, { path = "/metrics" }).body
      local n = 0
      for v in body:gmatch('moongate_requests_total{[^}]*code="200"[^}]*} (%d+)') do n = n + tonumber(v) end
      return n
    end
    local before = served()
    helpers.wait_until(function() return served() > before + 100 end, 10, "wrk sent no requests")
    for i = 1, 20 do
      gw.vars.GEN = "gen-" .. i
      gw:write_config(CONFIG)
      local status, doc = admin(gw, "POST", "/admin/reload")
      assert.equal(200, status, helpers.json and tostring(doc and doc.error and doc.error.message))
      assert.equal("reloaded", doc.status)
      assert.same({}, doc.restart_required)
    end
    local mid = served()
    helpers.wait_until(function() return served() > mid + 100 end, 10, "no requests after the reloads")
    wrk:kill(signal.SIGINT)
    assert.truthy(wrk:wait(10), "wrk did not stop")
    local out = helpers.read_file(gw.dir .. "/wrk.log")
    assert.matches("requests in", out)
    assert.not_matches("Socket errors", out, 1, true)  -- connect, read, write or timeout
    assert.not_matches("Non%-2xx", out)
    -- every worker runs the last generation
    for _ = 1, 8 do
      assert.equal("gen-20", chat(gw.port).headers["x-generation"])
    end
  end)

  it("refuse a broken config whole and keep serving the old one", function()
    gw.vars.GEN = "before-broken"
    gw:write_config(CONFIG)
    assert.equal(200, (admin(gw, "POST", "/admin/reload")))
    assert.equal("before-broken", chat(gw.port).headers["x-generation"])

    -- a schema error and an unknown provider: both reported, nothing applied
    helpers.write_file(gw.config_path, gw:substitute(CONFIG)
      :gsub('workers = 2', 'workers = 2\nshutdown_timeout = "soon"')
      :gsub('provider = "m"', 'provider = "nope"')
      :gsub('generation = "before%-broken"', 'generation = "broken"'))
    local status, doc = admin(gw, "POST", "/admin/reload")
    assert.equal(400, status)
    assert.matches("not reloaded", doc.error.message)
    local all = table.concat(doc.error.errors, "\n")
    assert.matches("shutdown_timeout", all)
    assert.matches('unknown provider "nope"', all)
    assert.equal("before-broken", chat(gw.port).headers["x-generation"])

    -- a Lua syntax error through SIGHUP: logged with FILE:LINE, still serving
    helpers.write_file(gw.config_path, "listen = {\n")
    assert.is_true(gw.proc:kill(signal.SIGHUP))
    helpers.wait_until(function()
      return gw:log():find("SIGHUP: config not reloaded", 1, true)
    end, 10, "the failed SIGHUP reload was not logged")
    assert.truthy(gw:log():find(gw.config_path .. ":2:", 1, true), gw:log())
    for _ = 1, 4 do
      local res = chat(gw.port)
      assert.equal(200, res.status)
      assert.equal("before-broken", res.headers["x-generation"])
    end
  end)

  it("apply a SIGHUP reload on every worker", function()
    gw.vars.GEN = "after-hup"
    gw:write_config(CONFIG)
    assert.is_true(gw.proc:kill(signal.SIGHUP))
    helpers.wait_until(function()
      for _ = 1, 6 do
        if chat(gw.port).headers["x-generation"] ~= "after-hup" then return false end
      end
      return true
    end, 10, "SIGHUP did not reload every worker")
  end)

  it("keep restart-only keys and say which", function()
    local other = helpers.free_port()
    gw.vars.GEN = "restart-only"
    helpers.write_file(gw.config_path, gw:substitute(CONFIG)
      :gsub('listen = { "127.0.0.1:%d+" }', 'listen = { "127.0.0.1:' .. other .. '" }')
      :gsub("workers = 2", "workers = 3"))
    -- the SIGHUP reload before may still be finishing on a slow machine (409: in progress)
    local status, doc
    helpers.wait_until(function()
      status, doc = admin(gw, "POST", "/admin/reload")
      return status ~= 409
    end, 20, "the previous reload never finished")
    assert.equal(200, status)
    table.sort(doc.restart_required)
    assert.same({ "listen", "workers" }, doc.restart_required)
    local res = chat(gw.port)                -- still on the old port, new plugin conf
    assert.equal("restart-only", res.headers["x-generation"])
    assert.truthy(gw:log():find("listen changed; it needs a restart", 1, true))
    local _, cfg = admin(gw, "GET", "/admin/config")
    assert.equal(2, cfg.config.workers)
  end)

  it("show the running config without any secret", function()
    local status, doc, res = admin(gw, "GET", "/admin/config")
    assert.equal(200, status)
    assert.equal("127.0.0.1", doc.config.listen[1].host)
    assert.equal("http://127.0.0.1:9/v1", doc.config.providers.real.base_url)
    assert.equal("search", doc.config.providers.real.headers["x-team"])
    for _, secret in ipairs({ "sk-literal-provider-key", "header-secret-value", "admin-secret-token" }) do
      assert.is_nil(res.body:find(secret, 1, true), secret .. " shown in /admin/config")
    end
    -- and the endpoint needs the token
    assert.equal(401, helpers.http(gw.admin_port, { path = "/admin/config" }).status)
    assert.equal(405, (helpers.http(gw.admin_port, { path = "/admin/reload",
      headers = { Authorization = "Bearer admin-secret-token" } }).status))
  end)

  it("drop a target a reload removed from moongate_target_healthy", function()
    local function healthy_series()
      local text = helpers.http(gw.admin_port, { path = "/metrics",
        headers = { Authorization = "Bearer admin-secret-token" } }).body
      local out = {}
      for target in text:gmatch('moongate_target_healthy{backend="main",target="([^"]+)"} 1') do
        out[#out + 1] = target
      end
      return out
    end
    assert.same({ "m/mock-1" }, healthy_series())
    gw.vars.MODEL = "mock-2"
    gw:write_config(CONFIG)
    local status
    helpers.wait_until(function()
      status = admin(gw, "POST", "/admin/reload")
      return status ~= 409
    end, 20, "the previous reload never finished")
    assert.equal(200, status)
    assert.same({ "m/mock-2" }, healthy_series())
  end)
end)
