-- router — chooses the route and the backend (SPEC §2 `routes`), on_route.
--
-- Routes are tried in order and the first that matches wins. Match keys:
-- path (exact), path_prefix, method, headers (exact values, names lower
-- case), model (the JSON body's model: one name or a list) and when (a Lua
-- function of ctx; string expressions arrive with the expression compiler).
-- rewrite replaces the path; model_map sends a client model to a backend.
local _M = {
  name = "router",
  priority = 3000,
  schema = { type = "object", properties = {} },
}

local ipairs, type = ipairs, type
local sub = string.sub

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
  if m.when ~= nil then
    if type(m.when) ~= "function" then return false end
    if not m.when(ctx) then return false end
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
