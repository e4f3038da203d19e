-- The container image's config (/etc/moongate/gateway.lua; see Dockerfile and docs/deploy.md).
-- Mount your own over it: docker run -v $PWD/gateway.lua:/etc/moongate/gateway.lua:ro ...
--
-- Without OPENAI_API_KEY every /v1 request is answered by the built-in mock provider, so a fresh
-- container works offline; with it, requests go to OpenAI (the client's model name unchanged).

listen   = "0.0.0.0:8080"
admin    = { listen = "0.0.0.0:9901", token = env("MOONGATE_ADMIN_TOKEN") }
data_dir = "/var/lib/moongate"          -- the image's volume
access_log = "stdout"

local openai_key = env("OPENAI_API_KEY")

providers = {
  mock   = { type = "mock", latency = "20ms" },
  openai = openai_key and { type = "openai", api_key = openai_key } or nil,
}

backends = {
  default = { provider = openai_key and "openai" or "mock", model = false },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "default" },
}
