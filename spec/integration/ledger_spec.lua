-- The cost ledger end to end (SPEC §8, §6 /admin/costs): one JSON line per finished request in
-- <data_dir>/ledger, /admin/costs sums that equal the answers' own usage, the aggregates
-- surviving a clean restart and a kill -9 (snapshot plus the records after it), rotation, a
-- torn last line, and the refusals at start (a data_dir it cannot write, one in use).
--
-- Consumers and teams come from the auth plugin, costs from the cost plugin (target `prices`);
-- without either (plugins/auth.lua, plugins/cost.lua), the specs check what is left (models,
-- providers, tokens, counts).

local helpers = require "spec.support.helpers"
local cjson   = require "cjson.safe"
local signal  = require "posix.signal"

local HAVE_AUTH = helpers.read_file(helpers.root .. "/plugins/auth.lua") ~= nil
local HAVE_COST = helpers.read_file(helpers.root .. "/plugins/cost.lua") ~= nil

local PLUGINS = {}
if HAVE_AUTH then PLUGINS[#PLUGINS + 1] = '{ name = "auth" }' end
if HAVE_COST then PLUGINS[#PLUGINS + 1] = '{ name = "cost" }' end

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 2
data_dir = "${DATA}"
ledger = { flush_interval = "${FLUSH}", snapshot_interval = "${SNAP}", rotate_size = "${ROTATE}" }
access_log = false
providers = { fake = { type = "mock" }, other = { type = "mock" } }
backends = {
  main = { provider = "fake", model = "gpt-4o-mini", prices = { input = 2.5, output = 10 } },
  alt  = { provider = "other", model = "claude-x", prices = { input = 1, output = 3, cached_input = 0.5 } },
}
routes = {
  { name = "alt", match = { path_prefix = "/v1", headers = { ["x-backend"] = "alt" } }, backend = "alt" },
  { name = "main", match = { path_prefix = "/v1" }, backend = "main" },
}
teams = { search = {}, ads = {} }
consumers = {
  { key = "k-alice", name = "alice", team = "search" },
  { key = "k-bob", name = "bob", team = "ads" },
  { key = "k-carol", name = "carol" },
}
plugins = { ]] .. table.concat(PLUGINS, ", ") .. [[ }
]]

local PRICES = { main = { 2.5, 10 }, alt = { 1, 3 } }

local function start(data, over, opts)
  local vars = { DATA = data, FLUSH = "100ms", SNAP = "1h", ROTATE = "64MB" }
  for k, v in pairs(over or {}) do vars[k] = v end
  opts = opts or {}
  opts.vars = vars
  return helpers.start_gateway(CONFIG, opts)
end

local function admin(gw, path)
  local res = helpers.http(gw.admin_port, { path = path, headers = { Authorization = "Bearer admin-secret" } })
  return res.status, helpers.json(res)
end

local function costs(gw, group_by)
  local status, doc = admin(gw, "/admin/costs?group_by=" .. group_by)
  assert.equal(200, status, cjson.encode(doc))
  return doc
end

-- every record in the ledger files, by id
local function records(data)
  local out, n = {}, 0
  local p = io.popen("cat '" .. data .. "'/ledger/ledger-*.jsonl 2>/dev/null")
  for line in p:lines() do
    local r = cjson.decode(line)
    if r then
      out[r.id] = r
      n = n + 1
    end
  end
  p:close()
  return out, n
end

local function ledger_files(data)
  local out = {}
  local p = io.popen("ls '" .. data .. "'/ledger/")
  for name in p:lines() do
    if name:match("^ledger%-.*%.jsonl$") then out[#out + 1] = name end
  end
  p:close()
  return out
end

local seq = 0
-- one chat completion: -> what the ledger should say about it
local function chat(gw, key, backend, stream)
  seq = seq + 1
  local id = "ledger-spec-" .. seq .. "-" .. math.random(1e9)
  local h = { ["Content-Type"] = "application/json", ["X-Request-Id"] = id }
  if key then h.Authorization = "Bearer " .. key end
  if backend then h["x-backend"] = backend end
  local words = {}
  for i = 1, seq % 5 + 1 do words[i] = "word" .. i end
  local body = cjson.encode({ model = "client-model", stream = stream or nil,
    stream_options = stream and { include_usage = true } or nil,
    messages = { { role = "user", content = table.concat(words, " ") } } })
  local usage, status
  if stream then
    local s = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions", headers = h, body = body })
    status = s.status
    local events = s:read_all(10)
    for _, ev in ipairs(events) do
      local d = cjson.decode(helpers.parse_sse(ev).data or "")
      if type(d) == "table" and type(d.usage) == "table" then usage = d.usage end
    end
  else
    local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions", headers = h, body = body })
    status = res.status
    local doc = helpers.json(res)
    usage = type(doc) == "table" and doc.usage or nil
  end
  local b = backend or "main"
  local e = { id = id, status = status, backend = b, stream = stream == true,
              model = b == "main" and "gpt-4o-mini" or "claude-x", provider = b == "main" and "fake" or "other" }
  if status == 200 then
    assert.is_table(usage, "the mock's answer carries usage")
    e.prompt, e.completion = usage.prompt_tokens, usage.completion_tokens
    local p = PRICES[b]
    e.units = math.floor((e.prompt * p[1] + e.completion * p[2]) / 1e6 * 1e10 + 0.5)
  else
    e.prompt, e.completion, e.units = 0, 0, 0
  end
  return e
end

local function wait_records(data, n, what)
  return helpers.wait_until(function()
    local _, count = records(data)
    return count >= n and count
  end, 10, what or (n .. " ledger records on disk"))
end

-- hand-made sums of expected records by a key function
local function sums(list, keyf)
  local out = {}
  for _, e in ipairs(list) do
    local k = keyf(e)
    if k == nil then k = "\0null" end
    local g = out[k] or { requests = 0, prompt_tokens = 0, completion_tokens = 0, units = 0 }
    out[k] = g
    g.requests = g.requests + 1
    g.prompt_tokens = g.prompt_tokens + e.prompt
    g.completion_tokens = g.completion_tokens + e.completion
    g.units = g.units + e.units
  end
  return out
end

local function check_groups(doc, want)
  local seen = 0
  for _, g in ipairs(doc.groups) do
    local k = g.key == cjson.null and "\0null" or g.key
    local w = want[k]
    assert.is_table(w, "unexpected group " .. tostring(k) .. " in " .. cjson.encode(doc))
    assert.equal(w.requests, g.requests, k)
    assert.equal(w.prompt_tokens, g.prompt_tokens, k)
    assert.equal(w.completion_tokens, g.completion_tokens, k)
    if HAVE_COST then
      assert.near(w.units / 1e10, g.cost_usd, 1e-12, k)
    end
    seen = seen + 1
  end
  local n = 0
  for _ in pairs(want) do n = n + 1 end
  assert.equal(n, seen, cjson.encode(doc))
end

local CONSUMER_OF = { ["k-alice"] = "alice", ["k-bob"] = "bob", ["k-carol"] = "carol" }
local TEAM_OF = { alice = "search", bob = "ads" }

describe("ledger", function()
  local data, gw
  local sent = {}

  local function send(key, backend, stream)
    local e = chat(gw, key, backend, stream)
    if HAVE_AUTH then
      e.consumer = key and CONSUMER_OF[key] or nil
      e.team = e.consumer and TEAM_OF[e.consumer] or nil
      -- refused before a target was chosen: the client's model, no provider
      if not e.consumer then e.model, e.provider = "client-model", nil end
    end
    sent[#sent + 1] = e
    return e
  end

  lazy_setup(function()
    data = helpers.tmpdir() .. "/data"
    gw = start(data, { ROTATE = "4KB" })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("writes one line per finished request, with its figures", function()
    send("k-alice")
    send("k-alice", "alt")
    send("k-bob")
    send("k-carol", nil, true)
    if HAVE_AUTH then send(nil) end                  -- 401: a record, counted under null
    local n = wait_records(data, #sent)
    assert.equal(#sent, n)
    local recs = records(data)
    for _, e in ipairs(sent) do
      local r = recs[e.id]
      assert.is_table(r, "a record for " .. e.id)
      assert.equal(e.status, r.status)
      assert.equal(e.stream, r.stream)
      assert.is_number(r.time)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", r.ts)
      assert.is_number(r.latency_ms)
      if e.status == 200 then
        assert.equal(e.prompt, r.prompt_tokens)
        assert.equal(e.completion, r.completion_tokens)
        assert.equal("reported", r.usage)
        assert.equal(e.model, r.model)
        assert.equal("client-model", r.client_model)
        assert.equal(e.provider, r.provider)
        assert.equal(e.backend, r.backend)
        assert.equal(e.backend == "main" and "fake/gpt-4o-mini" or "other/claude-x", r.target)
        assert.equal(1, r.attempts)
        assert.is_number(r.ttfb_ms)
        if HAVE_COST then
          assert.near(e.units / 1e10, r.cost_usd, 1e-12)
        else
          assert.equal(cjson.null, r.cost_usd)
        end
      else
        assert.equal("none", r.usage)
        assert.equal(0, r.prompt_tokens)
      end
      if HAVE_AUTH then
        assert.equal(e.consumer or cjson.null, r.consumer)
        assert.equal(e.team or cjson.null, r.team)
      end
    end
  end)

  it("records the usage of a stream whose client did not ask for it", function()
    local msgs = { { role = "user", content = "a stream without usage for the client" } }
    local h = { ["Content-Type"] = "application/json", Authorization = "Bearer k-alice" }
    local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions", headers = h,
      body = cjson.encode({ model = "client-model", messages = msgs }) })
    assert.equal(200, res.status)
    local usage = helpers.json(res).usage
    h["X-Request-Id"] = "ledger-spec-stream-no-usage"
    local st = helpers.stream(gw.port, { method = "POST", path = "/v1/chat/completions", headers = h,
      body = cjson.encode({ model = "client-model", stream = true, messages = msgs }) })
    assert.equal(200, st.status)
    for _, ev in ipairs(st:read_all(10)) do
      local d = cjson.decode(helpers.parse_sse(ev).data or "")
      assert.is_false(type(d) == "table" and type(d.usage) == "table", "no usage for a client that did not ask")
    end
    local p = PRICES.main
    for _, id in ipairs({ res.headers["x-request-id"], "ledger-spec-stream-no-usage" }) do
      sent[#sent + 1] = { id = id, status = 200, backend = "main", model = "gpt-4o-mini", provider = "fake",
        prompt = usage.prompt_tokens, completion = usage.completion_tokens,
        units = math.floor((usage.prompt_tokens * p[1] + usage.completion_tokens * p[2]) / 1e6 * 1e10 + 0.5),
        consumer = HAVE_AUTH and "alice" or nil, team = HAVE_AUTH and "search" or nil }
    end
    wait_records(data, #sent)
    local r = records(data)["ledger-spec-stream-no-usage"]
    assert.is_true(r.stream)
    assert.equal(usage.prompt_tokens, r.prompt_tokens)
    assert.equal(usage.completion_tokens, r.completion_tokens)
    assert.equal("reported", r.usage)
  end)

  it("sums /admin/costs by model and provider as the answers' usage says", function()
    check_groups(costs(gw, "model"), sums(sent, function(e) return e.model end))
    check_groups(costs(gw, "provider"), sums(sent, function(e) return e.provider end))
    local doc = costs(gw, "model")
    assert.equal("model", doc.group_by)
    local want = sums(sent, function() return "all" end).all
    assert.equal(want.requests, doc.total.requests)
    assert.equal(want.prompt_tokens, doc.total.prompt_tokens)
    assert.equal(want.completion_tokens, doc.total.completion_tokens)
    if HAVE_COST then assert.near(want.units / 1e10, doc.total.cost_usd, 1e-12) end
    assert.matches("^%d%d%d%d%-%d%d%-01T00:00:00Z$", doc.since)   -- the current month by default
  end)

  it("sums /admin/costs by team and consumer, null for requests without one", function()
    if not HAVE_AUTH then
      pending("plugins/auth.lua is not there yet: consumer grouping is tested in spec/unit/ledger_spec.lua")
      return
    end
    check_groups(costs(gw, "team"), sums(sent, function(e) return e.team end))
    check_groups(costs(gw, "consumer"), sums(sent, function(e) return e.consumer end))
  end)

  it("answers a time range, and refuses bad parameters naming them", function()
    local status, doc = admin(gw, "/admin/costs?group_by=model&since=2001-01-01&until=2001-02-01T00:00:00Z")
    assert.equal(200, status)
    assert.same({}, doc.groups)
    assert.equal(0, doc.total.requests)
    assert.equal("2001-01-01T00:00:00Z", doc.since)
    assert.equal("2001-02-01T00:00:00Z", doc["until"])
    status, doc = admin(gw, "/admin/costs?group_by=model&since=" .. (os.time() - 7200))
    assert.equal(200, status)
    assert.equal(#sent, doc.total.requests)
    for _, q in ipairs({ "group_by=route", "since=yesterday", "until=2026-02-30", "since=2030-01-01&until=2029-01-01" }) do
      status, doc = admin(gw, "/admin/costs?" .. q)
      assert.equal(400, status, q)
      assert.matches("^" .. q:match("^([%w_]+)") .. ": ", doc.error.message)
    end
    local res = helpers.http(gw.admin_port, { path = "/admin/costs" })
    assert.equal(401, res.status)
  end)

  it("rotates to a new file past rotate_size and keeps the old ones", function()
    for _ = 1, 12 do send("k-alice") end
    wait_records(data, #sent)
    helpers.wait_until(function() return #ledger_files(data) >= 2 end, 10, "a second ledger file")
    local _, n = records(data)
    assert.equal(#sent, n)
    check_groups(costs(gw, "model"), sums(sent, function(e) return e.model end))
  end)

  it("keeps its sums across a clean restart", function()
    local before = {}
    for _, g in ipairs({ "model", "provider", "team", "consumer" }) do before[g] = costs(gw, g) end
    assert.equal(0, (gw:stop()))
    assert.truthy(helpers.read_file(data .. "/ledger/snapshot.json"), "a snapshot at the clean stop")
    gw = start(data, { ROTATE = "4KB" })
    assert.matches("0 record%(s%) replayed", gw:log())
    for _, g in ipairs({ "model", "provider", "team", "consumer" }) do
      local after = costs(gw, g)
      assert.same(before[g].groups, after.groups, g)
      assert.same(before[g].total, after.total, g)
    end
    local _, n = records(data)
    assert.equal(#sent, n)
  end)

  it("loses nothing older than flush_interval to a kill -9", function()
    local first = #sent
    for _ = 1, 4 do send("k-bob", "alt") end
    wait_records(data, #sent, "the new records flushed (flush_interval 100ms)")
    assert.truthy(gw.proc:kill(signal.SIGKILL))
    gw.proc:wait(10)
    gw = start(data, { ROTATE = "4KB" })
    -- no snapshot since the clean stop: the records after it are replayed
    assert.matches(#sent - first .. " record%(s%) replayed", gw:log())
    check_groups(costs(gw, "model"), sums(sent, function(e) return e.model end))
    check_groups(costs(gw, "provider"), sums(sent, function(e) return e.provider end))
    if HAVE_AUTH then check_groups(costs(gw, "consumer"), sums(sent, function(e) return e.consumer end)) end
  end)
end)

describe("ledger snapshots", function()
  local data, gw

  lazy_teardown(function()
    if gw then helpers.stop_and_check(gw) end
  end)

  it("replay only what came after the last snapshot, counting nothing twice", function()
    data = helpers.tmpdir() .. "/data"
    gw = start(data, { SNAP = "200ms" })
    local sent = {}
    for i = 1, 5 do sent[i] = chat(gw, "k-alice") end
    wait_records(data, 5)
    -- a snapshot that covers all five
    helpers.wait_until(function()
      local text = helpers.read_file(data .. "/ledger/snapshot.json") or ""
      local h = cjson.decode(text:match("^[^\n]*") or "")
      local recs = helpers.read_file(data .. "/ledger/" .. ((h and h.file) or "none")) or ""
      return h and h.offset == #recs and #recs > 0
    end, 10, "a snapshot at the end of the ledger")
    assert.equal(137, (gw:stop(signal.SIGKILL)))
    gw = start(data, { SNAP = "1h" })
    local log = gw:log()
    assert.matches("[1-9]%d* bucket%(s%) from the snapshot, 0 record%(s%) replayed", log)
    for i = 6, 8 do sent[i] = chat(gw, "k-alice") end
    wait_records(data, 8)
    assert.equal(137, (gw:stop(signal.SIGKILL)))
    gw = start(data, { SNAP = "1h" })
    assert.matches("3 record%(s%) replayed", gw:log())
    check_groups(costs(gw, "model"), sums(sent, function(e) return e.model end))
  end)
end)

describe("ledger at start", function()
  lazy_teardown(function() helpers.cleanup() end)

  it("skips a torn last line with a warning and keeps the rest", function()
    local data = helpers.tmpdir() .. "/data"
    assert(os.execute("mkdir -p '" .. data .. "/ledger'"))
    local now = os.time()
    local function line(id, p, c)
      return cjson.encode({ id = id, time = now - 60, model = "gpt-4o-mini", provider = "fake",
        prompt_tokens = p, completion_tokens = c, cost_usd = 0.25, usage = "reported" }) .. "\n"
    end
    helpers.write_file(data .. "/ledger/ledger-" .. os.date("!%Y%m%d-%H%M%S", now - 120) .. ".jsonl",
      line("a", 10, 20) .. line("b", 1, 2) .. '{"id":"c","time":' .. now .. ',"mod')
    local gw = start(data)
    assert.matches("the last line is incomplete", gw:log())
    local doc = costs(gw, "model")
    assert.equal(1, #doc.groups)
    assert.same({ key = "gpt-4o-mini", requests = 2, prompt_tokens = 11, completion_tokens = 22, cost_usd = 0.5 },
                doc.groups[1])
    -- the next record starts on a line of its own
    chat(gw, "k-alice")
    wait_records(data, 3)
    helpers.stop_and_check(gw)
  end)

  it("refuses a data_dir it cannot write, naming the path", function()
    local dir = helpers.tmpdir()
    helpers.write_file(dir .. "/not-a-dir", "x")
    local cfgdir = helpers.tmpdir()
    local text = CONFIG:gsub("%${([%w_]+)}", { PORT = helpers.free_port(), ADMIN_PORT = helpers.free_port(),
      DATA = dir .. "/not-a-dir/data", FLUSH = "1s", SNAP = "1h", ROTATE = "64MB" })
    helpers.write_file(cfgdir .. "/gateway.lua", text)
    local code, out = helpers.run({ helpers.bin(), "-c", cfgdir .. "/gateway.lua" })
    assert.equal(1, code, out)
    assert.matches("data_dir: cannot create the ledger folder " .. dir:gsub("%p", "%%%0") ..
      "/not%-a%-dir/data/ledger", out)
  end)

  it("refuses a data_dir another gateway is using", function()
    local data = helpers.tmpdir() .. "/data"
    local gw = start(data)
    local cfgdir = helpers.tmpdir()
    local text = CONFIG:gsub("%${([%w_]+)}", { PORT = helpers.free_port(), ADMIN_PORT = helpers.free_port(),
      DATA = data, FLUSH = "1s", SNAP = "1h", ROTATE = "64MB" })
    helpers.write_file(cfgdir .. "/gateway.lua", text)
    local code, out = helpers.run({ helpers.bin(), "-c", cfgdir .. "/gateway.lua" })
    assert.equal(1, code, out)
    assert.matches("in use by another moongate process", out)
    helpers.stop_and_check(gw)
  end)
end)
