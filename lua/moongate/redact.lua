-- moongate.redact — the running config as GET /admin/config shows it: a
-- JSON-encodable copy with every secret replaced, never the original changed.
--
-- Rules (docs/admin.md):
--  * an option whose name contains one of SECRET_WORDS (any depth, any case)
--    has its value replaced by "[redacted]" (max_keys and friends excepted);
--  * inside a `headers` table, a credential-like header's value likewise;
--  * user:password in a URL anywhere becomes [redacted];
--  * functions show as "<function>", other non-JSON values as "<type>";
--  * plugin entries show name, priority and conf, never the module;
--  * keys starting with "_" (runtime caches) are left out; a table met again
--    on its own path shows as "<cycle>".
local _M = {}

local REDACTED = "[redacted]"
local SECRET_WORDS = { "key", "token", "secret", "password", "passwd", "authorization",
                       "credential", "cookie" }
-- names holding a secret word that are settings, not secrets
local NOT_SECRET = { max_keys = true, keys = true, key_header = true }
local SECRET_HEADERS = { ["x-goog-api-key"] = true, ["api-key"] = true,
                         ["proxy-authorization"] = true }

local function is_secret_name(name)
  if type(name) ~= "string" then return false end
  local l = name:lower()
  if NOT_SECRET[l] then return false end
  for _, w in ipairs(SECRET_WORDS) do
    if l:find(w, 1, true) then return true end
  end
  return false
end

local function is_secret_header(name)
  return type(name) == "string" and (SECRET_HEADERS[name:lower()] or is_secret_name(name))
end

-- scheme://user:pass@host -> scheme://[redacted]@host
local function redact_url(s)
  return (s:gsub("^([%a][%w+.-]*://)[^/@%s]+@", "%1" .. REDACTED .. "@"))
end

local copy

local function copy_plugin(e, stack)
  return {
    name = e.name,
    priority = e.priority,
    path = type(e.path) == "string" and e.path or nil,
    conf = copy(e.conf or {}, stack),
  }
end

local function is_plugin_list(k, v)
  return k == "plugins" and type(v) == "table" and type(v[1]) == "table" and v[1].plugin ~= nil
end

function copy(v, stack, in_headers)
  local t = type(v)
  if t == "string" then return redact_url(v) end
  if t == "number" or t == "boolean" then return v end
  if t == "function" then return "<function>" end
  if t ~= "table" then return "<" .. t .. ">" end
  if stack[v] then return "<cycle>" end
  stack[v] = true
  local out = {}
  local n = #v
  if n > 0 then
    for i = 1, n do out[i] = copy(v[i], stack) end
  else
    for k, x in pairs(v) do
      local kt = type(k)
      if kt == "string" and k:sub(1, 1) == "_" then
        -- runtime caches (_chains, ...)
      elseif kt == "string" or kt == "number" then
        local key = tostring(k)
        if (in_headers and is_secret_header(key)) or (not in_headers and is_secret_name(key)
            and type(x) ~= "boolean") then
          out[key] = REDACTED
        elseif is_plugin_list(k, x) then
          local list = {}
          for i, e in ipairs(x) do list[i] = copy_plugin(e, stack) end
          out[key] = list
        else
          out[key] = copy(x, stack, k == "headers")
        end
      end
    end
  end
  stack[v] = nil
  return out
end

-- config(cfg) -> a fresh table safe to encode and show
function _M.config(cfg)
  if type(cfg) ~= "table" then return {} end
  return copy(cfg, {})
end

_M.REDACTED = REDACTED
return _M
