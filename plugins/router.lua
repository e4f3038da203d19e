-- router — chooses the route and the backend (SPEC §2 `routes`), on_route.
--
-- Routes are tried in order and the first that matches wins. Match keys:
-- path (exact), path_prefix, method, headers (exact values, names lower
-- case), model (the JSON body's model: one name or a list) and when (an
-- expression of SPEC §4, or a Lua function of ctx).
-- rewrite replaces the path; model_map sends a client model to a backend.
local _M = {
  name = "router",
  priority = 3000,
  schema = { type = "object", properties = {} },
}

local expr = require("moongate.expr")

local ipairs, pairs, type = ipairs, pairs, type
local sub = string.sub

local compiled = setmetatable({}, { __mode = "k" })   -- match table -> compiled `when`

-- The variables a route's `when` sees (SPEC §4): the request, and the
-- consumer when a plugin before the router set one.
local function when_vars(req, ctx)
  local c = ctx.consumer
  return {
    request = { method = req.method, path = req.path, headers = req.headers, model = req.model,
                stream = req.stream == true },
    consumer = c and { name = c.name, team = c.team } or nil,
  }
end

local function matches(m, req, ctx)
  if m.path and req.path ~= m.path then return false end
  if m.path_prefix and sub(req.path, 1, #m.path_prefix) ~= m.path_prefix then return false end
  if m.method then
    local ok = false
    for _, x in ipairs(m.method) do
      if x == req.method then ok = true break end
    end
    if not ok then return false end
  end
  if m.headers then
    for k, v in pairs(m.headers) do
      if req.headers[k] ~= v then return false end
    end
  end
  if m.model then
    local model = req.model
    if model == nil then return false end
    local ok = false
    for _, x in ipairs(m.model) do
      if x == model then ok = true break end
    end
    if not ok then return false end
  end
  local when = m.when
  if when ~= nil then
    if type(when) == "function" then
      if not when(ctx) then return false end
    else
      local fn = compiled[m]
      if fn == nil then
        fn = expr.compile(when) or false
        compiled[m] = fn
      end
      if not fn then return false end
      local v = fn(when_vars(req, ctx))
      if v == nil or v == false then return false end
    end
  end
  return true
end
_M.matches = matches

function _M.on_route(ctx, conf)
  local cfg = ctx.config
  local req = ctx.request
  for _, route in ipairs(cfg.routes or {}) do
    if matches(route.match or {}, req, ctx) then
      local backend
      if route.model_map and req.model and route.model_map[req.model] then
        backend = cfg.backends[route.model_map[req.model]]
      elseif route.backend then
        backend = cfg.backends[route.backend]
      end
      if backend then
        ctx.route = route
        ctx.backend = backend
        if route.rewrite then req.path = route.rewrite end
        return
      end
    end
  end
end

return _M
