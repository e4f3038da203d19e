-- moongate.access_log — the access log line (SPEC §2 `access_log`): one JSON object per request,
-- written through the C access writer (runtime/log.c: one write(2) per line, reopened on SIGUSR1).
--
-- Built by hand rather than with cjson: it runs on every request, and the fields are few and
-- known. Never a secret: no headers, no keys, no bodies, and the path without its query string.
local ledger = require("moongate.ledger")

local format = string.format
local quote, quote_id, cost_json, iso_ms = ledger.quote, ledger.quote_id, ledger.cost_json, ledger.iso_ms
local floor, type = math.floor, type

local _M = { _VERSION = "0.1" }

local function int(v)
  if type(v) ~= "number" or v ~= v then return 0 end
  return floor(v + 0.5)
end

-- line(ctx, status, now, latency, bytes) -> the JSON line, with its newline.
-- now: wall-clock seconds at the end; latency: seconds since the request arrived; bytes: body
-- bytes sent to the client.
function _M.line(ctx, status, now, latency, bytes)
  local req = ctx.request or {}
  local consumer = ctx.consumer
  local u = ctx.usage
  local ttfb = ctx.timings and ctx.timings.ttfb
  local prompt, completion = 0, 0
  if type(u) == "table" then prompt, completion = int(u.prompt_tokens), int(u.completion_tokens) end
  return '{"time":"' .. iso_ms(now) ..
    '","id":' .. quote_id(ctx.id) ..
    ',"remote":' .. quote(req.remote) ..
    ',"method":' .. quote(req.method) ..
    ',"path":' .. quote(req.path) ..
    ',"consumer":' .. quote(consumer and consumer.name) ..
    ',"team":' .. quote(consumer and consumer.team) ..
    ',"route":' .. quote(ctx.route and ctx.route.name) ..
    ',"target":' .. quote(ctx.target and ctx.target.name) ..
    ',"model":' .. quote(ledger.model_of(ctx)) ..
    ',"status":' .. format("%d", status) ..
    ',"attempts":' .. format("%d", ctx.attempt or 0) ..
    ',"prompt_tokens":' .. format("%d", prompt) ..
    ',"completion_tokens":' .. format("%d", completion) ..
    ',"cost_usd":' .. cost_json(ctx.cost_usd) ..
    ',"bytes":' .. format("%d", bytes or 0) ..
    ',"latency_ms":' .. format("%.3f", latency * 1000) ..
    ',"ttfb_ms":' .. (type(ttfb) == "number" and format("%.3f", ttfb * 1000) or "null") ..
    "}\n"
end

return _M
