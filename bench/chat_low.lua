-- POST /madre/chat with a LOW message: Switch then Hermes, ~9 durable writes.
dofile("bench/report.lua")
wrk.method = "POST"
wrk.body = '{"message":"tell me about the weather in Lisbon"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-VX11-Token"] = os.getenv("VX11_TOKEN")
