"""The Lua scripts of the shared limits (app/scheduler/shared_limits.py): each changes one
limit's keys atomically, on Redis's clock."""

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: slots, active, state, waitq, waitexp, seq
# ARGV: lease_ms, member, worker, seed_limit, seed_slow, fixed capacity (0: adaptive),
#       waiter_ttl_ms
ACQUIRE = (
    _NOW_MS
    + """
local slots, active, state, waitq, waitexp = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease, member, worker = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local fixed = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
for _, w in ipairs(redis.call('ZRANGEBYSCORE', waitexp, '-inf', now)) do
  redis.call('ZREM', waitq, w)
end
redis.call('ZREMRANGEBYSCORE', waitexp, '-inf', now)
local limit, decreases, slow = fixed, 0, 0
if fixed <= 0 then
  local s = redis.call('HMGET', state, 'limit', 'decreases', 'slow_start')
  if not s[1] then
    s = {ARGV[4], '0', ARGV[5]}
    redis.call('HSET', state, 'limit', s[1], 'decreases', s[2], 'slow_start', s[3])
  end
  limit, decreases, slow = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
end
local free = math.max(1, math.floor(limit)) - redis.call('ZCARD', slots)
local granted = 0
if free > 0 then
  local ahead = redis.call('ZRANK', waitq, worker) or redis.call('ZCARD', waitq)
  if ahead < free then granted = 1 end
end
if granted == 1 then
  redis.call('ZADD', slots, now + lease, member)
  redis.call('ZREM', waitq, worker)
  redis.call('ZREM', waitexp, worker)
else
  if not redis.call('ZSCORE', waitq, worker) then
    redis.call('ZADD', waitq, redis.call('INCR', KEYS[6]), worker)
  end
  redis.call('ZADD', waitexp, now + tonumber(ARGV[7]), worker)
end
return {granted, tostring(limit), decreases, slow}
"""
)

# KEYS: slots, active, state. ARGV: member, outcome, epoch, increase, decrease, minimum,
# maximum, fixed, return_share, probe_windows, convex, extra_overload_floor. The rule of
# AdaptiveLimiter.release (and app.scheduler.limits.grown), on the one shared limit.
RELEASE = (
    _NOW_MS
    + """
local slots, active, state = KEYS[1], KEYS[2], KEYS[3]
local member, outcome, epoch = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
local busy = redis.call('ZCARD', active)
redis.call('ZREM', active, member)
redis.call('ZREM', slots, member)
if tonumber(ARGV[8]) > 0 then return {'0', 0, 0} end
local s = redis.call('HMGET', state, 'limit', 'decreases', 'slow_start', 'ceiling',
  'ceiling_floor')
if not s[1] then return {'0', -1, 0} end
local limit, decreases, slow = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
local ceiling, ceiling_floor = tonumber(s[4]) or 0, tonumber(s[5]) or 0
local increase, decrease = tonumber(ARGV[4]), tonumber(ARGV[5])
local minimum, maximum = tonumber(ARGV[6]), tonumber(ARGV[7])
local share, windows, convex = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
if outcome == 'ok' then
  if busy * 2 >= math.max(1, math.floor(limit)) then
    if slow == 1 then
      limit = limit + increase
    elseif ceiling <= 0 then
      limit = limit + increase / limit
    else
      local target = ceiling * share
      local probe = (ceiling - target) / windows
      if limit < target then
        limit = math.min(target, limit + increase)
      elseif limit < ceiling then
        limit = limit + probe / limit
      else
        limit = limit + (probe + (limit - ceiling) * convex) / limit
      end
    end
    limit = math.min(maximum, limit)
  end
elseif outcome == 'overload' and epoch == decreases then
  ceiling = limit
  ceiling_floor = limit * tonumber(ARGV[12])
  limit = math.max(minimum, limit * decrease)
  decreases = decreases + 1
  slow = 0
elseif outcome == 'overload' and epoch == decreases - 1 then
  ceiling = math.max(ceiling_floor, ceiling - 1)
  limit = math.min(limit, math.max(minimum, ceiling * decrease))
end
limit = math.min(maximum, limit)
redis.call('HSET', state, 'limit', tostring(limit), 'decreases', decreases, 'slow_start', slow,
  'ceiling', tostring(ceiling), 'ceiling_floor', tostring(ceiling_floor))
return {tostring(limit), decreases, slow}
"""
)

# KEYS: slots, active. ARGV: lease_ms, member. Only a slot still held becomes active.
ACTIVATE = (
    _NOW_MS
    + """
local exp = redis.call('ZSCORE', KEYS[1], ARGV[2])
if exp then redis.call('ZADD', KEYS[2], exp, ARGV[2]) end
return 0
"""
)

# KEYS: pairs of (slots, active). ARGV: lease_ms, then per pair a count and its members.
# Re-adds a held slot Redis lost (restarted), so the pool counts it again.
RENEW = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[1])
local i = 2
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[i])
  for j = 1, n do
    redis.call('ZADD', KEYS[k], now + lease, ARGV[i + j])
    redis.call('ZADD', KEYS[k + 1], 'XX', now + lease, ARGV[i + j])
  end
  i = i + n + 1
end
return 0
"""
)

# KEYS: live. ARGV: lease_ms, member. Returns how many processes of the group are alive.
HEARTBEAT = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: waitq, waitexp. ARGV: worker. This process no longer waits for the pool.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"""

# KEYS: bucket. ARGV: rate_per_s, capacity, n, need, mode ('take' | 'adjust').
# Returns '0' when taken (or adjusted), else the seconds until `need` is available.
BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity, n, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level, stamp = tonumber(s[1]), tonumber(s[2])
if not level then level, stamp = capacity, now end
if now > stamp then level = math.min(capacity, level + (now - stamp) * rate) end
local wait = 0
if ARGV[5] == 'adjust' then
  level = math.min(capacity, level - n)
elseif level + 1e-9 * capacity >= need then
  level = level - n
else
  wait = (need - level) / rate
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return tostring(wait)
"""

# KEYS: lock. ARGV: token. Deletes the lock only if this holder still has it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
