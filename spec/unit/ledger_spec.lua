-- moongate.ledger without the C half: what a request's record is filled with (moongate.record),
-- time parsing, replay of the files (snapshot position, torn and damaged lines), each_record.
-- runtime/ledger.c's buckets, aggregates, writer and snapshots: spec/c/test_ledger.c; the
-- ledger and access log lines written from a record (runtime/record.c): spec/c/test_record.c.
local ledger = require("moongate.ledger")
local record = require("moongate.record")
local cjson = require("cjson.safe")

local function tmpdir()
  local p = assert(io.popen("mktemp -d /tmp/mg-ledger-spec-XXXXXX"))
  local d = p:read("*l")
  p:close()
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local dirs = {}
local function newdir()
  local d = tmpdir()
  dirs[#dirs + 1] = d
  return d
end

teardown(function()
  for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d .. "'") end
end)

local function ctx_of(over)
  local ctx = {
    id = "req-1",
    consumer = { name = "alice", team = "search" },
    route = { name = "chat" },
    backend = { name = "main" },
    target = { name = "openai/gpt-4o", provider = "openai", model = "gpt-4o" },
    request = { model = "gpt-4o-client", stream = false, method = "POST", path = "/v1/chat/completions",
                remote = "127.0.0.1", headers = { authorization = "Bearer sk-secret" },
                body = '{"secret":"body"}', query = "key=sk-query-secret" },
    usage = { prompt_tokens = 11, completion_tokens = 29, cached_tokens = 3 },
    cost_usd = 0.0003175,
    attempt = 2,
    timings = { start = 100, ttfb = 0.0123 },
  }
  for k, v in pairs(over or {}) do ctx[k] = v end
  return ctx
end

local NOW = 1767225600.25   -- 2026-01-01T00:00:00.250Z

describe("a request's record", function()
  local function fill(ctx, status, latency, bytes)
    return record.fill({}, ctx, status or 200, NOW, latency or 0, bytes)
  end

  it("holds every figure of the ledger line and the access log line", function()
    local r = fill(ctx_of(), 200, 0.0456, 445)
    assert.same({
      id = "req-1", id_len = 5, consumer = "alice", consumer_len = 5, team = "search", team_len = 6,
      route = "chat", route_len = 4, backend = "main", backend_len = 4,
      target = "openai/gpt-4o", target_len = 13, provider = "openai", provider_len = 6,
      model = "gpt-4o", model_len = 6, client_model = "gpt-4o-client", client_model_len = 13,
      remote = "127.0.0.1", remote_len = 9, method = "POST", method_len = 4,
      path = "/v1/chat/completions", path_len = 20,
      time = NOW, latency = 0.0456, ttfb = 0.0123, has_ttfb = 1,
      usage = 1, prompt = 11, completion = 29, cached = 3, cost_usd = 0.0003175, has_cost = 1,
      bytes = 445, status = 200, attempts = 2, stream = 0,
    }, r)
  end)

  it("says when usage was estimated, and when there was none", function()
    local r = fill(ctx_of({ usage = { prompt_tokens = 5, completion_tokens = 7, estimated = true } }))
    assert.same({ 2, 5, 7, 0 }, { r.usage, r.prompt, r.completion, r.cached })
    r = fill(ctx_of({ usage = false, cost_usd = false }), 401)
    assert.same({ 0, 0, 0, 0, 0, 401 }, { r.usage, r.prompt, r.completion, r.cached, r.has_cost, r.status })
    r = fill(ctx_of({ cost_usd = 0 / 0 }))
    assert.equal(0, r.has_cost)            -- NaN is no cost: null, never "nan"
  end)

  it("has nothing (NULL) for what a request did not get to", function()
    local ctx = { id = "x", request = { model = "m", stream = true }, attempt = 0, timings = { start = 1 } }
    local r = fill(ctx, 499, 0.001)
    for _, k in ipairs({ "consumer", "team", "route", "backend", "target", "provider" }) do
      assert.is_nil(r[k], k)
      assert.equal(0, r[k .. "_len"], k)
    end
    assert.equal("m", r.model)            -- no target: the client's model
    assert.same({ 1, 499, 0, 0 }, { r.stream, r.status, r.has_ttfb, r.bytes })
  end)

  it("keeps the client's model when the target sends it as is (model = false)", function()
    local r = fill(ctx_of({ target = { name = "p", provider = "p", model = false } }))
    assert.equal("gpt-4o-client", r.model)
  end)

  it("writes names that are not strings as text, and a team that is not one as none", function()
    local r = fill(ctx_of({ id = 42, route = { name = 7 }, consumer = { name = "c", team = cjson.null } }))
    assert.same({ "42", 2, "7", 1 }, { r.id, r.id_len, r.route, r.route_len })
    assert.is_nil(r.team)
    r = fill(ctx_of({ route = { name = cjson.null } }))
    assert.is_nil(r.route)
  end)
end)

describe("ledger times", function()
  local P = ledger.parse_time

  it("takes Unix seconds", function()
    assert.equal(1767225600, P("1767225600"))
    assert.equal(1767225600.5, P("1767225600.5"))
    assert.equal(42, P(42))
  end)

  it("takes ISO-8601 dates, in UTC unless they say otherwise", function()
    assert.equal(1767225600, P("2026-01-01"))
    assert.equal(1767225600 + 12 * 3600, P("2026-01-01T12:00:00Z"))
    assert.equal(1767225600 + 12 * 3600, P("2026-01-01T12:00"))
    assert.equal(1767225600 + 12 * 3600 + 0.5, P("2026-01-01T12:00:00.5Z"))
    assert.equal(1767225600 + 10 * 3600, P("2026-01-01T12:00:00+02:00"))
    assert.equal(1767225600 + 14 * 3600 + 30 * 60, P("2026-01-01T12:00:00-0230"))
    assert.equal(1767225600, P("2026-01-01 00:00:00"))
    assert.equal(951782400, P("2000-02-29"))       -- a leap year
    assert.equal(0, P("1970-01-01T00:00:00Z"))
  end)

  it("refuses anything else, saying what it expects", function()
    for _, bad in ipairs({ "", "yesterday", "2026-13-01", "2026-02-29", "2100-02-29", "2026-01-32",
                           "2026-01-01T25:00", "2026-01-01T12", "2026-01-01T12:00:00+2", "12e3",
                           "2026-1-1", "2026-01-01Tfoo" }) do
      local t, err = P(bad)
      assert.is_nil(t, bad)
      assert.matches("Unix seconds or an ISO%-8601 date", err)
    end
    assert.is_nil((P(0 / 0)))
    assert.is_nil((P({})))
  end)

  it("agrees with the C library on the calendar", function()
    for _, t in ipairs({ 0, 86399, 951782400, 1767225600, 1798761599, 4102444800 }) do
      local d = os.date("!*t", t)
      local back = ledger.days_from_civil(d.year, d.month, d.day) * 86400 + d.hour * 3600 + d.min * 60 + d.sec
      assert.equal(t, back)
    end
    assert.equal(1767225600, ledger.month_start(1767225600 + 20 * 86400 + 5))
    assert.equal(1764547200, ledger.month_start(1767225599))   -- 2025-12-01
    assert.equal("2026-01-01T00:00:00Z", ledger.iso(1767225600))
    assert.equal("2026-01-01T00:00:00.250Z", ledger.iso(1767225600.25))
    assert.equal(1767225600, ledger.name_time("ledger-20260101-000000.jsonl"))
  end)
end)

-- a sink that records what replay hands to C
local function sink()
  local s = { counted = {}, loaded = {} }
  s.count = function(rec) s.counted[#s.counted + 1] = rec end
  s.load = function(...) s.loaded[#s.loaded + 1] = { ... } end
  return s
end

local function rec(t, id)
  return cjson.encode({ id = id, time = t, team = "search", prompt_tokens = 1, completion_tokens = 2,
    cost_usd = 0.5 }) .. "\n"
end

local function ids(s)
  local out = {}
  for i, r in ipairs(s.counted) do out[i] = r.id end
  return out
end

describe("ledger replay", function()
  it("replays every file in order without a snapshot, skipping a torn last line", function()
    local d = newdir()
    write(d .. "/ledger-20260101-000000.jsonl", rec(1, "a") .. rec(2, "b"))
    write(d .. "/ledger-20260102-000000.jsonl", rec(3, "c") .. rec(4, "d") .. '{"id":"e","ti')
    write(d .. "/unrelated.txt", rec(9, "z"))
    local s, warnings = sink(), {}
    local res = assert(ledger.replay(d, s, function(m) warnings[#warnings + 1] = m end))
    assert.same({ "a", "b", "c", "d" }, ids(s))
    assert.same({ buckets = 0, replayed = 4, files = 2, skipped = 1 },
                { buckets = res.buckets, replayed = res.replayed, files = res.files, skipped = res.skipped })
    assert.equal(1, #warnings)
    assert.matches("ledger%-20260102%-000000%.jsonl: the last line is incomplete", warnings[1])
  end)

  it("skips a damaged line in the middle with a warning and keeps the rest", function()
    local d = newdir()
    -- what a torn write looks like once the writer has closed the line (runtime/ledger.c)
    write(d .. "/ledger-20260101-000000.jsonl", rec(1, "a") .. '{"id":"b","ti\n' .. rec(3, "c"))
    local s, warnings = sink(), {}
    assert(ledger.replay(d, s, function(m) warnings[#warnings + 1] = m end))
    assert.same({ "a", "c" }, ids(s))
    assert.equal(1, #warnings)
    assert.matches("line 2 is not a ledger record", warnings[1])
  end)

  it("loads the snapshot and replays only the records after its position", function()
    local d = newdir()
    local first = rec(1, "a") .. rec(2, "b")
    write(d .. "/ledger-20260101-000000.jsonl", rec(0, "old"))
    write(d .. "/ledger-20260102-000000.jsonl", first .. rec(3, "c"))
    write(d .. "/ledger-20260103-000000.jsonl", rec(4, "d"))
    write(d .. "/snapshot.json",
      '{"version":1,"file":"ledger-20260102-000000.jsonl","offset":' .. #first .. ',"time":5,"buckets":2}\n' ..
      '["team","search",0,1767225600,2,2,4,10000000000]\n' ..
      '["consumer",null,2,1764547200,2,2,4,10000000000]\n')
    local s, warnings = sink(), {}
    local res = assert(ledger.replay(d, s, function(m) warnings[#warnings + 1] = m end))
    assert.same({ "c", "d" }, ids(s))
    assert.same({ { 0, "search", 0, 1767225600, 2, 2, 4, 10000000000 },
                  { 1, nil, 2, 1764547200, 2, 2, 4, 10000000000 } }, s.loaded)
    assert.equal(2, res.buckets)
    assert.same({}, warnings)
  end)

  it("ignores a damaged snapshot and replays everything", function()
    local d = newdir()
    write(d .. "/ledger-20260101-000000.jsonl", rec(1, "a") .. rec(2, "b"))
    write(d .. "/snapshot.json",
      '{"version":1,"file":"ledger-20260101-000000.jsonl","offset":10,"time":5,"buckets":3}\n' ..
      '["team","search",0,1767225600,2,2,4,10]\n')
    local s, warnings = sink(), {}
    assert(ledger.replay(d, s, function(m) warnings[#warnings + 1] = m end))
    assert.same({ "a", "b" }, ids(s))
    assert.same({}, s.loaded)            -- nothing half-loaded
    assert.matches("snapshot.json: 1 bucket line%(s%), the header says 3; replaying the whole ledger", warnings[1])
    write(d .. "/snapshot.json", "not json\n")
    s, warnings = sink(), {}
    assert(ledger.replay(d, s, function(m) warnings[#warnings + 1] = m end))
    assert.same({ "a", "b" }, ids(s))
    assert.matches("not a ledger snapshot", warnings[1])
  end)

  it("replays the files after a snapshot whose file was removed", function()
    local d = newdir()
    write(d .. "/ledger-20260103-000000.jsonl", rec(4, "d"))
    write(d .. "/snapshot.json",
      '{"version":1,"file":"ledger-20260102-000000.jsonl","offset":99,"time":5,"buckets":0}\n')
    local s, warnings = sink(), {}
    assert(ledger.replay(d, s, function(m) warnings[#warnings + 1] = m end))
    assert.same({ "d" }, ids(s))
    assert.matches("is gone", warnings[1])
  end)

  it("starts empty in an empty folder", function()
    local s = sink()
    local res = assert(ledger.replay(newdir(), s, error))
    assert.same({ 0, 0, 0 }, { res.buckets, res.replayed, res.files })
  end)
end)

describe("ledger.each_record", function()
  it("returns the records since a time, oldest first, and stops when asked", function()
    local d = newdir()
    write(d .. "/ledger-20251201-000000.jsonl", rec(1764547200, "dec"))
    write(d .. "/ledger-20260101-000000.jsonl", rec(1767225600, "jan1") .. "garbage\n" ..
      rec(1767312000, "jan2"))
    local seen = {}
    local n = assert(ledger.each_record("2026-01-01", function(r) seen[#seen + 1] = r.id end, d))
    assert.equal(2, n)
    assert.same({ "jan1", "jan2" }, seen)
    seen = {}
    assert.equal(3, ledger.each_record(nil, function(r) seen[#seen + 1] = r.id end, d))
    seen = {}
    assert.equal(1, ledger.each_record(0, function(r) seen[#seen + 1] = r.id; return false end, d))
    assert.same({ "dec" }, seen)
    local none, err = ledger.each_record("soon", function() end, d)
    assert.is_nil(none)
    assert.matches("since: expected Unix seconds", err)
  end)
end)

describe("GET /admin/costs", function()
  local costs = require("moongate.admin.costs")
  local gw = require("gw")
  local real_query = ledger.query
  local asked
  local rows = {
    { key = "search", requests = 2, prompt_tokens = 22, completion_tokens = 58, cost_units = 1000000000 },
    { key = nil, requests = 5, prompt_tokens = 5, completion_tokens = 5, cost_units = 0 },
    { key = "ads", requests = 1, prompt_tokens = 11, completion_tokens = 29, cost_units = 2000000000 },
    { key = "zeta", requests = 1, prompt_tokens = 1, completion_tokens = 1, cost_units = 0 },
  }

  before_each(function()
    asked = nil
    ledger.query = function(group_by, since, till)
      asked = { group_by, since, till }
      return rows, since, till
    end
  end)
  after_each(function() ledger.query = real_query end)

  it("answers SPEC §6's shape, most spent first, without float noise", function()
    local status, doc = costs.answer({ group_by = "consumer" }, 1767225600 + 86400 * 3 + 5)
    assert.equal(200, status)
    assert.same({ "consumer", 1767225600, 1767225600 + 86400 * 3 + 5 }, asked)  -- month start .. now
    assert.equal("consumer", doc.group_by)
    assert.equal("2026-01-01T00:00:00Z", doc.since)
    assert.equal("2026-01-04T00:00:05Z", doc["until"])
    local keys = {}
    for i, g in ipairs(doc.groups) do keys[i] = g.key end
    assert.same({ "ads", "search", gw.json.null, "zeta" }, keys)
    assert.same({ key = "ads", requests = 1, prompt_tokens = 11, completion_tokens = 29, cost_usd = 0.2 },
                doc.groups[1])
    assert.same({ requests = 9, prompt_tokens = 39, completion_tokens = 93, cost_usd = 0.3 }, doc.total)
    assert.equal("0.3", string.format("%.14g", doc.total.cost_usd))
  end)

  it("groups by team unless told otherwise, and takes both time forms", function()
    costs.answer({ since = "2026-01-02", ["until"] = "1767398400" }, 1767500000)
    assert.same({ "team", 1767312000, 1767398400 }, asked)
  end)

  it("reports the range widened to whole buckets", function()
    ledger.query = function(g, since, till) return {}, since - 1800, till + 1800 end
    local _, doc = costs.answer({ since = "2026-01-02T00:30:00Z", ["until"] = "2026-01-02T01:30:00Z" }, 1767500000)
    assert.equal("2026-01-02T00:00:00Z", doc.since)
    assert.equal("2026-01-02T02:00:00Z", doc["until"])
    assert.same({}, doc.groups)
    assert.equal(gw.json.array_mt, getmetatable(doc.groups))
  end)

  it("never answers an until past now, widened or asked", function()
    local now = 1767312000 + 1800                       -- 2026-01-02T00:30:00Z
    ledger.query = function(g, since, till) return {}, since, till + 1800 end   -- to the hour's end
    local _, doc = costs.answer({ since = "2026-01-02" }, now)
    assert.equal("2026-01-02T00:30:00Z", doc["until"])
    _, doc = costs.answer({ since = "2026-01-02", ["until"] = "2026-02-01" }, now)
    assert.equal("2026-01-02T00:30:00Z", doc["until"])
  end)

  it("reports a fractional since as the whole second its bucket starts on", function()
    ledger.query = function(g, since, till) return {}, math.floor(since), till end
    local _, doc = costs.answer({ since = "1796220000.5", ["until"] = "1796223600" }, 1796300000)
    assert.equal("2026-12-02T14:00:00Z", doc.since)
  end)

  it("refuses a bad parameter with a 400 naming it", function()
    local cases = {
      { { group_by = "route" }, "group_by" },
      { { since = "last week" }, "since" },
      { { ["until"] = "2026-02-30" }, "until" },
      { { since = "2026-02-01", ["until"] = "2026-01-01" }, "since" },
    }
    for _, c in ipairs(cases) do
      local status, doc = costs.answer(c[1], 1767500000)
      assert.equal(400, status)
      assert.equal(c[2], doc.error.param)
      assert.equal(c[2] .. ": ", doc.error.message:sub(1, #c[2] + 2))
    end
    assert.is_nil(asked)
  end)
end)

describe("ledger.totals", function()
  local real_query = ledger.query
  after_each(function() ledger.query = real_query end)

  it("maps keys to sums and says whether the buckets matched the range", function()
    ledger.query = function(g, since, till)
      return { { key = "alice", requests = 2, prompt_tokens = 3, completion_tokens = 4, cost_units = 12500000 },
               { key = nil, requests = 1, prompt_tokens = 0, completion_tokens = 0, cost_units = 0 } },
        since, till
    end
    local t, exact = ledger.totals("consumer", 1767225600, 1767300000)
    assert.is_true(exact)
    assert.same({ requests = 2, prompt_tokens = 3, completion_tokens = 4, cost_usd = 0.00125 }, t.alice)
    assert.equal(1, t[cjson.null].requests)
    ledger.query = function(g, since, till) return {}, since - 1800, till end
    local _, exact2 = ledger.totals("consumer", 1767227400, 1767300000)
    assert.is_false(exact2)
    ledger.query = real_query
    assert.is_nil(ledger.totals("route", 0))
  end)
end)
