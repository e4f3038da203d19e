-- Active health checks (health.active): probes that spend no tokens evict a
-- target that stops answering and restore it when it answers again.

local helpers = require "spec.support.helpers"

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "t" }
workers = 2
access_log = false
shutdown_timeout = "5s"
providers = {
  later = { type = "openai", base_url = "http://127.0.0.1:${LATER}/v1", api_key = "sk-later" },
  up    = { type = "openai", base_url = "${UP}/v1", api_key = "sk-up", headers = { ["x-which"] = "up" } },
}
backends = {
  main = {
    targets = { { provider = "later", model = "a", name = "later" }, { provider = "up", model = "b", name = "up" } },
    health = { active = { interval = "200ms", path = "/v1/models", unhealthy_threshold = 2 } },
  },
}
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
]]

local function state(gw, name)
  local res = helpers.http(gw.admin_port, { path = "/admin/backends", headers = { Authorization = "Bearer t" } })
  for _, t in ipairs(helpers.json(res).backends[1].groups[1].targets) do
    if t.name == name then return t end
  end
end

describe("active health checks", function()
  local up, gw, later_port, later

  lazy_setup(function()
    up = helpers.start_fake_upstream()
    later_port = helpers.free_port()
    gw = helpers.start_gateway(CONFIG, { vars = { UP = up.url, LATER = later_port } })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("evict a target whose probes fail, and restore it once they pass", function()
    helpers.wait_until(function() return state(gw, "later").state == "evicted" end, 10,
      "the unreachable target evicted by its probes")
    assert.equal("active", state(gw, "later").evicted_reason)
    assert.equal("healthy", state(gw, "up").state)
    -- the probes carry the provider's credentials and spend no tokens
    local probes = 0
    for _, r in ipairs(up:requests()) do
      assert.equal("GET", r.method)
      assert.equal("/v1/models", r.path)
      assert.equal("Bearer sk-up", r.headers.authorization)
      probes = probes + 1
    end
    assert.truthy(probes >= 1)
    -- while evicted, requests go to the other target
    for _ = 1, 3 do
      local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = { ["Content-Type"] = "application/json" }, body = '{"model":"x","messages":[]}' })
      assert.equal("up", res.headers["x-moongate-target"])
    end
    later = helpers.start_fake_upstream({ port = later_port })
    helpers.wait_until(function() return state(gw, "later").state ~= "evicted" end, 10,
      "the target restored once its probe succeeds")
  end)
end)
