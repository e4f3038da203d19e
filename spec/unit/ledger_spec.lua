-- moongate.ledger without the C half: the record's line, time parsing, replay of the files
-- (snapshot position, torn and damaged lines), each_record, and the access log line.
-- runtime/ledger.c's buckets, aggregates, writer and snapshots: spec/c/test_ledger.c.
local ledger = require("moongate.ledger")
local access_log = require("moongate.access_log")
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

describe("ledger record", function()
  it("is one JSON line with every field", function()
    local line, team, consumer, model, provider, p, c, u = ledger.encode(ctx_of(), 200, NOW, 0.0456)
    assert.equal("\n", line:sub(-1))
    assert.is_nil(line:sub(1, -2):find("\n", 1, true))
    local r = assert(cjson.decode(line))
    assert.same({
      id = "req-1", time = 1767225600.25, ts = "2026-01-01T00:00:00.250Z", consumer = "alice",
      team = "search", route = "chat", backend = "main", target = "openai/gpt-4o", provider = "openai",
      model = "gpt-4o", client_model = "gpt-4o-client", prompt_tokens = 11, completion_tokens = 29,
      cached_tokens = 3, usage = "reported", cost_usd = 0.0003175, status = 200, latency_ms = 45.6,
      ttfb_ms = 12.3, attempts = 2, stream = false,
    }, r)
    assert.same({ "search", "alice", "gpt-4o", "openai", 11, 29, 3175000 },
                { team, consumer, model, provider, p, c, u })
  end)

  it("writes costs as plain decimals, without float noise", function()
    local line = ledger.encode(ctx_of({ cost_usd = 0.1 + 0.2 }), 200, NOW, 0)
    assert.truthy(line:find('"cost_usd":0.3,', 1, true), line)
    line = ledger.encode(ctx_of({ cost_usd = 0.0009525 }), 200, NOW, 0)
    assert.truthy(line:find('"cost_usd":0.0009525,', 1, true), line)
    line = ledger.encode(ctx_of({ cost_usd = 12 }), 200, NOW, 0)
    assert.truthy(line:find('"cost_usd":12,', 1, true), line)
    line = ledger.encode(ctx_of({ cost_usd = 0 }), 200, NOW, 0)
    assert.truthy(line:find('"cost_usd":0,', 1, true), line)
    assert.equal("0.0000000001", ledger.decimal(1))
    assert.equal("1.5", ledger.decimal(15000000000))
    assert.equal(9525000, ledger.units(0.0009525))
  end)

  it("says when usage was estimated, and when there was none", function()
    local r = cjson.decode((ledger.encode(ctx_of({ usage = { prompt_tokens = 5, completion_tokens = 7,
      estimated = true } }), 200, NOW, 0)))
    assert.equal("estimated", r.usage)
    assert.equal(0, r.cached_tokens)
    local line, _, _, _, _, p, c, u = ledger.encode(ctx_of({ usage = false, cost_usd = false }), 401, NOW, 0)
    r = cjson.decode(line)
    assert.equal("none", r.usage)
    assert.same({ 0, 0, 0 }, { r.prompt_tokens, r.completion_tokens, p + c + u })
    assert.equal(cjson.null, r.cost_usd)   -- cost unknown (no cost plugin)
  end)

  it("writes null for what a request did not get to", function()
    local ctx = { id = "x", request = { model = "m", stream = true }, attempt = 0, timings = { start = 1 } }
    local line, team, consumer, model, provider = ledger.encode(ctx, 499, NOW, 0.001)
    local r = cjson.decode(line)
    for _, k in ipairs({ "consumer", "team", "route", "backend", "target", "provider", "cost_usd", "ttfb_ms" }) do
      assert.equal(cjson.null, r[k], k)
    end
    assert.equal("m", r.model)            -- no target: the client's model
    assert.is_true(r.stream)
    assert.equal(499, r.status)
    assert.same({ nil, nil, "m", nil }, { team, consumer, model, provider })
  end)

  it("keeps the client's model when the target sends it as is (model = false)", function()
    local ctx = ctx_of({ target = { name = "p", provider = "p", model = false } })
    assert.equal("gpt-4o-client", cjson.decode((ledger.encode(ctx, 200, NOW, 0))).model)
  end)

  it("escapes what would break the line", function()
    local nasty = 'a"b\\c\nd\re\tf\1g\127h' .. "é"
    local ctx = ctx_of({ id = nasty, consumer = { name = nasty, team = "t" } })
    local line = ledger.encode(ctx, 200, NOW, 0)
    assert.is_nil(line:sub(1, -2):find("[\n\r]"))
    local r = assert(cjson.decode(line))
    assert.equal(nasty, r.id)
    assert.equal(nasty, r.consumer)
    assert.equal('"x\\u0001"', ledger.quote("x\1"))
    assert.equal("null", ledger.quote(nil))
    assert.equal('"12"', ledger.quote(12))
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

describe("access log line", function()
  it("is one JSON object with the request's figures and no secrets", function()
    local line = access_log.line(ctx_of(), 200, NOW, 0.0456, 445)
    assert.equal("\n", line:sub(-1))
    local r = assert(cjson.decode(line))
    assert.same({
      time = "2026-01-01T00:00:00.250Z", id = "req-1", remote = "127.0.0.1", method = "POST",
      path = "/v1/chat/completions", consumer = "alice", team = "search", route = "chat",
      target = "openai/gpt-4o", model = "gpt-4o", status = 200, attempts = 2, prompt_tokens = 11,
      completion_tokens = 29, cost_usd = 0.0003175, bytes = 445, latency_ms = 45.6, ttfb_ms = 12.3,
    }, r)
    assert.is_nil(line:find("secret", 1, true))
  end)

  it("writes null and zeros for a request that got nowhere", function()
    local r = cjson.decode(access_log.line({ id = "x", request = { method = "GET", path = "/nope",
      remote = "::1" }, timings = { start = 0 } }, 404, NOW, 0.001, 0))
    assert.equal(cjson.null, r.consumer)
    assert.equal(cjson.null, r.cost_usd)
    assert.equal(0, r.prompt_tokens)
    assert.equal(0, r.attempts)
    assert.equal(404, r.status)
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
