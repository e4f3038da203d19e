-- A fake model evicted by unhealthy_condition, with failover to the next. Runs offline: both
-- providers are the in-process mock.
--
-- "fake" answers every request with a 429 (fail = { [429] = 1 }). The first request tries it,
-- sees the 429, and is answered by "steady" (x-moongate-attempts: 2): the client gets a 200.
-- The 429 also makes unhealthy_condition true, which evicts "fake" for 10 s: the requests after
-- it go straight to "steady" (x-moongate-attempts: 1) until the eviction ends and "fake" is tried
-- again (and evicted again, for twice as long, while it keeps failing).
--
--   moongate -c examples/evict-fake-model.lua
--   curl -i localhost:8080/v1/chat/completions -d '{"model":"any","messages":[{"role":"user","content":"hi"}]}'
--   MOONGATE_ADMIN_TOKEN=secret moongate -c examples/evict-fake-model.lua   # then:
--   curl -H "Authorization: Bearer secret" localhost:9901/admin/backends

listen = "127.0.0.1:8080"
admin  = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }

providers = {
  flaky  = { type = "mock", fail = { [429] = 1 } },           -- a provider out of quota
  steady = { type = "mock", latency = "20ms", text = "Answered by the steady model." },
}

backends = {
  chat = {
    groups = {
      { targets = { { provider = "flaky",  model = "fake-model", name = "fake" } } },
      { targets = { { provider = "steady", model = "mock-1",     name = "steady" } } },
    },
    health = {
      unhealthy_condition = "response.code == 404 || response.code == 429",
      eviction = { duration = "10s", consecutive_failures = 1, max_duration = "5m" },
      panic = true,
    },
  },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "chat" },
}
