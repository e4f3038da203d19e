-- moongate.metrics — the Prometheus series of SPEC §7, kept in C
-- (runtime/metrics.c) so that every worker feeds one registry.
local mgffi = require("moongate.ffi")
local ffi = require("ffi")

local C = mgffi.C
local concat, gsub, tostring = table.concat, string.gsub, tostring

local _M = { _VERSION = "0.1" }

local COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
local ids = {}

local DURATION = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120 }
local COST = { 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5 }   -- USD (SPEC §7)

local function declare(name, kind, help, buckets)
  local b, n = nil, 0
  if buckets then
    n = #buckets
    b = ffi.new("double[?]", n, buckets)
  end
  ids[name] = C.mg_metric_declare(name, kind, help, b, n)
end

function _M.init()
  if not C then return end
  declare("moongate_requests_total", COUNTER, "Requests answered, by route, backend, target and status.")
  declare("moongate_request_duration_seconds", HISTOGRAM, "Time from request to last byte.", DURATION)
  declare("moongate_upstream_ttfb_seconds", HISTOGRAM, "Time to the first byte of the provider's answer.", DURATION)
  declare("moongate_attempts_total", COUNTER, "Upstream attempts, by target and outcome.")
  declare("moongate_inflight", GAUGE, "Requests being served.")
  declare("moongate_tokens_total", COUNTER, "Tokens used, by model, team and direction (input or output).")
  declare("moongate_request_cost_dollars", HISTOGRAM, "Cost of each request in USD, by model and team.", COST)
  declare("moongate_ratelimited_total", COUNTER, "Requests refused by a rate-limit rule, by rule.")
  declare("moongate_target_healthy", GAUGE, "1 while a target is in service, 0 while it is evicted.")
end

local function esc(v)
  return (gsub(tostring(v), '[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- labels({ {"route", "x"}, {"code", 200} }) -> 'route="x",code="200"'
local function labels(pairs_)
  local out = {}
  for i = 1, #pairs_, 2 do
    out[#out + 1] = pairs_[i] .. '="' .. esc(pairs_[i + 1] or "") .. '"'
  end
  return concat(out, ",")
end
_M.labels = labels

-- Label sets for the per-request series, built once per combination: the
-- same few recur on every request, and building one means gsub.
local req_labels, att_labels = {}, {}

local function at(t, k)
  local v = t[k]
  if not v then
    v = {}
    t[k] = v
  end
  return v
end

function _M.request_labels(route, backend, target, code)
  local t = at(at(at(req_labels, route), backend), target)
  local l = t[code]
  if not l then
    l = labels({ "route", route, "backend", backend, "target", target, "code", code })
    t[code] = l
  end
  return l
end

function _M.attempt_labels(target, outcome)
  local t = at(att_labels, target)
  local l = t[outcome]
  if not l then
    l = labels({ "target", target, "outcome", outcome })
    t[outcome] = l
  end
  return l
end

-- tokens_total: model, team, direction; request_cost_dollars: model, team; ratelimited: rule
local tok_labels, cost_labels, rl_labels = {}, {}, {}

function _M.token_labels(model, team, direction)
  local t = at(at(tok_labels, model), team)
  local l = t[direction]
  if not l then
    l = labels({ "model", model, "team", team, "direction", direction })
    t[direction] = l
  end
  return l
end

function _M.cost_labels(model, team)
  local t = at(cost_labels, model)
  local l = t[team]
  if not l then
    l = labels({ "model", model, "team", team })
    t[team] = l
  end
  return l
end

function _M.ratelimit_labels(rule)
  local l = rl_labels[rule]
  if not l then
    l = labels({ "rule", rule })
    rl_labels[rule] = l
  end
  return l
end

-- name -> label set -> the C series' handle, found once (a series is never freed); the label
-- sets are those above, so this grows with the series, not with the requests
local series = {}

local function series_of(name, l)
  local by = at(series, name)
  local s = by[l]
  if s == nil then
    s = C.mg_metric_series(ids[name] or -1, l, #l)
    by[l] = s
  end
  return s
end

function _M.add(name, l, v)
  if C then C.mg_series_add(series_of(name, l), v) end
end

function _M.set(name, l, v)
  if C then C.mg_series_set(series_of(name, l), v) end
end

-- hide_all(name): a gauge's series are left out of the text until set again (targets a reload
-- removed must not stay on /metrics)
function _M.hide_all(name)
  if C then C.mg_metric_hide_all(ids[name] or -1) end
end

function _M.observe(name, l, v)
  if C then C.mg_series_observe(series_of(name, l), v) end
end

function _M.text()
  if not C then return "" end
  local n = mgffi.sz1
  local p = C.mg_metrics_text(n)
  return ffi.string(p, n[0])
end

return _M
