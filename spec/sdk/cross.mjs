// Drives a gateway whose targets speak the *other* format (and fail, and limit)
// with the official clients, as applications do: node spec/sdk/cross.mjs PORT
// Prints one JSON object with what the clients saw (spec/integration/sdk_cross_spec.lua).
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

const port = process.argv[2];
const opts = { maxRetries: 0, timeout: 10000 };
const base = `http://127.0.0.1:${port}`;
const client = (key) => ({
  oa: new OpenAI({ apiKey: key, baseURL: `${base}/v1`, ...opts }),
  an: new Anthropic({ apiKey: key, baseURL: base, ...opts }),
});
const alice = client("sk-alice-key-0123456789");
const bob = client("sk-bob-key-0123456789");
const nobody = client("sk-wrong-key");
const out = {};
const messages = [{ role: "user", content: "hi there" }];

const header = (h, n) => (h == null ? null : typeof h.get === "function" ? h.get(n) : h[n] ?? null);
async function expectError(fn) {
  try {
    await fn();
    return { raised: false };
  } catch (err) {
    return {
      raised: true, name: err.constructor.name, status: err.status ?? null, body: err.error ?? null,
      retry_after: header(err.headers, "retry-after"),
      limit: header(err.headers, "x-ratelimit-limit-requests"),
      remaining: header(err.headers, "x-ratelimit-remaining-requests"),
    };
  }
}

// OpenAI client, Anthropic target (model "to-anthropic" routes there)
{
  const { data, response } = await alice.oa.chat.completions
    .create({ model: "to-anthropic", messages, max_tokens: 100 }).withResponse();
  out.oa_to_an = { text: data.choices[0].message.content, finish: data.choices[0].finish_reason,
                   usage: data.usage, object: data.object, target: response.headers.get("x-moongate-target") };
  const stream = await alice.oa.chat.completions.create({ model: "to-anthropic", messages, stream: true,
    stream_options: { include_usage: true } });
  let text = "", usage = null, finish = null;
  for await (const c of stream) {
    if (c.choices[0]) { text += c.choices[0].delta.content ?? ""; finish = c.choices[0].finish_reason ?? finish; }
    if (c.usage) usage = c.usage;
  }
  out.oa_to_an_stream = { text, usage, finish };
}

// Anthropic client, OpenAI target
{
  const msg = await alice.an.messages.create({ model: "to-openai", max_tokens: 64, messages });
  out.an_to_oa = { text: msg.content[0].text, stop: msg.stop_reason, usage: msg.usage, type: msg.type };
  const ms = alice.an.messages.stream({ model: "to-openai", max_tokens: 64, messages });
  let streamed = "";
  ms.on("text", (t) => { streamed += t; });
  const fin = await ms.finalMessage();
  out.an_to_oa_stream = { text: streamed, final: fin.content[0].text, usage: fin.usage, stop: fin.stop_reason };
}

// failover: the first group answers 429, the client sees one clean answer
{
  const { data, response } = await alice.oa.chat.completions
    .create({ model: "failover", messages }).withResponse();
  out.failover = { text: data.choices[0].message.content, target: response.headers.get("x-moongate-target"),
                   attempts: response.headers.get("x-moongate-attempts") };
}

// keys: wrong key in both formats
out.oa_bad_key = await expectError(() => nobody.oa.chat.completions.create({ model: "to-openai", messages }));
out.an_bad_key = await expectError(() =>
  nobody.an.messages.create({ model: "to-openai", max_tokens: 8, messages }));

// bob may make 2 requests per window: the third is the SDK's RateLimitError
out.bob_ok = [];
for (let i = 0; i < 2; i++) {
  const r = await bob.oa.chat.completions.create({ model: "limited", messages });
  out.bob_ok.push(r.choices[0].message.content.length > 0);
}
out.bob_limited = await expectError(() => bob.oa.chat.completions.create({ model: "limited", messages }));
out.bob_limited_anthropic = await expectError(() =>
  bob.an.messages.create({ model: "limited", max_tokens: 8, messages }));

process.stdout.write(JSON.stringify(out) + "\n");
