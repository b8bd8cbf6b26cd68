-- Seeds plans for plans-read with LOW chats (run.sh bounds it in time).
wrk.method = "POST"
wrk.body = '{"message":"seed plan for the read benchmark"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-VX11-Token"] = os.getenv("VX11_TOKEN")
