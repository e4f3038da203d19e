-- Header tiers with a 90/10 canary.
--
--   x-model-tier: fast      -> gpt-4o-mini
--   x-model-tier: quality   -> gpt-4o (falling back to gpt-4o-mini)
--   anything else           -> the "chat" backend: 90 % gpt-4o-mini, 10 % gpt-4.1-mini (the
--                              canary). The split is exact over every 100 requests, across all
--                              workers. Drain the canary with
--                              POST /admin/backends/chat/targets/canary/evict
--
--   OPENAI_API_KEY=sk-... moongate -c examples/tiers-canary.lua
--   curl -H 'x-model-tier: quality' localhost:8080/v1/chat/completions -d '{"messages":[...]}'

listen = "127.0.0.1:8080"
admin  = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }

providers = {
  openai = { type = "openai", api_key = env("OPENAI_API_KEY") },
}

backends = {
  fast    = { provider = "openai", model = "gpt-4o-mini" },
  quality = { groups = {
      { targets = { { provider = "openai", model = "gpt-4o" } } },
      { targets = { { provider = "openai", model = "gpt-4o-mini" } } } } },
  chat    = { targets = {
      { provider = "openai", model = "gpt-4o-mini",  weight = 90, name = "stable" },
      { provider = "openai", model = "gpt-4.1-mini", weight = 10, name = "canary" } } },
}

routes = {
  { name = "fast",    match = { path = "/v1/chat/completions", headers = { ["x-model-tier"] = "fast" } },
    backend = "fast" },
  { name = "quality", match = { path = "/v1/chat/completions",
                                when = "request.headers['x-model-tier'] == 'quality'" },
    backend = "quality" },
  { name = "default", match = { path_prefix = "/v1" }, backend = "chat" },
}
