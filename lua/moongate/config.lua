-- Loading and validating gateway.lua (SPEC §2).
--
-- load() runs the file as Lua, validates every option against the schemas below, normalises the
-- values (seconds, bytes, parsed addresses, absolute paths, shorthands expanded), resolves plugin
-- entries to their modules and checks every cross-reference. It never raises for a bad config:
-- all the problems found come back together as "path: message" strings, in file order where that
-- can be known. Loading is pure: nothing is bound, written or sent; plugin files are only read and
-- run, and plugins' init(conf) is called.

local schema = require("moongate.schema")
local presets = require("moongate.providers.presets")

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local pcall = pcall
local select = select
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local setfenv = setfenv
local loadfile = loadfile
local rawset = rawset
local require = require
local getenv = os.getenv
local io_open = io.open
local format = string.format
local match = string.match
local find = string.find
local sub = string.sub
local upper = string.upper
local lower = string.lower
local sort = table.sort
local concat = table.concat
local abspath = schema.abspath
local child = schema.child
local sorted_keys = schema.sorted_keys

local _M = { _VERSION = "0.1" }

-- Shipped plugins that run whether or not gateway.lua lists them (SPEC §2 "Always on").
_M.always_on = { "router", "balancer", "health", "provider" }
-- Shipped plugins switched on when any budget is configured (SPEC §2 "Budgets").
_M.budget_plugins = { "cost", "budget" }

-- The hooks of SPEC §5, and wants_chunks (docs/plugins.md); anything else in a plugin module is its own business.
_M.hooks = { "init", "on_route", "on_request", "on_balance", "on_upstream_request",
             "on_response", "on_chunk", "wants_chunks", "on_error", "on_log" }

-- Top-level options in the order SPEC §2 lists them: the order errors come out in when the file
-- returns a table (the order globals were set in is used otherwise).
local TOP_ORDER = { "listen", "admin", "workers", "data_dir", "shutdown_timeout", "limits", "ledger",
                    "access_log", "providers", "backends", "routes", "teams", "model_budgets",
                    "consumers", "plugins", "cluster", "shared" }

local TABLE_SECTIONS = { "listen", "admin", "limits", "ledger", "providers", "backends", "routes",
                         "teams", "model_budgets", "consumers", "plugins", "cluster", "shared" }

local RESERVED_ENTRY_KEYS = { name = true, path = true, handler = true, priority = true }

-- Plugin options that are file paths, resolved against the config folder even when a plugin's
-- schema declares them as plain strings.
local CONF_PATH_KEYS = { "jwks_file" }

local STRATEGIES = { "round_robin", "random", "least_busy", "latency", "cost", "usage", "sticky" }
local RETRY_CLASSES = { ["5xx"] = true, ["4xx"] = true, ["connect-failure"] = true,
                        timeout = true, reset = true, tls = true }

---------------------------------------------------------------------------------------------------
-- Schemas
---------------------------------------------------------------------------------------------------

local function one_or_list(item)
    -- `method = "POST"` and `method = { "GET", "POST" }` both mean a list.
    return {
        type = "array", items = item, minItems = 1,
        coerce = function(v)
            if type(v) == "string" then
                return { v }
            end
            return v
        end,
    }
end

local function not_true(msg)
    return function(v)
        if v == true then
            return nil, msg
        end
        return true
    end
end

local function url_path(v)
    if sub(v, 1, 1) ~= "/" then
        return nil, 'must start with "/"'
    end
    return true
end

local STRING = { type = "string" }
local DURATION = { type = "duration" }
local PATH = { type = "path" }
local BOOLEAN = { type = "boolean" }
local EXPRESSION = { type = { "string", "function" } }
local URL_PATH = { type = "string", check = url_path }
local COUNT = { type = "integer", minimum = 1 }
local HEADERS = { type = "object", default = {}, additionalProperties = STRING }

local TLS = {
    type = "object",
    properties = {
        cert = { type = "path", required = true },
        key = { type = "path", required = true },
        sni = {
            type = "object", default = {},
            additionalProperties = {
                type = "object",
                properties = { cert = { type = "path", required = true },
                               key = { type = "path", required = true } },
            },
        },
    },
}

local LISTEN = {
    type = "array", minItems = 1, default = { "127.0.0.1:8080" },
    coerce = function(v)
        if type(v) == "string" or (type(v) == "table" and v.address ~= nil) then
            return { v }
        end
        return v
    end,
    items = {
        type = "object",
        coerce = function(v)
            if type(v) == "string" then
                return { address = v }
            end
            return v
        end,
        properties = { address = { type = "address", required = true }, tls = TLS },
    },
}

local ADMIN = {
    type = "object", default = {},
    properties = {
        listen = { type = { "address", "boolean" }, default = "127.0.0.1:9901",
                   check = not_true("expected an address or false") },
        token = STRING,
        protect_metrics = { type = "boolean", default = false },
    },
}

local WORKERS = {
    type = { "integer", "string" }, default = "auto",
    check = function(v)
        if v == "auto" or (type(v) == "number" and v >= 1) then
            return true
        end
        return nil, 'must be "auto" or an integer >= 1'
    end,
}

local LIMITS = {
    type = "object", default = {},
    properties = {
        max_body = { type = "size", default = "10MB" },
        max_header = { type = "size", default = "64KB" },
        max_connections = { type = "integer", minimum = 1, default = 10000 },
        header_timeout = { type = "duration", default = 30 },
        idle_timeout = { type = "duration", default = 60 },
    },
}

local ACCESS_LOG = {
    type = { "string", "boolean" }, default = "stdout",
    check = function(v)
        if v == true or v == "" then
            return nil, 'expected "stdout", "stderr", a file path or false'
        end
        return true
    end,
}

local function known_provider_type(v)
    if presets.types[v] then
        return true
    end
    return nil, format("unknown provider type %q (one of: %s)", v, concat(presets.names(), ", "))
end

local function http_url(v)
    if not match(v, "^https?://[^/]") then
        return nil, "must be an http:// or https:// URL"
    end
    return true
end

local function provider_schema(mock)
    local props = {
        type = { type = "string", required = true, check = known_provider_type },
        base_url = { type = "string", check = http_url },
        api_key = STRING,
        api_version = STRING,
        headers = HEADERS,
        timeout = DURATION,
        ca_file = PATH,
        insecure = { type = "boolean", default = false },
        drop_unsupported = { type = "boolean", default = false },
    }
    if mock then
        props.latency = { type = "duration", default = 0 }
        props.interval = { type = "duration", default = 0 }
        props.chunks = { type = "integer", minimum = 1, default = 5 }
        props.text = STRING
        props.fail = {
            type = "object", default = {},
            keys = { type = "integer", minimum = 100, maximum = 599 },
            additionalProperties = { type = "number", minimum = 0, maximum = 1 },
        }
    end
    return { type = "object", properties = props }
end

local PROVIDER_MOCK = provider_schema(true)
local PROVIDER_OTHER = provider_schema(false)
local PROVIDER = {
    select = function(v)
        -- Mock-only options (latency, fail, ...) are unknown options on real providers.
        if type(v) == "table" and v.type == "mock" then
            return PROVIDER_MOCK
        end
        return PROVIDER_OTHER
    end,
}

local PRICES = {
    type = "object",
    properties = {
        input = { type = "number", minimum = 0, required = true },
        output = { type = "number", minimum = 0, required = true },
        cached_input = { type = "number", minimum = 0 },
    },
}

local function positive_weight(v)
    if v > 0 and v < math.huge then
        return true
    end
    return nil, "must be > 0 (leave a target out, or drain it with the admin API, to send it nothing)"
end

local function target_props(timeout)
    return {
        name = STRING,
        provider = { type = "string", required = true },
        model = { type = { "string", "boolean" }, check = not_true("expected a model name or false") },
        weight = { type = "number", default = 1, check = positive_weight },
        headers = HEADERS,
        timeout = timeout,
        max_inflight = COUNT,
        prices = PRICES,
    }
end

local TARGET = { type = "object", properties = target_props(DURATION) }

local STICKY = {
    type = "object",
    properties = { header = STRING, cookie = STRING },
    check = function(v)
        if (v.header ~= nil) == (v.cookie ~= nil) then
            return nil, "needs either header or cookie"
        end
        return true
    end,
}

local GROUP_PROPS = {
    strategy = { type = "string", enum = STRATEGIES },
    sticky = STICKY,
    targets = { type = "array", items = TARGET, minItems = 1, required = true },
}

local RETRY_ON = {
    type = { "integer", "string" },
    check = function(v)
        if type(v) == "number" then
            if v >= 100 and v <= 599 then
                return true
            end
            return nil, "must be an HTTP status (100..599)"
        end
        if RETRY_CLASSES[v] then
            return true
        end
        return nil, 'must be a status or one of "5xx", "4xx", "connect-failure", "timeout", "reset", "tls"'
    end,
}

local TIMEOUT_PROPS = { per_try = DURATION, total = DURATION, ttfb = DURATION, stream_idle = DURATION }

local PLUGIN_ENTRY = {
    type = "object",
    properties = { name = STRING, path = PATH, handler = { type = "table" }, priority = { type = "number" } },
    additionalProperties = true,   -- the plugin's own options, checked against its schema later
}
local PLUGIN_LIST = { type = "array", default = {}, items = PLUGIN_ENTRY }

local BACKEND_COMMON = {
    health = {
        type = "object",
        properties = {
            unhealthy_condition = EXPRESSION,
            eviction = { type = "object", properties = { duration = DURATION, consecutive_failures = COUNT,
                                                         max_duration = DURATION } },
            slow_start = DURATION,
            panic = BOOLEAN,
            active = { type = "object",
                       properties = { interval = DURATION, path = URL_PATH, unhealthy_threshold = COUNT } },
        },
    },
    retry = {
        type = "object",
        properties = { attempts = COUNT, on = { type = "array", items = RETRY_ON }, backoff = DURATION },
    },
    timeout = { type = "object", properties = TIMEOUT_PROPS },
    queue = { type = "object", properties = { max = { type = "integer", minimum = 1, default = 100 },
                                              timeout = { type = "duration", default = 2 } } },
    plugins = PLUGIN_LIST,
}

local function merged(...)
    local out = {}
    for i = 1, select("#", ...) do
        for k, v in pairs((select(i, ...))) do
            out[k] = v
        end
    end
    return out
end

-- The three ways to write a backend: groups of targets; one group (`targets = {...}`); one target.
local BACKEND_GROUPS = {
    type = "object",
    properties = merged(BACKEND_COMMON, {
        groups = { type = "array", minItems = 1, required = true,
                   items = { type = "object", properties = GROUP_PROPS } },
    }),
}
local BACKEND_TARGETS = { type = "object", properties = merged(BACKEND_COMMON, GROUP_PROPS) }
local BACKEND_SINGLE = {
    type = "object",
    -- A single target's `timeout` is the target's (a duration) or the backend's (a table).
    properties = merged(BACKEND_COMMON, target_props({ type = { "duration", "object" },
                                                       properties = TIMEOUT_PROPS })),
}
local BACKEND = {
    select = function(v)
        if type(v) == "table" and v.groups == nil then
            if v.targets ~= nil then
                return BACKEND_TARGETS
            elseif v.provider ~= nil or v.model ~= nil then
                return BACKEND_SINGLE
            end
        end
        return BACKEND_GROUPS
    end,
}

local ROUTE = {
    type = "object",
    properties = {
        name = STRING,
        match = {
            type = "object", default = {},
            properties = {
                path = URL_PATH,
                path_prefix = URL_PATH,
                method = one_or_list(STRING),
                headers = { type = "object", additionalProperties = STRING },
                model = one_or_list(STRING),
                when = EXPRESSION,
            },
        },
        rewrite = URL_PATH,
        backend = STRING,
        model_map = { type = "object", additionalProperties = STRING },
        plugins = PLUGIN_LIST,
    },
}

local function finite(v)
    if v ~= v or v == math.huge or v == -math.huge then return nil, "must be a finite number" end
    return true
end

-- a consumer's name: in URLs of the admin API (URL-encoded), the ledger and metrics' labels
local function consumer_name(v)
    if v == "" then return nil, "must not be empty" end
    if #v > 200 then return nil, "must be at most 200 bytes" end
    if v:find("%c") then return nil, "must not hold control characters" end
    return true
end

local BUDGET = {
    type = "object",
    properties = {
        usd = { type = "number", minimum = 0, required = true, check = finite },
        period = { type = "period", required = true },
        hard = { type = "boolean", default = false },
    },
}

local CONSUMER = {
    type = "object",
    properties = {
        name = { type = "string", required = true, check = consumer_name },
        key = { type = "string", required = true },
        team = STRING,
        budget = BUDGET,
        models = one_or_list(STRING),
    },
}
_M.consumer_schema = CONSUMER   -- POST /admin/consumers takes the same fields (moongate.consumers)

-- cluster (docs/cluster.md): restart-only, like the rest of the section
local function redis_url(v)
    local ok, err = require("moongate.redis").parse_url(v)
    if ok then return true end
    return nil, err
end

local function positive_duration(v)
    if v > 0 then return true end
    return nil, "must be more than 0 seconds"
end

local CLUSTER = {
    type = "object", default = {},
    properties = {
        redis = { type = "string", check = redis_url,
                  description = "redis://[[user]:password@]host[:port][/db]; nil: cluster mode off" },
        fail_open = { type = "boolean", default = true,
                      description = "Redis unreachable: use this instance's store (true) or refuse (false)" },
        -- the defaults of these are moongate.redis's (so that cluster stays { fail_open = true }
        -- in a config without it)
        timeout = { type = "duration", check = positive_duration,
                    description = "longest wait for one Redis answer (default 250ms)" },
        connect_timeout = { type = "duration", check = positive_duration,
                            description = "longest wait for a connection to Redis (default 1s)" },
        prefix = { type = "string", description = 'prepended to every Redis key (default "moongate:")' },
        refresh = { type = "duration", check = positive_duration,
                    description = "how often a mirrored key (evictions) is read again from Redis (default 250ms)" },
        stream_maxlen = { type = "integer", minimum = 1,
                          description = "entries kept in each Redis stream, XADD MAXLEN ~ (default 1000000)" },
    },
}

local TOP = {
    type = "object",
    properties = {
        listen = LISTEN,
        admin = ADMIN,
        workers = WORKERS,
        data_dir = { type = "path", default = "./data" },
        shutdown_timeout = { type = "duration", default = 30 },
        limits = LIMITS,
        ledger = { type = "object", default = {},
                   properties = { flush_interval = { type = "duration", default = 1 },
                                  -- moongate's own (docs/ledger.md)
                                  snapshot_interval = { type = "duration", default = 300 },
                                  rotate_size = { type = "size", default = 64 * 1048576 } } },
        access_log = ACCESS_LOG,
        providers = { type = "object", default = {}, additionalProperties = PROVIDER },
        backends = { type = "object", default = {}, additionalProperties = BACKEND },
        routes = { type = "array", default = {}, items = ROUTE },
        teams = { type = "object", default = {},
                  additionalProperties = { type = "object", properties = { budget = BUDGET } } },
        model_budgets = { type = "object", default = {}, additionalProperties = BUDGET },
        consumers = { type = "array", default = {}, items = CONSUMER },
        plugins = PLUGIN_LIST,
        cluster = CLUSTER,
        -- gw.shared's bound (moongate's own option; restart-only)
        shared = { type = "object", default = {},
                   properties = { max_keys = { type = "integer", minimum = 16, default = 200000 } } },
    },
}
_M.schema = TOP

---------------------------------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------------------------------

local function add(errs, path, msg)
    errs[#errs + 1] = path .. ": " .. msg
end

local function getcwd()
    local ok, unistd = pcall(require, "posix.unistd")
    if ok and type(unistd) == "table" and unistd.getcwd then
        local d = unistd.getcwd()
        if d then
            return d
        end
    end
    local pwd = getenv("PWD")
    if pwd and pwd ~= "" then
        return pwd
    end
    local p = io.popen("pwd")
    if p then
        local d = p:read("*l")
        p:close()
        return d
    end
    return "/"
end

local function dirname(file)
    local d = match(file, "^(.*)/[^/]*$")
    if d == nil then
        return "."
    end
    return d == "" and "/" or d
end

local function file_exists(f)
    local fh = io_open(f, "r")
    if fh then
        fh:close()
        return true
    end
    return false
end

-- LuaJIT shortens long chunk names in messages to "...<tail>:LINE:"; put the whole path back so
-- that errors read FILE:LINE: message whatever the length of FILE.
local function full_source(msg, path)
    local tail, rest = match(msg, "^%.%.%.(.-)(:%d+:.*)$")
    if tail and tail ~= "" and sub(path, -#tail) == tail then
        return path .. rest
    end
    return msg
end

-- Runs gateway.lua (or `source`, its text read earlier, named after path) in a fresh
-- environment. Returns the config table, the order top-level globals were set in (nil when
-- the file returned a table) | nil, error as Lua reports it.
local function run_file(path, env_get, source)
    local chunk, err
    if source ~= nil then
        chunk, err = loadstring(source, "@" .. path)
    else
        chunk, err = loadfile(path)
    end
    if not chunk then
        return nil, full_source(err, path)
    end

    local function env(name, default)
        if type(name) ~= "string" then
            error("env: the variable name must be a string", 2)
        end
        local v = env_get(name)
        if v == nil or v == "" then
            return default
        end
        return v
    end

    local builtins = { env = env }
    local order, seen = {}, {}
    local globals = setmetatable({}, {
        __index = function(_, k)
            local b = builtins[k]
            if b ~= nil then
                return b
            end
            return _G[k]
        end,
        __newindex = function(t, k, v)
            if not seen[k] then
                seen[k] = true
                order[#order + 1] = k
            end
            rawset(t, k, v)
        end,
    })
    setfenv(chunk, globals)

    local ok, ret = pcall(chunk)
    if not ok then
        return nil, full_source(tostring(ret), path)
    end
    if ret == nil then
        return globals, order
    end
    if type(ret) ~= "table" then
        return nil, path .. ": the config must return a table or set globals, not a " .. type(ret)
    end
    return ret, nil
end

-- Splits the option path at the start of an error into comparable segments.
local function path_segments(e)
    local segs = {}
    local first = match(e, "^[%a_][%w_%-]*")
    if not first then
        return segs
    end
    segs[1] = first
    local i = #first + 1
    while true do
        local c = sub(e, i, i)
        if c == "." then
            local name = match(e, "^[%a_][%w_%-]*", i + 1)
            if not name then
                break
            end
            segs[#segs + 1] = name
            i = i + 1 + #name
        elseif c == "[" then
            local num = match(e, "^%[(%d+)%]", i)
            if num then
                segs[#segs + 1] = tonumber(num)
                i = i + #num + 2
            else
                local q = match(e, '^%[(%b"")%]', i)
                if not q then
                    break
                end
                segs[#segs + 1] = q
                i = i + #q + 2
            end
        else
            break
        end
    end
    return segs
end

-- Orders errors by option path: top-level options in file order (or SPEC order), list items by
-- index, names alphabetically, a parent before its children; equal paths keep their order.
local function sort_errors(errs, order)
    local rank = {}
    for i, k in ipairs(order or TOP_ORDER) do
        rank[k] = i
    end
    local keyed = {}
    for i, e in ipairs(errs) do
        keyed[i] = { e = e, i = i, segs = path_segments(e) }
    end
    local function seg_less(a, b, first)
        if first then
            local ra, rb = rank[a] or 1e9, rank[b] or 1e9
            if ra ~= rb then
                return ra < rb
            end
        end
        local ta, tb = type(a), type(b)
        if ta ~= tb then
            return ta == "number"
        end
        return a < b
    end
    sort(keyed, function(x, y)
        local a, b = x.segs, y.segs
        for j = 1, math.min(#a, #b) do
            if a[j] ~= b[j] then
                return seg_less(a[j], b[j], j == 1)
            end
        end
        if #a ~= #b then
            return #a < #b
        end
        return x.i < y.i
    end)
    for i, k in ipairs(keyed) do
        errs[i] = k.e
    end
end

---------------------------------------------------------------------------------------------------
-- Plugins
---------------------------------------------------------------------------------------------------

-- Loads a plugin file once per load(): entries naming the same file share one module table.
local function load_module_file(file, ctx)
    local mod = ctx.modules[file]
    if mod then
        return mod
    end
    local chunk, err = loadfile(file)
    if not chunk then
        return nil, full_source(err, file)
    end
    local ok, ret = pcall(chunk)
    if not ok then
        return nil, full_source(tostring(ret), file)
    end
    if type(ret) ~= "table" then
        return nil, file .. ": a plugin file must return its module table"
    end
    ctx.modules[file] = ret
    return ret
end

local function find_shipped(name, dirs)
    for _, d in ipairs(dirs) do
        local f = d .. "/" .. name .. ".lua"
        if file_exists(f) then
            return f
        end
    end
    return nil
end

-- require(name) -> module | nil (not on the Lua path) | nil, err (found but broken).
local function require_module(name)
    local ok, ret = pcall(require, name)
    if ok then
        if type(ret) ~= "table" then
            return nil, format("module %q is not a plugin (it does not return a table)", name)
        end
        return ret
    end
    ret = tostring(ret)
    if find(ret, "module '" .. name .. "' not found", 1, true) then
        return nil
    end
    return nil, ret
end

-- resolve_entry(e, path, ctx) -> { name, priority, plugin, conf } | nil (errors added to ctx.errs)
local function resolve_entry(e, path, ctx)
    local errs = ctx.errs
    local mod, err
    if e.handler ~= nil then
        mod = e.handler
    elseif e.path ~= nil then
        mod, err = load_module_file(e.path, ctx)
        if not mod then
            add(errs, path .. ".path", err)
            return nil
        end
    elseif e.name ~= nil then
        local file = find_shipped(e.name, ctx.plugin_dirs)
        if file then
            mod, err = load_module_file(file, ctx)
            if not mod then
                add(errs, path, err)
                return nil
            end
        else
            mod, err = require_module(e.name)
            if not mod then
                add(errs, path .. ".name", err or format("unknown plugin %q", e.name))
                return nil
            end
        end
    else
        add(errs, path .. ".name", "required")
        return nil
    end

    local name = e.name
    if name == nil then
        name = mod.name
    end
    if type(name) ~= "string" then
        add(errs, path .. ".name", "required")
        return nil
    end

    local broken = false
    for _, hook in ipairs(_M.hooks) do
        if mod[hook] ~= nil and type(mod[hook]) ~= "function" then
            add(errs, path, format("plugin %q: hook %s must be a function", name, hook))
            broken = true
        end
    end
    local priority = e.priority
    if priority == nil then
        priority = mod.priority or 0
    end
    if type(priority) ~= "number" then
        add(errs, path, format("plugin %q: priority must be a number", name))
        broken = true
    end

    local conf = {}
    for k, v in pairs(e) do
        if not RESERVED_ENTRY_KEYS[k] then
            conf[k] = v
        end
    end
    local sch = mod.schema
    if sch ~= nil then
        if type(sch) ~= "table" then
            add(errs, path, format("plugin %q: schema must be a table", name))
            return nil
        end
        local ok, out, verrs = pcall(schema.validate, conf, sch, path, { base_dir = ctx.dir })
        if not ok then
            add(errs, path, format("plugin %q has a broken schema: %s", name, tostring(out)))
            return nil
        end
        if out == nil then
            for _, m in ipairs(verrs or {}) do
                errs[#errs + 1] = m
            end
            return nil
        end
        conf = out
    end
    for _, k in ipairs(CONF_PATH_KEYS) do
        if type(conf[k]) == "string" and conf[k] ~= "" then
            conf[k] = abspath(conf[k], ctx.dir)
        end
    end
    if broken then
        return nil
    end

    if type(mod.init) == "function" then
        -- init may raise or return nil, "message"; either refuses the config.
        local ok, r1, r2 = pcall(mod.init, conf)
        if not ok then
            add(errs, path, tostring(r1))
            return nil
        end
        if not r1 and type(r2) == "string" then
            -- a message that starts with the option it refuses ("rules[1]: ...", "jwks_file: ...")
            -- continues the entry's path: plugins[2].rules[1]: ..., like the schema's errors
            if match(r2, "^[%a_][%w_]*[%[%.:]") then
                errs[#errs + 1] = path .. "." .. r2
            else
                add(errs, path, r2)
            end
            return nil
        end
    end
    return { name = name, priority = priority, plugin = mod, conf = conf }
end

local function resolve_list(list, path, ctx)
    local out = {}
    if type(list) ~= "table" then
        return out
    end
    for i, e in ipairs(list) do
        local r = resolve_entry(e, path .. "[" .. i .. "]", ctx)
        if r then
            out[#out + 1] = r
        end
    end
    return out
end

-- Appends shipped plugins from plugin_dirs that the user did not list; a missing file is skipped
-- (unit tests and `check` on a bare checkout run without them).
local function add_shipped(list, names, user_names, ctx)
    for _, name in ipairs(names) do
        if not user_names[name] then
            local file = find_shipped(name, ctx.plugin_dirs)
            if file then
                user_names[name] = true
                local r = resolve_entry({ name = name }, "plugins." .. name, ctx)
                if r then
                    list[#list + 1] = r
                end
            end
        end
    end
end

---------------------------------------------------------------------------------------------------
-- Normalisation and cross-checks (on the validated copy)
---------------------------------------------------------------------------------------------------

local function normalize_listen(cfg, errs)
    local out, seen = {}, {}
    for i, l in ipairs(cfg.listen or {}) do
        local a = l.address
        if a then
            local key = a.host .. ":" .. a.port
            if a.port ~= 0 and seen[key] then
                add(errs, "listen[" .. i .. "]", format("same address as %s", seen[key]))
            end
            seen[key] = seen[key] or ("listen[" .. i .. "]")
            out[#out + 1] = { host = a.host, port = a.port, address = a.address, tls = l.tls }
        end
    end
    cfg.listen = out
    local admin = cfg.admin or {}
    local al = admin.listen
    if type(al) == "table" and al.port ~= 0 and seen[al.host .. ":" .. al.port] then
        add(errs, "admin.listen", format("same address as %s", seen[al.host .. ":" .. al.port]))
    end
end

local function normalize_providers(cfg, errs)
    for _, name in ipairs(sorted_keys(cfg.providers)) do
        local p = cfg.providers[name]
        local path = child("providers", name)
        p.name = name
        local preset = presets.types[p.type]
        if preset then
            p.wire = preset.wire
            if p.base_url == nil then
                p.base_url = preset.base_url
            end
            for _, field in ipairs(preset.requires) do
                if p[field] == nil then
                    add(errs, path .. "." .. field, "required")
                end
            end
        end
        if type(p.base_url) == "string" then
            -- Codecs append "/chat/completions" and the like.
            p.base_url = p.base_url:gsub("/+$", "")
        end
    end
end

local function check_expression(v, path, ctx)
    if type(v) == "string" and ctx.compile_expr then
        local ok, fn, err = pcall(ctx.compile_expr, v, path)
        if not ok then
            err = fn
        end
        if not ok or fn == nil then
            add(ctx.errs, path, tostring(err or "invalid expression"))
        end
    end
end

local TARGET_KEYS = { "name", "provider", "model", "weight", "headers", "max_inflight", "prices" }

-- Brings every backend to { name, groups = { { strategy, sticky, targets } }, ... } and records
-- where each target was written, so that reference errors point at the user's own text.
local function normalize_backends(cfg, ctx)
    local errs = ctx.errs
    for _, name in ipairs(sorted_keys(cfg.backends)) do
        local b = cfg.backends[name]
        local path = child("backends", name)
        local groups, group_paths = {}, {}
        if b.groups ~= nil then
            for g, grp in ipairs(b.groups) do
                groups[g] = grp
                group_paths[g] = path .. ".groups[" .. g .. "]"
            end
        elseif b.targets ~= nil then
            groups[1] = { strategy = b.strategy, sticky = b.sticky, targets = b.targets }
            group_paths[1] = path
            b.strategy, b.sticky, b.targets = nil, nil, nil
        elseif b.provider ~= nil then
            local t = {}
            for _, k in ipairs(TARGET_KEYS) do
                t[k] = b[k]
                b[k] = nil
            end
            if type(b.timeout) == "number" then
                t.timeout = b.timeout
                b.timeout = nil
            end
            groups[1] = { targets = { t } }
            group_paths[1] = path
            ctx.target_paths[t] = path
        end

        local names = {}
        for g, grp in ipairs(groups) do
            local gpath = group_paths[g]
            if grp.strategy == nil then
                grp.strategy = grp.sticky and "sticky" or "round_robin"
            end
            if grp.strategy == "sticky" and not grp.sticky then
                add(errs, gpath .. ".sticky", "required")
            elseif grp.sticky and grp.strategy ~= "sticky" then
                add(errs, gpath .. ".sticky", 'only used with strategy = "sticky"')
            end
            for t, target in ipairs(grp.targets or {}) do
                local tpath = ctx.target_paths[target] or (gpath .. ".targets[" .. t .. "]")
                ctx.target_paths[target] = tpath
                if target.name == nil and type(target.provider) == "string" then
                    target.name = type(target.model) == "string"
                        and (target.provider .. "/" .. target.model) or target.provider
                end
                if target.name ~= nil then
                    if names[target.name] then
                        add(errs, tpath .. ".name", format("duplicate target name %q (also %s)",
                            target.name, names[target.name]))
                    else
                        names[target.name] = tpath
                    end
                end
            end
        end

        b.name = name
        b.groups = groups
        b.plugins = b.plugins or {}
        local health = b.health
        if health then
            check_expression(health.unhealthy_condition, path .. ".health.unhealthy_condition", ctx)
        end
    end
end

local function normalize_routes(cfg, ctx)
    local errs = ctx.errs
    local names = {}
    for i, r in ipairs(cfg.routes) do
        local path = "routes[" .. i .. "]"
        if r.name == nil then
            r.name = path
        end
        if names[r.name] then
            add(errs, path .. ".name", format("duplicate route name %q (also %s)", r.name, names[r.name]))
        else
            names[r.name] = path
        end
        local m = r.match or {}
        r.match = m
        if m.method then
            for j, meth in ipairs(m.method) do
                m.method[j] = upper(meth)
            end
        end
        if m.headers then
            local h = {}
            for k, v in pairs(m.headers) do
                h[lower(k)] = v
            end
            m.headers = h
        end
        check_expression(m.when, path .. ".match.when", ctx)
        if r.backend == nil and r.model_map == nil then
            add(errs, path .. ".backend", "required")
        end
        if r.backend ~= nil and cfg.backends[r.backend] == nil then
            add(errs, path .. ".backend", format("unknown backend %q", r.backend))
        end
        if r.model_map then
            for _, model in ipairs(sorted_keys(r.model_map)) do
                local bname = r.model_map[model]
                if cfg.backends[bname] == nil then
                    add(errs, child(path .. ".model_map", model), format("unknown backend %q", bname))
                end
            end
        end
        r.plugins = r.plugins or {}
    end
end

local function check_targets(cfg, ctx)
    for _, name in ipairs(sorted_keys(cfg.backends)) do
        for _, grp in ipairs(cfg.backends[name].groups) do
            for _, t in ipairs(grp.targets or {}) do
                if type(t.provider) == "string" and cfg.providers[t.provider] == nil then
                    add(ctx.errs, ctx.target_paths[t] .. ".provider",
                        format("unknown provider %q", t.provider))
                end
            end
        end
    end
end

local function check_consumers(cfg, errs)
    local names, keys = {}, {}
    for i, c in ipairs(cfg.consumers) do
        local path = "consumers[" .. i .. "]"
        if c.name ~= nil then
            if names[c.name] then
                add(errs, path .. ".name", format("duplicate consumer name %q (also %s)", c.name, names[c.name]))
            else
                names[c.name] = path
            end
        end
        if c.key ~= nil then
            -- Never echo the key: errors end up in logs and admin responses.
            if keys[c.key] then
                add(errs, path .. ".key", format("same key as %s", keys[c.key]))
            else
                keys[c.key] = path
            end
        end
        if c.team ~= nil and cfg.teams[c.team] == nil then
            add(errs, path .. ".team", format("unknown team %q", c.team))
        end
    end
    -- Keys are kept only as SHA-256 digests (hex) once checked: the plain key is in no table that
    -- outlives the load (moongate.consumers compares digests).
    local hash_key = require("moongate.consumers").hash_key
    for _, c in ipairs(cfg.consumers) do
        if type(c.key) == "string" then
            c.key_sha256 = hash_key(c.key)
            c.key = nil
        end
    end
end

local function any_budget(cfg)
    if next(cfg.model_budgets) ~= nil then
        return true
    end
    for _, t in pairs(cfg.teams) do
        if t.budget then
            return true
        end
    end
    for _, c in ipairs(cfg.consumers) do
        if c.budget then
            return true
        end
    end
    return false
end

local function resolve_plugins(cfg, ctx)
    local global = resolve_list(cfg.plugins, "plugins", ctx)
    local user_names = {}
    for _, e in ipairs(cfg.plugins) do
        if type(e.name) == "string" then
            user_names[e.name] = true
        end
    end
    for _, r in ipairs(global) do
        user_names[r.name] = true
    end
    add_shipped(global, _M.always_on, user_names, ctx)
    if any_budget(cfg) then
        add_shipped(global, _M.budget_plugins, user_names, ctx)
    end
    cfg.plugins = global

    for i, r in ipairs(cfg.routes) do
        r.plugins = resolve_list(r.plugins, "routes[" .. i .. "].plugins", ctx)
    end
    for _, name in ipairs(sorted_keys(cfg.backends)) do
        local b = cfg.backends[name]
        b.plugins = resolve_list(b.plugins, child("backends", name) .. ".plugins", ctx)
    end
end

---------------------------------------------------------------------------------------------------
-- Public interface
---------------------------------------------------------------------------------------------------

-- load(path, opts) -> cfg | nil, errors
-- opts.plugin_dirs: folders searched for shipped plugins as <dir>/<name>.lua (default none);
-- opts.env: function(name) -> string|nil used instead of os.getenv (tests);
-- opts.compile_expr: optional function(source, path) -> fn | nil, err used to check expressions
-- (`when`, `unhealthy_condition`) at load; the config keeps the source text either way;
-- opts.cwd: folder a relative `path` is taken from (default: the process's working directory);
-- opts.source: the file's text, read by the caller (every worker of a reload runs the same
-- text, whatever happens to the file meanwhile); `path` still names it in errors and anchors
-- relative paths.
-- errors is a list of strings: one Lua error "FILE:LINE: message", or "option.path: message"s.
function _M.load(path, opts)
    if type(path) ~= "string" then
        error("config.load: path must be a string", 2)
    end
    opts = opts or {}
    local file = path
    if sub(file, 1, 1) ~= "/" then
        file = abspath(file, opts.cwd or getcwd())
    else
        file = abspath(file)
    end
    local dir = dirname(file)

    if opts.source ~= nil and type(opts.source) ~= "string" then
        error("config.load: opts.source must be a string", 2)
    end
    local raw, order = run_file(path, opts.env or getenv, opts.source)
    if raw == nil then
        return nil, { order }
    end

    local ctx = {
        errs = {},
        dir = dir,
        plugin_dirs = opts.plugin_dirs or {},
        compile_expr = opts.compile_expr,
        modules = {},
        target_paths = {},
    }
    local errs = ctx.errs

    local out, verrs, partial = schema.validate(raw, TOP, "", { base_dir = dir })
    local cfg = out or partial
    for _, e in ipairs(verrs or {}) do
        if order and match(e, "^[%a_][%w_]*: unknown option$") then
            -- A global meant as a helper variable: say how to keep it out of the config.
            e = e .. ' (a global set by the config; use "local" for helper variables)'
        end
        errs[#errs + 1] = e
    end

    if type(cfg) == "table" then
        cfg.file, cfg.dir = file, dir
        -- After an error a section may be missing from the partial copy; keep checking the rest.
        for _, k in ipairs(TABLE_SECTIONS) do
            if type(cfg[k]) ~= "table" then
                cfg[k] = {}
            end
        end
        normalize_listen(cfg, errs)
        normalize_providers(cfg, errs)
        normalize_backends(cfg, ctx)
        check_targets(cfg, ctx)
        normalize_routes(cfg, ctx)
        check_consumers(cfg, errs)
        if cfg.access_log == "stdout" or cfg.access_log == "stderr" or cfg.access_log == false then
            -- kept as is
        elseif type(cfg.access_log) == "string" then
            cfg.access_log = abspath(cfg.access_log, dir)
        end
        resolve_plugins(cfg, ctx)
    end

    if errs[1] then
        sort_errors(errs, order and next(order) and order or nil)
        return nil, errs
    end
    return cfg
end

-- format_errors(errors) -> one error per line, as `moongate check` prints them.
function _M.format_errors(errors)
    return concat(errors, "\n")
end

return _M
