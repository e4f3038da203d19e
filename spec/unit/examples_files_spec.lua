-- The files of examples/ that no gateway runs: the Grafana dashboard, the Kubernetes ConfigMap
-- (against examples/kubernetes/gateway.lua, which `moongate check` checks), the Dockerfile.
local cjson = require("cjson.safe")

local function read(path)
  local f = assert(io.open(path, "rb"), path)
  local s = f:read("*a")
  f:close()
  return s
end

-- SPEC §7: every metric and its labels (histograms: their le, plus the buckets' own series)
local METRICS = {
  moongate_requests_total = { "route", "backend", "target", "code" },
  moongate_request_duration_seconds = { "le" },
  moongate_upstream_ttfb_seconds = { "le" },
  moongate_attempts_total = { "target", "outcome" },
  moongate_tokens_total = { "model", "team", "direction" },
  moongate_request_cost_dollars = { "model", "team", "le" },
  moongate_target_healthy = { "backend", "target" },
  moongate_ratelimited_total = { "rule" },
  moongate_inflight = {},
}

local function base_metric(name)
  if METRICS[name] then return name end
  local b = name:match("^(.-)_bucket$") or name:match("^(.-)_sum$") or name:match("^(.-)_count$")
  if b and METRICS[b] then return b end
  return nil
end

local function each_panel(dash, fn)
  for _, p in ipairs(dash.panels) do
    fn(p)
    for _, q in ipairs(p.panels or {}) do fn(q) end
  end
end

describe("examples/grafana/moongate.json", function()
  local dash = cjson.decode(read("examples/grafana/moongate.json"))

  it("is a dashboard Grafana imports: JSON, uid, title, a Prometheus data source variable", function()
    assert.is_table(dash)
    assert.equal("moongate-overview", dash.uid)
    assert.equal("moongate", dash.title)
    assert.is_number(dash.schemaVersion)
    local ds
    for _, v in ipairs(dash.templating.list) do
      if v.name == "datasource" then ds = v end
    end
    assert.is_table(ds)
    assert.equal("datasource", ds.type)
    assert.equal("prometheus", ds.query)
  end)

  it("every panel has a unique id and a place; every query panel reads the data source variable", function()
    local ids = {}
    each_panel(dash, function(p)
      assert.is_number(p.id)
      assert.is_nil(ids[p.id], "duplicate panel id " .. tostring(p.id))
      ids[p.id] = true
      assert.is_table(p.gridPos, p.title)
      assert.truthy(p.gridPos.w and p.gridPos.h and p.gridPos.x and p.gridPos.y, p.title)
      assert.truthy(p.gridPos.x + p.gridPos.w <= 24, p.title .. " is wider than the grid")
      if p.type ~= "row" then
        assert.equal("${datasource}", p.datasource.uid, p.title)
        assert.truthy(#p.targets > 0, p.title .. " has no query")
        for _, t in ipairs(p.targets) do
          assert.equal("${datasource}", t.datasource.uid, p.title)
          assert.is_string(t.expr)
          assert.is_string(t.refId)
        end
      end
    end)
  end)

  it("panels do not overlap", function()
    local boxes = {}
    each_panel(dash, function(p) boxes[#boxes + 1] = p end)
    for i = 1, #boxes do
      for j = i + 1, #boxes do
        local a, b = boxes[i].gridPos, boxes[j].gridPos
        local overlap = a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h
        assert.is_false(overlap, boxes[i].title .. " overlaps " .. boxes[j].title)
      end
    end
  end)

  it("queries only SPEC §7 metrics and their labels, with balanced brackets, and covers them all", function()
    local used = {}
    each_panel(dash, function(p)
      for _, t in ipairs(p.targets or {}) do
        local e = t.expr
        local depth = { ["("] = 0, ["["] = 0, ["{"] = 0 }
        local close = { [")"] = "(", ["]"] = "[", ["}"] = "{" }
        for c in e:gmatch("[%(%)%[%]{}]") do
          if depth[c] then depth[c] = depth[c] + 1 else
            depth[close[c]] = depth[close[c]] - 1
            assert.truthy(depth[close[c]] >= 0, "unbalanced " .. c .. " in " .. e)
          end
        end
        for k, v in pairs(depth) do assert.equal(0, v, "unbalanced " .. k .. " in " .. e) end
        for name in e:gmatch("moongate_[%w_]+") do
          local m = base_metric(name)
          assert.truthy(m, "not a SPEC §7 metric: " .. name .. " in " .. p.title)
          used[m] = true
          -- labels in a selector right after the metric name
          local sel = e:match(name .. "(%b{})")
          if sel then
            for label in sel:gmatch("([%a_][%w_]*)%s*[=!~]") do
              local known = false
              for _, l in ipairs(METRICS[m]) do if l == label then known = true end end
              assert.truthy(known, m .. " has no label " .. label .. " (" .. p.title .. ")")
            end
          end
        end
        -- by (...) groups only by labels of the metrics the expression reads
        for list in e:gmatch("by%s*(%b())") do
          for label in list:gmatch("[%a_][%w_]*") do
            local known = false
            for name in e:gmatch("moongate_[%w_]+") do
              for _, l in ipairs(METRICS[base_metric(name)] or {}) do if l == label then known = true end end
            end
            assert.truthy(known, "by (" .. label .. ") is no label of the metrics in " .. e)
          end
        end
      end
    end)
    for m in pairs(METRICS) do assert.truthy(used[m], "no panel shows " .. m) end
  end)

  it("has the panels the issue asks for", function()
    local titles = {}
    each_panel(dash, function(p) titles[#titles + 1] = p.title end)
    local all = table.concat(titles, "\n")
    for _, want in ipairs({ "Requests by target", "Errors by target", "p50 / p99", "Time to first byte",
                            "Tokens / s by team and model", "Spend by team", "Spend by model", "Target health" }) do
      assert.truthy(all:find(want, 1, true), "no panel titled like " .. want)
    end
  end)
end)

describe("examples/kubernetes", function()
  it("the ConfigMap holds examples/kubernetes/gateway.lua, byte for byte", function()
    local lua = read("examples/kubernetes/gateway.lua")
    local yaml = read("examples/kubernetes/configmap.yaml")
    local block = yaml:match("\n  gateway%.lua: |\n(.*)$")
    assert.is_string(block, "no gateway.lua block in configmap.yaml")
    local lines = {}
    for line in (block):gmatch("([^\n]*)\n") do
      if line == "" then lines[#lines + 1] = "" else
        assert.equal("    ", line:sub(1, 4), "configmap.yaml: a line not indented by 4: " .. line)
        lines[#lines + 1] = line:sub(5)
      end
    end
    assert.equal(lua, table.concat(lines, "\n") .. "\n")
  end)

  it("the Deployment probes /ready and /health on the admin port the config listens on", function()
    local dep = read("examples/kubernetes/deployment.yaml")
    local lua = read("examples/kubernetes/gateway.lua")
    assert.truthy(lua:find('admin    = { listen = "0.0.0.0:9901"', 1, true))
    assert.truthy(lua:find('listen   = "0.0.0.0:8080"', 1, true))
    assert.truthy(dep:find("readinessProbe:%s+httpGet:%s+path: /ready%s+port: admin"))
    assert.truthy(dep:find("livenessProbe:%s+httpGet:%s+path: /health%s+port: admin"))
    assert.truthy(dep:find("containerPort: 9901", 1, true))
    assert.truthy(dep:find("replicas: 3", 1, true))
    assert.truthy(dep:find("runAsNonRoot: true", 1, true))
    assert.truthy(dep:find("mountPath: /var/lib/moongate", 1, true))
    assert.truthy(lua:find('data_dir = "/var/lib/moongate"', 1, true))
    assert.truthy(lua:find('cluster = { redis = env("REDIS_URL")', 1, true))
  end)
end)

describe("Dockerfile", function()
  local df = read("Dockerfile")
  local cfg = read("examples/docker/gateway.lua")

  it("builds on Debian 12 slim in two stages; the runtime stage has no -dev package", function()
    assert.truthy(df:find("ARG DEBIAN_IMAGE=debian:bookworm-slim", 1, true))
    assert.truthy(df:find("FROM ${DEBIAN_IMAGE} AS build", 1, true))
    assert.truthy(df:find("FROM ${DEBIAN_IMAGE} AS runtime", 1, true))
    local runtime = df:match("AS runtime\n(.*)$")
    assert.is_nil(runtime:find("%-dev[%s\\]"), "a -dev package in the runtime stage")
    assert.is_nil(runtime:find("cmake", 1, true))
    for _, pkg in ipairs({ "libluajit-5.1-2", "libuv1", "libcurl4", "libmbedtls14", "libmbedx509-1",
                           "libmbedcrypto7", "libpcre2-8-0", "ca-certificates" }) do
      assert.truthy(runtime:find(pkg, 1, true), pkg)
    end
  end)

  it("runs as a numeric non-root user, with the config, volume, ports and health check of the image", function()
    assert.truthy(df:find("\nUSER 10001:10001\n", 1, true))
    assert.truthy(df:find('VOLUME ["/var/lib/moongate"]', 1, true))
    assert.truthy(df:find("EXPOSE 8080 9901", 1, true))
    assert.truthy(df:find("COPY examples/docker/gateway.lua /etc/moongate/gateway.lua", 1, true))
    assert.truthy(df:find('CMD ["-c", "/etc/moongate/gateway.lua"]', 1, true))
    assert.truthy(df:find('HEALTHCHECK[^\n]*\n%s+CMD %["curl", "%-fsS", "%-o", "/dev/null", "http://127%.0%.0%.1:9901/health"%]'))
    assert.truthy(cfg:find('admin    = { listen = "0.0.0.0:9901"', 1, true))
    assert.truthy(cfg:find('listen   = "0.0.0.0:8080"', 1, true))
    assert.truthy(cfg:find('data_dir = "/var/lib/moongate"', 1, true))
  end)

  it("copies every folder the binary's home needs (lua/moongate/runtime.lua finds it)", function()
    for _, dir in ipairs({ "runtime/", "lua/", "plugins/", "config/" }) do
      assert.truthy(df:find("COPY " .. dir .. " " .. dir, 1, true), dir)
    end
    local ignore = read(".dockerignore")
    for line in ignore:gmatch("[^\n]+") do
      if line:sub(1, 1) ~= "#" then
        for _, needed in ipairs({ "runtime", "lua", "plugins", "config", "CMakeLists.txt", "examples/docker" }) do
          assert.is_nil(line:match("^" .. needed:gsub("%p", "%%%0") .. "/?$"), ".dockerignore drops " .. needed)
        end
      end
    end
  end)
end)
