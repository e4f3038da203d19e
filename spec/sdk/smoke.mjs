// Drives a running gateway with the official OpenAI and Anthropic clients, as
// applications do, and prints one JSON object with what they saw. Used by
// spec/integration/sdk_spec.lua:  node spec/sdk/smoke.mjs PORT
// Any unexpected exception (a call that should succeed but raised) ends the
// process with a non-zero status and the stack on stderr.
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { readFileSync } from "node:fs";

const port = process.argv[2];
if (!/^\d+$/.test(port ?? "")) {
  console.error("usage: node smoke.mjs PORT");
  process.exit(2);
}
const opts = { maxRetries: 0, timeout: 10000 };
const oa = new OpenAI({ apiKey: "sk-client", baseURL: `http://127.0.0.1:${port}/v1`, ...opts });
const an = new Anthropic({ apiKey: "sk-ant-client", baseURL: `http://127.0.0.1:${port}`, ...opts });
const installed = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;
const out = { sdk: { openai: installed("openai"), anthropic: installed("@anthropic-ai/sdk") } };
const messages = [{ role: "user", content: "hi there" }];
const CLAUDE = "claude-3-5-haiku-latest";

const header = (headers, name) =>
  headers == null ? null
    : typeof headers.get === "function" ? headers.get(name)
    : headers[name] ?? null;

// A call that must fail: what the SDK raised, as a user would inspect it.
async function expectError(fn) {
  try {
    await fn();
    return { raised: false };
  } catch (err) {
    return {
      raised: true,
      name: err.constructor.name,
      is_api_error: err instanceof OpenAI.APIError || err instanceof Anthropic.APIError,
      status: err.status ?? null,
      body: err.error ?? null,
      request_id: header(err.headers, "x-request-id"),
      retry_after: header(err.headers, "retry-after"),
    };
  }
}

// OpenAI: chat completion, with the raw response for its headers.
{
  const { data: chat, response } = await oa.chat.completions
    .create({ model: "gpt-4o", messages })
    .withResponse();
  out.chat = {
    text: chat.choices[0].message.content,
    finish_reason: chat.choices[0].finish_reason,
    usage: chat.usage,
    model: chat.model,
    request_id: response.headers.get("x-request-id"),
    sdk_request_id: chat._request_id ?? null,
    target: response.headers.get("x-moongate-target"),
  };
}

// OpenAI: the client's own x-request-id comes back.
{
  const { response } = await oa.chat.completions
    .create({ model: "gpt-4o", messages }, { headers: { "x-request-id": "client-chosen-id-1" } })
    .withResponse();
  out.chat_own_id = response.headers.get("x-request-id");
}

// OpenAI: streamed chat completion with the usage chunk.
{
  const { data: stream, response } = await oa.chat.completions
    .create({ model: "gpt-4o", messages, stream: true, stream_options: { include_usage: true } })
    .withResponse();
  let text = "";
  let usage = null;
  let chunks = 0;
  let finish = null;
  for await (const c of stream) {
    chunks++;
    const choice = c.choices[0];
    if (choice) {
      text += choice.delta.content ?? "";
      finish = choice.finish_reason ?? finish;
    }
    if (c.usage) usage = c.usage;
  }
  out.chat_stream = { text, usage, chunks, finish_reason: finish,
                      request_id: response.headers.get("x-request-id") };
}

// OpenAI: embeddings (the SDK asks for base64 and decodes it) and the model list.
{
  const emb = await oa.embeddings.create({ model: "text-embedding-3-small", input: ["one", "two"] });
  out.embeddings = {
    count: emb.data.length,
    dims: emb.data[0].embedding.length,
    numeric: emb.data.every((d) => d.embedding.every((x) => typeof x === "number" && Number.isFinite(x))),
    usage: emb.usage,
  };
  const models = await oa.models.list();
  out.models = models.data.map((m) => m.id);
}

// OpenAI: a provider's 429, plain and streamed (nothing sent yet, so the SDK raises).
out.openai_error = await expectError(() =>
  oa.chat.completions.create({ model: "gpt-4o", messages }, { headers: { "x-mock-fail": "429" } }));
out.openai_stream_error = await expectError(async () => {
  const s = await oa.chat.completions.create({ model: "gpt-4o", messages, stream: true },
                                             { headers: { "x-mock-fail": "429" } });
  for await (const _ of s) { /* drain */ }
});

// Anthropic: message, with the raw response for its headers.
{
  const { data: msg, response } = await an.messages
    .create({ model: CLAUDE, max_tokens: 64, messages })
    .withResponse();
  out.message = { text: msg.content[0].text, usage: msg.usage, stop_reason: msg.stop_reason,
                  request_id: response.headers.get("x-request-id"),
                  sdk_request_id: msg._request_id ?? null };
}

// Anthropic: streamed message through the SDK's helper.
{
  const ms = an.messages.stream({ model: CLAUDE, max_tokens: 64, messages });
  let streamed = "";
  ms.on("text", (t) => { streamed += t; });
  const fin = await ms.finalMessage();
  out.message_stream = { text: streamed, final_text: fin.content[0].text, usage: fin.usage,
                         stop_reason: fin.stop_reason };
}

// Anthropic: an overloaded provider.
out.anthropic_error = await expectError(() =>
  an.messages.create({ model: CLAUDE, max_tokens: 8, messages },
                     { headers: { "x-mock-fail": "529" } }));

// Anthropic: count_tokens and the model list in Anthropic's format.
{
  const ct = await an.messages.countTokens({ model: CLAUDE, messages });
  out.count_tokens = ct.input_tokens;
  const page = await an.models.list();
  out.anthropic_models = page.data.map((m) => ({ id: m.id, type: m.type }));
}

process.stdout.write(JSON.stringify(out) + "\n");
