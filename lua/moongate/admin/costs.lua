-- GET /admin/costs?group_by=team|consumer|model|provider&since=&until= (SPEC §6): spend and
-- tokens from the ledger's aggregates (runtime/ledger.c), which every worker adds to as it
-- logs a request. docs/ledger.md has the defaults, the bucket sizes and the key of requests
-- without a consumer or team (null).
local admin = require("moongate.admin")
local ledger = require("moongate.ledger")
local gw = require("gw")

local floor, sort = math.floor, table.sort

local _M = {}

local function bad(param, msg)
  return 400, { error = { message = param .. ": " .. msg, param = param } }
end

-- cost units (1e-10 USD, integers) -> dollars, with no float noise beyond the 10th decimal
local function dollars(u)
  return floor(u + 0.5) / 1e10
end

-- answer(q, now) -> status, doc: the endpoint's work, for a parsed query string
function _M.answer(q, now)
  local group_by = q.group_by
  if group_by == nil or group_by == "" then group_by = "team" end
  if not ledger.GROUP_BY[group_by] then
    return bad("group_by", "expected team, consumer, model or provider, not \"" .. group_by .. "\"")
  end
  local since, till = ledger.month_start(now), now
  if q.since ~= nil and q.since ~= "" then
    local t, err = ledger.parse_time(q.since)
    if not t then return bad("since", err) end
    since = t
  end
  if q["until"] ~= nil and q["until"] ~= "" then
    local t, err = ledger.parse_time(q["until"])
    if not t then return bad("until", err) end
    till = t
  end
  if since > till then return bad("since", "is after until") end

  local rows, eff_since, eff_until = ledger.query(group_by, since, till)
  if not rows then return 503, { error = { message = eff_since } } end
  local groups = {}
  local total = { requests = 0, prompt_tokens = 0, completion_tokens = 0, cost_usd = 0 }
  local units = 0
  for i, r in ipairs(rows) do
    groups[i] = { key = r.key == nil and gw.json.null or r.key, requests = r.requests,
                  prompt_tokens = r.prompt_tokens, completion_tokens = r.completion_tokens,
                  cost_usd = dollars(r.cost_units), _units = r.cost_units }
    total.requests = total.requests + r.requests
    total.prompt_tokens = total.prompt_tokens + r.prompt_tokens
    total.completion_tokens = total.completion_tokens + r.completion_tokens
    units = units + r.cost_units
  end
  total.cost_usd = dollars(units)
  -- most spent first; then most requests; then by key (null last)
  sort(groups, function(a, b)
    if a._units ~= b._units then return a._units > b._units end
    if a.requests ~= b.requests then return a.requests > b.requests end
    local ka, kb = a.key, b.key
    if ka == gw.json.null then return false end
    if kb == gw.json.null then return true end
    return ka < kb
  end)
  for _, g in ipairs(groups) do g._units = nil end
  -- the range asked for, unless whole buckets made it wider (buckets start on whole seconds: a
  -- since of 14:00:00.5 counts from 14:00:00, and says so)
  if eff_since >= since then eff_since = since end
  if eff_until <= till then eff_until = till end
  -- nothing is recorded after now: a range widened (or asked) past it ends at now
  if eff_until > now then eff_until = now end
  if eff_since > eff_until then eff_since = eff_until end
  return 200, {
    group_by = group_by,
    since = ledger.iso(eff_since),
    ["until"] = ledger.iso(eff_until),
    groups = setmetatable(groups, gw.json.array_mt),
    total = total,
  }
end

admin.route("GET", "/admin/costs", function(req)
  return _M.answer(admin.query(req), gw.now())
end)

return _M
