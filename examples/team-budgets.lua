-- Per-team budgets and token limits.
--
-- Every request needs an API key (auth). Each key belongs to a consumer and a team:
--   - team "search" may spend $1000 a month (hard: a stream that crosses it is ended), and
--     200,000 tokens a minute across all its keys;
--   - team "research" $200 a month and 50,000 tokens a minute;
--   - every consumer at most 600 requests an hour (with a burst of 60);
--   - gpt-4o at most $50 a day, whoever asks.
-- A request over a rate limit gets 429 with Retry-After and x-ratelimit-* headers; over a budget,
-- 429 with code insufficient_quota. GET /admin/limits?consumer=alice shows the counters,
-- GET /admin/costs?group_by=team what was spent.
--
-- Keys come from the environment (a consumer whose variable is unset is left out), or are made at
-- run time, shown once:
--   curl -H "Authorization: Bearer $MOONGATE_ADMIN_TOKEN" localhost:9901/admin/consumers \
--     -d '{"name":"carol","team":"research","budget":{"usd":20,"period":"1mo"}}'
--
--   OPENAI_API_KEY=sk-... ALICE_KEY=sk-alice-... MOONGATE_ADMIN_TOKEN=... moongate -c examples/team-budgets.lua

listen   = "127.0.0.1:8080"
admin    = { listen = "127.0.0.1:9901", token = env("MOONGATE_ADMIN_TOKEN") }
data_dir = "./data"          -- the ledger and the consumers made at run time

providers = {
  openai = { type = "openai", api_key = env("OPENAI_API_KEY") },
}

backends = {
  -- model = false: the client's own model goes upstream, so each key's `models` list decides
  chat = { provider = "openai", model = false },
}

routes = {
  { name = "v1", match = { path_prefix = "/v1" }, backend = "chat" },
}

teams = {
  search   = { budget = { usd = 1000, period = "1mo", hard = true } },
  research = { budget = { usd = 200,  period = "1mo" } },
}

model_budgets = {
  ["gpt-4o"] = { usd = 50, period = "1d" },
}

local people = {
  { name = "alice", key_env = "ALICE_KEY", team = "search",
    budget = { usd = 100, period = "1mo" }, models = { "gpt-4o", "gpt-4o-mini" } },
  { name = "bob",   key_env = "BOB_KEY",   team = "research", models = "gpt-4o-mini" },
}
consumers = {}
for _, p in ipairs(people) do
  local key = env(p.key_env)
  if key then
    consumers[#consumers + 1] = { name = p.name, key = key, team = p.team, budget = p.budget, models = p.models }
  end
end

plugins = {
  { name = "auth" },
  { name = "rate_limit", rules = {
      { name = "search-tokens",   by = "team", tokens = 200000, window = "1m",
        when = "consumer.team == 'search'" },
      { name = "research-tokens", by = "team", tokens = 50000, window = "1m",
        when = "consumer.team == 'research'" },
      { name = "per-key",         by = "consumer", requests = 600, window = "1h", burst = 60 },
  } },
  -- budget and cost switch themselves on because budgets are configured
}
