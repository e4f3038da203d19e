-- The jwt plugin in the real binary: HS256, RS256 and ES256 tokens verified by mbedTLS with keys
-- made by the openssl CLI at test time (nothing secret is committed), 401s in both client
-- formats that never echo the token, ctx.consumer mapped from the claims (seen by an inline
-- plugin and by rate_limit), JWKS errors refused by `moongate check` and by a reload, key
-- rotation by reload, and jwt next to auth.

local helpers = require "spec.support.helpers"
local bit = require "bit"
local cjson = require "cjson.safe"
local jwt = require "moongate.jwt"

local b64 = jwt.b64url_encode
local concat = table.concat

---------------------------------------------------------------------------------------------------
-- Keys and tokens, with the openssl CLI
---------------------------------------------------------------------------------------------------

local WORK   -- a temporary folder for keys, signing inputs and signatures

local function openssl(...)
  local argv = { "openssl", ... }
  local code, out = helpers.run(argv, { dir = WORK })
  assert(code == 0, concat(argv, " ") .. " failed: " .. tostring(out))
  return out
end

local function unhex(h)
  return (h:gsub("%s", ""):gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- A new RSA key: pem path and its public JWK members.
local function rsa_key(name, bits)
  local pem = WORK .. "/" .. name .. ".pem"
  openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:" .. (bits or 2048), "-out", pem)
  local n = openssl("rsa", "-in", pem, "-noout", "-modulus"):match("Modulus=(%x+)")
  local e = tonumber(openssl("rsa", "-in", pem, "-noout", "-text"):match("publicExponent: (%d+)"))
  local eb = ""
  while e > 0 do
    eb = string.char(e % 256) .. eb
    e = math.floor(e / 256)
  end
  return { pem = pem, n = b64(unhex(n)), e = b64(eb) }
end

-- A new P-256 key: pem path and its x, y.
local function ec_key(name)
  local pem = WORK .. "/" .. name .. ".pem"
  local der = WORK .. "/" .. name .. ".pub.der"
  openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", pem)
  openssl("pkey", "-in", pem, "-pubout", "-outform", "DER", "-out", der)
  local pub = helpers.read_file(der)
  local point = pub:sub(-65)                 -- SubjectPublicKeyInfo ends with 04 || x || y
  assert(point:byte(1) == 4)
  return { pem = pem, x = b64(point:sub(2, 33)), y = b64(point:sub(34, 65)) }
end

-- ECDSA-Sig-Value (DER: SEQUENCE { INTEGER r, INTEGER s }) -> r || s, 32 bytes each (JWS).
local function der_to_raw(der)
  assert(der:byte(1) == 0x30, "not a DER sequence")
  local pos = 3   -- P-256 signatures are short enough for one length byte
  local function int()
    assert(der:byte(pos) == 0x02, "not a DER integer")
    local len = der:byte(pos + 1)
    local v = der:sub(pos + 2, pos + 1 + len):gsub("^%z+", "")
    pos = pos + 2 + len
    return string.rep("\0", 32 - #v) .. v
  end
  local r = int()
  return r .. int()
end

local seq = 0

-- sign(alg, key, header, claims) -> compact JWS. key: a pem path (RS256, ES256) or the raw HMAC
-- secret (HS256). header.alg defaults to alg (tests may lie about it).
local function sign(alg, key, header, claims)
  header = header or {}
  if header.alg == nil then header.alg = alg end
  if header.typ == nil then header.typ = "JWT" end
  local input = b64(assert(cjson.encode(header))) .. "." .. b64(assert(cjson.encode(claims)))
  seq = seq + 1
  local infile, sigfile = WORK .. "/in-" .. seq, WORK .. "/sig-" .. seq
  helpers.write_file(infile, input)
  if alg == "HS256" then
    openssl("dgst", "-sha256", "-mac", "HMAC", "-macopt", "hexkey:" .. hex(key), "-binary",
            "-out", sigfile, infile)
  else
    openssl("dgst", "-sha256", "-sign", key, "-out", sigfile, infile)
  end
  local sig = helpers.read_file(sigfile)
  if alg == "ES256" then sig = der_to_raw(sig) end
  return input .. "." .. b64(sig)
end

local ISS, AUD = "https://idp.example.com", "moongate"

local function claims(extra)
  local now = os.time()
  local c = { iss = ISS, aud = AUD, sub = "alice", org = { name = "search" }, iat = now,
              exp = now + 600 }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

---------------------------------------------------------------------------------------------------
-- The gateway
---------------------------------------------------------------------------------------------------

local ECHO = [[
  { name = "echo", handler = { on_response = function(ctx)
      local c = ctx.consumer
      ctx.response.headers["x-consumer"] = c and c.name or "-"
      ctx.response.headers["x-team"] = c and c.team or "-"
      ctx.response.headers["x-jwt-iss"] = c and c.jwt and c.jwt.iss or "-"
    end } },
]]

local CONFIG = [[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}", token = "admin-secret" }
workers = 2
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = {
  { name = "jwt", jwks_file = "jwks.json", issuer = "https://idp.example.com", audience = "moongate",
    claims = { consumer = "sub", team = "org.name" } },
]] .. ECHO .. [[
}
]]

local CHAT = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
local MSG = '{"model":"claude-3-5-haiku","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}'

local function call(gw, token, path, body)
  local headers = { ["Content-Type"] = "application/json", Connection = "close" }
  if token then headers.Authorization = "Bearer " .. token end
  local res = helpers.http(gw.port, { method = "POST", path = path or "/v1/chat/completions",
    headers = headers, body = body or CHAT })
  return res.status, cjson.decode(res.body), res
end

local function admin(gw, method, path)
  local res = helpers.http(gw.admin_port, { method = method, path = path,
    headers = { Authorization = "Bearer admin-secret" } })
  return res.status, cjson.decode(res.body), res
end

local function jwks(list)
  return assert(cjson.encode({ keys = list }))
end

describe("jwt", function()
  local gw, dir
  local secret, rsa, rsa_other, ec
  local set      -- the JWKS members, to rewrite the file

  lazy_setup(function()
    WORK = helpers.tmpdir()
    dir = helpers.tmpdir()
    secret = unhex(openssl("rand", "-hex", "32"))
    rsa = rsa_key("rsa")
    rsa_other = rsa_key("rsa-other")
    ec = ec_key("ec")
    set = {
      { kty = "oct", kid = "hs", k = b64(secret) },
      { kty = "RSA", kid = "rs", use = "sig", alg = "RS256", n = rsa.n, e = rsa.e },
      { kty = "EC", kid = "ec", crv = "P-256", x = ec.x, y = ec.y },
      { kty = "OKP", kid = "ed", crv = "Ed25519", x = b64(string.rep("\1", 32)) },   -- skipped
    }
    helpers.write_file(dir .. "/jwks.json", jwks(set))
    gw = helpers.start_gateway(CONFIG, { dir = dir })
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  local function ok_with(token, path, body)
    local status, doc, res = call(gw, token, path, body)
    assert.equal(200, status, res.body)
    return res, doc
  end

  local function refused(token, code)
    local status, doc, res = call(gw, token)
    assert.equal(401, status, res.body)
    assert.equal("authentication_error", doc.error.type)
    assert.equal(code or "invalid_token", doc.error.code)
    if token then assert.is_nil(res.body:find(token, 1, true)) end
    status, doc, res = call(gw, token, "/v1/messages", MSG)
    assert.equal(401, status, res.body)
    assert.equal("error", doc.type)
    assert.equal("authentication_error", doc.error.type)
    return doc
  end

  it("accepts HS256, RS256 and ES256 tokens and maps the claims to ctx.consumer", function()
    for _, t in ipairs({
      sign("HS256", secret, { kid = "hs" }, claims()),
      sign("RS256", rsa.pem, { kid = "rs" }, claims()),
      sign("ES256", ec.pem, { kid = "ec" }, claims()),
    }) do
      local res = ok_with(t)
      assert.equal("alice", res.headers["x-consumer"])
      assert.equal("search", res.headers["x-team"])
      assert.equal(ISS, res.headers["x-jwt-iss"])
      res = ok_with(t, "/v1/messages", MSG)
      assert.equal("alice", res.headers["x-consumer"])
    end
    -- aud as a list holding ours; no team claim: no team
    local res = ok_with(sign("ES256", ec.pem, { kid = "ec" },
      claims({ sub = "bob", aud = { "other", AUD }, org = cjson.null })))
    assert.equal("bob", res.headers["x-consumer"])
    assert.equal("-", res.headers["x-team"])
  end)

  it("allows the leeway on exp and nbf", function()
    local now = os.time()
    ok_with(sign("RS256", rsa.pem, { kid = "rs" }, claims({ exp = now - 20 })))
    ok_with(sign("RS256", rsa.pem, { kid = "rs" }, claims({ nbf = now + 20 })))
    refused(sign("RS256", rsa.pem, { kid = "rs" }, claims({ nbf = now + 300 })))
  end)

  it("answers 401 without a token, or with one that is not a JWT", function()
    refused(nil, "missing_token")
    refused("sk-not-a-jwt-0123456789")
    refused("a.b")
  end)

  it("answers 401 for a tampered payload", function()
    local t = sign("ES256", ec.pem, { kid = "ec" }, claims())
    local h, _, s = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    local forged = h .. "." .. b64(cjson.encode(claims({ sub = "mallory" }))) .. "." .. s
    refused(forged)
    local r = sign("RS256", rsa.pem, { kid = "rs" }, claims())
    h, _, s = r:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    refused(h .. "." .. b64(cjson.encode(claims({ org = { name = "admin" } }))) .. "." .. s)
    -- a flipped signature bit
    local raw = jwt.b64url_decode(s)
    refused(r:match("^(.*%.)") .. b64(string.char(bit.bxor(raw:byte(1), 1)) .. raw:sub(2)))
  end)

  it("answers 401 token_expired for an expired token, invalid_token for a wrong iss or aud", function()
    local now = os.time()
    local doc = refused(sign("HS256", secret, { kid = "hs" }, claims({ exp = now - 120 })), "token_expired")
    assert.equal("Token expired.", doc.error.message)
    refused(sign("HS256", secret, { kid = "hs" }, claims({ iss = "https://evil.example.com" })))
    refused(sign("HS256", secret, { kid = "hs" }, claims({ aud = "someone-else" })))
    refused(sign("HS256", secret, { kid = "hs" }, claims({ aud = { "a", "b" } })))
    refused(sign("HS256", secret, { kid = "hs" }, claims({ exp = cjson.null })))   -- exp required
    refused(sign("HS256", secret, { kid = "hs" }, claims({ sub = cjson.null })))   -- no consumer
  end)

  it("answers 401 for a token signed by a key it does not know", function()
    refused(sign("RS256", rsa_other.pem, { kid = "rs" }, claims()))       -- right kid, wrong key
    refused(sign("RS256", rsa_other.pem, { kid = "nobody" }, claims()))   -- unknown kid
    refused(sign("RS256", rsa.pem, {}, claims()))                         -- no kid, 3 keys
    refused(sign("HS256", string.rep("k", 32), { kid = "hs" }, claims()))
  end)

  it("refuses alg none and the HS256-with-a-public-key confusion", function()
    local h = b64(cjson.encode({ alg = "none", typ = "JWT", kid = "hs" }))
    refused(h .. "." .. b64(cjson.encode(claims())) .. ".")
    -- the RSA key's public members (what an attacker has) as the HMAC secret, with its kid
    refused(sign("HS256", jwt.b64url_decode(rsa.n), { kid = "rs" }, claims()))
    refused(sign("HS256", cjson.encode(set[2]), { kid = "rs" }, claims()))
    -- ES256 claimed for the RSA key, RS256 for the oct one
    refused(sign("ES256", ec.pem, { kid = "rs" }, claims()))
    refused(sign("RS256", rsa.pem, { kid = "hs" }, claims()))
  end)

  it("refuses a huge token before decoding it", function()
    refused(sign("HS256", secret, { kid = "hs" }, claims({ pad = string.rep("x", 20000) })))
  end)

  it("logs why a token was refused, without the token", function()
    local t = sign("RS256", rsa_other.pem, { kid = "rs" }, claims())
    refused(t)
    local log = gw:log()
    assert.matches("jwt: token refused: signature", log, 1, true)
    assert.matches("skipped keys%[4%]", log)             -- the OKP key, at load
    assert.is_nil(log:find(t, 1, true))
    assert.is_nil(log:find(t:match("%.([^.]+)%.") , 1, true))
  end)

  it("shows no key material in GET /admin/config", function()
    local status, _, res = admin(gw, "GET", "/admin/config")
    assert.equal(200, status)
    assert.matches('"jwks_file"', res.body, 1, true)
    assert.is_nil(res.body:find("_jwt", 1, true))
    assert.is_nil(res.body:find(b64(secret), 1, true))
    assert.is_nil(res.body:find(secret, 1, true))
  end)

  it("keeps the running keys when a reload finds a broken JWKS, and rotates keys on reload", function()
    local rs_token = sign("RS256", rsa.pem, { kid = "rs" }, claims())
    ok_with(rs_token)

    helpers.write_file(dir .. "/jwks.json", '{"keys": [')
    local status, doc = admin(gw, "POST", "/admin/reload")
    assert.equal(400, status)
    assert.matches("plugins%[1%]: .*jwks.json: not a JSON object", concat(doc.error.errors, "\n"))
    ok_with(rs_token)

    helpers.write_file(dir .. "/jwks.json", jwks({ { kty = "OKP", crv = "Ed25519", x = "AAAA" } }))
    status, doc = admin(gw, "POST", "/admin/reload")
    assert.equal(400, status)
    assert.matches("no usable key", concat(doc.error.errors, "\n"))

    local ec2 = ec_key("ec2")
    helpers.write_file(dir .. "/jwks.json",
      jwks({ { kty = "EC", kid = "ec2", crv = "P-256", x = ec2.x, y = ec2.y } }))
    status = admin(gw, "POST", "/admin/reload")
    assert.equal(200, status)
    for _ = 1, 6 do   -- fresh connections: both workers
      refused(rs_token)
      ok_with(sign("ES256", ec2.pem, { kid = "ec2" }, claims()))
      ok_with(sign("ES256", ec2.pem, {}, claims()))   -- the only key: no kid needed
    end
  end)
end)

describe("jwt at load", function()
  local dir

  before_each(function()
    WORK = helpers.tmpdir()
    dir = helpers.tmpdir()
  end)

  teardown(function() helpers.cleanup() end)

  local function check(entry, files)
    for name, text in pairs(files or {}) do helpers.write_file(dir .. "/" .. name, text) end
    helpers.write_file(dir .. "/gateway.lua", [[
listen = { "127.0.0.1:1" }
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = { ]] .. entry .. [[ }
]])
    local code, out = helpers.run({ helpers.bin(), "check", "-c", dir .. "/gateway.lua" }, { dir = dir })
    return code, out
  end

  it("refuses a JWKS that does not parse, is missing, or has no usable key", function()
    local code, out = check('{ name = "jwt", jwks_file = "jwks.json" }', { ["jwks.json"] = "nope" })
    assert.equal(1, code, out)
    assert.matches("plugins%[1%]: .*jwks.json: not a JSON object", out)

    code, out = check('{ name = "jwt", jwks_file = "missing.json" }')
    assert.equal(1, code, out)
    assert.matches("plugins%[1%]%.jwks_file: cannot read", out)

    local short = rsa_key("short", 1024)
    code, out = check('{ name = "jwt", jwks_file = "jwks.json" }', { ["jwks.json"] = jwks({
      { kty = "RSA", kid = "short", n = short.n, e = short.e },
      { kty = "EC", kid = "off-curve", crv = "P-256", x = b64(string.rep("\1", 32)),
        y = b64(string.rep("\2", 32)) },
      { kty = "oct", kid = "weak", k = b64("short secret") },
    }) })
    assert.equal(1, code, out)
    assert.matches("no usable key", out)
    assert.matches("RSA modulus shorter than 2048 bits", out, 1, true)
    assert.matches("not a point on P-256", out, 1, true)    -- mbedTLS's check, in the binary
    assert.matches("HS256 secret shorter than 32 bytes", out, 1, true)

    code, out = check('{ name = "jwt" }')
    assert.equal(1, code, out)
    assert.matches("plugins%[1%]: jwks_file or secret required", out)

    code, out = check('{ name = "jwt", secret = "too short" }')
    assert.equal(1, code, out)
    assert.matches("plugins%[1%]%.secret: shorter than 32 bytes", out)

    code, out = check('{ name = "jwt", secret = "0123456789abcdef0123456789abcdef", leeway = "soon" }')
    assert.equal(1, code, out)
    assert.matches("plugins%[1%].leeway", out)
  end)

  it("accepts a good JWKS with a secret next to it", function()
    local e = ec_key("good")
    local code, out = check('{ name = "jwt", jwks_file = "jwks.json", secret = ' ..
      '"0123456789abcdef0123456789abcdef", audience = { "a", "b" }, leeway = "30s" }',
      { ["jwks.json"] = jwks({ { kty = "EC", kid = "e", crv = "P-256", x = e.x, y = e.y } }) })
    assert.equal(0, code, out)
    assert.matches("ok", out)
  end)
end)

describe("jwt consumers", function()
  local gw
  local SECRET = "an-hs256-secret-of-32-bytes-or-more!"

  local function tok(sub, org)
    return sign("HS256", SECRET, {}, { sub = sub, org = org, exp = os.time() + 600 })
  end

  lazy_setup(function()
    WORK = helpers.tmpdir()
    gw = helpers.start_gateway([[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }   -- a free port, not the default 9901
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = {
  { name = "jwt", secret = "]] .. SECRET .. [[", claims = { consumer = "sub", team = "org" } },
  { name = "rate_limit", rules = { { by = "consumer", requests = 2, window = "1m" },
                                   { by = "team", requests = 3, window = "1m" } } },
]] .. ECHO .. [[
}
]])
  end)

  lazy_teardown(function()
    helpers.stop_and_check(gw)
  end)

  it("are counted by rate_limit by consumer and team", function()
    local a, b, c = tok("alice", "search"), tok("bob", "search"), tok("carol", "ads")
    assert.equal(200, (call(gw, a)))
    local _, _, res = call(gw, a)
    assert.equal(200, res.status)
    assert.equal("search", res.headers["x-team"])
    assert.equal(200, (call(gw, b)))                -- search's 3rd
    local status, doc = call(gw, b)
    assert.equal(429, status)                       -- search's 4th: the team's limit
    assert.equal("rate_limit_error", doc.error.type)
    assert.equal(429, (call(gw, a)))                -- alice's 3rd
    assert.equal(200, (call(gw, c)))                -- another team, another consumer
    assert.equal(200, (call(gw, c)))
    assert.equal(429, (call(gw, c)))                -- carol's 3rd: her own limit
  end)
end)

-- auth (2500) runs before jwt (2450): it must leave a bearer JWT it does not know as a key to jwt,
-- and jwt must not ask for a token from a request auth attributed. With jwt moved first (an
-- entry's priority), jwt leaves whatever is not a bearer JWT to auth. Either way nothing
-- unjudged gets through: a JWT-shaped x-api-key is not a bearer token, and is refused.
-- The JWT cases need plugins/auth.lua to defer JWT-shaped keys (docs/jwt.md); until it does
-- they are pending.
local AUTH_DEFERS = (helpers.read_file(helpers.root .. "/plugins/auth.lua") or ""):find("jwt", 1, true)

for _, order in ipairs({ { name = "auth first", jwt_priority = "" },
                         { name = "jwt first", jwt_priority = "priority = 2600, " } }) do
  describe("jwt with auth, " .. order.name, function()
    local gw
    local SECRET = "an-hs256-secret-of-32-bytes-or-more!"

    lazy_setup(function()
      WORK = helpers.tmpdir()
      gw = helpers.start_gateway([[
listen = { "127.0.0.1:${PORT}" }
admin  = { listen = "127.0.0.1:${ADMIN_PORT}" }   -- a free port, not the default 9901
access_log = false
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
consumers = { { name = "keyed", key = "sk-keyed-0123456789" } }
plugins = {
  { name = "auth" },
  { name = "jwt", ]] .. order.jwt_priority .. [[secret = "]] .. SECRET .. [[" },
]] .. ECHO .. [[
}
]])
    end)

    lazy_teardown(function()
      helpers.stop_and_check(gw)
    end)

    local function with(headers)
      headers["Content-Type"] = "application/json"
      headers.Connection = "close"
      local res = helpers.http(gw.port, { method = "POST", path = "/v1/chat/completions",
        headers = headers, body = CHAT })
      return res.status, res
    end

    it("takes API keys, refuses wrong ones and none", function()
      local status, res = with({ Authorization = "Bearer sk-keyed-0123456789" })
      assert.equal(200, status, res.body)
      assert.equal("keyed", res.headers["x-consumer"])
      assert.equal(200, (with({ ["x-api-key"] = "sk-keyed-0123456789" })))
      assert.equal(401, (with({ Authorization = "Bearer sk-wrong-0123456789" })))
      assert.equal(401, (with({})))
    end)

    it("refuses a JWT-shaped key that is not a bearer token, and bad JWTs", function()
      local t = sign("HS256", SECRET, {}, { sub = "jwt-user", exp = os.time() + 600 })
      assert.equal(401, (with({ ["x-api-key"] = t })))
      assert.equal(401, (with({ ["x-api-key"] = "aaaa.bbbb.cccc" })))
      local bad = sign("HS256", string.rep("x", 40), {}, { sub = "jwt-user", exp = os.time() + 600 })
      assert.equal(401, (with({ Authorization = "Bearer " .. bad })))
    end)

    it("takes a bearer JWT", function()
      if not AUTH_DEFERS then
        pending("plugins/auth.lua must leave JWT-shaped bearer keys to jwt (docs/jwt.md)")
        return
      end
      local t = sign("HS256", SECRET, {}, { sub = "jwt-user", exp = os.time() + 600 })
      local status, res = with({ Authorization = "Bearer " .. t })
      assert.equal(200, status, res.body)
      assert.equal("jwt-user", res.headers["x-consumer"])
    end)
  end)
end
