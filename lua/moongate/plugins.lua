-- moongate.plugins — the plugin runner.
--
-- As in Kong, a chain is built once per config (and per route/backend pair)
-- as one list per phase holding only the plugins that implement it, sorted
-- by priority (higher first; ties keep list order). An unused hook costs
-- nothing per request.
local gw = require("gw")

local getmetatable, ipairs, pairs = getmetatable, ipairs, pairs
local sort = table.sort

local _M = { _VERSION = "0.1" }

local PHASES = { "on_route", "on_request", "on_balance", "on_upstream_request",
                 "on_response", "on_chunk", "on_error", "on_log" }
_M.PHASES = PHASES

local RESPOND_MT, RETRY = gw.RESPOND_MT, gw.RETRY

-- merge(base, ...) -> entries: later lists replace entries of the same name
local function merge(base, ...)
  local out, pos = {}, {}
  for _, e in ipairs(base or {}) do
    out[#out + 1] = e
    pos[e.name] = #out
  end
  for k = 1, select("#", ...) do
    local list = select(k, ...)
    for _, e in ipairs(list or {}) do
      if pos[e.name] then
        out[pos[e.name]] = e
      else
        out[#out + 1] = e
        pos[e.name] = #out
      end
    end
  end
  return out
end

-- build(entries) -> chain: { [phase] = { {name=, fn=, conf=}, ... } }
function _M.build(entries)
  local indexed = {}
  for i, e in ipairs(entries) do indexed[i] = { e = e, i = i } end
  sort(indexed, function(a, b)
    local pa, pb = a.e.priority or 0, b.e.priority or 0
    if pa ~= pb then return pa > pb end
    return a.i < b.i
  end)
  local chain = { entries = entries }
  for _, phase in ipairs(PHASES) do
    local list = {}
    for _, x in ipairs(indexed) do
      local fn = x.e.plugin and x.e.plugin[phase]
      if type(fn) == "function" then
        local wants = phase == "on_chunk" and x.e.plugin.wants_chunks or nil
        list[#list + 1] = { name = x.e.name, fn = fn, conf = x.e.conf or {},
                            wants = type(wants) == "function" and wants or nil }
      end
    end
    chain[phase] = list
  end
  return chain
end

-- for(cfg, route, backend) -> the chain for requests on that route and backend
-- (cached by the route and backend tables themselves, not a key string made per request; weakly,
-- so that a plugin that makes its own route tables leaves nothing behind)
local NO_ROUTE, NO_BACKEND = {}, {}
local WEAK = { __mode = "k" }
function _M.chain_for(cfg, route, backend)
  local cache = cfg._chains
  if not cache then
    cache = setmetatable({}, WEAK)
    cfg._chains = cache
  end
  local by_backend = cache[route or NO_ROUTE]
  if not by_backend then
    by_backend = setmetatable({}, WEAK)
    cache[route or NO_ROUTE] = by_backend
  end
  local chain = by_backend[backend or NO_BACKEND]
  if not chain then
    if (not route or not route.plugins or #route.plugins == 0)
       and (not backend or not backend.plugins or #backend.plugins == 0) then
      chain = _M.global(cfg)
    else
      chain = _M.build(merge(cfg.plugins, backend and backend.plugins, route and route.plugins))
    end
    by_backend[backend or NO_BACKEND] = chain
  end
  return chain
end

function _M.global(cfg)
  local chain = cfg._global_chain
  if not chain then
    chain = _M.build(cfg.plugins or {})
    cfg._global_chain = chain
  end
  return chain
end

-- The phases that judge an attempt: a gw.retry() there is a vote for another attempt, and the
-- rest of the chain still runs, so that every plugin sees every attempt's outcome (the shipped
-- health plugin votes early, at priority 950) and may still change the headers of an answer that
-- is forwarded after all (the last attempt's).
local JUDGES = { on_response = true, on_error = true }

-- run(chain, phase, ctx, arg) -> nil | a gw.respond value | gw.RETRY
-- A gw.respond value stops the chain and is the answer (even after a vote for a retry); a
-- gw.retry() stops it too outside on_response and on_error, where it is a plugin's mistake.
-- Errors propagate; ctx._plugin names the plugin that was running.
function _M.run(chain, phase, ctx, arg)
  local list = chain[phase]
  local retry = nil
  for i = 1, #list do
    local p = list[i]
    ctx._plugin = p.name
    local r = p.fn(ctx, p.conf, arg)
    ctx._plugin = nil
    if r ~= nil then
      if r == RETRY then
        if not retry then
          retry = r
          ctx._last_plugin = p.name
        end
        if not JUDGES[phase] then return r end
      elseif getmetatable(r) == RESPOND_MT then
        ctx._last_plugin = p.name
        return r
      end
    end
  end
  return retry
end

-- wants_chunks(chain, ctx) -> whether some on_chunk plugin wants this answer's chunks: asked
-- once, when its body starts. A plugin says no with a wants_chunks(ctx, conf) that returns false
-- (docs/plugins.md); one without wants_chunks always wants them.
function _M.wants_chunks(chain, ctx)
  local list = chain.on_chunk
  for i = 1, #list do
    local p = list[i]
    if not p.wants then return true end
    ctx._plugin = p.name
    local r = p.wants(ctx, p.conf)
    ctx._plugin = nil
    if r ~= false then return true end
  end
  return false
end

-- chunk(chain, ctx, chunk) -> the chunk after every on_chunk plugin: a string,
-- or false when one of them dropped it.
function _M.chunk(chain, ctx, chunk)
  local list = chain.on_chunk
  for i = 1, #list do
    local p = list[i]
    ctx._plugin = p.name
    local r = p.fn(ctx, p.conf, chunk)
    ctx._plugin = nil
    if r == false then return false end
    if type(r) == "string" then chunk = r end
  end
  return chunk
end

return _M
