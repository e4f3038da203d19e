-- The admin listener (SPEC §6, §7): health, readiness, Prometheus metrics,
-- and the token that guards /admin/*.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" ${TOKEN} }
access_log = "stdout"
shutdown_timeout = "10s"

providers = {
  fake = { type = "openai", base_url = "${UP}/v1", api_key = "sk-provider-secret" },
}
backends = {
  main = { provider = "fake", model = "gpt-4o-mini" },
}
routes = {
  { name = "chat", match = { path_prefix = "/v1" }, backend = "main" },
}
]]

-- Parses Prometheus text into a list of { name, labels = {k = v}, value }.
local function parse_metrics(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name, labels, value = line:match("^([%w_:]+){(.-)}%s+(%S+)")
      if not name then
        name, value = line:match("^([%w_:]+)%s+(%S+)")
        labels = ""
      end
      if name then
        local l = {}
        for k, v in labels:gmatch('([%w_]+)="(.-)"') do l[k] = v end
        out[#out + 1] = { name = name, labels = l, value = tonumber(value) or value }
      end
    end
  end
  return out
end

local function find_metric(list, name, want)
  for _, m in ipairs(list) do
    if m.name == name then
      local ok = true
      for k, v in pairs(want or {}) do
        if m.labels[k] ~= v then ok = false break end
      end
      if ok then return m end
    end
  end
end

local function stop_ok(gw)
  local code, err = gw:stop()
  assert(code == 0, "gateway exit code on SIGTERM: " .. tostring(code) .. " " .. tostring(err)
                    .. "\n" .. gw:log())
end

describe("admin", function()
  local up

  lazy_setup(function()
    up = helpers.start_fake_upstream()
  end)

  lazy_teardown(function()
    helpers.cleanup()
  end)

  describe("without a token", function()
    local gw

    lazy_setup(function()
      gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, TOKEN = "" } })
    end)

    lazy_teardown(function()
      stop_ok(gw)
    end)

    it("answers /health and /ready with 200", function()
      assert.equal(200, helpers.http(gw.admin_port, { path = "/health" }).status)
      assert.equal(200, helpers.http(gw.admin_port, { path = "/ready" }).status)
    end)

    it("does not serve the admin API on the main listener", function()
      local res = helpers.http(gw.port, { path = "/admin/config" })
      assert.are_not.equal(200, res.status)
      assert.is_nil(res.body:find("sk-provider-secret", 1, true))
    end)

    it("turns /admin/* off", function()
      local res = helpers.http(gw.admin_port, { path = "/admin/config" })
      assert.equal(404, res.status)
      local res2 = helpers.http(gw.admin_port, { path = "/admin/config",
                                                 headers = { Authorization = "Bearer anything" } })
      assert.equal(404, res2.status)
      assert.is_nil(res2.body:find("sk-provider-secret", 1, true))
    end)

    it("counts requests in moongate_requests_total and the duration histogram", function()
      local function chat(status)
        return helpers.http(gw.port, {
          method = "POST", path = "/v1/chat/completions",
          headers = { ["Content-Type"] = "application/json",
                      ["x-fake-status"] = status and tostring(status) or nil },
          body = '{"model":"m","messages":[]}',
        })
      end
      local before = parse_metrics(helpers.http(gw.admin_port, { path = "/metrics" }).body)
      local labels = { route = "chat", backend = "main", target = "fake/gpt-4o-mini", code = "200" }
      local base = find_metric(before, "moongate_requests_total", labels)
      base = base and base.value or 0
      local count_m = find_metric(before, "moongate_request_duration_seconds_count")
      local base_count = count_m and count_m.value or 0

      for _ = 1, 3 do assert.equal(200, chat().status) end
      assert.equal(400, chat(400).status)

      local res
      helpers.wait_until(function()
        res = helpers.http(gw.admin_port, { path = "/metrics" })
        -- a worker counts a request just after its last byte went out
        local list = parse_metrics(res.body)
        local m = find_metric(list, "moongate_requests_total", labels)
        return m and m.value == base + 3 and find_metric(list, "moongate_requests_total",
          { route = "chat", backend = "main", code = "400" }) ~= nil
      end, 5, "moongate_requests_total counts the 3 requests and the 400")
      assert.equal(200, res.status)
      assert.matches("text/plain", res.headers["content-type"] or "", 1, true)
      assert.matches("# TYPE moongate_requests_total counter", res.body, 1, true)
      assert.matches("# TYPE moongate_request_duration_seconds histogram", res.body, 1, true)

      local list = parse_metrics(res.body)
      local m400 = find_metric(list, "moongate_requests_total",
                               { route = "chat", backend = "main", code = "400" })
      assert.is_table(m400, "no moongate_requests_total for the 400:\n" .. res.body)
      assert.equal(1, m400.value)

      local inf = find_metric(list, "moongate_request_duration_seconds_bucket", { le = "+Inf" })
      local count = find_metric(list, "moongate_request_duration_seconds_count")
      local sum = find_metric(list, "moongate_request_duration_seconds_sum")
      assert.is_table(inf, res.body)
      assert.is_table(count, res.body)
      assert.is_table(sum, res.body)
      assert.equal(base_count + 4, count.value)
      assert.equal(count.value, inf.value)
      assert.is_number(sum.value)
      assert.truthy(sum.value >= 0)
      -- Buckets are cumulative.
      local prev = 0
      for _, m in ipairs(list) do
        if m.name == "moongate_request_duration_seconds_bucket" and not m.labels.route then
          assert.truthy(m.value >= prev, "buckets not cumulative at le=" .. tostring(m.labels.le))
          prev = m.value
        end
      end
    end)
  end)

  describe("with a token", function()
    local gw

    lazy_setup(function()
      gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, TOKEN = ', token = "t0ken"' } })
    end)

    lazy_teardown(function()
      stop_ok(gw)
    end)

    it("still answers /health, /ready and /metrics without it", function()
      assert.equal(200, helpers.http(gw.admin_port, { path = "/health" }).status)
      assert.equal(200, helpers.http(gw.admin_port, { path = "/ready" }).status)
      assert.equal(200, helpers.http(gw.admin_port, { path = "/metrics" }).status)
    end)

    it("answers /admin/* without the token with 401", function()
      local res = helpers.http(gw.admin_port, { path = "/admin/config" })
      assert.equal(401, res.status)
      assert.is_nil(res.body:find("sk-provider-secret", 1, true))
    end)

    it("answers /admin/* with a wrong token with 401", function()
      for _, value in ipairs({ "Bearer wrong", "Bearer t0ke", "Bearer t0ken2", "t0ken", "Basic t0ken" }) do
        local res = helpers.http(gw.admin_port, { path = "/admin/config",
                                                  headers = { Authorization = value } })
        assert.equal(401, res.status, "Authorization: " .. value)
        assert.is_nil(res.body:find("sk-provider-secret", 1, true))
      end
    end)
  end)
end)
