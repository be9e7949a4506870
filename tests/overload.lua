-- wrk script for tests/test_overload.py: POST /predict on every connection, count answers by status, and count the
-- 503s that lack a JSON body or a Retry-After header; print one RESULT line of JSON at the end.
local threads = {}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("OVERLOAD_BODY")
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; bad503 = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and (headers["Retry-After"] == nil or string.sub(body, 1, 1) ~= "{") then bad503 = bad503 + 1 end
end
function done(summary, latency, requests)
  local total, bad = {}, 0
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("statuses")) do total[s] = (total[s] or 0) + n end
    bad = bad + t:get("bad503")
  end
  local parts = {}
  for s, n in pairs(total) do table.insert(parts, string.format('"%d": %d', s, n)) end
  local e = summary.errors
  io.write(string.format('RESULT {"statuses": {%s}, "bad_503": %d, "requests": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "p99_ms": %.1f}\n',
    table.concat(parts, ", "), bad, summary.requests, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(99) / 1000))
end
