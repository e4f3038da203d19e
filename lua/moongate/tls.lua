-- moongate.tls — certificates of the TLS listeners (runtime/tls.c).
--
-- load(listen) reads every certificate and key the `listen` entries name, on
-- the main thread, before anything uses them: at start (a bad file refuses to
-- start) and at reload (a bad file refuses the reload, the running
-- certificates stay). attach(ctxs) hands them to the listeners; new
-- connections use them from then on, open ones finish on the old ones.
local ffi = require("ffi")
local mgffi = require("moongate.ffi")

local C = mgffi.C
local format, ipairs, pairs, sort = string.format, ipairs, pairs, table.sort

local _M = { _VERSION = "0.1" }

-- The option path of a map key, as config errors write it.
local function key_path(k)
  if k:match("^[%a_][%w_]*$") then return "." .. k end
  return format("[%q]", k)
end

-- load(listen) -> { [i] = context } for the TLS entries of listen | nil, { "path: message" }
function _M.load(listen)
  local out, errs = {}, {}
  for i, l in ipairs(listen) do
    local t = l.tls
    if t then
      local base = format("listen[%d].tls", i)
      local entries = { { name = "", cert = t.cert, key = t.key, path = base } }
      local names = {}
      for name in pairs(t.sni or {}) do names[#names + 1] = name end
      sort(names)
      for _, name in ipairs(names) do
        local e = t.sni[name]
        entries[#entries + 1] = { name = name, cert = e.cert, key = e.key,
                                  path = base .. ".sni" .. key_path(name) }
      end
      local n = #entries
      -- the Lua strings in entries stay referenced for the call
      local cnames, certs, keys = ffi.new("const char *[?]", n), ffi.new("const char *[?]", n),
        ffi.new("const char *[?]", n)
      for k, e in ipairs(entries) do
        cnames[k - 1], certs[k - 1], keys[k - 1] = e.name, e.cert, e.key
      end
      local bad = ffi.new("int[1]")
      local ctx = C.mg_tls_load(n, cnames, certs, keys, bad, mgffi.errbuf, 256)
      if ctx == nil then
        local e = entries[math.floor(bad[0] / 2) + 1]
        errs[#errs + 1] = e.path .. (bad[0] % 2 == 0 and ".cert" or ".key") .. ": " ..
          ffi.string(mgffi.errbuf)
      else
        out[i] = ffi.gc(ctx, C.mg_tls_release)   -- released unless attached
      end
    end
  end
  if #errs > 0 then return nil, errs end
  return out
end

-- attach(ctxs): listen[i] (the i-th listen set) serves ctxs[i] from now on.
-- -> true | nil, message
function _M.attach(ctxs)
  for i, ctx in pairs(ctxs) do
    ffi.gc(ctx, nil)                               -- the listener owns it now
    if C.mg_listen_tls(i - 1, ctx) ~= 0 then
      return nil, format("listen[%d].tls: the listener cannot take certificates", i)
    end
  end
  return true
end

return _M
