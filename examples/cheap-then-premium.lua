-- A cheap group load-balanced across OpenAI and Anthropic, falling back to a premium group.
--
-- Requests are shared between gpt-4o-mini and claude-haiku-4-5 (smooth weighted round robin, 1:1).
-- A model that answers 429 or 5xx twice in a row is evicted for 15 s and the other takes its
-- share; when both cheap models fail a request, it goes to the premium group (the faster of
-- gpt-4o and claude-sonnet-4-5, by time to first byte). Clients may speak OpenAI
-- (/v1/chat/completions) or Anthropic (/v1/messages): moongate translates to each target's format.
--
--   OPENAI_API_KEY=sk-... ANTHROPIC_API_KEY=sk-ant-... moongate -c examples/cheap-then-premium.lua

listen = "127.0.0.1:8080"
admin  = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }

providers = {
  openai    = { type = "openai",    api_key = env("OPENAI_API_KEY") },
  anthropic = { type = "anthropic", api_key = env("ANTHROPIC_API_KEY") },
}

backends = {
  chat = {
    groups = {
      { strategy = "round_robin", targets = {
          { provider = "openai",    model = "gpt-4o-mini",      name = "cheap-openai" },
          { provider = "anthropic", model = "claude-haiku-4-5", name = "cheap-anthropic" } } },
      { strategy = "latency", targets = {
          { provider = "openai",    model = "gpt-4o",            name = "premium-openai" },
          { provider = "anthropic", model = "claude-sonnet-4-5", name = "premium-anthropic" } } },
    },
    health = {
      unhealthy_condition = "response.code == 429 || response.code >= 500",
      eviction = { duration = "15s", consecutive_failures = 2 },
      panic = true,             -- all four evicted: still try the one whose eviction ends first
    },
    retry   = { attempts = 4 },  -- both cheap models, then both premium ones
    timeout = { ttfb = "20s", total = "120s" },
  },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "chat" },
}

plugins = {
  { name = "cost" },            -- x-moongate-cost-usd, moongate_request_cost_dollars, the ledger
}
