local config = require("moongate.config")

local FIXTURE_PLUGINS = "spec/fixtures/plugins"

-- A fresh folder per test, named after os.tmpname(), removed afterwards.
local function tmpdir()
    local name = os.tmpname()
    os.remove(name)
    assert(os.execute("mkdir -p '" .. name .. "'"))
    return name
end

local function write(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
end

local function env_from(t)
    return function(name) return t[name] end
end

describe("config.load", function()
    local dir

    before_each(function()
        dir = tmpdir()
    end)

    after_each(function()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    -- load(text, opts): writes text as DIR/gateway.lua and loads it.
    local function load(text, opts)
        opts = opts or {}
        opts.plugin_dirs = opts.plugin_dirs or { FIXTURE_PLUGINS }
        opts.env = opts.env or env_from({})
        return config.load(write(dir .. "/gateway.lua", text), opts)
    end

    -- errors_of(text, opts): the error list, failing the test if the config loaded.
    local function errors_of(text, opts)
        local cfg, errs = load(text, opts)
        assert.is_nil(cfg, "config was expected to be refused")
        return errs
    end

    local MINIMAL = [[
        providers = { openai = { type = "openai", api_key = "sk" } }
        backends = { fast = { provider = "openai", model = "gpt-4o-mini" } }
        routes = { { match = { path_prefix = "/v1" }, backend = "fast" } }
    ]]

    describe("opts.source", function()
        it("runs the given text instead of the file's, named after the file", function()
            local path = write(dir .. "/gateway.lua", "this is not lua")
            local cfg = assert(config.load(path, { plugin_dirs = { FIXTURE_PLUGINS }, env = env_from({}),
                source = MINIMAL .. "\nshutdown_timeout = '7s'\n" }))
            assert.equal(7, cfg.shutdown_timeout)
            assert.equal(path, cfg.file)
        end)

        it("reports a syntax error in the text as FILE:LINE", function()
            local path = write(dir .. "/gateway.lua", MINIMAL)
            local cfg, errs = config.load(path, { plugin_dirs = { FIXTURE_PLUGINS }, env = env_from({}),
                source = "listen = {\n\n" })
            assert.is_nil(cfg)
            assert.equal(1, #errs)
            assert.matches("^" .. path:gsub("%p", "%%%0") .. ":3: ", errs[1])
        end)
    end)

    describe("the SPEC §2 example", function()
        local cfg

        setup(function()
            local errs
            cfg, errs = config.load("spec/fixtures/config/full.lua", {
                plugin_dirs = { FIXTURE_PLUGINS },
                env = env_from({ TEAM_A_KEY = "sk-team-a", OPENAI_API_KEY = "sk-openai" }),
            })
            assert.is_nil(errs)
        end)

        it("knows its file and folder as absolute paths", function()
            assert.matches("^/.*/spec/fixtures/config/full%.lua$", cfg.file)
            assert.equal(cfg.file:match("^(.*)/[^/]+$"), cfg.dir)
        end)

        it("parses listeners, with TLS paths made absolute", function()
            assert.same({ host = "127.0.0.1", port = 8080, address = "127.0.0.1:8080" }, cfg.listen[1])
            local l2 = cfg.listen[2]
            assert.equal("0.0.0.0", l2.host)
            assert.equal(8443, l2.port)
            assert.equal(cfg.dir .. "/cert.pem", l2.tls.cert)
            assert.equal(cfg.dir .. "/key.pem", l2.tls.key)
            assert.same({ cert = cfg.dir .. "/api.pem", key = cfg.dir .. "/api.key" }, l2.tls.sni["api.example.com"])
        end)

        it("reads env() and leaves unset variables nil", function()
            assert.equal("sk-openai", cfg.providers.openai.api_key)
            assert.is_nil(cfg.providers.anthropic.api_key)
            assert.is_nil(cfg.admin.token)
            assert.is_nil(cfg.cluster.redis)
            -- keys are kept as SHA-256 digests only (moongate.consumers)
            assert.is_nil(cfg.consumers[1].key)
            assert.equal(require("moongate.consumers").hash_key("sk-team-a"), cfg.consumers[1].key_sha256)
        end)

        it("converts units", function()
            assert.equal(30, cfg.shutdown_timeout)
            assert.same({ max_body = 10 * 2 ^ 20, max_header = 64 * 1024, max_connections = 10000,
                          header_timeout = 30, idle_timeout = 60 }, cfg.limits)
            assert.equal(1, cfg.ledger.flush_interval)
            assert.equal(0.02, cfg.providers.fake.latency)
            assert.same({ months = 1 }, cfg.teams.search.budget.period)
            assert.same({ per_try = 30, total = 120, ttfb = 20, stream_idle = 30 }, cfg.backends.chat.timeout)
            assert.equal(0.1, cfg.backends.chat.retry.backoff)
            assert.equal(10, cfg.backends.chat.health.eviction.duration)
        end)

        it("fills providers from the presets", function()
            local p = cfg.providers
            assert.equal("https://api.openai.com/v1", p.openai.base_url)
            assert.equal("openai", p.openai.wire)
            assert.equal("https://api.anthropic.com", p.anthropic.base_url)
            assert.equal("anthropic", p.anthropic.wire)
            assert.equal("https://api.groq.com/openai/v1", p.groq.base_url)
            assert.equal("openai", p.groq.wire)
            assert.equal("http://vllm.ai-inference:8000/v1", p.vllm.base_url)
            assert.equal(cfg.dir .. "/ca.pem", p.vllm.ca_file)
            assert.equal("2024-10-21", p.azure.api_version)
            assert.equal("mock", p.fake.wire)
            assert.same({ [429] = 0.1 }, p.fake.fail)
            assert.equal(5, p.fake.chunks)
            assert.equal("fake", p.fake.name)
        end)

        it("names targets provider/model and keeps group order", function()
            local groups = cfg.backends.chat.groups
            assert.equal(2, #groups)
            assert.equal("round_robin", groups[1].strategy)
            assert.equal("openai/gpt-4o-mini", groups[1].targets[1].name)
            assert.equal("anthropic/claude-3-5-haiku-latest", groups[1].targets[2].name)
            assert.equal(2, groups[1].targets[2].weight)
            assert.equal(1, groups[1].targets[1].weight)
            assert.equal("vllm/meta-llama/Llama-3.1-70B-Instruct", groups[2].targets[1].name)
        end)

        it("expands a single-target backend to one group with one target", function()
            local fast = cfg.backends.fast
            assert.equal("fast", fast.name)
            assert.equal(1, #fast.groups)
            assert.equal(1, #fast.groups[1].targets)
            local t = fast.groups[1].targets[1]
            assert.equal("openai", t.provider)
            assert.equal("gpt-4o-mini", t.model)
            assert.is_nil(fast.provider)
            assert.is_nil(fast.model)
        end)

        it("names routes and lower-cases header names", function()
            assert.equal("openai-alias", cfg.routes[1].name)
            assert.equal("routes[2]", cfg.routes[2].name)
            assert.equal("fast", cfg.routes[2].match.headers["x-model-tier"])
            assert.equal("/v1/chat/completions", cfg.routes[1].rewrite)
        end)

        it("resolves every plugin entry, then appends the always-on ones", function()
            local names = {}
            for i, e in ipairs(cfg.plugins) do
                names[i] = e.name
            end
            -- budget is switched on by the configured budgets; health is not among the fixtures.
            assert.same({ "auth", "rate_limit", "jwt", "cost", "tagger", "seen",
                          "router", "balancer", "provider", "budget" }, names)
        end)

        it("hands plugins their validated, defaulted conf", function()
            local by = {}
            for _, e in ipairs(cfg.plugins) do
                by[e.name] = e
            end
            assert.same({ header = "authorization" }, by.auth.conf)
            assert.equal(900, by.auth.priority)
            assert.equal(3600, by.rate_limit.conf.rules[1].window)
            assert.equal(cfg.dir .. "/jwks.json", by.jwt.conf.jwks_file)
            assert.same({ tag = "blue" }, by.tagger.conf)
            assert.equal(5, by.tagger.priority)
            assert.is_function(by.tagger.plugin.on_request)
            assert.is_function(by.seen.plugin.on_request)
            assert.equal(0, by.seen.priority)
        end)
    end)

    describe("the file", function()
        it("may set globals", function()
            local cfg = assert(load(MINIMAL .. "\nworkers = 4\n"))
            assert.equal(4, cfg.workers)
            assert.equal("fast", cfg.routes[1].backend)
        end)

        it("may return a table instead", function()
            local cfg = assert(load([[
                local shared = "openai"
                return {
                    workers = 2,
                    providers = { [shared] = { type = "openai" } },
                    backends = { fast = { provider = shared, model = "gpt-4o-mini" } },
                    routes = { { backend = "fast" } },
                }
            ]]))
            assert.equal(2, cfg.workers)
            assert.equal("openai", cfg.backends.fast.groups[1].targets[1].provider)
        end)

        it("takes env(name, default), an empty variable counting as unset", function()
            local cfg = assert(load(MINIMAL .. [[
                admin = { token = env("ADMIN_TOKEN", "fallback") }
                cluster = { redis = env("REDIS_URL", "redis://default") }
                data_dir = env("DATA_DIR", "./d")
            ]], { env = env_from({ ADMIN_TOKEN = "", DATA_DIR = "/var/lib/mg" }) }))
            assert.equal("fallback", cfg.admin.token)
            assert.equal("redis://default", cfg.cluster.redis)
            assert.equal("/var/lib/mg", cfg.data_dir)
        end)

        it("reports a syntax error as FILE:LINE: message", function()
            local errs = errors_of("workers = 2\nlisten = {\n  \"127.0.0.1:8080\"\n  oops\n}\n")
            assert.equal(1, #errs)
            assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/gateway%.lua:4: .*'}' expected", errs[1])
        end)

        it("reports a runtime error as FILE:LINE: message", function()
            local errs = errors_of("workers = 2\nlocal x = nil\nx.y = 1\n")
            assert.equal(1, #errs)
            assert.matches("^" .. dir:gsub("%p", "%%%0") .. "/gateway%.lua:3: attempt to index", errs[1])
        end)

        it("names a long path in full in a Lua error", function()
            local deep = dir .. "/a-rather-long-folder-name/and-another-long-one/and-a-third-one"
            assert(os.execute("mkdir -p '" .. deep .. "'"))
            local file = write(deep .. "/gateway.lua", "workers = 1\nworkers = = 2\n")
            local cfg, errs = config.load(file, {})
            assert.is_nil(cfg)
            assert.equal(file .. ":2:", errs[1]:sub(1, #file + 3))
        end)

        it("reports a missing file", function()
            local cfg, errs = config.load(dir .. "/nope.lua", {})
            assert.is_nil(cfg)
            assert.matches("nope%.lua", errs[1])
        end)

        it("refuses a file that returns something other than a table", function()
            local errs = errors_of("return 42")
            assert.matches("must return a table", errs[1])
        end)
    end)

    describe("defaults", function()
        it("fills every section a minimal config leaves out", function()
            local cfg = assert(load(MINIMAL))
            assert.same({ { host = "127.0.0.1", port = 8080, address = "127.0.0.1:8080" } }, cfg.listen)
            assert.same({ host = "127.0.0.1", port = 9901, address = "127.0.0.1:9901" }, cfg.admin.listen)
            assert.is_false(cfg.admin.protect_metrics)
            assert.equal("auto", cfg.workers)
            assert.equal(dir .. "/data", cfg.data_dir)
            assert.equal(30, cfg.shutdown_timeout)
            assert.same({ max_body = 10485760, max_header = 65536, max_connections = 10000,
                          header_timeout = 30, idle_timeout = 60 }, cfg.limits)
            assert.same({ flush_interval = 1, snapshot_interval = 300, rotate_size = 67108864 }, cfg.ledger)
            assert.equal("stdout", cfg.access_log)
            assert.same({}, cfg.teams)
            assert.same({}, cfg.model_budgets)
            assert.same({}, cfg.consumers)
            assert.same({ fail_open = true }, cfg.cluster)
            local p = cfg.providers.openai
            assert.same({}, p.headers)
            assert.is_false(p.insecure)
            assert.is_false(p.drop_unsupported)
            assert.same({}, cfg.routes[1].plugins)
            assert.same({}, cfg.backends.fast.plugins)
        end)

        it("accepts a single listen string and admin.listen = false", function()
            local cfg = assert(load(MINIMAL .. 'listen = "0.0.0.0:0"\nadmin = { listen = false }\naccess_log = false\n'))
            assert.same({ { host = "0.0.0.0", port = 0, address = "0.0.0.0:0" } }, cfg.listen)
            assert.is_false(cfg.admin.listen)
            assert.is_false(cfg.access_log)
        end)

        it("applies the mock provider's defaults", function()
            local cfg = assert(load(MINIMAL .. 'providers.fake = { type = "mock" }\n'))
            local fake = cfg.providers.fake
            assert.equal(0, fake.latency)
            assert.equal(0, fake.interval)
            assert.equal(5, fake.chunks)
            assert.is_nil(fake.base_url)
        end)
    end)

    describe("relative paths", function()
        it("are resolved against the config file's folder", function()
            local cfg = assert(load(MINIMAL .. [[
                data_dir = "state"
                access_log = "logs/../access.log"
                listen = { { address = "127.0.0.1:0", tls = { cert = "tls/c.pem", key = "/etc/k.pem" } } }
                providers.openai.ca_file = "./ca.pem"
            ]]))
            assert.equal(dir .. "/state", cfg.data_dir)
            assert.equal(dir .. "/access.log", cfg.access_log)
            assert.equal(dir .. "/tls/c.pem", cfg.listen[1].tls.cert)
            assert.equal("/etc/k.pem", cfg.listen[1].tls.key)
            assert.equal(dir .. "/ca.pem", cfg.providers.openai.ca_file)
        end)

        it("keep stdout and stderr as they are", function()
            local cfg = assert(load(MINIMAL .. 'access_log = "stderr"\n'))
            assert.equal("stderr", cfg.access_log)
        end)
    end)

    describe("backends", function()
        it("take one group written as targets = {...}", function()
            local cfg = assert(load(MINIMAL .. [[
                backends.pool = { strategy = "least_busy", max_inflight = nil, targets = {
                    { provider = "openai", model = "a" }, { provider = "openai", model = "b", max_inflight = 4 } } }
            ]]))
            local g = cfg.backends.pool.groups
            assert.equal(1, #g)
            assert.equal("least_busy", g[1].strategy)
            assert.equal(4, g[1].targets[2].max_inflight)
        end)

        it("name a target without a model after its provider", function()
            local cfg = assert(load(MINIMAL .. 'backends.raw = { provider = "openai", model = false }\n'))
            local t = cfg.backends.raw.groups[1].targets[1]
            assert.equal("openai", t.name)
            assert.is_false(t.model)
        end)

        it("switch to the sticky strategy when sticky is given", function()
            local cfg = assert(load(MINIMAL .. [[
                backends.s = { groups = { { sticky = { header = "x-session-id" },
                    targets = { { provider = "openai", model = "a" } } } } }
            ]]))
            assert.equal("sticky", cfg.backends.s.groups[1].strategy)
        end)

        it("refuse duplicate target names within a backend", function()
            local errs = errors_of(MINIMAL .. [[
                backends.chat = { groups = {
                    { targets = { { provider = "openai", model = "a" } } },
                    { targets = { { provider = "openai", model = "a" } } } } }
            ]])
            assert.same({ 'backends.chat.groups[2].targets[1].name: duplicate target name "openai/a" '
                          .. '(also backends.chat.groups[1].targets[1])' }, errs)
        end)

        it("refuse an unknown strategy and a bad retry class", function()
            local errs = errors_of(MINIMAL .. [[
                backends.chat = { groups = { { strategy = "fastest", targets = { { provider = "openai" } } } },
                                  retry = { on = { 429, "sometimes" } } }
            ]])
            assert.equal(2, #errs)
            assert.matches('^backends%.chat%.groups%[1%]%.strategy: must be one of "round_robin"', errs[1])
            assert.matches('^backends%.chat%.retry%.on%[2%]: must be a status or one of', errs[2])
        end)
    end)

    describe("references", function()
        it("refuse a route to an unknown backend", function()
            local errs = errors_of(MINIMAL .. 'routes[2] = { backend = "slow" }\n')
            assert.same({ 'routes[2].backend: unknown backend "slow"' }, errs)
        end)

        it("refuse a model_map to an unknown backend", function()
            local errs = errors_of(MINIMAL .. 'routes[2] = { model_map = { ["gpt-4o"] = "fast", ["o1"] = "quality" } }\n')
            assert.same({ 'routes[2].model_map.o1: unknown backend "quality"' }, errs)
        end)

        it("refuse a route with neither backend nor model_map", function()
            local errs = errors_of(MINIMAL .. 'routes[2] = { match = { path = "/x" } }\n')
            assert.same({ "routes[2].backend: required" }, errs)
        end)

        it("refuse a target naming an unknown provider, with its full path", function()
            local errs = errors_of(MINIMAL .. [[
                backends.chat = { groups = {
                    { targets = { { provider = "openai", model = "a" } } },
                    { targets = { { provider = "opnai", model = "b" } } } } }
            ]])
            assert.same({ 'backends.chat.groups[2].targets[1].provider: unknown provider "opnai"' }, errs)
        end)

        it("point at the shorthand backend itself", function()
            local errs = errors_of(MINIMAL .. 'backends.fast.provider = "opnai"\n')
            assert.same({ 'backends.fast.provider: unknown provider "opnai"' }, errs)
        end)

        it("refuse a consumer of an unknown team", function()
            local errs = errors_of(MINIMAL .. [[
                teams = { search = {} }
                consumers = { { name = "alice", key = "k1", team = "search" }, { name = "bob", key = "k2", team = "serch" } }
            ]])
            assert.same({ 'consumers[2].team: unknown team "serch"' }, errs)
        end)

        it("refuse an empty consumer name, one with control characters, one too long, an infinite budget", function()
            local errs = errors_of(MINIMAL .. [[
                consumers = { { name = "", key = "k1" }, { name = "a\nb", key = "k2" },
                              { name = string.rep("n", 201), key = "k3" },
                              { name = "ok", key = "k4", budget = { usd = math.huge, period = "1mo" } } }
            ]])
            assert.same({ "consumers[1].name: must not be empty",
                          "consumers[2].name: must not hold control characters",
                          "consumers[3].name: must be at most 200 bytes",
                          "consumers[4].budget.usd: must be a finite number" }, errs)
        end)

        it("refuse duplicate route and consumer names, without showing keys", function()
            local errs = errors_of(MINIMAL .. [[
                routes[2] = { name = "routes[1]", backend = "fast" }
                consumers = { { name = "a", key = "secret-1" }, { name = "a", key = "secret-1" } }
            ]])
            assert.same({ 'routes[2].name: duplicate route name "routes[1]" (also routes[1])',
                          'consumers[2].key: same key as consumers[1]',
                          'consumers[2].name: duplicate consumer name "a" (also consumers[1])' }, errs)
            for _, e in ipairs(errs) do
                assert.is_nil(e:find("secret", 1, true))
            end
        end)
    end)

    describe("options", function()
        it("refuse an unknown option with its path", function()
            local errs = errors_of(MINIMAL .. 'limits = { max_bdy = "1MB" }\n')
            assert.same({ "limits.max_bdy: unknown option" }, errs)
        end)

        it("refuse an unknown top-level global, hinting at local", function()
            local errs = errors_of(MINIMAL .. 'helper = 1\n')
            assert.equal(1, #errs)
            assert.matches('^helper: unknown option %(.*"local"', errs[1])
        end)

        it("report a nil that needs a value as required", function()
            local errs = errors_of(MINIMAL .. 'consumers = { { name = "alice", key = env("MISSING_KEY") } }\n')
            assert.same({ "consumers[1].key: required" }, errs)
        end)

        it("report a target without provider as required", function()
            local errs = errors_of(MINIMAL .. 'backends.chat = { groups = { { targets = { { model = "x" } } } } }\n')
            assert.same({ "backends.chat.groups[1].targets[1].provider: required" }, errs)
        end)

        it("require what a provider type needs", function()
            local errs = errors_of(MINIMAL .. 'providers.az = { type = "azure", base_url = "https://x.openai.azure.com" }\n')
            assert.same({ "providers.az.api_version: required" }, errs)
        end)

        it("refuse an unknown provider type, listing the known ones", function()
            local errs = errors_of(MINIMAL .. 'providers.x = { type = "opnai" }\n')
            assert.equal(1, #errs)
            assert.matches('^providers%.x%.type: unknown provider type "opnai" %(one of: .*openai', errs[1])
        end)

        it("refuse mock-only options on a real provider", function()
            local errs = errors_of(MINIMAL .. 'providers.openai.latency = "20ms"\n')
            assert.same({ "providers.openai.latency: unknown option" }, errs)
        end)

        it("refuse bad units and addresses with the value shown", function()
            local errs = errors_of(MINIMAL .. [[
                shutdown_timeout = "30 seconds"
                listen = { "127.0.0.1:8080", "localhost" }
                limits = { max_body = "10 megs" }
            ]])
            assert.same({
                'shutdown_timeout: invalid duration "30 seconds" (use e.g. "250ms", "10s", "5m")',
                'listen[2].address: invalid address "localhost" (use host:port, e.g. "127.0.0.1:8080" or "[::1]:8080")',
                'limits.max_body: invalid size "10 megs" (use e.g. "512B", "64KB", "10MB")',
            }, errs)
        end)

        it("refuse two listeners on one address, admin included", function()
            local errs = errors_of(MINIMAL .. [[
                listen = { "127.0.0.1:8080", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:8080" }
                admin = { listen = "127.0.0.1:8080" }
            ]])
            assert.same({ "listen[4]: same address as listen[1]", "admin.listen: same address as listen[1]" }, errs)
        end)

        it("refuse workers that are neither auto nor a positive integer", function()
            local errs = errors_of(MINIMAL .. 'workers = 0\n')
            assert.same({ 'workers: must be "auto" or an integer >= 1' }, errs)
        end)

        it("take method and model as a string or a list", function()
            local cfg = assert(load(MINIMAL .. [[
                routes[2] = { match = { method = "post", model = "gpt-4o" }, backend = "fast" }
                routes[3] = { match = { method = { "GET", "post" }, model = { "a", "b" } }, backend = "fast" }
            ]]))
            assert.same({ "POST" }, cfg.routes[2].match.method)
            assert.same({ "gpt-4o" }, cfg.routes[2].match.model)
            assert.same({ "GET", "POST" }, cfg.routes[3].match.method)
            assert.same({ "a", "b" }, cfg.routes[3].match.model)
        end)

        it("refuse a table with named keys where a list is expected", function()
            local errs = errors_of(MINIMAL .. 'routes = { chat = { backend = "fast" } }\n')
            assert.same({ "routes: expected array" }, errs)
        end)
    end)

    describe("errors", function()
        it("are all collected, in file order", function()
            local errs = errors_of([[
                routes = { { backend = "fast" }, { backend = "slow" }, [10] = { backend = "x" } }
                workers = -1
                providers = { openai = { type = "openai", timeout = "soon" } }
                backends = { fast = { provider = "nobody" } }
            ]])
            assert.same({
                "routes: expected array",
                'workers: must be "auto" or an integer >= 1',
                'providers.openai.timeout: invalid duration "soon" (use e.g. "250ms", "10s", "5m")',
                'backends.fast.provider: unknown provider "nobody"',
            }, errs)
            errs = errors_of([[
                routes = { { backend = "slow" }, { backend = "fast", rewrite = "v1" } }
                backends = { fast = { provider = "nobody" } }
            ]])
            assert.same({
                'routes[1].backend: unknown backend "slow"',
                'routes[2].rewrite: must start with "/"',
                'backends.fast.provider: unknown provider "nobody"',
            }, errs)
        end)

        it("come in SPEC order when the file returns a table", function()
            local errs = errors_of([[
                return { routes = { { backend = "slow" } }, workers = 0 }
            ]])
            assert.same({
                'workers: must be "auto" or an integer >= 1',
                'routes[1].backend: unknown backend "slow"',
            }, errs)
        end)

        it("are joined one per line by format_errors", function()
            assert.equal("a: x\nb: y", config.format_errors({ "a: x", "b: y" }))
        end)
    end)

    describe("expressions", function()
        it("are checked with opts.compile_expr when given, reported at their path", function()
            local seen = {}
            local function compile_expr(src, path)
                seen[#seen + 1] = path
                if src:find("===", 1, true) then
                    return nil, "column 15: unexpected '='"
                end
                return function() return true end
            end
            local errs = errors_of(MINIMAL .. [[
                routes[1].match.when = "request.model === 'x'"
                backends.fast.health = { unhealthy_condition = "response.code == 429" }
            ]], { compile_expr = compile_expr })
            assert.same({ "routes[1].match.when: column 15: unexpected '='" }, errs)
            table.sort(seen)
            assert.same({ "backends.fast.health.unhealthy_condition", "routes[1].match.when" }, seen)
        end)
    end)

    describe("plugins", function()
        local function names(list)
            local out = {}
            for i, e in ipairs(list) do
                out[i] = e.name
            end
            return out
        end

        it("report a plugin schema error at the option's path", function()
            local errs = errors_of(MINIMAL .. [[
                plugins = { { name = "auth" }, { name = "limiter", limit = "many" } }
            ]])
            assert.same({ "plugins[2].limit: expected number" }, errs)
        end)

        it("report a plugin's required option and unknown options", function()
            local errs = errors_of(MINIMAL .. 'plugins = { { name = "limiter", limt = 5 } }\n')
            assert.same({ "plugins[1].limit: required", "plugins[1].limt: unknown option" }, errs)
        end)

        it("refuse an unknown plugin", function()
            local errs = errors_of(MINIMAL .. 'plugins = { { name = "auth" }, { name = "auth" }, { name = "no_such_plugin" } }\n')
            assert.same({ 'plugins[3].name: unknown plugin "no_such_plugin"' }, errs)
        end)

        it("load a plugin by path, relative to the config folder", function()
            write(dir .. "/mine.lua", [[
                return { priority = 7, schema = { type = "object", properties = { tag = { type = "string" } } },
                         on_request = function() end }
            ]])
            local cfg = assert(load(MINIMAL .. 'plugins = { { name = "mine", path = "mine.lua", tag = "x" } }\n'))
            local e = cfg.plugins[1]
            assert.equal("mine", e.name)
            assert.equal(7, e.priority)
            assert.same({ tag = "x" }, e.conf)
            assert.is_function(e.plugin.on_request)
        end)

        it("report a broken plugin file with its Lua error", function()
            write(dir .. "/broken.lua", "return {\n  on_request = function( end\n}\n")
            local errs = errors_of(MINIMAL .. 'plugins = { { name = "b", path = "broken.lua" } }\n')
            assert.equal(1, #errs)
            assert.matches("^plugins%[1%]%.path: .*broken%.lua:2: ", errs[1])
        end)

        it("take an inline handler as the module, entry priority first", function()
            local cfg = assert(load(MINIMAL .. [[
                plugins = { { name = "seen", priority = 42, handler = { priority = 1, on_request = function() end } } }
            ]]))
            assert.equal("seen", cfg.plugins[1].name)
            assert.equal(42, cfg.plugins[1].priority)
            assert.same({}, cfg.plugins[1].conf)
        end)

        it("refuse a handler whose hook is not a function", function()
            local errs = errors_of(MINIMAL .. 'plugins = { { name = "h", handler = { on_request = "yes" } } }\n')
            assert.same({ 'plugins[1]: plugin "h": hook on_request must be a function' }, errs)
        end)

        it("refuse a wants_chunks that is not a function", function()
            local errs = errors_of(MINIMAL ..
              'plugins = { { name = "h", handler = { on_chunk = function() end, wants_chunks = false } } }\n')
            assert.same({ 'plugins[1]: plugin "h": hook wants_chunks must be a function' }, errs)
        end)

        it("call init(conf) and report its error at the entry", function()
            local cfg = assert(load(MINIMAL .. 'plugins = { { name = "limiter", limit = 5 } }\n'))
            assert.is_true(cfg.plugins[1].conf.ready)
            local errs = errors_of(MINIMAL .. 'plugins = { { name = "auth" }, { name = "limiter", limit = 13 } }\n')
            assert.same({ "plugins[2]: unlucky limit" }, errs)
        end)

        it("take init returning nil, message as a refusal", function()
            local errs = errors_of(MINIMAL .. [[
                plugins = { { name = "picky", handler = { init = function(conf) return nil, "no key file" end } } }
            ]])
            assert.same({ "plugins[1]: no key file" }, errs)
        end)

        it("append the always-on plugins found in plugin_dirs, skipping missing ones", function()
            local cfg = assert(load(MINIMAL .. 'plugins = { { name = "auth" } }\n'))
            assert.same({ "auth", "router", "balancer", "provider" }, names(cfg.plugins))
            cfg = assert(load(MINIMAL, { plugin_dirs = {} }))
            assert.same({}, cfg.plugins)
        end)

        it("let a user's entry replace an always-on plugin", function()
            local cfg = assert(load(MINIMAL .. [[
                plugins = { { name = "router", handler = { on_route = function() end } } }
            ]]))
            assert.same({ "router", "balancer", "provider" }, names(cfg.plugins))
            assert.equal(0, cfg.plugins[1].priority)
        end)

        it("resolve route and backend plugin lists", function()
            local cfg = assert(load(MINIMAL .. [[
                routes[1].plugins = { { name = "limiter", limit = 2 } }
                backends.fast.plugins = { { name = "auth", header = "x-key" } }
            ]]))
            assert.same({ limit = 2, ready = true }, cfg.routes[1].plugins[1].conf)
            assert.same({ header = "x-key" }, cfg.backends.fast.plugins[1].conf)
            local errs = errors_of(MINIMAL .. 'routes[1].plugins = { { name = "limiter", limit = 0 } }\n')
            assert.same({ "routes[1].plugins[1].limit: must be >= 1" }, errs)
        end)

        it("switch on cost and budget when a budget is configured", function()
            local cfg = assert(load(MINIMAL .. 'model_budgets = { ["gpt-4o"] = { usd = 5, period = "1d" } }\n'))
            assert.same({ "router", "balancer", "provider", "cost", "budget" }, names(cfg.plugins))
            assert.same({ seconds = 86400 }, cfg.model_budgets["gpt-4o"].period)
        end)
    end)

    describe("on randomly damaged configs", function()
        -- The SPEC example as a plain table, to damage in place.
        local function example()
            local g = setmetatable({ env = function(_, d) return d or "k" end }, { __index = _G })
            local chunk = assert(loadfile("spec/fixtures/config/full.lua"))
            setfenv(chunk, g)
            chunk()
            g.env = nil
            local t = {}
            for k, v in pairs(g) do
                t[k] = v
            end
            return t
        end

        local function nodes(t, out, seen)
            if seen[t] then
                return out
            end
            seen[t] = true
            for k, v in pairs(t) do
                out[#out + 1] = { t, k }
                if type(v) == "table" then
                    nodes(v, out, seen)
                end
            end
            return out
        end

        -- A deep copy to compare with later; NaN (never equal to itself) is written down as text.
        local function snapshot(v, seen)
            if v ~= v then
                return "NaN"
            end
            if type(v) ~= "table" then
                return v
            end
            seen = seen or {}
            if seen[v] then
                return seen[v]
            end
            local out = {}
            seen[v] = out
            for k, x in pairs(v) do
                out[k] = snapshot(x, seen)
            end
            return out
        end

        it("never raise, answer with errors or a config, and leave the input alone", function()
            local pool = { 1, -1, 0, 2.5, "x", "", "10s", "1mo", "/v1", "127.0.0.1:0", true, false,
                           function() end, {}, { 1, 2 }, { a = 1 }, 0 / 0 }
            math.randomseed(20240601)
            write(dir .. "/gateway.lua", "return __moongate_config_spec_input")
            for _ = 1, 300 do
                local t = example()
                local all = nodes(t, {}, {})
                for _ = 1, math.random(1, 3) do
                    local n = all[math.random(#all)]
                    if math.random(4) == 1 then
                        n[1][n[2]] = nil
                    else
                        n[1][n[2]] = pool[math.random(#pool)]
                    end
                end
                local before = snapshot(t)
                rawset(_G, "__moongate_config_spec_input", t)
                local ok, cfg, errs = pcall(config.load, dir .. "/gateway.lua", { plugin_dirs = { FIXTURE_PLUGINS } })
                rawset(_G, "__moongate_config_spec_input", nil)
                assert.is_true(ok, tostring(cfg))
                if cfg == nil then
                    assert.is_table(errs)
                    assert.is_true(#errs > 0)
                    for _, e in ipairs(errs) do
                        assert.is_string(e)
                        assert.is_true(#e > 0)
                    end
                else
                    assert.is_nil(errs)
                end
                assert.same(before, snapshot(t))
            end
        end)
    end)
end)
