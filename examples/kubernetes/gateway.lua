-- gateway.lua for Kubernetes: the text of configmap.yaml's "gateway.lua" key (kept identical by
-- spec/unit/examples_files_spec.lua), mounted at /etc/moongate/gateway.lua.
-- Secrets come from the moongate-secrets Secret as environment variables; REDIS_URL points at
-- the moongate-redis Service, so every replica shares one set of rate limits, budgets and
-- spend totals (without it each replica would count alone: the limit times the replicas).

listen   = "0.0.0.0:8080"
admin    = { listen = "0.0.0.0:9901", token = env("MOONGATE_ADMIN_TOKEN") }
workers  = "auto"                    -- the CPUs of the container's limit
data_dir = "/var/lib/moongate"       -- this replica's ledger
shutdown_timeout = "30s"             -- below the pod's terminationGracePeriodSeconds (45)
access_log = "stdout"

providers = {
  openai    = { type = "openai",    api_key = env("OPENAI_API_KEY") },
  anthropic = { type = "anthropic", api_key = env("ANTHROPIC_API_KEY") },
}

backends = {
  chat = {
    groups = {
      { strategy = "least_busy", targets = {
          { provider = "openai",    model = "gpt-4o-mini" },
          { provider = "anthropic", model = "claude-haiku-4-5" } } },
      { targets = {
          { provider = "openai",    model = "gpt-4o" } } },
    },
    health = {
      unhealthy_condition = "response.code == 429 || response.code >= 500",
      eviction = { duration = "10s", consecutive_failures = 2 },
      active = { interval = "30s", path = "/v1/models", unhealthy_threshold = 3 },
    },
    timeout = { ttfb = "20s", stream_idle = "60s", total = "120s" },
  },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "chat" },
}

-- API keys are made with POST /admin/consumers (stored hashed in Redis and data_dir)
teams = {
  default = { budget = { usd = 500, period = "1mo" } },
}

plugins = {
  { name = "auth" },
  { name = "rate_limit", rules = {
      { name = "per-key-requests", by = "consumer", requests = 1200, window = "1h", burst = 100 },
      { name = "per-team-tokens",  by = "team", tokens = 400000, window = "1m" },
  } },
}

cluster = { redis = env("REDIS_URL"), fail_open = true }
