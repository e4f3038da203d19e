-- /admin/backends: every target's health (SPEC §6), and manual drain and
-- return. The figures come from gw.shared, where every worker keeps them.
local admin = require("moongate.admin")
local health = require("moongate.health")
local gw = require("gw")

local ipairs, pairs = ipairs, pairs

local function sorted_names(t)
  local out = {}
  for k in pairs(t or {}) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function find_target(cfg, bname, tname)
  local b = cfg.backends and cfg.backends[bname]
  if not b then return nil, nil, "unknown backend " .. bname end
  for gi, g in ipairs(b.groups) do
    for _, t in ipairs(g.targets) do
      if t.name == tname then return b, t, nil, gi end
    end
  end
  return b, nil, "backend " .. bname .. " has no target " .. tname
end

admin.route("GET", "/admin/backends", function(req, params, cfg)
  local out = {}
  for _, name in ipairs(sorted_names(cfg.backends)) do
    local b = cfg.backends[name]
    local pol = health.policy(b)
    local groups = {}
    for gi, g in ipairs(b.groups) do
      local targets = {}
      for _, t in ipairs(g.targets) do
        local r = health.report(name, t, pol)
        r.group = gi
        targets[#targets + 1] = r
      end
      groups[gi] = { strategy = g.strategy, targets = targets }
    end
    out[#out + 1] = { name = name, groups = groups, panic = pol.panic,
                      eviction = pol.evicting and { duration = pol.duration,
                        consecutive_failures = pol.threshold, max_duration = pol.max_duration,
                        slow_start = pol.slow_start } or nil }
  end
  return 200, { backends = setmetatable(out, gw.json.array_mt), now = gw.now() }
end)

-- the target as GET /admin/backends shows it
local function report(b, t, gi)
  local r = health.report(b.name, t, health.policy(b))
  r.group = gi
  return r
end

admin.route("POST", "/admin/backends/{backend}/targets/{name}/evict", function(req, params, cfg)
  local b, t, err, gi = find_target(cfg, params.backend, params.name)
  if not t then return 404, { error = { message = err } } end
  -- optional body {"duration": seconds}: a drain that ends by itself
  local seconds = health.FOREVER
  if req.body and req.body ~= "" then
    local doc = req.json
    if type(doc) ~= "table" then return 400, { error = { message = "body: expected a JSON object" } } end
    if doc.duration ~= nil then
      local units = require("moongate.units")
      local d = units.duration(doc.duration)
      if not d or d <= 0 then
        return 400, { error = { message = "duration: expected a positive duration (\"30s\" or seconds)" } }
      end
      seconds = d
    end
  end
  health.evict(b.name, t, seconds, "manual", health.policy(b))
  return 200, report(b, t, gi)
end)

admin.route("POST", "/admin/backends/{backend}/targets/{name}/restore", function(req, params, cfg)
  local b, t, err, gi = find_target(cfg, params.backend, params.name)
  if not t then return 404, { error = { message = err } } end
  health.restore(b.name, t, health.policy(b))
  return 200, report(b, t, gi)
end)

return true
