-- moongate.prober — active health checks (`health.active`): a periodic probe
-- of every target of a backend that spends no tokens (GET /v1/models, or the
-- configured path). `unhealthy_threshold` failed probes in a row evict the
-- target until a probe succeeds again. A probe fails on a connection error,
-- a timeout, or a 5xx or 429 answer; any other answer (401 included) shows
-- the provider is up.
--
-- One prober for all workers: the first worker runs it, and the state it
-- writes is in gw.shared like every other health figure. Each config
-- generation gets its own probers; they stop when a reload replaces it.
local gw = require("gw")
local health = require("moongate.health")

local ipairs, pairs, tostring = ipairs, pairs, tostring
local min = math.min

local _M = { _VERSION = "0.1" }

-- The probe's URL and headers for a target, or nil for providers that have
-- nothing to probe (the in-process mock).
function _M.request_for(provider, path)
  if not provider or provider.wire == "mock" or not provider.base_url then return nil end
  local base = provider.base_url:gsub("/+$", "")
  local headers = {}
  for k, v in pairs(provider.headers or {}) do headers[k:lower()] = v end
  local wire = provider.wire
  if wire == "openai" then
    -- an openai base_url ends in /v1 as the SDKs' do
    if base:sub(-3) == "/v1" and path:sub(1, 4) == "/v1/" then path = path:sub(4) end
    if provider.type == "azure" then
      headers["api-key"] = provider.api_key
    elseif provider.api_key then
      headers["authorization"] = "Bearer " .. provider.api_key
    end
  elseif wire == "anthropic" then
    headers["x-api-key"] = provider.api_key
    headers["anthropic-version"] = headers["anthropic-version"] or "2023-06-01"
  elseif wire == "gemini" then
    headers["x-goog-api-key"] = provider.api_key
    if path == "/v1/models" then path = "/v1beta/models" end
  end
  return base .. path, headers, provider
end

local function probe(cfg, backend, t, active, pol)
  local url, headers, p = _M.request_for(cfg.providers[t.provider], active.path or "/v1/models")
  if not url then return end
  local timeout = min(active.interval or 30, 10)
  local res, err = gw.http(url, { headers = headers, timeout = timeout, connect_timeout = min(timeout, 5),
    max_body = 1048576, ca_file = p.ca_file, insecure = p.insecure })
  local ok = res ~= nil and res.status < 500 and res.status ~= 429
  local k = health.keys(backend.name, t)
  local s = health.store
  if ok then
    s.set(k.probe, 0)
    if s.get(k.why) == "active" then
      health.restore(backend.name, t, pol)
      gw.log("info", "health: " .. backend.name .. "/" .. t.name .. " answers its probe again: restored")
    end
    return
  end
  local n = s.incr(k.probe, 1) or 1
  if n >= (active.unhealthy_threshold or 3) then
    local why = s.get(k.why)
    local evicted = health.state(backend.name, t, gw.now(), pol)
    if why ~= "manual" and not (evicted and why == "active") then
      health.evict(backend.name, t, health.FOREVER, "active", pol)
      gw.log("warn", "health: " .. backend.name .. "/" .. t.name .. " failed " .. n ..
        " probe(s) in a row (" .. tostring(err or ("status " .. res.status)) .. "): evicted until a probe succeeds")
    end
  end
end

-- start(cfg, spawn, current): one job per backend with health.active;
-- current() tells whether cfg is still the running config.
function _M.start(cfg, spawn, current)
  for _, b in pairs(cfg.backends or {}) do
    local active = b.health and b.health.active
    if active then
      spawn(function()
        local pol = health.policy(b)
        local interval = active.interval or 30
        while current(cfg) do
          for _, g in ipairs(b.groups) do
            for _, t in ipairs(g.targets) do
              if not current(cfg) then return end
              local ok, err = pcall(probe, cfg, b, t, active, pol)
              if not ok then gw.log("error", "health: probe of " .. b.name .. "/" .. t.name .. " failed: " .. tostring(err)) end
            end
          end
          if not current(cfg) then return end
          gw.sleep(interval)
        end
      end)
    end
  end
end

return _M
