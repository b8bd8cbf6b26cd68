-- GET /madre/plans?limit=20: the newest page of a large plan table.
dofile("bench/report.lua")
wrk.headers["X-VX11-Token"] = os.getenv("VX11_TOKEN")
