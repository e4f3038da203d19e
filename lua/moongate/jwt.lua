-- moongate.jwt — JSON Web Tokens for the jwt plugin (RFC 7519, JWS compact form of RFC 7515).
--
-- Pure Lua except one step: signatures are checked by mbedTLS through mg_jws_verify (runtime/
-- crypto.c). Outside the moongate binary (busted unit specs) that one step is missing and
-- verify_signature raises; everything else — base64url, parsing, key sets, key choice, claim
-- checks, claim mapping — works anywhere.
--
-- Failures come back as nil, kind, detail: kind is "invalid" or "expired" (what a client may be
-- told), detail says exactly why, for the log. No detail ever holds the token, a signature or a
-- key; values read from a token (kid, iss, aud) are quoted and cut short.
local bit = require("bit")
local cjson = require("cjson.safe")
local ffi = require("ffi")
local mgffi = require("moongate.ffi")

local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift
local byte, char, find, format, sub = string.byte, string.char, string.find, string.format, string.sub
local match, gmatch = string.match, string.gmatch
local concat = table.concat
local floor, huge = math.floor, math.huge
local ipairs, next, type, tostring = ipairs, next, type, tostring
local io_open = io.open

local _M = { _VERSION = "0.1" }

_M.MAX_TOKEN = 16384        -- bytes; a bigger bearer token is refused before any decoding
_M.MAX_JWKS = 1048576       -- bytes of a JWKS file

-- What each supported alg needs (RFC 7518 §3.1): the JWK kty, the C enum of runtime/ffi.h.
local ALGS = {
  HS256 = { kty = "oct", id = 1 },
  RS256 = { kty = "RSA", id = 2 },
  ES256 = { kty = "EC", id = 3 },
}
_M.ALGS = ALGS

local json = cjson.new()
json.decode_invalid_numbers(false)   -- no NaN, Infinity or hex in a token
json.decode_max_depth(32)
local null = cjson.null

-- Shows a value read from a token in a log line: quoted, at most 64 characters.
local function show(v)
  if type(v) == "string" then
    if #v > 64 then v = sub(v, 1, 61) .. "..." end
    return format("%q", v)
  end
  return tostring(v)
end

---------------------------------------------------------------------------------------------------
-- base64url (RFC 4648 §5, without padding, as JWS uses it)
---------------------------------------------------------------------------------------------------

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local DEC = {}
for i = 1, 64 do DEC[byte(ALPHABET, i)] = i - 1 end
local ENC = {}
for i = 1, 64 do ENC[i - 1] = sub(ALPHABET, i, i) end

-- b64url_decode(s) -> bytes | nil, err. Strict: only the URL-safe alphabet, no padding, no
-- whitespace, and the unused low bits of the last character must be zero (so each byte string
-- has exactly one encoding and a token cannot be altered without changing what it says).
function _M.b64url_decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local n = #s
  local rem = n % 4
  if rem == 1 then return nil, "bad base64url length" end
  local out, o = {}, 0
  local full = n - rem
  for i = 1, full, 4 do
    local a, b, c, d = DEC[byte(s, i)], DEC[byte(s, i + 1)], DEC[byte(s, i + 2)], DEC[byte(s, i + 3)]
    if not (a and b and c and d) then return nil, "not base64url" end
    local v = bor(lshift(a, 18), lshift(b, 12), lshift(c, 6), d)
    o = o + 1
    out[o] = char(rshift(v, 16), band(rshift(v, 8), 255), band(v, 255))
  end
  if rem == 2 then
    local a, b = DEC[byte(s, full + 1)], DEC[byte(s, full + 2)]
    if not (a and b) then return nil, "not base64url" end
    if band(b, 15) ~= 0 then return nil, "not canonical base64url" end
    o = o + 1
    out[o] = char(bor(lshift(a, 2), rshift(b, 4)))
  elseif rem == 3 then
    local a, b, c = DEC[byte(s, full + 1)], DEC[byte(s, full + 2)], DEC[byte(s, full + 3)]
    if not (a and b and c) then return nil, "not base64url" end
    if band(c, 3) ~= 0 then return nil, "not canonical base64url" end
    local v = bor(lshift(a, 10), lshift(b, 4), rshift(c, 2))
    o = o + 1
    out[o] = char(rshift(v, 8), band(v, 255))
  end
  return concat(out, "", 1, o)
end

-- b64url_encode(bytes) -> s, without padding.
function _M.b64url_encode(s)
  local out, o = {}, 0
  local n = #s
  for i = 1, n - 2, 3 do
    local a, b, c = byte(s, i, i + 2)
    local v = bor(lshift(a, 16), lshift(b, 8), c)
    o = o + 1
    out[o] = ENC[rshift(v, 18)] .. ENC[band(rshift(v, 12), 63)] .. ENC[band(rshift(v, 6), 63)] ..
             ENC[band(v, 63)]
  end
  local rem = n % 3
  if rem == 1 then
    local a = byte(s, n)
    o = o + 1
    out[o] = ENC[rshift(a, 2)] .. ENC[lshift(band(a, 3), 4)]
  elseif rem == 2 then
    local a, b = byte(s, n - 1, n)
    o = o + 1
    out[o] = ENC[rshift(a, 2)] .. ENC[bor(lshift(band(a, 3), 4), rshift(b, 4))] ..
             ENC[lshift(band(b, 15), 2)]
  end
  return concat(out, "", 1, o)
end

---------------------------------------------------------------------------------------------------
-- Tokens
---------------------------------------------------------------------------------------------------

-- looks_like(s) -> true when s has the shape of a JWS compact token: three base64url segments,
-- the first two non-empty. This is how the jwt plugin tells a JWT from an API key (which has no
-- dots), without decoding anything.
function _M.looks_like(s)
  return type(s) == "string" and #s <= _M.MAX_TOKEN
    and find(s, "^[%w_%-]+%.[%w_%-]+%.[%w_%-]*$") ~= nil
end

-- A JSON object from a base64url segment: table | nil, err.
local function json_object(seg)
  local text, err = _M.b64url_decode(seg)
  if not text then return nil, err end
  if not find(text, "^%s*{") then return nil, "not a JSON object" end
  local v = json.decode(text)
  if type(v) ~= "table" then return nil, "not a JSON object" end
  return v
end

-- parse(token) -> tok | nil, "invalid", detail. tok = { header = {}, claims = {},
-- signing_input = "header.payload" as sent, signature = raw bytes, alg =, kid = }.
-- Nothing is trusted yet: the signature is only decoded, not checked.
function _M.parse(token)
  if type(token) ~= "string" then return nil, "invalid", "no token" end
  if #token > _M.MAX_TOKEN then
    return nil, "invalid", format("token of %d bytes (at most %d)", #token, _M.MAX_TOKEN)
  end
  local h, p, s = match(token, "^([^.]*)%.([^.]*)%.([^.]*)$")
  if not h then return nil, "invalid", "not three dot-separated segments" end
  if h == "" or p == "" then return nil, "invalid", "empty header or payload" end
  local header, err = json_object(h)
  if not header then return nil, "invalid", "header: " .. err end
  local claims
  claims, err = json_object(p)
  if not claims then return nil, "invalid", "payload: " .. err end
  local sig
  sig, err = _M.b64url_decode(s)
  if not sig then return nil, "invalid", "signature: " .. err end

  local alg = header.alg
  if type(alg) ~= "string" then return nil, "invalid", "header without alg" end
  local kid = header.kid
  if kid == null then kid = nil end
  if kid ~= nil and type(kid) ~= "string" then return nil, "invalid", "kid is not a string" end
  -- RFC 7515 §4.1.11: extensions we do not understand must be refused; we understand none.
  if header.crit ~= nil then return nil, "invalid", "crit header not supported" end
  return { header = header, claims = claims, signing_input = h .. "." .. p, signature = sig,
           alg = alg, kid = kid }
end

---------------------------------------------------------------------------------------------------
-- Key sets (RFC 7517)
---------------------------------------------------------------------------------------------------

-- Strips leading zero bytes (JWK n must not have them, some issuers add one).
local function unpad(s)
  local i = 1
  while i < #s and byte(s, i) == 0 do i = i + 1 end
  return sub(s, i)
end

-- key_from_jwk(jwk) -> key | nil, err (the key's type or alg is not supported, or it is broken).
-- key = { kty =, kid =, alg = (the JWK's own, or nil), k1 =, k2 = } with k1, k2 the raw bytes
-- mg_jws_verify takes.
local function key_from_jwk(jwk)
  if type(jwk) ~= "table" then return nil, "not a JSON object" end
  local kty, kid, alg, use = jwk.kty, jwk.kid, jwk.alg, jwk.use
  if kid == null then kid = nil end
  if alg == null then alg = nil end
  if use == null then use = nil end
  if kid ~= nil and type(kid) ~= "string" then return nil, "kid is not a string" end
  if use ~= nil and use ~= "sig" then return nil, "use " .. show(use) .. " is not \"sig\"" end
  if type(jwk.key_ops) == "table" then
    local ok = false
    for _, op in ipairs(jwk.key_ops) do if op == "verify" then ok = true end end
    if not ok then return nil, "key_ops without \"verify\"" end
  end
  if alg ~= nil and not ALGS[alg] then return nil, "alg " .. show(alg) .. " not supported" end
  if alg ~= nil and ALGS[alg].kty ~= kty then
    return nil, "alg " .. show(alg) .. " does not fit kty " .. show(kty)
  end

  local function field(name)
    local v = jwk[name]
    if type(v) ~= "string" or v == "" then return nil, name .. " missing" end
    local raw, err = _M.b64url_decode(v)
    if not raw then return nil, name .. ": " .. err end
    return raw
  end
  local k1, k2, err
  if kty == "oct" then
    k1, err = field("k")
    if not k1 then return nil, err end
    if #k1 < 32 then return nil, "HS256 secret shorter than 32 bytes" end
  elseif kty == "RSA" then
    k1, err = field("n")
    if not k1 then return nil, err end
    k2, err = field("e")
    if not k2 then return nil, err end
    k1, k2 = unpad(k1), unpad(k2)
    if #k1 < 256 then return nil, "RSA modulus shorter than 2048 bits" end
  elseif kty == "EC" then
    if jwk.crv ~= "P-256" then return nil, "curve " .. show(jwk.crv) .. " not supported" end
    k1, err = field("x")
    if not k1 then return nil, err end
    k2, err = field("y")
    if not k2 then return nil, err end
    if #k1 ~= 32 or #k2 ~= 32 then return nil, "P-256 coordinates must be 32 bytes each" end
  else
    return nil, "kty " .. show(kty) .. " not supported"
  end
  return { kty = kty, kid = kid, alg = alg, k1 = k1, k2 = k2 }
end
_M.key_from_jwk = key_from_jwk

-- The C check of a key (RSA consistency, the point on the curve), when in the binary.
local errbuf = ffi.new("char[160]")
local KTY_ALG = { oct = "HS256", RSA = "RS256", EC = "ES256" }

local function c_check(key)
  local C = mgffi.C
  if not C then return true end
  local id = ALGS[KTY_ALG[key.kty]].id
  local k2 = key.k2 or ""
  if C.mg_jws_key_check(id, key.k1, #key.k1, k2, #k2, errbuf, 160) ~= 0 then
    return nil, ffi.string(errbuf)
  end
  return true
end

-- keyset(jwks_text, source, secret) -> set | nil, err. jwks_text may be nil when only a secret
-- is given. Keys of a type or alg this module does not support, and broken keys, are skipped;
-- set.skipped lists why ("keys[2]: kty "OKP" not supported"). No usable key at all is an error
-- naming those reasons. Two usable keys with the same kid and kty are an error (which one would
-- a token mean?).
-- set = { keys = { key, ... }, by_kid = { [kid] = { key, ... } }, skipped = { msg, ... } }
function _M.keyset(text, source, secret)
  source = source or "JWKS"
  local set = { keys = {}, by_kid = {}, skipped = {} }
  local function add(key)
    set.keys[#set.keys + 1] = key
    if key.kid then
      local list = set.by_kid[key.kid]
      if not list then
        list = {}
        set.by_kid[key.kid] = list
      end
      for _, other in ipairs(list) do
        if other.kty == key.kty then
          return nil, format("%s: two %s keys with kid %s", source, key.kty, show(key.kid))
        end
      end
      list[#list + 1] = key
    end
    return true
  end

  if text ~= nil then
    local doc = json.decode(text)
    if type(doc) ~= "table" or not find(text, "^%s*{") then
      return nil, source .. ": not a JSON object"
    end
    local list = doc.keys
    if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
      return nil, source .. ": no \"keys\" list"
    end
    for i, jwk in ipairs(list) do
      local key, err = key_from_jwk(jwk)
      if key then
        local ok
        ok, err = c_check(key)
        if not ok then key = nil end
      end
      if key then
        local ok, derr = add(key)
        if not ok then return nil, derr end
      else
        set.skipped[#set.skipped + 1] = format("keys[%d]%s: %s", i,
          type(jwk) == "table" and type(jwk.kid) == "string" and " (kid " .. show(jwk.kid) .. ")"
          or "", err)
      end
    end
  end
  if secret ~= nil then
    if #secret < 32 then return nil, "secret: shorter than 32 bytes (HS256 needs 256 bits)" end
    add({ kty = "oct", k1 = secret, alg = "HS256" })
  end
  if #set.keys == 0 then
    local why = #set.skipped > 0 and " (" .. concat(set.skipped, "; ") .. ")" or ""
    return nil, source .. ": no usable key" .. why
  end
  return set
end

-- load_keyset(path, secret) -> set | nil, err: reads a JWKS file (or none when path is nil).
function _M.load_keyset(path, secret)
  local text
  if path ~= nil then
    local f, err = io_open(path, "rb")
    if not f then return nil, "jwks_file: cannot read " .. tostring(err) end
    text = f:read(_M.MAX_JWKS + 1)
    f:close()
    if text == nil then text = "" end
    if #text > _M.MAX_JWKS then return nil, path .. ": larger than 1 MB" end
  end
  return _M.keyset(text, path, secret)
end

-- select_key(set, tok, allowed) -> key | nil, "invalid", detail.
-- The key is the one named by kid (of the type alg needs), or the only key of the set when
-- the token has no kid, or names one the set does not have while the set's only key has none.
-- alg must be one of `allowed` (a set of names; nil: all supported) and fit the key's type
-- (and the key's own alg, when the JWK has one): "none", and HS256 with an RSA or EC public key
-- as the HMAC secret (the classic confusion attack), are refused here.
function _M.select_key(set, tok, allowed)
  local alg = tok.alg
  local a = ALGS[alg]
  if not a then return nil, "invalid", "alg " .. show(alg) .. " not accepted" end
  if allowed and not allowed[alg] then
    return nil, "invalid", "alg " .. show(alg) .. " not allowed by the configuration"
  end
  local key
  local kid = tok.kid
  local only = #set.keys == 1 and set.keys[1] or nil
  if kid ~= nil and set.by_kid[kid] then
    for _, k in ipairs(set.by_kid[kid]) do
      if k.kty == a.kty then key = k end
    end
    if not key then
      return nil, "invalid", format("alg %s does not fit the %s key with kid %s", alg,
                                    set.by_kid[kid][1].kty, show(kid))
    end
  elseif only and (kid == nil or only.kid == nil) then
    key = only
  elseif kid ~= nil then
    return nil, "invalid", "no key with kid " .. show(kid)
  else
    return nil, "invalid", format("token without kid and %d keys to choose from", #set.keys)
  end
  if key.kty ~= a.kty then
    return nil, "invalid", format("alg %s does not fit a key of type %s", alg, key.kty)
  end
  if key.alg ~= nil and key.alg ~= alg then
    return nil, "invalid", format("alg %s but the key is for %s", alg, key.alg)
  end
  return key
end

-- verify_signature(key, tok) -> true | nil, "invalid", detail. Needs the moongate binary.
function _M.verify_signature(key, tok)
  local C = mgffi.C
  if not C then error("moongate.jwt: signatures are checked only inside the moongate binary", 2) end
  local id = ALGS[tok.alg].id
  local k2 = key.k2 or ""
  local msg, sig = tok.signing_input, tok.signature
  local rc = C.mg_jws_verify(id, key.k1, #key.k1, k2, #k2, msg, #msg, sig, #sig, errbuf, 160)
  if rc == 1 then return true end
  return nil, "invalid", "signature: " .. ffi.string(errbuf)
end

---------------------------------------------------------------------------------------------------
-- Claims
---------------------------------------------------------------------------------------------------

local function is_time(v)
  return type(v) == "number" and v == v and v > -huge and v < huge
end

local function one_of(v, list)
  for _, x in ipairs(list) do if v == x then return true end end
  return false
end

-- check_claims(claims, opts, now) -> true | nil, kind, detail.
-- opts: issuer (list of accepted iss), audience (list: aud must hold one of them), leeway
-- (seconds, default 60), require_exp (default true). exp, nbf and iat must be numbers when
-- present (NumericDate, RFC 7519 §2); exp is passed once now >= exp + leeway.
function _M.check_claims(claims, opts, now)
  opts = opts or {}
  local leeway = opts.leeway or 60
  local exp, nbf, iat = claims.exp, claims.nbf, claims.iat
  if exp == null then exp = nil end
  if nbf == null then nbf = nil end
  if iat == null then iat = nil end
  if exp == nil then
    if opts.require_exp ~= false then return nil, "invalid", "no exp claim" end
  elseif not is_time(exp) then
    return nil, "invalid", "exp is not a number"
  elseif now >= exp + leeway then
    return nil, "expired", format("expired %ds ago", floor(now - exp))
  end
  if nbf ~= nil then
    if not is_time(nbf) then return nil, "invalid", "nbf is not a number" end
    if now + leeway < nbf then
      return nil, "invalid", format("not valid for another %ds", floor(nbf - now))
    end
  end
  if iat ~= nil and not is_time(iat) then return nil, "invalid", "iat is not a number" end

  if opts.issuer then
    local iss = claims.iss
    if type(iss) ~= "string" then return nil, "invalid", "no iss claim" end
    if not one_of(iss, opts.issuer) then return nil, "invalid", "iss " .. show(iss) .. " not accepted" end
  end
  if opts.audience then
    local aud = claims.aud
    local ok = false
    if type(aud) == "string" then
      ok = one_of(aud, opts.audience)
    elseif type(aud) == "table" then
      for _, x in ipairs(aud) do
        if type(x) == "string" and one_of(x, opts.audience) then ok = true break end
      end
    else
      return nil, "invalid", "no aud claim"
    end
    if not ok then return nil, "invalid", "aud " .. show(type(aud) == "string" and aud or "[...]") ..
      " not accepted" end
  end
  return true
end

-- claim(claims, path) -> the value at path: a top-level claim of that exact name first (names
-- such as "https://example.com/team" hold dots), else a dotted path into nested objects
-- ("realm.team"). JSON null reads as nil.
function _M.claim(claims, path)
  local v = claims[path]
  if v == nil and find(path, ".", 1, true) then
    v = claims
    for seg in gmatch(path, "[^.]+") do
      if type(v) ~= "table" then return nil end
      v = v[seg]
    end
  end
  if v == null then return nil end
  return v
end

-- A claim as a consumer or team name: a non-empty string, or an integer (printed without a
-- fraction). Anything else: nil.
local function name_of(v)
  if type(v) == "string" then
    if v == "" then return nil end
    return v
  end
  if type(v) == "number" and v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
    return format("%d", v)
  end
  return nil
end

-- map(claims, mapping) -> consumer | nil, "invalid", detail.
-- mapping = { consumer = path (default "sub"), team = path | nil }. A token without a usable
-- consumer claim is refused (a request must be attributable); a missing team is no team.
function _M.map(claims, mapping)
  mapping = mapping or {}
  local cpath = mapping.consumer or "sub"
  local name = name_of(_M.claim(claims, cpath))
  if not name then return nil, "invalid", "no usable " .. show(cpath) .. " claim for the consumer" end
  local team
  if mapping.team then team = name_of(_M.claim(claims, mapping.team)) end
  return { name = name, team = team, jwt = claims }
end

---------------------------------------------------------------------------------------------------
-- All of it
---------------------------------------------------------------------------------------------------

-- authenticate(state, token, now) -> consumer | nil, kind, detail.
-- state = { keys = set, allowed = { [alg] = true } | nil, issuer =, audience =, leeway =,
-- require_exp =, claims = mapping }. The signature is checked before any claim is looked at.
function _M.authenticate(state, token, now)
  local tok, kind, detail = _M.parse(token)
  if not tok then return nil, kind, detail end
  local key
  key, kind, detail = _M.select_key(state.keys, tok, state.allowed)
  if not key then return nil, kind, detail end
  local ok
  ok, kind, detail = _M.verify_signature(key, tok)
  if not ok then return nil, kind, detail end
  ok, kind, detail = _M.check_claims(tok.claims, state, now)
  if not ok then return nil, kind, detail end
  return _M.map(tok.claims, state.claims)
end

return _M
