-- moongate.consumers — API keys and who they belong to (SPEC §2 `consumers`, §6 /admin/consumers).
--
-- Two sources, looked up in this order:
--   * gateway.lua's `consumers`: the config loader keeps only each key's SHA-256 (hex,
--     `key_sha256`); index(cfg) builds a digest -> consumer table once per config and worker;
--   * consumers created at run time through the admin API: written to <data_dir>/consumers.json
--     (atomically: temporary file, fsync, rename) and published in gw.shared as
--     "consumer:<sha256 hex>" -> the consumer as JSON, so every worker sees a new one, and stops
--     seeing a deleted one, at once.
--
-- Admin handlers run on the main thread, requests on the workers, each with its own Lua state: the
-- file is the record that survives a restart, gw.shared the one every thread reads. After a start
-- gw.shared is empty; the first thread that needs a run-time consumer (a request whose key is not
-- in gateway.lua, or an admin call) loads the file into gw.shared, once per process (claimed with
-- an atomic incr; the others wait for "consumers:loaded").
--
-- Keys are never stored or logged in plain text; a lookup hashes the key it is given and compares
-- digests in constant time (mg_const_eq). The table lookup that finds the candidate is keyed by
-- the digest, so its timing can only tell an attacker about digests, which does not help forge a
-- key.
local ffi = require("ffi")
local bit = require("bit")
local mgffi = require("moongate.ffi")
local units = require("moongate.units")

local C = mgffi.C
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex
local byte, char, format, rep, sub = string.byte, string.char, string.format, string.rep, string.sub
local concat, sort = table.concat, table.sort
local floor = math.floor
local ipairs, pairs, pcall, tostring, type = ipairs, pairs, pcall, tostring, type

local _M = { _VERSION = "0.1" }

local FILE = "consumers.json"
local SHARED_PREFIX = "consumer:"
local LOADED = "consumers:loaded"
local CLAIM = "consumers:loading"

---------------------------------------------------------------------------------------------------
-- Hashing
---------------------------------------------------------------------------------------------------

-- SHA-256 in Lua, for where the binary's mg_sha256 is not there (busted unit specs, tools).
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function be32(n)
  return char(band(rshift(n, 24), 255), band(rshift(n, 16), 255), band(rshift(n, 8), 255), band(n, 255))
end

local function sha256_lua(msg)
  local len = #msg
  local bits_hi, bits_lo = floor(len / 0x20000000), (len % 0x20000000) * 8
  msg = msg .. "\128" .. rep("\0", (55 - len) % 64) .. be32(bits_hi) .. be32(bits_lo)
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  local w = {}
  for at = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = byte(msg, at + i * 4, at + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 63 do
      local x, y = w[i - 15], w[i - 2]
      local s0 = bxor(ror(x, 7), ror(x, 18), rshift(x, 3))
      local s1 = bxor(ror(y, 17), ror(y, 19), rshift(y, 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 0, 63 do
      local S1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
      local ch = bxor(band(e, f), band(bnot(e), g))
      local t1 = tobit(h + S1 + ch + K[i + 1] + w[i])
      local S0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      local t2 = tobit(S0 + maj)
      h, g, f, e = g, f, e, tobit(d + t1)
      d, c, b, a = c, b, a, tobit(t1 + t2)
    end
    h0, h1, h2, h3 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d)
    h4, h5, h6, h7 = tobit(h4 + e), tobit(h5 + f), tobit(h6 + g), tobit(h7 + h)
  end
  return be32(h0) .. be32(h1) .. be32(h2) .. be32(h3) .. be32(h4) .. be32(h5) .. be32(h6) .. be32(h7)
end
_M._sha256_lua = sha256_lua

local digest_buf = ffi.new("unsigned char[32]")

-- digest(s) -> the 32-byte SHA-256 of s
local function digest(s)
  if C then
    C.mg_sha256(s, #s, digest_buf)
    return ffi.string(digest_buf, 32)
  end
  return sha256_lua(s)
end
_M.digest = digest

local HEX = {}
for i = 0, 255 do HEX[char(i)] = format("%02x", i) end

local function to_hex(raw)
  return (raw:gsub(".", HEX))
end

local function from_hex(hex)
  return (hex:gsub("%x%x", function(h) return char(tonumber(h, 16)) end))
end

-- hash_key(key) -> lower-case hex SHA-256 of the key: what is stored instead of the key
function _M.hash_key(key)
  return to_hex(digest(key))
end

-- const_eq(a, b) -> whether two strings of equal length are equal, in time that does not depend
-- on where they differ
local function const_eq(a, b)
  if #a ~= #b then return false end
  if C then return C.mg_const_eq(a, b, #a) == 1 end
  local d = 0
  for i = 1, #a do d = bor(d, bxor(byte(a, i), byte(b, i))) end
  return d == 0
end
_M.const_eq = const_eq

---------------------------------------------------------------------------------------------------
-- Consumers as requests see them (ctx.consumer)
---------------------------------------------------------------------------------------------------

local allowed_sets = setmetatable({}, { __mode = "k" })  -- consumer -> { [model] = true }

-- A consumer for ctx.consumer: name, team, budget (period parsed), models. `src` is a config
-- entry (period already parsed) or a stored record (period as written).
local function make_consumer(src)
  local budget = src.budget
  if budget and type(budget.period) ~= "table" then
    local p = units.period(budget.period)
    budget = { usd = budget.usd, period = p, hard = budget.hard == true }
  end
  local c = { name = src.name, team = src.team, budget = budget, models = src.models }
  if type(src.models) == "table" then
    local set = {}
    for _, m in ipairs(src.models) do set[m] = true end
    allowed_sets[c] = set
  end
  return c
end

-- allows(consumer, model) -> whether the consumer may ask for that model (the client's name)
function _M.allows(c, model)
  local set = allowed_sets[c]
  if not set then return true end
  return set[model] == true
end

-- index(cfg) -> { by_hash = { hex = { consumer, raw digest } }, by_raw = { raw digest = the same },
-- by_name = { name = true } },
-- built once per config (and per worker: each has its own copy of the config)
function _M.index(cfg)
  local ix = cfg._consumer_index
  if ix then return ix end
  ix = { by_hash = {}, by_raw = {}, by_name = {} }
  for _, e in ipairs(cfg.consumers or {}) do
    if e.key_sha256 then
      local c = make_consumer(e)
      local hit = { consumer = c, raw = from_hex(e.key_sha256) }
      ix.by_hash[e.key_sha256] = hit
      ix.by_raw[hit.raw] = hit
      ix.by_name[e.name] = c
    end
  end
  cfg._consumer_index = ix
  return ix
end

---------------------------------------------------------------------------------------------------
-- The file in data_dir
---------------------------------------------------------------------------------------------------

-- libc, declared one by one: another module may have declared some of them already
for _, decl in ipairs({ "int open(const char *path, int flags, ...);",
                        "long write(int fd, const void *buf, size_t n);", "int fsync(int fd);",
                        "int close(int fd);", "int rename(const char *from, const char *to);",
                        "int mkdir(const char *path, unsigned int mode);", "int getpid(void);",
                        "char *strerror(int errnum);" }) do
  pcall(ffi.cdef, decl)
end
local O_RDONLY, O_WRONLY, O_CREAT, O_TRUNC = 0, 1, 64, 512   -- Linux values

-- mkdir_p(dir) -> true | nil, err
local function mkdir_p(dir)
  local path = ""
  for seg in dir:gmatch("[^/]+") do
    path = path .. "/" .. seg
    ffi.C.mkdir(path, 448)   -- 0700; EEXIST is fine, anything else shows at open()
  end
  return true
end

-- write_atomic(path, text) -> true | nil, err. A reader sees the old file or the new one, never a
-- part: the text goes to a temporary file that is fsynced, then renamed over the old one.
local function write_atomic(path, text)
  local dir = path:match("^(.*)/[^/]*$") or "."
  mkdir_p(dir)
  local tmp = path .. ".tmp." .. ffi.C.getpid()
  local fd = ffi.C.open(tmp, bor(O_WRONLY, O_CREAT, O_TRUNC), ffi.new("int", 384))  -- 0600
  if fd < 0 then return nil, "cannot write " .. tmp .. ": " .. ffi.string(ffi.C.strerror(ffi.errno())) end
  local off = 0
  while off < #text do
    local n = tonumber(ffi.C.write(fd, ffi.cast("const char *", text) + off, #text - off))
    if n <= 0 then
      local err = ffi.string(ffi.C.strerror(ffi.errno()))
      ffi.C.close(fd)
      os.remove(tmp)
      return nil, "cannot write " .. tmp .. ": " .. err
    end
    off = off + n
  end
  ffi.C.fsync(fd)
  ffi.C.close(fd)
  if ffi.C.rename(tmp, path) ~= 0 then
    local err = ffi.string(ffi.C.strerror(ffi.errno()))
    os.remove(tmp)
    return nil, "cannot rename " .. tmp .. " to " .. path .. ": " .. err
  end
  local dfd = ffi.C.open(dir, O_RDONLY)
  if dfd >= 0 then
    ffi.C.fsync(dfd)   -- the rename itself survives a power cut
    ffi.C.close(dfd)
  end
  return true
end
_M._write_atomic = write_atomic

local function json()
  return require("gw").json
end

local function file_of(data_dir)
  return (data_dir or "./data") .. "/" .. FILE
end

-- read_records(data_dir) -> { record, ... } | nil, err (no file: an empty list)
local function read_records(data_dir)
  local path = file_of(data_dir)
  local f = io.open(path, "rb")
  if not f then return {} end
  local text = f:read("*a")
  f:close()
  if text == "" then return {} end
  local doc = json().decode(text)
  if type(doc) ~= "table" or type(doc.consumers) ~= "table" then
    return nil, path .. " is not a consumers file (fix or remove it)"
  end
  local out = {}
  for _, r in ipairs(doc.consumers) do
    if type(r) == "table" and type(r.name) == "string" and type(r.key_sha256) == "string" then
      out[#out + 1] = r
    end
  end
  return out
end
_M._read_records = read_records

local function write_records(data_dir, records)
  local list = {}
  for i, r in ipairs(records) do list[i] = r end
  sort(list, function(a, b) return a.name < b.name end)
  local body = json().encode({ version = 1, consumers = setmetatable(list, json().array_mt) })
  if #list == 0 then body = '{"consumers":[],"version":1}' end
  return write_atomic(file_of(data_dir), body .. "\n")
end

---------------------------------------------------------------------------------------------------
-- gw.shared
---------------------------------------------------------------------------------------------------

local function shared()
  return require("gw").shared
end

-- A run-time consumer in gw.shared: by its key's digest (lookup), and its name to that digest
-- (find, for the admin API of an instance that did not create it: with cluster.redis the data_dir
-- is this instance's, gw.shared every instance's). Names live under consumer:name:, which no hex
-- digest can be.
local NAME_PREFIX = SHARED_PREFIX .. "name:"
local shared_record   -- below

local function publish(r)
  shared().set(SHARED_PREFIX .. r.key_sha256, json().encode(r))
  shared().set(NAME_PREFIX .. r.name, r.key_sha256)
end

-- ensure_loaded(data_dir) -> true | nil, err: the file's consumers are in gw.shared (once per
-- process; the first caller loads, the others wait for it, up to 5 s)
function _M.ensure_loaded(data_dir)
  local s = shared()
  if s.get(LOADED) then return true end
  if s.incr(CLAIM, 1, 30) == 1 then
    local records, err = read_records(data_dir)
    if records then
      for _, r in ipairs(records) do publish(r) end
    else
      require("gw").log("error", "consumers: " .. err .. "; run-time consumers are unavailable")
    end
    s.set(LOADED, 1)
    return records and true or nil, err
  end
  local gw = require("gw")
  for _ = 1, 1000 do
    if s.get(LOADED) then return true end
    gw.sleep(0.005)
  end
  return nil, "consumers are still being loaded"
end

-- Decoded stored consumers, by their JSON text (a deleted one simply is not found in gw.shared
-- any more; an edited one has a new text)
local decoded, ndecoded = {}, 0

-- lookup(cfg, key) -> consumer | nil
function _M.lookup(cfg, key)
  local raw = digest(key)
  local hit = _M.index(cfg).by_raw[raw]   -- the configured keys: no hex on the hot path
  if hit and const_eq(hit.raw, raw) then return hit.consumer end
  local hex = to_hex(raw)
  local s = shared()
  if not s then return nil end
  _M.ensure_loaded(cfg.data_dir)
  local text = s.get(SHARED_PREFIX .. hex)
  if type(text) ~= "string" then return nil end
  local c = decoded[text]
  if not c then
    local r = json().decode(text)
    if type(r) ~= "table" or type(r.key_sha256) ~= "string" then return nil end
    c = make_consumer(r)
    decoded[text] = { consumer = c, raw = from_hex(r.key_sha256) }
    ndecoded = ndecoded + 1
    if ndecoded > 10000 then decoded, ndecoded = {}, 0 end
    c = decoded[text]
  end
  if const_eq(c.raw, raw) then return c.consumer end
  return nil
end

---------------------------------------------------------------------------------------------------
-- The admin API (main thread)
---------------------------------------------------------------------------------------------------

-- What POST /admin/consumers accepts: a `consumers` entry whose key is optional.
local function create_schema()
  local base = require("moongate.config").consumer_schema
  local props = {}
  for k, v in pairs(base.properties) do props[k] = v end
  props.key = { type = "string", check = function(v)
    if #v < 8 or v:find("[%s%c]") then return nil, "must be at least 8 characters, without spaces" end
    return true
  end }
  return { type = "object", properties = props }
end

-- random_hex(n) -> n random bytes from /dev/urandom, as 2n hex characters
function _M.random_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(n)
  f:close()
  return to_hex(bytes)
end

-- A 32-byte random key: sk-mg- and 64 hex characters.
local function new_key()
  return "sk-mg-" .. _M.random_hex(32)
end
_M._new_key = new_key

local function key_id(hex)
  return sub(hex, 1, 12)
end

local function view(r, source)
  local out = { name = r.name, team = r.team, models = r.models, source = source,
                key_id = key_id(r.key_sha256), created_at = r.created_at }
  if r.budget then
    local b = r.budget
    out.budget = { usd = b.usd, period = b.period, hard = b.hard == true }
  end
  return out
end

local function err(status, message, errors)
  local e = { message = message }
  if errors then e.errors = setmetatable(errors, json().array_mt) end
  return status, { error = e }
end

-- The text a config budget's period was written as, for listings ("1mo", "86400s").
local function period_text(p)
  if type(p) ~= "table" then return p end
  if p.months then return p.months .. "mo" end
  return tostring(p.seconds) .. "s"
end

-- list(cfg) -> 200, { consumers = [...] } (config ones first, then run-time ones; never a key)
function _M.list(cfg)
  local out = {}
  for _, e in ipairs(cfg.consumers or {}) do
    local v = view(e, "config")
    if v.budget then v.budget.period = period_text(e.budget.period) end
    out[#out + 1] = v
  end
  local records, rerr = read_records(cfg.data_dir)
  if not records then return err(500, rerr) end
  for _, r in ipairs(records) do out[#out + 1] = view(r, "admin") end
  return 200, { consumers = setmetatable(out, json().array_mt) }
end

-- shared_record(name) -> the stored record of a run-time consumer in gw.shared | nil (with
-- cluster.redis, also one another instance created)
shared_record = function(name)
  local s = shared()
  local hex = s and s.get(NAME_PREFIX .. name)
  local text = type(hex) == "string" and s.get(SHARED_PREFIX .. hex)
  if type(text) ~= "string" then return nil end
  local r = json().decode(text)
  if type(r) == "table" and r.name == name then return r end
  return nil
end

-- find(cfg, name) -> consumer (for ctx-like use), source | nil
function _M.find(cfg, name)
  local c = _M.index(cfg).by_name[name]
  if c then return c, "config" end
  local records = read_records(cfg.data_dir) or {}
  for _, r in ipairs(records) do
    if r.name == name then return make_consumer(r), "admin" end
  end
  local r = shared_record(name)
  if r then return make_consumer(r), "admin" end
  return nil
end

-- get(cfg, name) -> status, doc
function _M.get(cfg, name)
  for _, e in ipairs(cfg.consumers or {}) do
    if e.name == name then
      local v = view(e, "config")
      if v.budget then v.budget.period = period_text(e.budget.period) end
      return 200, v
    end
  end
  local records, rerr = read_records(cfg.data_dir)
  if not records then return err(500, rerr) end
  for _, r in ipairs(records) do
    if r.name == name then return 200, view(r, "admin") end
  end
  -- created by another instance sharing this one's Redis
  local r = shared_record(name)
  if r then return 200, view(r, "admin") end
  return err(404, "no consumer named " .. format("%q", name))
end

-- clashes(cfg) -> { "consumers[i].name: ...", ... }: gateway.lua's consumers against the ones
-- created at run time, whose names and keys must be unique with them (a reload or a start that
-- would make two consumers of one name or key is refused)
function _M.clashes(cfg)
  local out = {}
  local records = read_records(cfg.data_dir) or {}
  local by_name, by_hash = {}, {}
  for _, r in ipairs(records) do
    by_name[r.name], by_hash[r.key_sha256] = r, r
  end
  local s = shared()
  for i, e in ipairs(cfg.consumers or {}) do
    if by_name[e.name] or shared_record(e.name) then
      out[#out + 1] = format("consumers[%d].name: %q is already a consumer created at run time " ..
        "(DELETE /admin/consumers/%s first, or choose another name)", i, e.name, e.name)
    end
    local hex = e.key_sha256
    local other = hex and by_hash[hex]
    if not other and hex and s then
      local text = s.get(SHARED_PREFIX .. hex)
      other = type(text) == "string" and json().decode(text) or nil
    end
    if type(other) == "table" then
      out[#out + 1] = format("consumers[%d].key: is already the key of the consumer %q created at run time",
        i, tostring(other.name))
    end
  end
  -- a team that consumers created at run time belong to stays (SPEC §2: a reference to a team that
  -- does not exist is refused at load)
  for _, r in ipairs(records) do
    if type(r.team) == "string" and not (cfg.teams and cfg.teams[r.team]) then
      out[#out + 1] = format("teams: %q is the team of the consumer %q created at run time (keep the " ..
        "team, or DELETE /admin/consumers/%s first)", r.team, tostring(r.name), tostring(r.name))
    end
  end
  return out
end

local function has_plugin(cfg, name)
  for _, e in ipairs(cfg.plugins or {}) do
    if e.name == name then return true end
  end
  return false
end

-- create(cfg, doc) -> status, body. doc: the decoded JSON body (false/nil when it was not JSON).
function _M.create(cfg, doc)
  if type(doc) ~= "table" or doc[1] ~= nil then
    return err(400, "the body must be a JSON object with the fields of a consumers entry " ..
      "(name, team, budget, models, key)")
  end
  local schema = require("moongate.schema")
  local v, verrs = schema.validate(doc, create_schema(), "")
  if not v then
    return err(400, "invalid consumer: " .. concat(verrs, "; "), verrs)
  end
  if v.team ~= nil and (cfg.teams or {})[v.team] == nil then
    return err(400, format("team: unknown team %q", v.team), { format("team: unknown team %q", v.team) })
  end
  local ok, lerr = _M.ensure_loaded(cfg.data_dir)
  if not ok then return err(500, lerr) end
  local records, rerr = read_records(cfg.data_dir)
  if not records then return err(500, rerr) end

  local key = v.key or new_key()
  local hex = _M.hash_key(key)
  local ix = _M.index(cfg)
  if ix.by_name[v.name] then
    return err(409, format("a consumer named %q already exists (in gateway.lua)", v.name))
  end
  if ix.by_hash[hex] then return err(409, "that key already belongs to another consumer") end
  for _, r in ipairs(records) do
    if r.name == v.name then return err(409, format("a consumer named %q already exists", v.name)) end
    if r.key_sha256 == hex then return err(409, "that key already belongs to another consumer") end
  end
  -- with cluster.redis, one another instance created (gw.shared is every instance's)
  local s = shared()
  if s.get(NAME_PREFIX .. v.name) ~= nil then
    return err(409, format("a consumer named %q already exists (created on another instance)", v.name))
  end
  if s.get(SHARED_PREFIX .. hex) ~= nil then return err(409, "that key already belongs to another consumer") end

  local r = {
    name = v.name, team = v.team, models = v.models and setmetatable(v.models, json().array_mt),
    key_sha256 = hex, created_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  }
  if v.budget then
    -- kept as written ("1mo"), parsed again by whoever reads it
    r.budget = { usd = v.budget.usd, period = doc.budget.period, hard = v.budget.hard }
  end
  records[#records + 1] = r
  local wok, werr = write_records(cfg.data_dir, records)
  if not wok then return err(500, werr) end
  publish(r)
  local body = { name = r.name, key = key, key_id = key_id(hex) }
  if r.budget and not has_plugin(cfg, "budget") then
    body.warning = "the budget plugin is off, so this consumer's budget is not enforced: " ..
      "add { name = \"budget\" } to plugins (it is switched on by any budget in gateway.lua)"
  end
  return 201, body
end

-- delete(cfg, name) -> status, body
function _M.delete(cfg, name)
  if _M.index(cfg).by_name[name] then
    return err(409, format("consumer %q is defined in gateway.lua; remove it there and reload", name))
  end
  local ok, lerr = _M.ensure_loaded(cfg.data_dir)
  if not ok then return err(500, lerr) end
  local records, rerr = read_records(cfg.data_dir)
  if not records then return err(500, rerr) end
  local keep, gone = {}, nil
  for _, r in ipairs(records) do
    if r.name == name then gone = r else keep[#keep + 1] = r end
  end
  if not gone then return err(404, "no consumer named " .. format("%q", name)) end
  local wok, werr = write_records(cfg.data_dir, keep)
  if not wok then return err(500, werr) end
  shared().delete(SHARED_PREFIX .. gone.key_sha256)
  shared().delete(NAME_PREFIX .. gone.name)
  return 200, { name = name, deleted = true }
end

return _M
