-- cluster.redis in plain Lua: the Redis URL (moongate.redis.parse_url), the `cluster` options
-- as the config loader checks them, and which keys gw.shared sends to Redis
-- (moongate.shared.class_of). The RESP codec is spec/c/test_redis.c; the client against a real
-- redis-server is spec/integration/cluster_spec.lua.
local redis = require("moongate.redis")
local config = require("moongate.config")
local shared = require("moongate.shared")

describe("redis.parse_url", function()
  local parse = redis.parse_url

  it("reads host, port and database, with the defaults", function()
    assert.same({ host = "127.0.0.1", port = 6379, db = 0 }, parse("redis://127.0.0.1"))
    assert.same({ host = "redis.internal", port = 6380, db = 0 }, parse("redis://redis.internal:6380"))
    assert.same({ host = "r", port = 6379, db = 3 }, parse("redis://r/3"))
    assert.same({ host = "r", port = 1234, db = 15 }, parse("redis://r:1234/15/"))
    assert.same({ host = "r", port = 6379, db = 0 }, parse("REDIS://r/"))
    assert.same({ host = "::1", port = 7000, db = 0 }, parse("redis://[::1]:7000"))
    assert.same({ host = "fe80::1", port = 6379, db = 0 }, parse("redis://[fe80::1]"))
  end)

  it("reads a password, a user and password (ACL), percent-decoded", function()
    assert.same({ host = "h", port = 6379, db = 0, password = "s3cret" }, parse("redis://:s3cret@h"))
    assert.same({ host = "h", port = 6379, db = 0, password = "s3cret" }, parse("redis://s3cret@h"))
    assert.same({ host = "h", port = 6379, db = 2, user = "app", password = "p@ss:w/rd" },
      parse("redis://app:p%40ss%3Aw%2Frd@h/2"))
    -- the last @ ends the user part: an @ in the password need not be escaped
    assert.same({ host = "h", port = 1, db = 0, user = "u", password = "a@b" }, parse("redis://u:a@b@h:1"))
    assert.same({ host = "h", port = 6379, db = 0, user = "u" }, parse("redis://u:@h"))
  end)

  it("refuses what it cannot connect to, saying why", function()
    local function refused(url, pattern)
      local u, err = parse(url)
      assert.is_nil(u, url)
      assert.matches(pattern, err, 1, true)
    end
    refused("rediss://h:6380", "TLS")
    refused("unix:///tmp/redis.sock", "unsupported scheme unix://")
    refused("http://h", "unsupported scheme http://")
    refused("h:6379", "must be a redis:// URL")
    refused("redis://", "no host")
    refused("redis://:pw@", "no host")
    refused("redis://h:0", "port must be 1-65535")
    refused("redis://h:70000", "port must be 1-65535")
    refused("redis://h:", "no port")
    refused("redis://h:ab", "bad host:port")
    refused("redis://h/db1", "database number")
    refused("redis://h/1?timeout=3", "no query")
    refused("redis://[::1", "bad [IPv6]:port")
    refused("redis://bad host", "bad host")
    assert.is_nil(parse(nil))
    assert.is_nil(parse(6379))
  end)

  it("describes an address without its password", function()
    local u = parse("redis://:topsecret@cache:6390/4")
    assert.equal("cache:6390/4", redis.describe(u))
    assert.equal("[::1]:6379", redis.describe(parse("redis://[::1]")))
  end)
end)

describe("the cluster options", function()
  local dir

  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
  end)

  after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  local function load(cluster)
    local path = dir .. "/gateway.lua"
    local f = assert(io.open(path, "w"))
    f:write('listen = { "127.0.0.1:8080" }\nproviders = { m = { type = "mock" } }\n',
      'backends = { b = { provider = "m" } }\nroutes = { { match = { path_prefix = "/v1" }, backend = "b" } }\n',
      "cluster = ", cluster, "\n")
    f:close()
    return config.load(path, { env = function() return nil end })
  end

  it("has defaults, and converts durations", function()
    local cfg = assert(load('{ redis = "redis://127.0.0.1:6379", timeout = "100ms", refresh = "1s" }'))
    local c = redis.options(cfg.cluster)
    assert.equal("redis://127.0.0.1:6379", c.redis)
    assert.is_true(c.fail_open)
    assert.equal(0.1, c.timeout)
    assert.equal(1, c.connect_timeout)
    assert.equal(1, c.refresh)
    assert.equal("moongate:", c.prefix)
    assert.equal(1000000, c.stream_maxlen)
    -- a config without cluster keeps the section as small as it was
    assert.same({ fail_open = true }, assert(load("{}")).cluster)
  end)

  it("leaves cluster mode off when redis is nil (an unset env var)", function()
    local cfg = assert(load('{ redis = env("NO_SUCH_REDIS_URL"), fail_open = false }'))
    assert.is_nil(cfg.cluster.redis)
    assert.is_false(cfg.cluster.fail_open)
  end)

  it("refuses a bad URL or option at load, naming the option", function()
    local _, errs = load('{ redis = "rediss://h" }')
    assert.matches("^cluster%.redis: rediss:// %(TLS%) is not supported", errs[1])
    _, errs = load('{ redis = "redis://h", timeout = 0 }')
    assert.matches("^cluster%.timeout: must be more than 0 seconds", errs[1])
    _, errs = load('{ redis = "redis://h", fail_open = "yes" }')
    assert.matches("^cluster%.fail_open:", errs[1])
    _, errs = load('{ redis = "redis://h", pool = 4 }')
    assert.matches("^cluster%.pool: unknown option", errs[1])
  end)
end)

describe("gw.shared's key classes", function()
  local S, M, L = shared.SHARED, shared.MIRRORED, shared.LOCAL

  it("sends limits, budgets, consumers and plugins' keys to Redis", function()
    assert.equal(S, shared.class_of("rl:global:per-consumer:consumer:requests:60:alice:29000000"))
    assert.equal(S, shared.class_of("budget:team:search:2026-12"))
    assert.equal(S, shared.class_of("consumer:0123abcd"))
    assert.equal(S, shared.class_of("hits"))
    assert.equal(S, shared.class_of("h"))
    assert.equal(S, shared.class_of("hevx|b|t"))        -- not an eviction key
  end)

  it("mirrors evictions, and keeps per-request balancing figures local", function()
    assert.equal(M, shared.class_of("hev|chat|openai/gpt-4o"))
    assert.equal(M, shared.class_of("hwhy|chat|openai/gpt-4o"))
    assert.equal(M, shared.class_of("hej|chat|openai/gpt-4o"))
    for _, k in ipairs({ "brr|chat|1", "bq|chat", "hin|chat|t", "hlat|chat|t", "hok|chat|t",
                         "hbad|chat|t", "hfail|chat|t", "htok|chat|t|29000000", "hprobe|chat|t",
                         "local:mine", "consumers:loaded", "consumers:loading" }) do
      assert.equal(L, shared.class_of(k), k)
    end
  end)
end)

describe("redis.xadd", function()
  it("says so when cluster mode is off", function()
    local ok, err = redis.xadd("ledger", { id = "1" })
    assert.is_nil(ok)
    assert.equal("cluster.redis is off", err)
  end)
end)
