"""The Redis backend's Lua scripts: each runs atomically on the server, so one admission is one round trip.

A counter is a hash of whole numbers: `lt`/`lc` tokens and picodollars settled live, `tt`/`tc` the store's
tracker calls, `et`/`ec` the store's other events, `ft`/`fc` in flight. Its spend is max(lt, tt) + et + ft
(and the same for cost). Changes go through HINCRBY/HSET with the caller's decimal strings, so stored figures
are exact 64-bit integers (up to about $9.2 million per counter). Lua's numbers are doubles, exact only up to
2^53 (about $9,007 in picodollars, which a system's or a tenant's month passes), so the scripts never do
arithmetic on a figure as one number: `big` splits its decimal text into two whole numbers, millions (whole
microdollars) and the remainder below a million, each far below 2^53; sums carry between them and
comparisons are lexicographic, so every judgement is exact over the whole 64-bit range.

Reservations are hashes `<prefix>r:<id>` indexed by expiry time in the sorted set `<prefix>inflight`; each
admission first releases the reservations past their TTL (a dead process's), which stay readable as
released for a day so that a late settle still records its actual figures once.
"""

# Shared by the scripts: release expired reservations (ARGV[1] is the key prefix).
_EXPIRE = """
local prefix = ARGV[1]
local function n(x) return tonumber(x) or 0 end
local MILLION = 1000000
-- An exact whole number as {millions, remainder in [0, MILLION)}; the millions carry the sign.
local function carry(high, low)
  while low < 0 do low = low + MILLION; high = high - 1 end
  while low >= MILLION do low = low - MILLION; high = high + 1 end
  return {high, low}
end
local function big(text)
  text = tostring(text or '0')
  local negative = string.sub(text, 1, 1) == '-'
  if negative then text = string.sub(text, 2) end
  local cut = math.max(#text - 6, 0)
  local high, low = tonumber(string.sub(text, 1, cut)) or 0, tonumber(string.sub(text, cut + 1)) or 0
  if negative then return carry(-high, -low) end
  return {high, low}
end
local function plus(a, b) return carry(a[1] + b[1], a[2] + b[2]) end
local function above(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end
local function larger(a, b) if above(a, b) then return a end return b end
local function neg(x) if not x or x == '' or x == '0' then return '0' end return '-' .. x end
local function split(text)
  local out = {}
  for part in string.gmatch(text or '', '[^\\n]+') do out[#out + 1] = part end
  return out
end
local function drop_in_flight(rkey)
  local r = redis.call('HMGET', rkey, 't', 'c', 'counters', 'released')
  if not r[3] or r[4] == '1' then return 0 end
  for _, counter in ipairs(split(r[3])) do
    redis.call('HINCRBY', counter, 'ft', neg(r[1]))
    redis.call('HINCRBY', counter, 'fc', neg(r[2]))
  end
  return 1
end
local now = tonumber(redis.call('TIME')[1])
local function expire_old(zset)
  local released = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now)) do
    local rkey = prefix .. 'r:' .. id
    released = released + drop_in_flight(rkey)
    redis.call('HSET', rkey, 'released', '1')
    redis.call('EXPIRE', rkey, 86400)
    redis.call('ZREM', zset, id)
  end
  return released
end
local function figures(key)
  local v = redis.call('HMGET', key, 'lt', 'lc', 'tt', 'tc', 'et', 'ec', 'ft', 'fc')
  for i = 1, 8 do v[i] = v[i] or '0' end
  return v
end
local function spent(v)
  return plus(plus(larger(big(v[1]), big(v[3])), big(v[5])), big(v[7])),
         plus(plus(larger(big(v[2]), big(v[4])), big(v[6])), big(v[8]))
end
-- Leases in every process judge their gates again on a message on the gates channel
-- (`llmcost.control.redis_gates`): sent when the system's spend is at the shutdown level, at most once a second
-- (no lease outlives a second, so one opened after a message, or while the spend dipped back, hears the next).
local function announce_shutdown(system_key, shutdown, day)
  if not shutdown or shutdown == '' then return end
  local _, cost = spent(figures(system_key))
  if above(big(shutdown), cost) then return end
  if redis.call('SET', prefix .. 'shutdown-announced:' .. day, '1', 'NX', 'EX', 1) then
    redis.call('PUBLISH', prefix .. 'gates', 'shutdown')
  end
end
"""

# KEYS: disabled hash, halt hash, system counter, inflight zset, reservation, then one counter per limit.
# ARGV: prefix, use_case, tokens, cost, shutdown ('' = none), ttl, details, day, user, counter ttl, limit count,
# then per limit: tokens ('' = none), cost ('' = none), hard (1/0).
# Returns {status, reason, system figures (8), figures per limit (8 each), over index (0 = none)}.
# The decision, shared by ADMIT and JUDGE: returns from the script when the call is refused.
_DECIDE = """
local function answer(status, reason, system, limits, over)
  local out = {status, reason or ''}
  for i = 1, 8 do out[#out + 1] = system[i] end
  for _, v in ipairs(limits) do for i = 1, 8 do out[#out + 1] = v[i] end end
  out[#out + 1] = tostring(over or 0)
  return out
end
local disabled = redis.call('HGET', KEYS[1], ARGV[2])
if disabled then return answer('disabled', disabled, figures(KEYS[3]), {}, 0) end
local system = figures(KEYS[3])
local halt = redis.call('HMGET', KEYS[2], 'reason', 'resumed_at')
if not halt[2] then
  if halt[1] then return answer('halted', halt[1], system, {}, 0) end
  if ARGV[5] ~= '' then
    local _, cost = spent(system)
    if not above(big(ARGV[5]), cost) then
      announce_shutdown(KEYS[3], ARGV[5], ARGV[8])
      return answer('halted', '', system, {}, 0)
    end
  end
end
local tokens, cost = big(ARGV[3]), big(ARGV[4])
local limits, over = {}, 0
local count = n(ARGV[11])
for i = 1, count do
  local v = figures(KEYS[5 + i])
  limits[i] = v
  local base = 11 + (i - 1) * 3
  if over == 0 and ARGV[base + 3] == '1' then
    local t, c = spent(v)
    if (ARGV[base + 1] ~= '' and above(plus(t, tokens), big(ARGV[base + 1])))
        or (ARGV[base + 2] ~= '' and above(plus(c, cost), big(ARGV[base + 2]))) then
      over = i
    end
  end
end
if over > 0 then return answer('budget', '', system, limits, over) end
"""

ADMIT = _EXPIRE + "expire_old(KEYS[4])\n" + _DECIDE + """
local held = {KEYS[3]}
for i = 1, count do held[#held + 1] = KEYS[5 + i] end
for _, counter in ipairs(held) do
  redis.call('HINCRBY', counter, 'ft', ARGV[3])
  redis.call('HINCRBY', counter, 'fc', ARGV[4])
  redis.call('EXPIRE', counter, ARGV[10])
end
local id = string.sub(KEYS[5], #prefix + 3)
redis.call('HSET', KEYS[5], 't', ARGV[3], 'c', ARGV[4], 'counters', table.concat(held, '\\n'), 'details', ARGV[7],
           'day', ARGV[8], 'user', ARGV[9], 'created', tostring(now), 'released', '0', 'shutdown', ARGV[5])
redis.call('EXPIRE', KEYS[5], n(ARGV[6]) + 86400)
redis.call('ZADD', KEYS[4], now + n(ARGV[6]), id)
announce_shutdown(KEYS[3], ARGV[5], ARGV[8])
return answer('ok', '', system, limits, 0)
"""

# What ADMIT would decide on the figures as they are, reserving nothing (KEYS and ARGV as ADMIT's; the reservation
# key is not touched). A lease's re-check of the gates (`llmcost.control.lease`).
JUDGE = _EXPIRE + _DECIDE + """
return answer('ok', '', system, limits, 0)
"""

# KEYS: reservation, inflight zset, settled marker. ARGV: prefix, tokens, cost, settle (1) or release (0).
# Returns 1 when this call settled (or released) it, 0 when it was already settled, released or unknown.
# A shared reservation's settle leaves a marker for a day, so a retried settle hears it was settled.
FINISH = _EXPIRE + """
local r = redis.call('HMGET', KEYS[1], 'counters', 'released', 'details', 'shutdown', 'day')
if not r[1] then return 0 end
if ARGV[4] == '0' and r[2] == '1' then return 0 end
drop_in_flight(KEYS[1])
if ARGV[4] == '1' then
  for _, counter in ipairs(split(r[1])) do
    redis.call('HINCRBY', counter, 'lt', ARGV[2])
    redis.call('HINCRBY', counter, 'lc', ARGV[3])
  end
  if r[3] and r[3] ~= '{}' then redis.call('SET', KEYS[3], '1', 'EX', 86400) end
  announce_shutdown(split(r[1])[1], r[4], r[5])  -- (the system's counter is the first a reservation holds)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], string.sub(KEYS[1], #ARGV[1] + 3))
return 1
"""

# KEYS: inflight zset. ARGV: prefix, older than seconds ('' = by TTL only). Returns how many were released.
SWEEP = _EXPIRE + """
local released = expire_old(KEYS[1])
if ARGV[2] ~= '' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local rkey = prefix .. 'r:' .. id
    if n(redis.call('HGET', rkey, 'created')) < now - n(ARGV[2]) then
      released = released + drop_in_flight(rkey)
      redis.call('HSET', rkey, 'released', '1')
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return released
"""

# KEYS: counters. ARGV: prefix, ttl, then per counter: field prefix ('l' live raised, 's' store set), tokens, cost,
# and for 's' other tokens, other cost. Live figures are only raised: other hosts' settles may not be in this
# host's store or journals yet, so a rebuild never lowers what they added.
SET_FIGURES = _EXPIRE + """
local i = 3
for _, counter in ipairs(KEYS) do
  local kind = ARGV[i]
  if kind == 'l' then
    local v = figures(counter)
    if above(big(ARGV[i + 1]), big(v[1])) then redis.call('HSET', counter, 'lt', ARGV[i + 1]) end
    if above(big(ARGV[i + 2]), big(v[2])) then redis.call('HSET', counter, 'lc', ARGV[i + 2]) end
    i = i + 3
  else
    redis.call('HSET', counter, 'tt', ARGV[i + 1], 'tc', ARGV[i + 2], 'et', ARGV[i + 3], 'ec', ARGV[i + 4])
    i = i + 5
  end
  redis.call('EXPIRE', counter, ARGV[2])
end
redis.call('PUBLISH', prefix .. 'gates', 'figures')  -- (the system's may have reached the shutdown level)
return 1
"""
