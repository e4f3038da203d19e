-- moongate.jwt and the jwt plugin outside the binary: base64url, token parsing (and the malformed
-- tokens it must refuse), key sets, key choice (alg/key-type confusion refused), claim checks,
-- claim mapping, and the plugin's on_request with the signature check stubbed (signatures
-- themselves need mbedTLS, in the binary: spec/integration/jwt_spec.lua).
local jwt = require("moongate.jwt")
local config = require("moongate.config")
local cjson = require("cjson.safe")

local b64, unb64 = jwt.b64url_encode, jwt.b64url_decode

local function token(header, claims, sig)
  return b64(type(header) == "string" and header or cjson.encode(header)) .. "." ..
         b64(type(claims) == "string" and claims or cjson.encode(claims)) .. "." ..
         b64(sig or "signature")
end

local function tmpdir()
  local name = os.tmpname()
  os.remove(name)
  assert(os.execute("mkdir -p '" .. name .. "'"))
  return name
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local N = string.rep("\201", 256)                 -- 2048-bit-long stand-ins (no C check here)
local X, Y = string.rep("\1", 32), string.rep("\2", 32)
local SECRET = string.rep("s", 32)

local function rsa_jwk(kid, extra)
  local k = { kty = "RSA", kid = kid, n = b64(N), e = b64("\1\0\1") }
  for key, v in pairs(extra or {}) do k[key] = v end
  return k
end
local function ec_jwk(kid) return { kty = "EC", kid = kid, crv = "P-256", x = b64(X), y = b64(Y) } end
local function oct_jwk(kid) return { kty = "oct", kid = kid, k = b64(SECRET) } end

local function keyset(list, secret)
  return assert(jwt.keyset(cjson.encode({ keys = list }), "jwks.json", secret))
end

describe("base64url", function()
  it("encodes and decodes the RFC 4648 vectors, URL-safe and unpadded", function()
    local vectors = { [""] = "", f = "Zg", fo = "Zm8", foo = "Zm9v", foob = "Zm9vYg",
                      fooba = "Zm9vYmE", foobar = "Zm9vYmFy", ["\251\255\191"] = "-_-_" }
    for raw, enc in pairs(vectors) do
      assert.equal(enc, b64(raw))
      assert.equal(raw, unb64(enc))
    end
  end)

  it("round-trips every byte value at every length", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for n = 0, 40 do
      local s = all:sub(256 - n)
      assert.equal(s, unb64(b64(s)))
    end
  end)

  it("refuses other alphabets, padding, whitespace, bad lengths and non-canonical endings", function()
    for _, bad in ipairs({ "Zm9v+A", "Zm9v/A", "Zg==", "Zm 9v", "Zm9v\n", "Z", "Zm9vY", "Zh", "Zm9", "Zm-" }) do
      -- "Zm9" is canonical ("fo" is "Zm8"): only the listed non-canonical ones must fail
      if bad ~= "Zm9" then
        assert.is_nil(unb64(bad), bad)
      end
    end
    assert.is_nil(unb64("Zh"))     -- "f" with a stray low bit
    assert.is_nil(unb64("Zm9"))    -- "fo" with a stray low bit
    assert.equal("fo", unb64("Zm8"))
    local v, err = unb64(nil)
    assert.is_nil(v)
    assert.truthy(err)
  end)
end)

describe("jwt.parse", function()
  local H = { alg = "HS256", typ = "JWT", kid = "k1" }
  local C = { sub = "alice" }

  it("splits a token into header, claims, signing input and raw signature", function()
    local t = token(H, C, "\1\2\3")
    local tok = assert(jwt.parse(t))
    assert.equal("HS256", tok.alg)
    assert.equal("k1", tok.kid)
    assert.equal("alice", tok.claims.sub)
    assert.equal("\1\2\3", tok.signature)
    assert.equal(t:match("^(.*)%."), tok.signing_input)
  end)

  local function refused(t, detail)
    local tok, kind, why = jwt.parse(t)
    assert.is_nil(tok)
    assert.equal("invalid", kind)
    if detail then assert.matches(detail, why, 1, true) end
    if type(t) == "string" and #t > 0 then assert.is_nil(why:find(t, 1, true)) end
  end

  it("refuses the wrong number of segments", function()
    local t = token(H, C)
    refused(t:match("^(.*)%."), "three")
    refused(t .. ".x", "three")
    refused(t .. ".x.y", "three")                  -- a JWE has five
    refused("abc", "three")
    refused("", "three")
    refused(nil, "no token")
    refused("." .. b64(cjson.encode(C)) .. ".x", "empty")
    refused(b64(cjson.encode(H)) .. "..x", "empty")
  end)

  it("refuses bad base64url in any segment", function()
    local h, p = b64(cjson.encode(H)), b64(cjson.encode(C))
    refused("e+J." .. p .. ".AAAA", "header")
    refused(h .. ".e/J.AAAA", "payload")
    refused(h .. "." .. p .. ".AA=A", "signature")
    refused(h .. "." .. p .. ".A", "signature")
  end)

  it("refuses a header or payload that is not a JSON object", function()
    refused(token("not json", C), "header: not a JSON object")
    refused(token("[1,2]", C), "header: not a JSON object")
    refused(token('"HS256"', C), "header: not a JSON object")
    refused(token('{"alg":"HS256"', C), "header: not a JSON object")
    refused(token(H, "[]"), "payload: not a JSON object")
    refused(token(H, "12"), "payload: not a JSON object")
    refused(token(H, '{"exp": NaN}'), "payload")
    refused(token(H, '{"exp": Infinity}'), "payload")
    refused(token(H, string.rep("[", 100) .. string.rep("]", 100)), "payload")
  end)

  it("refuses a header without alg, a kid that is not a string, and crit", function()
    refused(token({ typ = "JWT" }, C), "without alg")
    refused(token({ alg = 256 }, C), "without alg")
    refused(token({ alg = "HS256", kid = 7 }, C), "kid")
    refused(token({ alg = "HS256", crit = { "exp" }, exp = 1 }, C), "crit")
  end)

  it("refuses a huge token before decoding it", function()
    local t = token(H, { sub = "alice", pad = string.rep("x", jwt.MAX_TOKEN) })
    refused(t, "bytes")
    assert.is_false(jwt.looks_like(t))
  end)

  it("tells a JWT from an API key by its shape", function()
    assert.is_true(jwt.looks_like(token(H, C)))
    assert.is_true(jwt.looks_like("eyJh.eyJz."))   -- alg none's empty signature still looks like one
    assert.is_false(jwt.looks_like("sk-alice-0123456789"))
    assert.is_false(jwt.looks_like("a.b"))
    assert.is_false(jwt.looks_like("a.b.c.d"))
    assert.is_false(jwt.looks_like("a+b.c.d"))
    assert.is_false(jwt.looks_like(".b.c"))
    assert.is_false(jwt.looks_like(nil))
  end)
end)

describe("jwt key sets", function()
  it("reads oct, RSA and EC P-256 keys", function()
    local set = keyset({ oct_jwk("h"), rsa_jwk("r"), ec_jwk("e") })
    assert.equal(3, #set.keys)
    assert.equal(SECRET, set.by_kid.h[1].k1)
    assert.equal(N, set.by_kid.r[1].k1)
    assert.equal("\1\0\1", set.by_kid.r[1].k2)
    assert.equal(X, set.by_kid.e[1].k1)
    assert.equal(Y, set.by_kid.e[1].k2)
    assert.same({}, set.skipped)
  end)

  it("strips a leading zero from n", function()
    local set = keyset({ rsa_jwk("r", { n = b64("\0" .. N) }) })
    assert.equal(N, set.keys[1].k1)
  end)

  it("skips keys it cannot use, saying why, and refuses a set left empty", function()
    local list = {
      rsa_jwk("good"),
      { kty = "OKP", kid = "ed", crv = "Ed25519", x = "AAAA" },
      rsa_jwk("enc", { use = "enc" }),
      rsa_jwk("ops", { key_ops = { "encrypt" } }),
      rsa_jwk("ps", { alg = "PS256" }),
      rsa_jwk("mismatch", { alg = "ES256" }),
      rsa_jwk("short", { n = b64(string.rep("\201", 128)) }),
      rsa_jwk("bad-n", { n = "not base64!" }),
      { kty = "EC", kid = "p384", crv = "P-384", x = b64(X), y = b64(Y) },
      { kty = "EC", kid = "xlen", crv = "P-256", x = b64(X .. "\0"), y = b64(Y) },
      { kty = "oct", kid = "weak", k = b64("short") },
      { kty = "oct", kid = "nok" },
      "not an object",
    }
    local set = keyset(list)
    assert.equal(1, #set.keys)
    assert.equal(#list - 1, #set.skipped)
    local all = table.concat(set.skipped, "\n")
    for _, want in ipairs({ 'keys[2] (kid "ed"): kty "OKP" not supported',
                            'use "enc" is not "sig"', 'key_ops without "verify"',
                            'alg "PS256" not supported', 'alg "ES256" does not fit kty "RSA"',
                            "RSA modulus shorter than 2048 bits", "n: not base64url",
                            'curve "P-384" not supported', "32 bytes each",
                            "HS256 secret shorter than 32 bytes", "k missing",
                            "keys[13]: not a JSON object" }) do
      assert.matches(want, all, 1, true)
    end
    assert.is_nil(all:find(b64(N), 1, true))

    table.remove(list, 1)
    local none, err = jwt.keyset(cjson.encode({ keys = list }), "jwks.json")
    assert.is_nil(none)
    assert.matches("^jwks.json: no usable key %(keys%[1%]", err)
  end)

  it("refuses a file that is not a JWKS", function()
    for _, text in ipairs({ "", "nope", "[1]", '{"keys": {"a": 1}}', '{"other": []}', '{"keys": [' }) do
      local set, err = jwt.keyset(text, "jwks.json")
      assert.is_nil(set, text)
      assert.matches("^jwks.json: ", err)
    end
    local set, err = jwt.keyset('{"keys": []}', "jwks.json")
    assert.is_nil(set)
    assert.equal("jwks.json: no usable key", err)
  end)

  it("refuses two keys of one type with one kid, allows one kid on two types", function()
    local set, err = jwt.keyset(cjson.encode({ keys = { rsa_jwk("a"), rsa_jwk("a") } }), "jwks.json")
    assert.is_nil(set)
    assert.matches('two RSA keys with kid "a"', err, 1, true)
    set = keyset({ rsa_jwk("a"), ec_jwk("a") })
    assert.equal(2, #set.by_kid.a)
  end)

  it("adds a conf secret as a key without kid, 32 bytes at least", function()
    local set = assert(jwt.keyset(nil, nil, SECRET))
    assert.equal(1, #set.keys)
    assert.equal("oct", set.keys[1].kty)
    local none, err = jwt.keyset(nil, nil, "short")
    assert.is_nil(none)
    assert.matches("secret: shorter than 32 bytes", err)
  end)

  it("reads a file, and names it when it cannot", function()
    local dir = tmpdir()
    write(dir .. "/jwks.json", cjson.encode({ keys = { ec_jwk("e") } }))
    assert.equal(1, #assert(jwt.load_keyset(dir .. "/jwks.json")).keys)
    local set, err = jwt.load_keyset(dir .. "/missing.json")
    assert.is_nil(set)
    assert.matches("jwks_file: cannot read .*missing.json", err)
    os.execute("rm -rf '" .. dir .. "'")
  end)
end)

describe("jwt.select_key", function()
  local set = keyset({ oct_jwk("h"), rsa_jwk("r"), ec_jwk("e"), rsa_jwk("both"), ec_jwk("both") })

  local function pick(s, alg, kid, allowed)
    return jwt.select_key(s, { alg = alg, kid = kid }, allowed)
  end

  it("picks the key named by kid", function()
    assert.equal(set.by_kid.h[1], pick(set, "HS256", "h"))
    assert.equal(set.by_kid.r[1], pick(set, "RS256", "r"))
    assert.equal(set.by_kid.e[1], pick(set, "ES256", "e"))
    assert.equal("RSA", pick(set, "RS256", "both").kty)
    assert.equal("EC", pick(set, "ES256", "both").kty)
  end)

  local function refused(s, alg, kid, detail, allowed)
    local key, kind, why = pick(s, alg, kid, allowed)
    assert.is_nil(key)
    assert.equal("invalid", kind)
    assert.matches(detail, why, 1, true)
  end

  it("refuses none and algorithms it does not support", function()
    refused(set, "none", "h", 'alg "none" not accepted')
    refused(set, "None", "h", "not accepted")
    refused(set, "HS512", "h", "not accepted")
    refused(set, "PS256", "r", "not accepted")
    refused(set, "EdDSA", "e", "not accepted")
  end)

  it("refuses an alg that does not fit the key (HS256 with an RSA or EC key, the confusion attack)", function()
    refused(set, "HS256", "r", "does not fit the RSA key")
    refused(set, "HS256", "e", "does not fit the EC key")
    refused(set, "RS256", "h", "does not fit the oct key")
    refused(set, "ES256", "r", "does not fit the RSA key")
    refused(set, "RS256", "e", "does not fit the EC key")
    refused(set, "HS256", "both", "does not fit")
    local only_rsa = keyset({ rsa_jwk() })
    refused(only_rsa, "HS256", nil, "does not fit a key of type RSA")
    local rs_only = keyset({ rsa_jwk("r", { alg = "RS256" }) })
    assert.truthy(pick(rs_only, "RS256", "r"))
  end)

  it("refuses unknown kids, and a token without kid when there is a choice", function()
    refused(set, "RS256", "other", 'no key with kid "other"')
    refused(set, "RS256", nil, "without kid and 5 keys")
  end)

  it("uses the only key when the token has no kid, or one the key has not", function()
    local one = keyset({ rsa_jwk() })
    assert.equal(one.keys[1], pick(one, "RS256", nil))
    assert.equal(one.keys[1], pick(one, "RS256", "whatever"))
    local named = keyset({ rsa_jwk("r") })
    assert.equal(named.keys[1], pick(named, "RS256", nil))
    refused(named, "RS256", "other", "no key with kid")
    local secret = assert(jwt.keyset(nil, nil, SECRET))
    assert.equal(secret.keys[1], pick(secret, "HS256", nil))
    refused(secret, "RS256", nil, "does not fit a key of type oct")
  end)

  it("keeps to the configured algorithms", function()
    refused(set, "HS256", "h", "not allowed by the configuration", { RS256 = true, ES256 = true })
    assert.truthy(pick(set, "RS256", "r", { RS256 = true }))
  end)
end)

describe("jwt.check_claims", function()
  local NOW = 1700000000
  local opts = { issuer = { "https://idp.example.com" }, audience = { "moongate", "other" }, leeway = 60 }

  local function ok(claims, o)
    local good, kind, why = jwt.check_claims(claims, o or opts, NOW)
    assert.is_true(good, why)
    assert.is_nil(kind)
  end
  local function refused(claims, kind, detail, o)
    local good, k, why = jwt.check_claims(claims, o or opts, NOW)
    assert.is_nil(good)
    assert.equal(kind, k)
    if detail then assert.matches(detail, why, 1, true) end
  end
  local function c(extra)
    local t = { iss = "https://idp.example.com", aud = "moongate", exp = NOW + 10 }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end

  it("checks exp with the leeway", function()
    ok(c({ exp = NOW + 3600 }))
    ok(c({ exp = NOW - 59 }))
    refused(c({ exp = NOW - 60 }), "expired", "expired 60s ago")
    refused(c({ exp = NOW - 3600 }), "expired")
    refused(c({ exp = NOW }), "expired", nil, { leeway = 0 })
    ok(c({ exp = NOW + 1 }), { leeway = 0 })
    refused(c({ exp = "tomorrow" }), "invalid", "exp is not a number")
  end)

  it("requires exp unless told not to", function()
    refused(c({ exp = cjson.null }), "invalid", "no exp claim")
    local t = c()
    t.exp = nil
    refused(t, "invalid", "no exp claim")
    ok(t, { require_exp = false })
  end)

  it("checks nbf with the leeway, and that iat is a number", function()
    ok(c({ nbf = NOW - 100 }))
    ok(c({ nbf = NOW + 60 }))
    refused(c({ nbf = NOW + 61 }), "invalid", "not valid for another 61s")
    refused(c({ nbf = "now" }), "invalid", "nbf is not a number")
    ok(c({ iat = NOW }))
    refused(c({ iat = {} }), "invalid", "iat is not a number")
  end)

  it("checks iss when an issuer is configured", function()
    refused(c({ iss = "https://evil.example.com" }), "invalid", 'iss "https://evil.example.com" not accepted')
    refused(c({ iss = cjson.null }), "invalid", "no iss claim")
    refused(c({ iss = { "https://idp.example.com" } }), "invalid", "no iss claim")
    ok(c({ iss = "anything" }), { audience = opts.audience })
  end)

  it("checks aud as a string or a list when an audience is configured", function()
    ok(c({ aud = "other" }))
    ok(c({ aud = { "x", "moongate" } }))
    ok(c({ aud = { 1, "other" } }))
    refused(c({ aud = "someone" }), "invalid", "not accepted")
    refused(c({ aud = { "a", "b" } }), "invalid", "not accepted")
    refused(c({ aud = {} }), "invalid", "not accepted")
    refused(c({ aud = cjson.null }), "invalid", "no aud claim")
    refused(c({ aud = 5 }), "invalid", "no aud claim")
    ok(c({ aud = "someone" }), { issuer = opts.issuer })
  end)

  it("cuts long values read from the token in its reasons", function()
    local _, _, why = jwt.check_claims(c({ iss = string.rep("i", 500) }), opts, NOW)
    assert.truthy(#why < 120)
  end)
end)

describe("jwt claim mapping", function()
  local claims = { sub = "alice", org = "search", realm = { team = { id = "ads" } },
                   ["https://example.com/team"] = "dots", uid = 12345, big = 1e300,
                   empty = "", nothing = cjson.null, list = { "a" } }

  it("reads claims by name, then by dotted path", function()
    assert.equal("alice", jwt.claim(claims, "sub"))
    assert.equal("ads", jwt.claim(claims, "realm.team.id"))
    assert.equal("dots", jwt.claim(claims, "https://example.com/team"))
    assert.is_nil(jwt.claim(claims, "realm.missing.id"))
    assert.is_nil(jwt.claim(claims, "sub.x"))
    assert.is_nil(jwt.claim(claims, "nothing"))
  end)

  it("maps consumer and team into ctx.consumer with every claim", function()
    local c = assert(jwt.map(claims, { consumer = "sub", team = "org" }))
    assert.same({ name = "alice", team = "search", jwt = claims }, c)
    c = assert(jwt.map(claims, { consumer = "uid", team = "realm.team.id" }))
    assert.equal("12345", c.name)
    assert.equal("ads", c.team)
    c = assert(jwt.map(claims, {}))                -- consumer defaults to sub, no team
    assert.equal("alice", c.name)
    assert.is_nil(c.team)
    c = assert(jwt.map(claims, { team = "nothing" }))
    assert.is_nil(c.team)
  end)

  it("refuses a token without a usable consumer claim", function()
    for _, path in ipairs({ "missing", "empty", "nothing", "list", "big", "realm" }) do
      local c, kind, why = jwt.map(claims, { consumer = path })
      assert.is_nil(c, path)
      assert.equal("invalid", kind)
      assert.matches("no usable", why)
    end
  end)
end)

describe("jwt.authenticate", function()
  local NOW = os.time()
  local set = keyset({ oct_jwk("h"), rsa_jwk("r") })
  local state = { keys = set, issuer = { "iss" }, audience = { "aud" }, leeway = 60,
                  claims = { consumer = "sub", team = "org" } }
  local real = jwt.verify_signature
  local verified, good_sig

  before_each(function()
    verified, good_sig = {}, true
    jwt.verify_signature = function(key, tok)
      verified[#verified + 1] = key
      if good_sig then return true end
      return nil, "invalid", "signature: signature mismatch"
    end
  end)
  after_each(function() jwt.verify_signature = real end)

  local function c(extra)
    local t = { iss = "iss", aud = "aud", sub = "alice", org = "search", exp = NOW + 60 }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end

  it("verifies with the chosen key and maps the claims", function()
    local consumer = assert(jwt.authenticate(state, token({ alg = "RS256", kid = "r" }, c()), NOW))
    assert.equal("alice", consumer.name)
    assert.equal("search", consumer.team)
    assert.equal(set.by_kid.r[1], verified[1])
  end)

  it("checks the signature before any claim: a forged expired token is just invalid", function()
    good_sig = false
    local consumer, kind = jwt.authenticate(state, token({ alg = "HS256", kid = "h" }, c({ exp = NOW - 1000 })), NOW)
    assert.is_nil(consumer)
    assert.equal("invalid", kind)
    good_sig = true
    consumer, kind = jwt.authenticate(state, token({ alg = "HS256", kid = "h" }, c({ exp = NOW - 1000 })), NOW)
    assert.is_nil(consumer)
    assert.equal("expired", kind)
  end)

  it("never verifies with a key the alg does not fit", function()
    local consumer = jwt.authenticate(state, token({ alg = "HS256", kid = "r" }, c()), NOW)
    assert.is_nil(consumer)
    consumer = jwt.authenticate(state, token({ alg = "none", kid = "h" }, c(), ""), NOW)
    assert.is_nil(consumer)
    assert.same({}, verified)
  end)

  it("needs the binary to check a signature for real", function()
    jwt.verify_signature = real
    assert.has_error(function()
      jwt.authenticate(state, token({ alg = "RS256", kid = "r" }, c()), NOW)
    end)
  end)
end)

describe("the jwt plugin", function()
  local plugin = require("jwt")
  local gw = require("gw")

  local function load(entry, files)
    local dir = tmpdir()
    for name, text in pairs(files or {}) do write(dir .. "/" .. name, text) end
    write(dir .. "/gateway.lua", [[
providers = { m = { type = "mock" } }
backends = { main = { provider = "m", model = false } }
routes = { { match = { path_prefix = "/v1" }, backend = "main" } }
plugins = { ]] .. entry .. [[ }
]])
    local cfg, errs = config.load(dir .. "/gateway.lua", { plugin_dirs = { "plugins" }, env = function() end })
    os.execute("rm -rf '" .. dir .. "'")
    return cfg, errs
  end

  local function conf_of(cfg)
    for _, e in ipairs(cfg.plugins) do
      if e.name == "jwt" then return e.conf end
    end
  end

  it("has priority 2450, just after auth", function()
    assert.equal(2450, plugin.priority)
    assert.equal(2500, require("auth").priority)
  end)

  it("takes the SPEC's entry, with defaults", function()
    local cfg, errs = load([[{ name = "jwt", jwks_file = "jwks.json", issuer = "https://idp.example.com",
      audience = "moongate", claims = { consumer = "sub", team = "org" } }]],
      { ["jwks.json"] = cjson.encode({ keys = { ec_jwk("e") } }) })
    assert.is_nil(errs)
    local conf = conf_of(cfg)
    assert.same({ "https://idp.example.com" }, conf.issuer)
    assert.same({ "moongate" }, conf.audience)
    assert.equal(60, conf.leeway)
    assert.is_true(conf.require_exp)
    assert.same({ consumer = "sub", team = "org" }, conf.claims)
    assert.equal("/", conf.jwks_file:sub(1, 1))
    cfg = assert(load('{ name = "jwt", secret = "' .. SECRET .. '", leeway = "5s" }'))
    conf = conf_of(cfg)
    assert.equal(5, conf.leeway)
    assert.same({ consumer = "sub" }, conf.claims)
  end)

  it("refuses a broken entry at its path", function()
    local function errors_of(entry, files)
      local cfg, errs = load(entry, files)
      assert.is_nil(cfg)
      return table.concat(errs, "\n")
    end
    assert.matches("plugins%[1%]: jwks_file or secret required", errors_of('{ name = "jwt" }'))
    assert.matches("plugins%[1%].leeway", errors_of('{ name = "jwt", secret = "' .. SECRET .. '", leeway = "x" }'))
    assert.matches("plugins%[1%].algorithms%[1%]",
      errors_of('{ name = "jwt", secret = "' .. SECRET .. '", algorithms = { "none" } }'))
    assert.matches("plugins%[1%].claims.user", errors_of('{ name = "jwt", secret = "' .. SECRET ..
      '", claims = { user = "sub" } }'))
    assert.matches("plugins%[1%]: .*jwks.json: no usable key",
      errors_of('{ name = "jwt", jwks_file = "jwks.json" }', { ["jwks.json"] = '{"keys":[]}' }))
    assert.matches("plugins%[1%]: .*jwks.json: not a JSON object",
      errors_of('{ name = "jwt", jwks_file = "jwks.json" }', { ["jwks.json"] = "{" }))
  end)

  describe("on_request", function()
    local conf, logged
    local real, real_log = jwt.verify_signature, gw.log

    setup(function()
      local cfg = assert(load('{ name = "jwt", secret = "' .. SECRET .. '", audience = "moongate", ' ..
        'claims = { team = "org.name" } }'))
      conf = conf_of(cfg)
      jwt.verify_signature = function() return true end
      gw.log = function(level, ...) logged[#logged + 1] = level .. ": " .. table.concat({ ... }, " ") end
    end)
    teardown(function()
      jwt.verify_signature = real
      gw.log = real_log
    end)
    before_each(function() logged = {} end)

    local function run(auth, path, consumer)
      local ctx = { request = { headers = { authorization = auth } }, format = path and "anthropic" or "openai",
                    consumer = consumer }
      return plugin.on_request(ctx, conf), ctx
    end
    local function claims(extra)
      local t = { sub = "alice", aud = "moongate", org = { name = "search" }, exp = os.time() + 60 }
      for k, v in pairs(extra or {}) do t[k] = v end
      return t
    end

    it("sets ctx.consumer from a good token", function()
      local rv, ctx = run("Bearer " .. token({ alg = "HS256" }, claims()))
      assert.is_nil(rv)
      assert.equal("alice", ctx.consumer.name)
      assert.equal("search", ctx.consumer.team)
      assert.equal("moongate", ctx.consumer.jwt.aud)
      rv, ctx = run("bearer   " .. token({ alg = "HS256" }, claims()) .. " ")
      assert.equal("alice", ctx.consumer.name)
    end)

    it("leaves a request auth already attributed alone", function()
      local mine = { name = "keyed" }
      local rv, ctx = run(nil, nil, mine)
      assert.is_nil(rv)
      assert.equal(mine, ctx.consumer)
    end)

    local function answer(rv)
      assert.equal(gw.RESPOND_MT, getmetatable(rv))
      return rv.status, cjson.decode(rv.body)
    end

    it("answers 401 in the client's format, saying nothing about why", function()
      local status, doc = answer(run(nil))
      assert.equal(401, status)
      assert.equal("missing_token", doc.error.code)
      status, doc = answer(run("Basic abc"))
      assert.equal("missing_token", doc.error.code)
      local t = token({ alg = "HS256" }, claims({ aud = "other" }))
      status, doc = answer(run("Bearer " .. t))
      assert.equal(401, status)
      assert.same({ message = "Invalid token.", type = "authentication_error", code = "invalid_token" }, doc.error)
      status, doc = answer(run("Bearer " .. token({ alg = "HS256" }, claims({ exp = 1 }))))
      assert.same({ message = "Token expired.", type = "authentication_error", code = "token_expired" }, doc.error)
      status, doc = answer(run("Bearer sk-not-a-jwt"))
      assert.equal("invalid_token", doc.error.code)
      status, doc = answer(run("Bearer " .. t, "/v1/messages"))
      assert.same({ type = "error", error = { type = "authentication_error", message = "Invalid token." } }, doc)
    end)

    it("leaves credentials that are not a bearer JWT to auth only when auth runs after it", function()
      local function ctx_with(order, auth)
        local list = {}
        for i, name in ipairs(order) do list[i] = { name = name } end
        return { request = { headers = { authorization = auth } }, format = "openai",
                 _chain = { on_request = list }, _plugin = "jwt" }
      end
      -- jwt moved before auth: no bearer, or an API key, is auth's to judge
      assert.is_nil(plugin.on_request(ctx_with({ "jwt", "auth" }), conf))
      assert.is_nil(plugin.on_request(ctx_with({ "jwt", "auth" }, "Bearer sk-key"), conf))
      -- a bearer JWT is still judged here
      local bad = "Bearer " .. token({ alg = "HS256" }, claims({ aud = "other" }))
      assert.equal(401, plugin.on_request(ctx_with({ "jwt", "auth" }, bad), conf).status)
      -- auth ran before (the shipped order): nothing is left unjudged
      assert.equal(401, plugin.on_request(ctx_with({ "auth", "jwt" }), conf).status)
      assert.equal(401, plugin.on_request(ctx_with({ "auth", "jwt" }, "Bearer sk-key"), conf).status)
      assert.equal(401, plugin.on_request(ctx_with({ "jwt" }), conf).status)
    end)

    it("logs the reason at info, never the token", function()
      local t = token({ alg = "HS256" }, claims({ aud = "other" }))
      run("Bearer " .. t)
      run("Bearer " .. token({ alg = "HS256" }, claims({ exp = os.time() - 3600 })))
      assert.same({ 'info: jwt: token refused: aud "other" not accepted',
                    "info: jwt: token refused: expired 3600s ago" }, logged)
      for _, line in ipairs(logged) do
        assert.is_nil(line:find(t, 1, true))
        assert.is_nil(line:find(t:match("%.(.-)%."), 1, true))
      end
    end)
  end)
end)
