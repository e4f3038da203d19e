-- The default moongate config: listens on 127.0.0.1:8080 and sends every
-- /v1 request to OpenAI when OPENAI_API_KEY is set, and to the built-in mock
-- provider otherwise (so it works offline). See SPEC.md §2 for every option.

listen = { "127.0.0.1:8080" }
admin  = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }
data_dir = "../data"

providers = {
  mock = { type = "mock", latency = "20ms" },
  openai = env("OPENAI_API_KEY") and { type = "openai", api_key = env("OPENAI_API_KEY") } or nil,
}

backends = {
  -- model = false: the client's own model name goes upstream
  default = env("OPENAI_API_KEY") and { provider = "openai", model = false }
                                   or { provider = "mock", model = false },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "default" },
}
