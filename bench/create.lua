-- wrk script: POSTs a create-user body with an email unique to this run, thread and request.
-- Arguments (after --): <run prefix> <kind>, kind one of person, signup, pb_people, pb_users, or
-- get (a plain GET of the URL, no body: the HTTP round trip alone).
local threads = {}

function setup(thread)
  thread:set("thread_no", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] or "run"
  kind = args[2] or "person"
  counter = 0
end

function request()
  if kind == "get" then
    return wrk.format("GET")
  end
  counter = counter + 1
  local email = string.format("%s-%d-%d@example.com", prefix, thread_no, counter)
  local body
  if kind == "signup" then
    body = '{"email":"' .. email .. '","password":"bench-passphrase-' .. counter .. '"}'
  elseif kind == "pb_users" then
    body = '{"email":"' .. email .. '","password":"bench-passphrase-x","passwordConfirm":"bench-passphrase-x"}'
  else
    body = '{"firstName":"Bench","lastName":"User","email":"' .. email .. '"}'
  end
  return wrk.format("POST", nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
