-- Gateway quotas: check (and spend) the hourly and daily windows of one (org, uapk_id) in one
-- atomic step, and optionally mark an override token used in the same step.
--
-- KEYS[1]  base key "bq:{<org>:<uapk>}". Every key the script touches starts with it, so all
--          share its hash tag (one Redis Cluster slot): "<base>:h:<hour start epoch>",
--          "<base>:d:<day start epoch>".
-- KEYS[2]  (optional) override marker "bq:{<org>:<uapk>}:ovr:<jti>".
-- ARGV[1]  "spend" (execute) or "check" (evaluate, escalations: read-only).
-- ARGV[2]  hour limit.  ARGV[3]  day limit.
-- ARGV[4]  override token expiry in epoch milliseconds ("" without KEYS[2]).
-- ARGV[5]  test-only clock in epoch milliseconds; "" in production = Redis TIME.
-- ARGV[6]  (optional) the head of the decision's audit event, and ARGV[7..10] the tail for
--          each status 0..3 (store/quotas.py QuotaAudit): head .. tail of the returned status is
--          the whole event (JSON, built by the gateway from the settled decision), XADDed in
--          this same step to the LAST key (the audit stream) as field 'e'. An empty tail: that
--          outcome is not carried (the gateway records it). Nothing here reads the event.
-- ARGV[11], ARGV[12]  (with a tail for status 1, 2) the hour / day window reset, epoch seconds,
--          that the gateway's clock settled that denial with. A window denial says when its
--          window resets and how long to wait: its tail holds the marker @retry_after@, which
--          this script replaces with the seconds left, counted from its own clock exactly as
--          store/quotas.py QuotaResult.retry_after counts them. When this clock's window is
--          not the one the gateway assumed (clock skew across a boundary), the event is not
--          carried (5th return value 0) and the gateway records the settled one itself.
--
-- Windows are fixed and UTC-aligned (epoch seconds are UTC). Returns
-- {status, hour_used, day_used, now_ms, carried} (carried: 1 when the event was XADDed) with status 0 = admitted (and spent when "spend"),
-- 1 = hour window exhausted, 2 = day window exhausted, 3 = override token already used.
-- Nothing is written unless status is 0 and the mode is "spend".
local now_ms
if ARGV[5] ~= nil and ARGV[5] ~= '' then
  now_ms = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now_s = math.floor(now_ms / 1000)
local hour_start = now_s - (now_s % 3600)
local day_start = now_s - (now_s % 86400)
local hkey = KEYS[1] .. ':h:' .. string.format('%d', hour_start)
local dkey = KEYS[1] .. ':d:' .. string.format('%d', day_start)
local hlimit = tonumber(ARGV[2])
local dlimit = tonumber(ARGV[3])
local hused = tonumber(redis.call('GET', hkey) or '0')
local dused = tonumber(redis.call('GET', dkey) or '0')
local function done(status)
  local tail = ARGV[7 + status]
  if tail == nil or tail == '' then
    return {status, hused, dused, now_ms, 0}
  end
  if status == 1 or status == 2 then
    local reset = day_start + 86400
    if status == 1 then reset = hour_start + 3600 end
    if tonumber(ARGV[10 + status]) ~= reset then
      return {status, hused, dused, now_ms, 0}
    end
    local retry = math.ceil((reset * 1000 - now_ms) / 1000)
    if retry < 1 then retry = 1 end
    local i, j = string.find(tail, '@retry_after@', 1, true)
    if i == nil then
      return {status, hused, dused, now_ms, 0}
    end
    tail = string.sub(tail, 1, i - 1) .. string.format('%d', retry) .. string.sub(tail, j + 1)
  end
  redis.call('XADD', KEYS[#KEYS], '*', 'e', ARGV[6] .. tail)
  return {status, hused, dused, now_ms, 1}
end
local ovr = nil  -- the override marker is KEYS[2] only when an expiry comes with it
if ARGV[4] ~= nil and ARGV[4] ~= '' then ovr = KEYS[2] end

if ovr ~= nil and redis.call('EXISTS', ovr) == 1 then
  return done(3)
end
if dused >= dlimit then
  return done(2)
end
if hused >= hlimit then
  return done(1)
end
if ARGV[1] == 'spend' then
  hused = redis.call('INCR', hkey)
  dused = redis.call('INCR', dkey)
  -- Keep each window a minute past its end (clock skew between Redis and readers).
  redis.call('EXPIRE', hkey, hour_start + 3600 - now_s + 60)
  redis.call('EXPIRE', dkey, day_start + 86400 - now_s + 60)
  if ovr ~= nil then
    -- Until the token's expiry, plus a minute for clock skew between this Redis and the
    -- gateway that checks the expiry (a marker gone too early would allow a replay).
    local px = tonumber(ARGV[4]) - now_ms + 60000
    if px < 60000 then px = 60000 end
    redis.call('SET', ovr, '1', 'NX', 'PX', string.format('%d', px))
  end
end
return done(0)
