-- What the routing issue refuses at load (SPEC §2, issue "Bad input"): each
-- with the option path, through the same expression compiler as the gateway.
local config = require("moongate.config")
local expr = require("moongate.expr")

local function check(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  local cfg, errs = config.load(path, { plugin_dirs = { "plugins" }, env = function() return nil end,
    compile_expr = function(src) return expr.compile(src) end })
  os.remove(path)
  return cfg, errs
end

local BASE = [[
providers = { m = { type = "mock" }, o = { type = "openai", api_key = "k" } }
routes = { { match = { path_prefix = "/v1" }, backend = "b" } }
]]

describe("routing config", function()
  local cases = {
    { "a weight of 0", 'backends = { b = { targets = { { provider = "m", weight = 0 } } } }',
      "backends.b.targets[1].weight: must be > 0" },
    { "a negative weight", 'backends = { b = { groups = { { targets = { { provider = "m", weight = -1 } } } } } }',
      "backends.b.groups[1].targets[1].weight: must be > 0" },
    { "an empty group", 'backends = { b = { groups = { { targets = {} } } } }',
      "backends.b.groups[1].targets: must have at least 1 item" },
    { "an unknown strategy", 'backends = { b = { strategy = "fastest", targets = { { provider = "m" } } } }',
      "backends.b.strategy: " },
    { "an unknown provider", 'backends = { b = { targets = { { provider = "opnai" } } } }',
      'backends.b.targets[1].provider: unknown provider "opnai"' },
    { "a route to no backend", 'backends = { c = { provider = "m" } }',
      'routes[1].backend: unknown backend "b"' },
    { "an unparseable unhealthy_condition",
      'backends = { b = { provider = "m", health = { unhealthy_condition = "response.code == " } } }',
      "backends.b.health.unhealthy_condition: column " },
    { "an unknown variable in when",
      'backends = { b = { provider = "m" } }\nroutes = { { match = { when = "reqest.path == \'/\'" }, backend = "b" } }',
      'routes[1].match.when: column 1: unknown variable "reqest"' },
    { "a sticky group without its key", 'backends = { b = { strategy = "sticky", targets = { { provider = "m" } } } }',
      "backends.b.sticky: required" },
  }
  for _, c in ipairs(cases) do
    it("refuses " .. c[1] .. " at load, naming the option", function()
      local cfg, errs = check(BASE .. c[2])
      assert.is_nil(cfg)
      local all = table.concat(errs, "\n")
      assert.truthy(all:find(c[3], 1, true), "expected '" .. c[3] .. "' in:\n" .. all)
    end)
  end

  it("accepts the routing options of SPEC §2", function()
    local cfg, errs = check(BASE .. [[
backends = { b = {
  groups = { { strategy = "least_busy", targets = { { provider = "m", weight = 2, max_inflight = 4 } } },
             { strategy = "sticky", sticky = { cookie = "sid" }, targets = { { provider = "o", model = "x" } } } },
  health = { unhealthy_condition = "response.code == 404 || response.code == 429",
             eviction = { duration = "10s", consecutive_failures = 2, max_duration = "2m" }, slow_start = "5s",
             panic = false, active = { interval = "30s", path = "/v1/models", unhealthy_threshold = 3 } },
  retry = { attempts = 3, on = { 429, "5xx", "connect-failure", "timeout", "reset" }, backoff = "100ms" },
  timeout = { per_try = "30s", total = "2m", ttfb = "20s", stream_idle = "30s" },
  queue = { max = 10, timeout = "1s" } } }
]])
    assert.is_table(cfg, errs and table.concat(errs, "\n"))
  end)
end)
