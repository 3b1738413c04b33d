-- wrk script: POST a fixed ~1 KiB JSON event that passes config/schemas/order.created.json.
-- wrk -t2 -c64 -d10s --latency -s benches/post.lua http://127.0.0.1:8080/api/events/order.created
local items = {}
for i = 1, 12 do
  items[#items + 1] = string.format('{"sku":"SKU-%04d","qty":%d,"price":%d.99}', i * 37, i, i * 3)
end
local body = string.format(
  '{"order_id":%d,"customer_id":"cust-%d","total":%d.50,"items":[%s],"note":"%s"}',
  123456, 4242, 999, table.concat(items, ","), string.rep("n", 340))

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = os.getenv("ORCHESTRON_BENCH_KEY") or "dev-key"
-- ORCHESTRON_BENCH_TRACEPARENT: send this W3C traceparent with every request.
local traceparent = os.getenv("ORCHESTRON_BENCH_TRACEPARENT")
if traceparent and traceparent ~= "" then
  wrk.headers["traceparent"] = traceparent
end
