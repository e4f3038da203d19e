-- Three OpenAI models in priority order.
--
-- Every request goes to gpt-4o first. When it fails before anything reached the client (a 429, a
-- 5xx, a timeout, a connection failure), the same request goes to gpt-4o-mini, and then to
-- gpt-4.1-nano. The client sees one answer; x-moongate-target names the model that gave it and
-- x-moongate-attempts how many were tried.
--
--   OPENAI_API_KEY=sk-... moongate -c examples/priority-failover.lua
--   curl localhost:8080/v1/chat/completions \
--     -d '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'

listen = "127.0.0.1:8080"
admin  = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }

providers = {
  openai = { type = "openai", api_key = env("OPENAI_API_KEY") },
}

backends = {
  chat = {
    groups = {                                   -- first group first
      { targets = { { provider = "openai", model = "gpt-4o" } } },
      { targets = { { provider = "openai", model = "gpt-4o-mini" } } },
      { targets = { { provider = "openai", model = "gpt-4.1-nano" } } },
    },
    retry   = { attempts = 3, on = { 429, "5xx", "connect-failure", "timeout" }, backoff = "100ms" },
    timeout = { per_try = "60s", ttfb = "20s", total = "120s" },
    -- three failures in a row take a model out for 30 s (doubling while it keeps failing), so
    -- requests stop paying for the attempt that is bound to fail
    health  = { eviction = { duration = "30s", consecutive_failures = 3 } },
  },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "chat" },
}
