-- GET /health: what this machine gives an actix-web endpoint that does nothing.
dofile("bench/report.lua")
