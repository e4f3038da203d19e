-- moongate.codec.common — what the wire codecs share: the policy for request
-- fields a target cannot honour, data: URLs, dates, model lists.
local J = require("moongate.codec.json")

local floor, format = math.floor, string.format
local error, ipairs, tonumber, tostring, type = error, ipairs, tonumber, tostring, type

local _M = { _VERSION = "0.1" }

-- ====================== refusing or dropping fields ======================
--
-- A request translator calls policy:unsupported(field, why) for a field the
-- target cannot honour: with drop_unsupported the field is dropped (and
-- listed in policy.dropped), otherwise the translation stops with a 400
-- naming the field. policy:bad(field, why) is for input that is simply
-- wrong (a 400 either way). Both unwind with error(); run() catches them.

local REFUSAL = {}

local Policy = {}
Policy.__index = Policy

-- policy(provider_type, drop) -> policy
function _M.policy(provider_type, drop)
  return setmetatable({ type = provider_type or "this provider", drop = drop and true or false,
    dropped = {} }, Policy)
end

function Policy:unsupported(field, why)
  if self.drop then
    self.dropped[#self.dropped + 1] = field
    return
  end
  error(setmetatable({ status = 400, field = field,
    message = format("%s: %s", field, why or ("not supported by provider type " .. self.type)),
    code = "unsupported_parameter" }, REFUSAL), 0)
end

function Policy:bad(field, why)
  error(setmetatable({ status = 400, field = field, message = format("%s: %s", field, why),
    code = "invalid_request" }, REFUSAL), 0)
end

-- run(fn, ...) -> fn's results | nil, refusal { status, field, message, code }
-- Any other error is re-raised: it is a bug, not bad input.
function _M.run(fn, ...)
  local res = { pcall(fn, ...) }
  if res[1] then return unpack(res, 2, table.maxn(res)) end
  local err = res[2]
  if type(err) == "table" and getmetatable(err) == REFUSAL then return nil, err end
  error(err, 0)
end

-- ====================== values ======================

-- absent(v): nil or JSON null (OpenAI treats an explicit null as "not set")
function _M.absent(v)
  return v == nil or v == J.null
end

-- str(v) -> v when it is a string, else nil
function _M.str(v)
  return type(v) == "string" and v or nil
end

-- list(v) -> v when it is a JSON array (or a Lua list), else nil
function _M.list(v)
  if type(v) ~= "table" or v == J.null or J.is_object(v) or getmetatable(v) == J.RAW then return nil end
  return v
end

-- obj(v) -> v when it is a JSON object, else nil
function _M.obj(v)
  if type(v) ~= "table" or v == J.null or J.is_array(v) or getmetatable(v) == J.RAW then return nil end
  if not J.is_object(v) and v[1] ~= nil then return nil end
  return v
end

-- data_url(url) -> media_type, base64 data | nil
function _M.data_url(url)
  if type(url) ~= "string" then return nil end
  local mt, data = url:match("^data:([^;,]*);base64,(.*)$")
  if not mt then return nil end
  if mt == "" then mt = "application/octet-stream" end
  return mt, data
end

local MIME_BY_EXT = { png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg", gif = "image/gif",
  webp = "image/webp", heic = "image/heic", heif = "image/heif", pdf = "application/pdf",
  mp3 = "audio/mp3", wav = "audio/wav", mp4 = "video/mp4" }

-- mime_of(url) -> a media type guessed from the URL's extension
function _M.mime_of(url)
  local ext = tostring(url):match("%.(%w+)[?#]?[^/]*$")
  return ext and MIME_BY_EXT[ext:lower()] or "image/jpeg"
end

-- ====================== dates ======================

local days_from_civil = require("moongate.units").days_from_civil

-- iso_to_unix("2024-10-22T00:00:00Z") -> seconds | nil
function _M.iso_to_unix(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, se = s:match("^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)")
  if not y then
    y, mo, d = s:match("^(%d%d%d%d)-(%d%d)-(%d%d)")
    if not y then return nil end
    h, mi, se = 0, 0, 0
  end
  return days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 +
    tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se)
end

-- unix_to_iso(seconds) -> "YYYY-MM-DDTHH:MM:SSZ"
function _M.unix_to_iso(t)
  t = floor(tonumber(t) or 0)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

-- ====================== model lists ======================
-- A model list is normalised to { { id, created (unix), display_name }, ... }
-- and written in the asking SDK's shape.

function _M.models_openai(list, owned_by)
  local data = J.array()
  for i, m in ipairs(list) do
    data[i] = J.object("id", m.id, "object", "model", "created", m.created or 0,
      "owned_by", m.owned_by or owned_by or "system")
  end
  return J.encode(J.object("object", "list", "data", data))
end

function _M.models_anthropic(list)
  local data = J.array()
  for i, m in ipairs(list) do
    data[i] = J.object("type", "model", "id", m.id, "display_name", m.display_name or m.id,
      "created_at", m.created_at or _M.unix_to_iso(m.created or 0))
  end
  return J.encode(J.object("data", data, "has_more", false,
    "first_id", list[1] and list[1].id or J.null, "last_id", list[#list] and list[#list].id or J.null))
end

return _M
