-- balancer — chooses ctx.target for each attempt, on_balance.
--
-- This first balancer walks the backend's groups in priority order and, inside
-- a group, takes targets in turn (weighted round robin per worker). Targets
-- already tried by this request are skipped, so a retry moves on. The routing
-- issue replaces it with every strategy of SPEC §2 and shared state.
local _M = {
  name = "balancer",
  priority = 1000,
  schema = { type = "object", properties = {} },
}

local ipairs = ipairs

local positions = setmetatable({}, { __mode = "k" })  -- group -> position

function _M.on_balance(ctx, conf)
  local backend = ctx.backend
  if not backend then return end
  local tried = ctx.vars.balancer_tried
  if not tried then
    tried = {}
    ctx.vars.balancer_tried = tried
  end
  for _, group in ipairs(backend.groups) do
    local targets = group.targets
    local n = #targets
    local start = positions[group] or 0
    for k = 1, n do
      local i = (start + k - 1) % n + 1
      local t = targets[i]
      if not tried[t.name] then
        positions[group] = i % n
        tried[t.name] = true
        ctx.target = t
        ctx.provider = ctx.config.providers[t.provider]
        return
      end
    end
  end
  -- every target tried once: start over (attempts are bounded by the runtime)
  if next(tried) then
    ctx.vars.balancer_tried = {}
    local t = backend.groups[1].targets[1]
    ctx.target = t
    ctx.provider = ctx.config.providers[t.provider]
  end
end

return _M
