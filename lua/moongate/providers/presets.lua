-- Provider types as data. `wire` names the protocol codec that talks to the provider
-- (lua/moongate/codec/<wire>.lua); a vendor that speaks OpenAI's protocol is a default base URL
-- and its quirks. `requires` lists the provider options that must be set for that type
-- (config.lua reports each missing one as required).
-- base_url follows each vendor's SDK: OpenAI-style ones end in /v1, Anthropic's and Gemini's do not.
--
-- The fields plugins/provider.lua reads:
--   auth              how the api_key is sent: "bearer" (Authorization: Bearer), "api-key",
--                     "x-api-key", "x-goog-api-key"
--   url               how the upstream URL is built: "openai" (base_url .. path), "azure"
--                     (deployment URLs), "anthropic", "gemini"
--   max_tokens_field  where a translated Anthropic request's max_tokens goes
--   max_tokens        the max_tokens sent when the client gave none (Anthropic requires one)
--   stream_usage      false: do not splice stream_options.include_usage into streamed requests
--                     (the vendor reports usage on its own, or refuses the field)
--   usage_path        where else a streamed chunk's usage may sit (e.g. Groq's x_groq.usage)
--   top_k             the vendor takes top_k (an Anthropic client's top_k goes through)

local _M = { _VERSION = "0.1" }

local function openai_compatible(base_url, quirks)
    local t = { wire = "openai", base_url = base_url, requires = {}, auth = "bearer", url = "openai",
                max_tokens_field = "max_tokens" }
    for k, v in pairs(quirks or {}) do
        t[k] = v
    end
    return t
end

_M.types = {
    -- current OpenAI models take max_completion_tokens (the reasoning ones refuse max_tokens)
    openai = openai_compatible("https://api.openai.com/v1", { max_tokens_field = "max_completion_tokens" }),
    anthropic = { wire = "anthropic", base_url = "https://api.anthropic.com", requires = {},
                  auth = "x-api-key", url = "anthropic", version = "2023-06-01", max_tokens = 4096 },
    -- Azure has no public default host: every resource has its own, and the API version is dated.
    -- The target's model is the deployment name.
    azure = { wire = "openai", base_url = nil, requires = { "base_url", "api_version" },
              auth = "api-key", url = "azure", max_tokens_field = "max_tokens" },
    gemini = { wire = "gemini", base_url = "https://generativelanguage.googleapis.com", requires = {},
               auth = "x-goog-api-key", url = "gemini" },
    -- The in-process fake provider: nothing leaves the gateway.
    mock = { wire = "mock", base_url = nil, requires = {} },

    groq = openai_compatible("https://api.groq.com/openai/v1", { usage_path = { "x_groq", "usage" } }),
    -- Mistral reports usage in its last chunk unasked and refuses parameters it does not know
    mistral = openai_compatible("https://api.mistral.ai/v1", { stream_usage = false }),
    deepseek = openai_compatible("https://api.deepseek.com/v1"),
    together = openai_compatible("https://api.together.xyz/v1", { top_k = true }),
    openrouter = openai_compatible("https://openrouter.ai/api/v1", { top_k = true }),
    ollama = openai_compatible("http://127.0.0.1:11434/v1"),
    vllm = openai_compatible("http://127.0.0.1:8000/v1", { top_k = true }),
}

-- names() -> sorted list of the known provider types (for error messages and docs).
function _M.names()
    local out = {}
    for name in pairs(_M.types) do
        out[#out + 1] = name
    end
    table.sort(out)
    return out
end

return _M
