-- Seeds plans for plans-read with LOW chats, which finish DONE (run.sh
-- bounds it in time).
wrk.method = "POST"
wrk.body = '{"message":"tell me about the weather in Porto"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-VX11-Token"] = os.getenv("VX11_TOKEN")
