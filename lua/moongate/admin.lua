-- moongate.admin — the registry of /admin/* endpoints that live outside the
-- runtime (backends, consumers, costs, limits). They run on the main thread,
-- which serves the admin listener with its own Lua state: anything they share
-- with the workers goes through gw.shared (or data_dir).
--
--   admin.route("POST", "/admin/backends/{backend}/targets/{name}/evict", fn)
--   fn(req, params, cfg) -> status, doc [, headers]
--     req:    the admin request (method, path, query, headers, body, json)
--     params: the {name} segments of the pattern, URL-decoded
--     cfg:    the running config
--   doc is sent as JSON (a table with gw.json.array_mt goes out as [] when empty), or as it
--   is when it is a string the handler encoded itself.
--
-- Modules listed in MODULES are required once, by load(); each registers its
-- routes when required.
local _M = { _VERSION = "0.1" }

local ipairs, pairs = ipairs, pairs
local concat, sort = table.concat, table.sort

_M.MODULES = {
  "moongate.admin.backends",
  "moongate.admin.consumers",
  "moongate.admin.costs",
  "moongate.admin.limits",
}

local routes = {}   -- { method =, parts = { "admin", "{backend}", ... }, fn = }

local function split(path)
  local parts = {}
  for seg in path:gmatch("[^/]+") do parts[#parts + 1] = seg end
  return parts
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
_M.unescape = unescape

function _M.route(method, pattern, fn)
  routes[#routes + 1] = { method = method, parts = split(pattern), fn = fn, pattern = pattern }
end

local function match_parts(pat, parts)
  if #pat ~= #parts then return nil end
  local params = {}
  for i, p in ipairs(pat) do
    local name = p:match("^{(.+)}$")
    if name then
      params[name] = unescape(parts[i])
    elseif p ~= parts[i] then
      return nil
    end
  end
  return params
end

-- match(method, path) -> fn, params | nil, allowed ("GET, POST") | nil
function _M.match(method, path)
  local parts = split(path)
  local allowed = {}
  for _, r in ipairs(routes) do
    local params = match_parts(r.parts, parts)
    if params then
      if r.method == method then return r.fn, params end
      allowed[r.method] = true
    end
  end
  local list = {}
  for m in pairs(allowed) do list[#list + 1] = m end
  if #list == 0 then return nil end
  sort(list)
  return nil, concat(list, ", ")
end

-- query(req) -> { name = value } from the request's query string
function _M.query(req)
  local out = {}
  for pair in (req.query or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if k and k ~= "" then out[unescape((k:gsub("+", " ")))] = unescape((v:gsub("+", " "))) end
  end
  return out
end

local loaded = false
function _M.load()
  if loaded then return end
  loaded = true
  for _, m in ipairs(_M.MODULES) do require(m) end
end

-- for the unit specs
function _M._reset()
  routes = {}
  loaded = false
end

return _M
