-- moongate.ledger — the cost ledger (SPEC §8), the Lua half of runtime/ledger.c.
--
-- Every finished request is one JSON line in <data_dir>/ledger/ledger-YYYYMMDD-HHMMSS.jsonl,
-- written by runtime/record.c (record) and handed to the C writer thread, which batches,
-- appends and fsyncs every ledger.flush_interval and keeps the cost aggregates /admin/costs
-- reads. At start the main thread loads the last snapshot and replays the records after it
-- (start), before the workers run. docs/ledger.md has the record's fields, the files and the aggregates.
--
--   ledger.start(cfg)                  -> true | nil, err     main thread, at start
--   ledger.record(rec, cfg)            -> true | false        every request (log_request)
--   ledger.each_record(since, fn [, dir]) -> n | nil, err     replay records from the files
--   ledger.query(group_by, since, until) -> groups, since, until | nil, err
--   ledger.totals(group_by, since [, until]) -> { [key] = sums }, exact | nil, err
--   ledger.parse_time(v)               -> Unix seconds | nil, err
--
-- Pure parts (replay with a sink, parse_time, iso, month_start) take no C, so the unit
-- specs run them under plain LuaJIT.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local ffi_string = ffi.string
local floor, format = math.floor, string.format
local str_find, str_gsub, str_match, str_sub = string.find, string.gsub, string.match, string.sub
local os_date = os.date
local ipairs, tonumber, tostring, type = ipairs, tonumber, tostring, type

local _M = { _VERSION = "0.1" }

-- Dimensions of the aggregates, as runtime/ledger.c numbers them. asked_model (the client's
-- model where it is not the billed one: what a model budget on a client-facing name also counts)
-- is for the budget plugin; GROUP_BY is what GET /admin/costs offers.
local DIMS = { team = 0, consumer = 1, model = 2, provider = 3, asked_model = 4 }
_M.DIMS = DIMS
_M.GROUP_BY = { team = true, consumer = true, model = true, provider = true }

local DEFAULTS = { flush_interval = 1, snapshot_interval = 300, rotate_size = 64 * 1048576 }
_M.DEFAULTS = DEFAULTS

local decoder = cjson.new()
local decode = decoder.decode
local null = cjson.null

local state = { dir = nil, conf = nil }
_M._state = state

-- ====================== the record ======================
-- The line itself is written in C (runtime/record.c, from moongate.record's fill); what is here
-- reads lines back: replay, the cost figures, the times.

-- units(cost_usd) -> the cost in 1e-10 USD, an integer (0 for none)
local function units(cost)
  if type(cost) ~= "number" or cost ~= cost or cost <= 0 then return 0 end
  return floor(cost * 1e10 + 0.5)
end
_M.units = units

local function int(v)
  if type(v) ~= "number" or v ~= v then return 0 end
  return floor(v + 0.5)
end

-- ISO-8601 UTC with milliseconds; the part up to the second is made once per second
local last_sec, last_iso = -1, ""
local function iso_ms(t)
  local ms = floor(t * 1000 + 0.5)
  local s = floor(ms / 1000)
  if s ~= last_sec then
    last_sec = s
    last_iso = os_date("!%Y-%m-%dT%H:%M:%S", s)
  end
  return format("%s.%03dZ", last_iso, ms - s * 1000)
end
_M.iso_ms = iso_ms

local function len(s) return s and #s or 0 end

-- ledger.* may change with a reload: applied when a request first sees the new config
local function configure(conf)
  state.conf = conf
  conf = conf or {}
  local flush = conf.flush_interval or DEFAULTS.flush_interval
  if flush < 0.001 then flush = 0.001 end
  local snap = conf.snapshot_interval or DEFAULTS.snapshot_interval
  if snap < 0.001 then snap = 0.001 end
  C.mg_ledger_configure(flush, snap, conf.rotate_size or DEFAULTS.rotate_size)
end

-- record(rec, cfg): one finished request (an mg_record_t filled by moongate.record) into the
-- ledger; false when the ledger is not open or its writer is too far behind.
function _M.record(rec, cfg)
  local conf = cfg and cfg.ledger
  if conf ~= state.conf then configure(conf) end
  local ok = C.mg_record_ledger(rec) == 0
  -- with cluster.redis the record also goes to a Redis stream, so cost can be read across
  -- instances (fire and forget: the local ledger stays this instance's record)
  local redis = package.loaded["moongate.redis"]
  if redis and redis.enabled() then
    local n = mgffi.sz1
    local p = C.mg_record_line(n)
    redis.xadd("ledger", { "record", ffi_string(p, n[0]) })
  end
  return ok
end

-- ====================== files ======================

local NAME_PAT = "^ledger%-%d%d%d%d%d%d%d%d%-%d%d%d%d%d%d%.jsonl$"

local days_from_civil = require("moongate.units").days_from_civil
_M.days_from_civil = days_from_civil

local function name_time(name)
  local y, mo, d, h, mi, s = str_match(name, "^ledger%-(%d%d%d%d)(%d%d)(%d%d)%-(%d%d)(%d%d)(%d%d)")
  if not y then return nil end
  return days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600 +
    tonumber(mi) * 60 + tonumber(s)
end
_M.name_time = name_time

-- files(dir) -> sorted ledger file names (oldest first). In the gateway runtime/ledger.c reads
-- the folder; the unit specs (no C) ask ls.
local list_len = ffi.new("size_t[1]")
local function files(dir)
  local out = {}
  if C then
    local p = C.mg_ledger_files(dir, list_len)
    if p == nil then return out end
    local text = ffi_string(p, list_len[0])
    C.mg_free(p)
    for name in text:gmatch("[^\n]+") do out[#out + 1] = name end
    return out
  end
  local p = io.popen("ls -1 '" .. str_gsub(dir, "'", "'\\''") .. "' 2>/dev/null")
  if p then
    for name in p:lines() do
      if str_find(name, NAME_PAT) then out[#out + 1] = name end
    end
    p:close()
  end
  table.sort(out)
  return out
end
_M.files = files

local CHUNK = 1048576

-- lines(path, offset, fn): fn(line, lineno, torn) for each line from byte offset on; torn is
-- true for a last line without its newline. -> true | nil, err
local function each_line(path, offset, fn)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  if offset and offset > 0 then f:seek("set", offset) end
  local rest, n = "", 0
  while true do
    local data = f:read(CHUNK)
    if not data then break end
    if rest ~= "" then data = rest .. data end
    local pos = 1
    while true do
      local nl = str_find(data, "\n", pos, true)
      if not nl then break end
      n = n + 1
      if nl > pos then
        if fn(str_sub(data, pos, nl - 1), n, false) == false then f:close() return true end
      end
      pos = nl + 1
    end
    rest = str_sub(data, pos)
  end
  f:close()
  if rest ~= "" then fn(rest, n + 1, true) end
  return true
end
_M.each_line = each_line

-- A ledger line as a record, or nil, why.
local function parse_record(line)
  local rec = decode(line)
  if type(rec) ~= "table" or type(rec.time) ~= "number" then return nil end
  return rec
end

local function rec_str(v) return type(v) == "string" and v or nil end

-- ====================== snapshot ======================

-- read_snapshot(dir, load) -> header | nil, why (no file: nil, nil).
-- Checked whole first (every bucket line well formed, as many as the header says), then loaded
-- with load(dim, key, level, start, requests, prompt, completion, cost_units), so a damaged
-- snapshot loads nothing.
local function read_snapshot(dir, load)
  local path = dir .. "/snapshot.json"
  local f = io.open(path, "rb")
  if not f then return nil, nil end
  local head = f:read("*l")
  f:close()
  local h = head and decode(head)
  if type(h) ~= "table" or h.version ~= 1 or type(h.file) ~= "string" or type(h.offset) ~= "number"
     or type(h.buckets) ~= "number" then
    return nil, path .. ": not a ledger snapshot"
  end
  local function entry(line)
    local e = decode(line)
    if type(e) ~= "table" or DIMS[e[1]] == nil or (type(e[2]) ~= "string" and e[2] ~= null)
       or type(e[3]) ~= "number" or type(e[4]) ~= "number" or type(e[8]) ~= "number" then
      return nil
    end
    return e
  end
  local count, bad = 0, nil
  local ok, err = each_line(path, 0, function(line, n, torn)
    if n == 1 then return end
    if torn or not entry(line) then
      bad = n
      return false
    end
    count = count + 1
  end)
  if not ok then return nil, path .. ": " .. tostring(err) end
  if bad then return nil, path .. ":" .. bad .. ": damaged" end
  if count ~= h.buckets then
    return nil, format("%s: %d bucket line(s), the header says %d", path, count, h.buckets)
  end
  each_line(path, 0, function(line, n)
    if n == 1 then return end
    local e = entry(line)
    load(DIMS[e[1]], rec_str(e[2]), e[3], e[4], e[5], e[6], e[7], e[8])
  end)
  return h
end
_M.read_snapshot = read_snapshot

-- replay(dir, sink, warn) -> { buckets, replayed, files, skipped, snapshot } | nil, err
-- Loads dir/snapshot.json into sink.load and replays every record after its position into
-- sink.count(rec). Without a (sound) snapshot every file is replayed. A line that is not a record
-- (a torn write after a power cut) is skipped with warn(msg); the rest is kept.
function _M.replay(dir, sink, warn)
  local res = { buckets = 0, replayed = 0, files = 0, skipped = 0 }
  local snap, serr = read_snapshot(dir, function(...)
    res.buckets = res.buckets + 1
    sink.load(...)
  end)
  if serr then
    warn("ledger: " .. serr .. "; replaying the whole ledger")
    snap = nil
  end
  res.snapshot = snap
  local list = files(dir)
  if snap then
    local found = false
    for _, name in ipairs(list) do if name == snap.file then found = true end end
    if not found then
      warn("ledger: " .. dir .. "/" .. snap.file .. " (where the snapshot ends) is gone; " ..
        "replaying the files after it")
    end
  end
  for _, name in ipairs(list) do
    local offset = 0
    local skip = false
    if snap then
      if name < snap.file then
        skip = true
      elseif name == snap.file then
        offset = snap.offset
      end
    end
    if not skip then
      local path = dir .. "/" .. name
      if offset > 0 then
        local f = io.open(path, "rb")
        local size = f and f:seek("end") or 0
        if f then f:close() end
        if size < offset then
          warn(format("ledger: %s is shorter (%d bytes) than the snapshot says (%d); its records " ..
            "after the snapshot are not replayed", path, size, offset))
          skip = true
        end
      end
      if not skip then
        res.files = res.files + 1
        local ok, err = each_line(path, offset, function(line, n, torn)
          local rec = parse_record(line)
          if not rec then
            res.skipped = res.skipped + 1
            if torn then
              warn(format("ledger: %s: the last line is incomplete (%d bytes; a power cut?); skipped",
                path, #line))
            else
              warn(format("ledger: %s: line %d%s is not a ledger record (a torn write?); skipped",
                path, n, offset > 0 and " after the snapshot" or ""))
            end
            return
          end
          res.replayed = res.replayed + 1
          sink.count(rec)
        end)
        if not ok then return nil, "ledger: cannot read " .. path .. ": " .. tostring(err) end
      end
    end
  end
  return res
end

-- each_record(since, fn [, dir]) -> number of records | nil, err
-- Calls fn(rec) for every record in the ledger files with rec.time >= since (Unix seconds or an
-- ISO date; nil: all), oldest file first; fn returning false stops. rec is the decoded line
-- (docs/ledger.md lists its fields; absent values are gw.json.null). Records still waiting in
-- the writer (at most flush_interval old) are not in the files yet: at start-up, before the
-- workers run, the files are complete. dir defaults to the ledger folder start() opened.
function _M.each_record(since, fn, dir)
  dir = dir or state.dir
  if not dir then return nil, "ledger.each_record: the ledger is not open (pass its folder)" end
  if since == nil then
    since = 0
  else
    local t, err = _M.parse_time(since)
    if not t then return nil, "ledger.each_record: since: " .. err end
    since = t
  end
  local list = files(dir)
  local n = 0
  for i, name in ipairs(list) do
    -- a file holds records from (about) its name's time to the next file's; an hour of slack
    -- for clocks that were set back
    local nxt = list[i + 1] and name_time(list[i + 1])
    if not nxt or nxt + 3600 >= since then
      local stop = false
      local ok, err = each_line(dir .. "/" .. name, 0, function(line)
        local rec = parse_record(line)
        if rec and rec.time >= since then
          n = n + 1
          if fn(rec) == false then
            stop = true
            return false
          end
        end
      end)
      if not ok then return nil, "ledger: cannot read " .. dir .. "/" .. name .. ": " .. tostring(err) end
      if stop then break end
    end
  end
  return n
end

-- ====================== start-up ======================

local C_SINK = {
  count = function(r)
    local team, cname = rec_str(r.team), rec_str(r.consumer)
    local model, provider, asked = rec_str(r.model), rec_str(r.provider), rec_str(r.client_model)
    C.mg_ledger_count(r.time, team, len(team), cname, len(cname), model, len(model), provider,
      len(provider), asked, len(asked), int(r.prompt_tokens), int(r.completion_tokens),
      units(r.cost_usd))
  end,
  load = function(dim, key, level, start, requests, prompt, completion, cost)
    C.mg_ledger_load(dim, level, start, key, len(key), requests or 0, prompt or 0, completion or 0,
      cost or 0)
  end,
}

local function log(level, msg)
  C.mg_log_write(level, msg, #msg)
end

-- start(cfg) -> true | nil, err: opens <data_dir>/ledger (refusing a folder it cannot write),
-- loads the snapshot, replays the records after it and starts the writer. Main thread, before
-- the workers start.
function _M.start(cfg)
  local err = ffi.new("char[?]", 1200)
  if C.mg_ledger_open(cfg.data_dir, err, 1200) ~= 0 then
    return nil, "data_dir: " .. ffi_string(err)
  end
  local dir = cfg.data_dir .. "/ledger"
  state.dir = dir
  configure(cfg.ledger)
  local t0 = C.mg_monotonic()
  local res, rerr = _M.replay(dir, C_SINK, function(msg) log(1, msg) end)
  if not res then return nil, rerr end
  log(2, format("ledger: %s: %d bucket(s) from the snapshot, %d record(s) replayed from %d file(s) " ..
    "in %.3fs", dir, res.buckets, res.replayed, res.files, C.mg_monotonic() - t0))
  if C.mg_ledger_start((res.replayed > 0 or res.skipped > 0) and 1 or 0, err, 1200) ~= 0 then
    return nil, "ledger: " .. ffi_string(err)
  end
  return true
end

-- ====================== time ======================

local TIME_HINT = "expected Unix seconds or an ISO-8601 date (2026-01-31 or 2026-01-31T12:00:00Z)"

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local function days_in(y, m)
  if m == 2 and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then return 29 end
  return MDAYS[m]
end

-- parse_time(v) -> Unix seconds | nil, err
-- A number, a string of digits (Unix seconds, decimals allowed), or ISO-8601: 2026-01-31,
-- 2026-01-31T12:00, 2026-01-31T12:00:00, with .fff, and Z or ±HH:MM (no zone: UTC).
function _M.parse_time(v)
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return nil, TIME_HINT end
    return v
  end
  if type(v) ~= "string" then return nil, TIME_HINT end
  if str_find(v, "^%-?%d+%.?%d*$") then return tonumber(v) end
  local y, mo, d, rest = str_match(v, "^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil, TIME_HINT end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > days_in(y, mo) then return nil, TIME_HINT end
  local h, mi, s, frac, zone = 0, 0, 0, 0, ""
  if rest ~= "" then
    local hh, mm, tail = str_match(rest, "^[Tt ](%d%d):(%d%d)(.*)$")
    if not hh then return nil, TIME_HINT end
    h, mi = tonumber(hh), tonumber(mm)
    local ss, tail2 = str_match(tail, "^:(%d%d)(.*)$")
    if ss then
      s = tonumber(ss)
      tail = tail2
      local f, tail3 = str_match(tail, "^[%.,](%d+)(.*)$")
      if f then
        frac = tonumber("0." .. f)
        tail = tail3
      end
    end
    zone = tail
  end
  if h > 23 or mi > 59 or s > 60 then return nil, TIME_HINT end
  local offset = 0
  if zone ~= "" and zone ~= "Z" and zone ~= "z" then
    local sign, zh, zm = str_match(zone, "^([%+%-])(%d%d):?(%d%d)$")
    if not sign then return nil, TIME_HINT end
    zh, zm = tonumber(zh), tonumber(zm)
    if zh > 23 or zm > 59 then return nil, TIME_HINT end
    offset = (zh * 3600 + zm * 60) * (sign == "+" and 1 or -1)
  end
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s + frac - offset
end

-- iso(t) -> "2026-01-31T12:00:00Z" (whole seconds; fractions as ".fff")
function _M.iso(t)
  local s = floor(t)
  if t - s >= 0.0005 then return iso_ms(t) end
  return os_date("!%Y-%m-%dT%H:%M:%SZ", s)
end

-- month_start(t) -> the first of t's UTC month, 00:00
function _M.month_start(t)
  local d = os_date("!*t", floor(t))
  return days_from_civil(d.year, d.month, 1) * 86400
end

-- ====================== queries ======================

-- dir(cfg) -> the ledger folder of a config (<data_dir>/ledger), for each_record off the main thread
function _M.dir(cfg)
  return cfg.data_dir .. "/ledger"
end

local q_since, q_until = ffi.new("double[1]"), ffi.new("double[1]")
local g_key, g_len = ffi.new("const char *[1]"), ffi.new("size_t[1]")
local g_req, g_p, g_c, g_u = ffi.new("double[1]"), ffi.new("double[1]"), ffi.new("double[1]"),
  ffi.new("double[1]")

-- query(group_by, since, until) -> groups, eff_since, eff_until | nil, err
-- groups: { { key = name | nil, requests, prompt_tokens, completion_tokens, cost_units }, ... }
-- over the aggregate buckets overlapping [since, until) (Unix seconds); eff_*: the range widened
-- to the whole buckets that answer it.
function _M.query(group_by, since, till)
  local dim = DIMS[group_by]
  if not dim then return nil, "group_by: expected team, consumer, model, provider or asked_model" end
  local n = C.mg_ledger_query(dim, since, till, q_since, q_until)
  if n < 0 then return nil, "the ledger is not open" end
  local out = {}
  for i = 0, n - 1 do
    C.mg_ledger_group(i, g_key, g_len, g_req, g_p, g_c, g_u)
    out[i + 1] = {
      key = g_key[0] ~= nil and ffi_string(g_key[0], g_len[0]) or nil,
      requests = g_req[0], prompt_tokens = g_p[0], completion_tokens = g_c[0], cost_units = g_u[0],
    }
  end
  return out, q_since[0], q_until[0]
end

-- totals(group_by, since [, until]) -> { [key] = { requests, prompt_tokens, completion_tokens,
-- cost_usd } }, exact | nil, err. From the aggregates (snapshot plus replay: no file is read), any
-- thread. exact is false when since or until falls inside a bucket (the sums then cover the whole
-- bucket): periods that start on a UTC hour within the last 8 days, a day within 13 months, or a
-- month, are exact. Requests without a key are under gw.json.null.
function _M.totals(group_by, since, till)
  since = since or 0
  till = till or (C and C.mg_now() or os.time())
  local rows, es, eu = _M.query(group_by, since, till)
  if not rows then return nil, es end
  local out = {}
  for _, r in ipairs(rows) do
    out[r.key == nil and null or r.key] = { requests = r.requests, prompt_tokens = r.prompt_tokens,
      completion_tokens = r.completion_tokens, cost_usd = floor(r.cost_units + 0.5) / 1e10 }
  end
  return out, es >= floor(since) and eu <= math.ceil(till)
end

return _M
