-- wrk -s: POST a small chat completion (the reload-under-load spec)
wrk.method = "POST"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
