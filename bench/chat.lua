-- wrk script: POST a realistic (~400-byte) OpenAI chat completion request.
-- The request is static, so wrk builds it once per thread (no per-request Lua cost).
-- bench/run.sh also extracts the body from the `wrk.body` line below for its curl sanity check:
-- keep it on one line.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client-0123456789abcdef"
wrk.headers["User-Agent"] = "OpenAI/Python 1.54.0"
wrk.body = [[{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant that answers questions about distributed systems."},{"role":"user","content":"In two sentences: why does a reverse proxy keep upstream connections alive, and what happens to tail latency when it does not?"}],"temperature":0.2,"top_p":1,"max_tokens":128,"n":1,"stream":false,"user":"bench-user-42"}]]
