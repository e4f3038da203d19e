-- Provider types as data. `wire` names the protocol codec that talks to the provider; a vendor
-- that speaks OpenAI's protocol is only a default base URL. `requires` lists the provider options
-- that must be set for that type (config.lua reports each missing one as required).
-- base_url follows each vendor's SDK: OpenAI-style ones end in /v1, Anthropic's and Gemini's do not.

local _M = { _VERSION = "0.1" }

local function openai_compatible(base_url)
    return { wire = "openai", base_url = base_url, requires = {} }
end

_M.types = {
    openai = openai_compatible("https://api.openai.com/v1"),
    anthropic = { wire = "anthropic", base_url = "https://api.anthropic.com", requires = {} },
    -- Azure has no public default host: every resource has its own, and the API version is dated.
    azure = { wire = "openai", base_url = nil, requires = { "base_url", "api_version" } },
    gemini = { wire = "gemini", base_url = "https://generativelanguage.googleapis.com", requires = {} },
    -- The in-process fake provider: nothing leaves the gateway.
    mock = { wire = "mock", base_url = nil, requires = {} },

    groq = openai_compatible("https://api.groq.com/openai/v1"),
    mistral = openai_compatible("https://api.mistral.ai/v1"),
    deepseek = openai_compatible("https://api.deepseek.com/v1"),
    together = openai_compatible("https://api.together.xyz/v1"),
    openrouter = openai_compatible("https://openrouter.ai/api/v1"),
    ollama = openai_compatible("http://127.0.0.1:11434/v1"),
    vllm = openai_compatible("http://127.0.0.1:8000/v1"),
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
