// Drives a running gateway with the official OpenAI and Anthropic clients, as
// applications do, and prints one JSON object with what they saw. Used by
// spec/integration/sdk_spec.lua:  node spec/sdk/smoke.mjs PORT
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

const port = process.argv[2];
if (!port) {
  console.error("usage: node smoke.mjs PORT");
  process.exit(2);
}
const opts = { maxRetries: 0, timeout: 10000 };
const oa = new OpenAI({ apiKey: "sk-client", baseURL: `http://127.0.0.1:${port}/v1`, ...opts });
const an = new Anthropic({ apiKey: "sk-ant-client", baseURL: `http://127.0.0.1:${port}`, ...opts });
const out = {};
const messages = [{ role: "user", content: "hi there" }];

async function expectError(fn) {
  try {
    await fn();
    return { raised: false };
  } catch (err) {
    return { raised: true, status: err.status, body: err.error ?? null, name: err.constructor.name };
  }
}

const { data: chat, response } = await oa.chat.completions
  .create({ model: "gpt-4o", messages })
  .withResponse();
out.chat = { text: chat.choices[0].message.content, usage: chat.usage, model: chat.model,
             request_id: response.headers.get("x-request-id"),
             target: response.headers.get("x-moongate-target") };

const stream = await oa.chat.completions.create({ model: "gpt-4o", messages, stream: true,
                                                   stream_options: { include_usage: true } });
let text = "";
let usage = null;
let chunks = 0;
for await (const c of stream) {
  chunks++;
  if (c.choices[0]) text += c.choices[0].delta.content ?? "";
  if (c.usage) usage = c.usage;
}
out.chat_stream = { text, usage, chunks };

const emb = await oa.embeddings.create({ model: "text-embedding-3-small", input: ["one", "two"] });
out.embeddings = { count: emb.data.length, dims: emb.data[0].embedding.length, usage: emb.usage };

const models = await oa.models.list();
out.models = models.data.map((m) => m.id);

out.openai_error = await expectError(() =>
  oa.chat.completions.create({ model: "gpt-4o", messages }, { headers: { "x-mock-fail": "429" } }));

const msg = await an.messages.create({ model: "claude-3-5-haiku-latest", max_tokens: 64, messages });
out.message = { text: msg.content[0].text, usage: msg.usage, stop_reason: msg.stop_reason };

const ms = an.messages.stream({ model: "claude-3-5-haiku-latest", max_tokens: 64, messages });
let streamed = "";
ms.on("text", (t) => { streamed += t; });
const fin = await ms.finalMessage();
out.message_stream = { text: streamed, final_text: fin.content[0].text, usage: fin.usage };

out.anthropic_error = await expectError(() =>
  an.messages.create({ model: "claude-3-5-haiku-latest", max_tokens: 8, messages },
                     { headers: { "x-mock-fail": "529" } }));

const ct = await an.messages.countTokens({ model: "claude-3-5-haiku-latest", messages });
out.count_tokens = ct.input_tokens;

process.stdout.write(JSON.stringify(out) + "\n");
