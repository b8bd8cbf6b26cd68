-- 70 % LOW chats, 20 % audio (Shub), 10 % HIGH (answered WAITING).
dofile("bench/report.lua")
local headers = {
  ["Content-Type"] = "application/json",
  ["X-VX11-Token"] = os.getenv("VX11_TOKEN"),
}
local bodies = {
  low = '{"message":"tell me about the weather in Lisbon"}',
  audio = '{"message":"mix these 3 stems and master the track"}',
  high = '{"message":"delete all data"}',
}
math.randomseed(os.time())
request = function()
  local r = math.random(100)
  local body = bodies.low
  if r > 90 then body = bodies.high elseif r > 70 then body = bodies.audio end
  return wrk.format("POST", "/madre/chat", headers, body)
end
