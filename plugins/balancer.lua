-- balancer — chooses ctx.target for each attempt, on_balance.
--
-- This first balancer walks the backend's groups in priority order and, inside
-- a group, picks by smooth weighted round robin (nginx's: each pick adds every
-- target's weight to its running score, takes the highest score and subtracts
-- the group's total from it, so weights 1:2 give a b b a b b... and never a
-- burst to one target). State is per worker for now. Targets this request
-- already tried are skipped, so a retry moves on; when a group is exhausted
-- the next group is used. The routing issue replaces this with every strategy
-- of SPEC §2 and state shared across workers.
local _M = {
  name = "balancer",
  priority = 1000,
  schema = { type = "object", properties = {} },
}

local ipairs, next, setmetatable = ipairs, next, setmetatable

local scores = setmetatable({}, { __mode = "k" })  -- group -> { [target] = score }

local function pick(group, tried)
  local s = scores[group]
  if not s then
    s = {}
    scores[group] = s
  end
  local best, total = nil, 0
  for _, t in ipairs(group.targets) do
    if not tried[t.name] then
      local w = t.weight or 1
      s[t] = (s[t] or 0) + w
      total = total + w
      if not best or s[t] > s[best] then best = t end
    end
  end
  if best then s[best] = s[best] - total end
  return best
end

function _M.on_balance(ctx, conf)
  local backend = ctx.backend
  if not backend then return end
  local tried = ctx.vars.balancer_tried
  if not tried then
    tried = {}
    ctx.vars.balancer_tried = tried
  end
  local t
  for _, group in ipairs(backend.groups) do
    t = pick(group, tried)
    if t then break end
  end
  if not t and next(tried) then
    -- every target tried once: go round again (the runtime bounds attempts)
    tried = {}
    ctx.vars.balancer_tried = tried
    t = pick(backend.groups[1], tried)
  end
  if t then
    tried[t.name] = true
    ctx.target = t
    ctx.provider = ctx.config.providers[t.provider]
  end
end

return _M
