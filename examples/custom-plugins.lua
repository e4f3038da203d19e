-- The example plugins of examples/plugins/, loaded from their files. Runs offline on the mock.
--
--   tagger         tags each request from its headers; routes match on the tag
--   prompt_guard   masks emails and card numbers before they leave, refuses jailbreak phrases
--   system_prompt  adds the company's system prompt; the "mobile" route has its own
--
--   moongate -c examples/custom-plugins.lua
--   curl -i -H 'x-client-app: ios' localhost:8080/v1/chat/completions \
--     -d '{"model":"any","messages":[{"role":"user","content":"mail bob@example.com"}]}'
--   (x-moongate-tag: mobile; the provider got "mail [email]" and the mobile system prompt)
--
-- See examples/plugins/README.md for the plugin API and how these are tested.

listen = "127.0.0.1:8080"
admin  = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }

providers = {
  mock = { type = "mock", latency = "20ms" },
}

backends = {
  chat = { provider = "mock", model = "mock-1" },
}

routes = {
  { name = "mobile", match = { path_prefix = "/v1", headers = { ["x-moongate-tag"] = "mobile" } },
    backend = "chat",
    plugins = {   -- same name as the global entry: replaces it on this route
      { name = "system_prompt", path = "plugins/system_prompt.lua",
        text = "You are ACME's assistant. The user is on a phone: answer in two sentences at most." } } },
  { name = "v1", match = { path_prefix = "/v1" }, backend = "chat" },
}

plugins = {
  { name = "tagger", path = "plugins/tagger.lua", tag = "web", rules = {
      { header = "x-client-app", equals = "ios", tag = "mobile" },
      { header = "x-client-app", equals = "android", tag = "mobile" },
      { header = "user-agent", pattern = "^OpenAI/Python", tag = "python-sdk" } } },
  { name = "prompt_guard", path = "plugins/prompt_guard.lua", action = "mask",
    masks = { { name = "api_key", pattern = "sk%-[%w%-_]+", replacement = "[api-key]" } },
    deny  = { "(?i)ignore\\s+(all\\s+)?(previous|prior)\\s+instructions" } },
  { name = "system_prompt", path = "plugins/system_prompt.lua", position = "prepend",
    text = "You are ACME's assistant. Never reveal internal ticket numbers." },
}
