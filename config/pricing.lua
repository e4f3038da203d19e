-- Model prices for the cost plugin (and the budget plugin's estimates): USD per 1M tokens.
--
--   input         prompt tokens
--   output        completion tokens (reasoning tokens included, as the providers bill them)
--   cached_input  prompt tokens read from the provider's prompt cache (default: the input price)
--
-- Each vendor section names the public page the prices come from and the date they were read
-- (`checked`); an entry may carry its own `checked`/`note`. These were written down from the
-- vendors' public price pages as the author knew them on that date — prices change: check the
-- source before relying on them, and override per target in gateway.lua with
-- `prices = { input = ..., output = ..., cached_input = ... }`.
--
-- Matching (moongate.pricing): the target's model, else the client's; exact name first, then the
-- longest entry that is a prefix followed by "-", "@" or ":" (so "gpt-4o-2024-08-06" is priced as
-- "gpt-4o" and "claude-3-5-haiku-latest" as "claude-3-5-haiku"), also after dropping a "vendor/"
-- prefix ("openai/gpt-4o"). Not covered: long-context surcharges (Gemini above 200K prompt tokens,
-- Claude Sonnet above 200K), Anthropic's cache-write premium, batch and flex discounts, audio and
-- image tokens.
return {
  openai = {
    source = "https://openai.com/api/pricing/",
    checked = "2025-10-01",
    models = {
      ["gpt-5"]             = { input = 1.25,  output = 10.00, cached_input = 0.125 },
      ["gpt-5-mini"]        = { input = 0.25,  output = 2.00,  cached_input = 0.025 },
      ["gpt-5-nano"]        = { input = 0.05,  output = 0.40,  cached_input = 0.005 },
      ["gpt-5-chat-latest"] = { input = 1.25,  output = 10.00, cached_input = 0.125 },
      ["gpt-4.1"]           = { input = 2.00,  output = 8.00,  cached_input = 0.50 },
      ["gpt-4.1-mini"]      = { input = 0.40,  output = 1.60,  cached_input = 0.10 },
      ["gpt-4.1-nano"]      = { input = 0.10,  output = 0.40,  cached_input = 0.025 },
      ["gpt-4o"]            = { input = 2.50,  output = 10.00, cached_input = 1.25 },
      ["gpt-4o-2024-05-13"] = { input = 5.00,  output = 15.00 },
      ["gpt-4o-mini"]       = { input = 0.15,  output = 0.60,  cached_input = 0.075 },
      ["o1"]                = { input = 15.00, output = 60.00, cached_input = 7.50 },
      ["o1-mini"]           = { input = 1.10,  output = 4.40,  cached_input = 0.55 },
      ["o3"]                = { input = 2.00,  output = 8.00,  cached_input = 0.50 },
      ["o3-mini"]           = { input = 1.10,  output = 4.40,  cached_input = 0.55 },
      ["o4-mini"]           = { input = 1.10,  output = 4.40,  cached_input = 0.275 },
      ["gpt-4-turbo"]       = { input = 10.00, output = 30.00 },
      ["gpt-3.5-turbo"]     = { input = 0.50,  output = 1.50 },
      ["text-embedding-3-small"] = { input = 0.02, output = 0 },
      ["text-embedding-3-large"] = { input = 0.13, output = 0 },
      ["text-embedding-ada-002"] = { input = 0.10, output = 0 },
    },
  },

  anthropic = {
    source = "https://www.anthropic.com/pricing#api",
    checked = "2025-11-25",
    models = {
      -- cached_input: cache reads (0.1x input); cache writes (1.25x) are not priced separately
      ["claude-opus-4-5"]   = { input = 5.00,  output = 25.00, cached_input = 0.50 },
      ["claude-opus-4-1"]   = { input = 15.00, output = 75.00, cached_input = 1.50 },
      ["claude-opus-4"]     = { input = 15.00, output = 75.00, cached_input = 1.50 },
      ["claude-sonnet-4-5"] = { input = 3.00,  output = 15.00, cached_input = 0.30 },
      ["claude-sonnet-4"]   = { input = 3.00,  output = 15.00, cached_input = 0.30 },
      ["claude-haiku-4-5"]  = { input = 1.00,  output = 5.00,  cached_input = 0.10 },
      ["claude-3-7-sonnet"] = { input = 3.00,  output = 15.00, cached_input = 0.30 },
      ["claude-3-5-sonnet"] = { input = 3.00,  output = 15.00, cached_input = 0.30 },
      ["claude-3-5-haiku"]  = { input = 0.80,  output = 4.00,  cached_input = 0.08 },
      ["claude-3-opus"]     = { input = 15.00, output = 75.00, cached_input = 1.50 },
      ["claude-3-haiku"]    = { input = 0.25,  output = 1.25,  cached_input = 0.03 },
    },
  },

  google = {
    source = "https://ai.google.dev/gemini-api/docs/pricing",
    checked = "2025-09-01",
    models = {
      -- prompts up to 200K tokens (2.5 Pro doubles its input price above that)
      ["gemini-2.5-pro"]        = { input = 1.25,  output = 10.00, cached_input = 0.31 },
      ["gemini-2.5-flash"]      = { input = 0.30,  output = 2.50,  cached_input = 0.075 },
      ["gemini-2.5-flash-lite"] = { input = 0.10,  output = 0.40,  cached_input = 0.025 },
      ["gemini-2.0-flash"]      = { input = 0.10,  output = 0.40,  cached_input = 0.025 },
      ["gemini-2.0-flash-lite"] = { input = 0.075, output = 0.30 },
      ["gemini-1.5-pro"]        = { input = 1.25,  output = 5.00,  cached_input = 0.3125 },
      ["gemini-1.5-flash"]      = { input = 0.075, output = 0.30,  cached_input = 0.01875 },
      ["gemini-embedding-001"]  = { input = 0.15,  output = 0 },
    },
  },

  mistral = {
    source = "https://mistral.ai/pricing#api-pricing",
    checked = "2025-09-01",
    models = {
      ["mistral-large"]     = { input = 2.00, output = 6.00 },
      ["mistral-medium"]    = { input = 0.40, output = 2.00 },
      ["mistral-small"]     = { input = 0.10, output = 0.30 },
      ["magistral-medium"]  = { input = 2.00, output = 5.00 },
      ["magistral-small"]   = { input = 0.50, output = 1.50 },
      ["codestral"]         = { input = 0.30, output = 0.90 },
      ["devstral-medium"]   = { input = 0.40, output = 2.00 },
      ["devstral-small"]    = { input = 0.10, output = 0.30 },
      ["pixtral-large"]     = { input = 2.00, output = 6.00 },
      ["ministral-8b"]      = { input = 0.10, output = 0.10 },
      ["ministral-3b"]      = { input = 0.04, output = 0.04 },
      ["open-mistral-nemo"] = { input = 0.15, output = 0.15 },
      ["mistral-embed"]     = { input = 0.10, output = 0 },
    },
  },

  deepseek = {
    source = "https://api-docs.deepseek.com/quick_start/pricing",
    checked = "2025-09-29",
    models = {
      -- DeepSeek-V3.2-Exp behind both names; cached_input = "cache hit" price
      ["deepseek-chat"]     = { input = 0.28, output = 0.42, cached_input = 0.028 },
      ["deepseek-reasoner"] = { input = 0.28, output = 0.42, cached_input = 0.028 },
    },
  },
}
