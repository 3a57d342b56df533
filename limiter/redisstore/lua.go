package redisstore

import "github.com/redis/go-redis/v9"

// Lua scripts of the Redis store. Each decision is one script call, so a
// budget batch is judged and charged atomically (Redis runs a script alone).
//
// Time. Scripts take the time from Redis TIME (seconds, microseconds) unless
// the client passes one (RedisConfig.Clock, for tests) as ARGV seconds and
// nanoseconds. Lua numbers are doubles, exact only below 2^53, so absolute
// times are kept as a pair (seconds, nanoseconds) or as the decimal string
// "S.NNNNNNNNN"; the admission log of a budget key keeps nanoseconds relative
// to a per-key base second, which is moved forward (all scores shifted) when
// it falls more than 46 days behind, so log arithmetic is exact to the
// nanosecond for windows up to about 50 days.
//
// Budget keys (all under one hash tag, so a whole batch is in one slot):
//
//	<prefix>{b}:<rule id>:<key>:h  hash: b base second, st breaker state,
//	                               ss/sn breaker since (s, ns), ho half-open
//	                               admissions, q member sequence
//	<prefix>{b}:<rule id>:<key>:z  sorted set: one member per token taken
//	                               (a check of cost k adds k members at one
//	                               score), score = ns since base
//
// The algorithm is limiter/budget.go line by line (judge every check at one
// clamped now, then apply every check when committing).

// budgetLua judges and (with commit) charges one BudgetBatch.
//
// KEYS: per check i: hash, log; then, optionally, the batch's charge-once key.
// ARGV: commit, nowS|"" (empty: Redis TIME), nowNs, ttlFloorMs, onceTtlMs,
// then per check: shadow, nWindows, (lengthNs, limit)×nWindows,
// breakerEnabled, manual, cooldownNs, halfOpenLimit, cost.
// Returns: nowS, nowNs, admitted, then per check: allowed, reason, window
// (0-based, -1), prev, state, sinceS, sinceNs, retryNs, used×nWindows.
// A committed batch whose charge-once key exists is a repeat of a request
// already admitted and charged: the script returns nowS, nowNs, 2 and changes
// nothing. An admitted committed batch sets the key for onceTtlMs.
const budgetLua = `
local E9 = 1000000000
local MAXCOST = 16384 -- MaxCost (store.go)
local CLOSED, OPEN, HALF = 0, 1, 2
local EXHAUSTED, ISOPEN, HOFULL = 1, 2, 3
local commit = ARGV[1] == '1'
local nowS, nowN
if ARGV[2] == '' then
  if redis.replicate_commands then pcall(redis.replicate_commands) end
  local t = redis.call('TIME')
  nowS, nowN = tonumber(t[1]), tonumber(t[2]) * 1000
else
  nowS, nowN = tonumber(ARGV[2]), tonumber(ARGV[3])
end
local ttlFloor = tonumber(ARGV[4])
local onceTtl = tonumber(ARGV[5])
local n = math.floor(#KEYS / 2)
local once = nil
if #KEYS % 2 == 1 and commit then once = KEYS[#KEYS] end
-- The charge-once key holds its expiry "S.NNNNNNNNN" (the clock may be the
-- client's); PX only bounds memory.
if once then
  local v = redis.call('GET', once)
  if v then
    local es, en = string.match(v, '^(%d+)%.(%d+)$')
    if es and (tonumber(es) - nowS) * 1000000000 + (tonumber(en) - nowN) > 0 then
      return {nowS, nowN, 2}
    end
  end
end
-- Numbers go to redis.call as Lua numbers: Redis prints them exactly
-- (integers below 2^53), and scores are whole nanoseconds, so "more than x"
-- is "at least x+1".

local function norm(s, n)
  local q = math.floor(n / E9)
  return s + q, n - q * E9
end
local function diff(s1, n1, s2, n2) return (s1 - s2) * E9 + (n1 - n2) end
-- window j of check c: length and limit, read from ARGV where they are
local function wlen(c, j) return tonumber(ARGV[c.p + 2 * j]) end
local function wlim(c, j) return tonumber(ARGV[c.p + 2 * j + 1]) end

-- load every check
local cs = {}
local p = 6
for i = 1, n do
  local c = {h = KEYS[2 * i - 1], z = KEYS[2 * i], shadow = ARGV[p] == '1', nw = tonumber(ARGV[p + 1]), p = p}
  p = p + 2 + 2 * c.nw
  c.br, c.manual = ARGV[p] == '1', ARGV[p + 1] == '1'
  c.cd, c.hol, c.cost = tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3]), tonumber(ARGV[p + 4])
  p = p + 5
  local f = redis.call('HMGET', c.h, 'b', 'st', 'ss', 'sn', 'ho', 'q')
  c.base = tonumber(f[1])
  c.st, c.ss, c.sn = tonumber(f[2]) or CLOSED, tonumber(f[3]) or 0, tonumber(f[4]) or 0
  c.ho, c.seq = tonumber(f[5]) or 0, tonumber(f[6]) or 0
  c.card = 0
  if c.base then c.card = redis.call('ZCARD', c.z) else c.stale = true end
  -- clampNow: time never runs backwards for a key
  local newest = nil
  if c.card > 0 then
    newest = tonumber(redis.call('ZRANGE', c.z, -1, -1, 'WITHSCORES')[2])
  end
  if newest and newest > diff(nowS, nowN, c.base, 0) then
    nowS, nowN = norm(c.base, newest)
  elseif diff(c.ss, c.sn, nowS, nowN) > 0 then
    nowS, nowN = c.ss, c.sn
  end
  cs[i] = c
end

-- per key: base and now relative to it (exact below 2^53 ns)
for i = 1, n do
  local c = cs[i]
  if c.card == 0 then
    c.base = nowS
  elseif commit and nowS - c.base > 4000000 then
    local shift = (c.base - nowS) * E9
    local all = redis.call('ZRANGE', c.z, 0, -1, 'WITHSCORES')
    for k = 1, #all, 2 do
      redis.call('ZADD', c.z, tonumber(all[k + 1]) + shift, all[k])
    end
    c.base, c.shifted = nowS, true
  end
  c.now = diff(nowS, nowN, c.base, 0)
end

local function effective(c)
  local st, ss, sn, ho = c.st, c.ss, c.sn, c.ho
  -- a reload removed the breaker: it denies nothing any more
  if not c.br then return CLOSED, ss, sn, 0 end
  if c.manual then
    -- a reload made an Auto breaker Manual while HalfOpen: no probation, Closed
    if st == HALF then return CLOSED, ss, sn, 0 end
    return st, ss, sn, ho
  end
  if st == OPEN and diff(nowS, nowN, ss, sn) >= c.cd then
    st, ho = HALF, 0
    ss, sn = norm(ss, sn + c.cd)
  end
  if st == HALF and diff(nowS, nowN, ss, sn) >= c.cd then
    st, ho = CLOSED, 0
    ss, sn = norm(ss, sn + c.cd)
  end
  return st, ss, sn, ho
end

-- judge every check at now; the result lives on the check (allowed, reason,
-- window, retry, rst/rss/rsn = state and since after, used)
local admitted = true
for i = 1, n do
  local c = cs[i]
  c.allowed, c.reason, c.window, c.retry, c.used = 0, 0, -1, 0, {}
  local st, ss, sn, ho = effective(c)
  c.rst, c.rss, c.rsn = st, ss, sn
  for j = 1, c.nw do
    if c.card == 0 then
      c.used[j] = 0
    else
      c.used[j] = redis.call('ZCOUNT', c.z, c.now - wlen(c, j) + 1, '+inf')
    end
  end
  if st == OPEN then
    c.reason = ISOPEN
    if not c.manual then c.retry = c.cd - diff(nowS, nowN, ss, sn) end
  elseif st == HALF and ho >= c.hol then
    c.reason = HOFULL
    c.retry = c.cd - diff(nowS, nowN, ss, sn)
  else
    -- freeIn: how long until the window has room; kept relative to now, as
    -- now plus a window may pass 2^53 ns from an old base (a dry run does
    -- not rebase)
    local freeIn = 0
    for j = 1, c.nw do
      local lim = wlim(c, j)
      if c.cost > MAXCOST or c.cost > lim - c.used[j] then
        -- the window has room for cost when its (lim-cost+1)-th newest
        -- token leaves it; a cost above the limit never fits (a whole window)
        local r = wlen(c, j)
        if c.cost <= lim and c.cost <= MAXCOST then
          local k = lim - c.cost + 1
          r = tonumber(redis.call('ZRANGE', c.z, -k, -k, 'WITHSCORES')[2]) - c.now + wlen(c, j)
        end
        if c.window < 0 or r > freeIn then c.window, freeIn = j - 1, r end
      end
    end
    if c.window < 0 then
      c.allowed = 1
    else
      c.reason = EXHAUSTED
      c.retry = freeIn
      if c.br then
        c.rst, c.rss, c.rsn = OPEN, nowS, nowN
        if c.manual then c.retry = 0 elseif c.retry < c.cd then c.retry = c.cd end
      end
    end
  end
  if c.allowed == 0 and not c.shadow then admitted = false end
end

-- apply: admitted requests take a token from every window; exhaustion trips.
-- A check that changes nothing (a denial by an open breaker, say) writes
-- nothing: no write amplification under a storm of denied requests.
if commit then
  for i = 1, n do
    local c = cs[i]
    local st, ss, sn, ho = effective(c)
    local longest = wlen(c, c.nw)
    local push = c.allowed == 1 and admitted
    local trip = not push and c.reason == EXHAUSTED and c.br
    if trip then st, ss, sn, ho = OPEN, nowS, nowN, 0 end
    local dirty = push or c.shifted or st ~= c.st or ss ~= c.ss or sn ~= c.sn or ho ~= c.ho
    if dirty then
      if c.stale then
        redis.call('DEL', c.z) -- a log without its hash has lost its base
      elseif c.card > c.used[c.nw] then
        -- only when something has left the longest window (used[nw] counts
        -- what is still in it, before this request's push)
        redis.call('ZREMRANGEBYSCORE', c.z, '-inf', c.now - longest)
      end
      local newest = nil
      if push then
        -- cost members at one score, in ZADDs of at most 1000
        local left = c.cost
        while left > 0 do
          local m = math.min(left, 1000)
          local za = {}
          for k = 1, m do
            za[2 * k - 1], za[2 * k] = c.now, c.seq + k
          end
          redis.call('ZADD', c.z, unpack(za))
          c.seq, left = c.seq + m, left - m
        end
        newest = c.now
        for j = 1, c.nw do c.used[j] = c.used[j] + c.cost end
        if st == HALF then ho = ho + 1 end
      elseif c.card > 0 then
        newest = tonumber(redis.call('ZRANGE', c.z, -1, -1, 'WITHSCORES')[2])
      end
      -- keep the key while its log or its breaker matters
      local keep = 0
      if newest then keep = newest + longest - c.now end
      if c.br and not c.manual then
        if st == OPEN then keep = math.max(keep, 2 * c.cd - diff(nowS, nowN, ss, sn)) end
        if st == HALF then keep = math.max(keep, c.cd - diff(nowS, nowN, ss, sn)) end
      end
      local persist = c.br and c.manual and st == OPEN
      if keep <= 0 and not persist then
        redis.call('DEL', c.h, c.z)
      else
        redis.call('HSET', c.h, 'b', c.base, 'st', st, 'ss', ss, 'sn', sn, 'ho', ho, 'q', c.seq)
        local ms = math.max(math.floor(keep / 1000000) + 1000, ttlFloor)
        if persist then redis.call('PERSIST', c.h) else redis.call('PEXPIRE', c.h, ms) end
        if newest then redis.call('PEXPIRE', c.z, ms) end
      end
    end
  end
end

if admitted and once then
  local q = math.floor((nowN + onceTtl * 1000000) / E9)
  local ev = string.format('%.0f.%09.0f', nowS + q, nowN + onceTtl * 1000000 - q * E9)
  redis.call('SET', once, ev, 'PX', math.max(onceTtl, ttlFloor))
end

local out = {nowS, nowN, admitted and 1 or 0}
for i = 1, n do
  local c = cs[i]
  local k = #out
  out[k + 1], out[k + 2], out[k + 3], out[k + 4], out[k + 5] = c.allowed, c.reason, c.window, c.st, c.rst
  out[k + 6], out[k + 7], out[k + 8] = c.rss, c.rsn, c.retry
  for j = 1, c.nw do out[k + 8 + j] = c.used[j] end
end
return out
`

// luaNowFromArgv1 starts a script whose ARGV[1], ARGV[2] are the time
// (seconds, nanoseconds), or ARGV[1] empty for Redis TIME: it sets E9, nowS
// and nowN.
const luaNowFromArgv1 = `
local E9 = 1000000000
local nowS, nowN
if ARGV[1] == '' then
  if redis.replicate_commands then pcall(redis.replicate_commands) end
  local t = redis.call('TIME')
  nowS, nowN = tonumber(t[1]), tonumber(t[2]) * 1000
else
  nowS, nowN = tonumber(ARGV[1]), tonumber(ARGV[2])
end
`

// rateLua is GCRA over one or more rate keys, in order, stopping at the
// first non-shadow denial (later checks are reported skipped, charged nothing).
// It is rateAllow (budget.go) with durations kept as (seconds, nanoseconds)
// pairs: burst×interval reaches 10^18 ns, beyond the 2^53 a Lua number holds
// exactly, and the memory store computes it exactly in int64.
//
// Keys per rule are bounded as in the memory store: a rule's keys are split
// into 32 shards by a hash of the key (the shard is the hash tag), and each
// shard indexes its keys in a sorted set scored by when the key goes idle
// (its bucket refilled RateKeyIdle ago, in ms). A key not in the index joins
// it if the shard has fewer than maxPerShard live keys; otherwise it shares
// the shard's overflow bucket. A key in the index keeps its own bucket, so a
// flood of new keys never takes the bucket of a client that was there.
//
// KEYS: per check: bucket, index, overflow (one shard, one slot).
// ARGV: nowS|"" (empty: Redis TIME), nowNs, ttlFloorMs, idleMs, maxPerShard,
// then per check: shadow, intervalS, intervalNs (0 to 1e9-1), burst.
// Returns: nowS, nowNs, then per check: status (1 allowed, 0 denied, 2
// skipped), retryS, retryNs, overflowed (1 when judged on the overflow bucket).
const rateLua = luaNowFromArgv1 + `
local ttlFloor, idleMs, maxPerShard = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local nowMs = nowS * 1000 + math.floor(nowN / 1000000)
-- a duration (s, n) with 0 <= n < E9
local function norm(s, n)
  local q = math.floor(n / E9)
  return s + q, n - q * E9
end
local out = {nowS, nowN}
local denied = false
for i = 1, #KEYS / 3 do
  local p = 6 + (i - 1) * 4
  if denied then
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = 2, 0, 0, 0
  else
    local bucket, index, overflow = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
    local own = true
    local sc = tonumber(redis.call('ZSCORE', index, bucket))
    if not sc or sc <= nowMs then
      -- forget the shard's idle keys (their buckets are full again)
      local idle = redis.call('ZRANGEBYSCORE', index, '-inf', nowMs)
      if #idle > 0 then
        for k = 1, #idle, 1000 do redis.call('DEL', unpack(idle, k, math.min(k + 999, #idle))) end
        redis.call('ZREMRANGEBYSCORE', index, '-inf', nowMs)
      end
      if redis.call('ZCARD', index) >= maxPerShard then own = false end
    end
    local key = bucket
    if not own then key = overflow end
    local iS, iN, burst = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2]), tonumber(ARGV[p + 3])
    -- d = max(tat - now, 0)
    local dS, dN = 0, 0
    local v = redis.call('GET', key)
    if v then
      local s, ns = string.match(v, '^(%-?%d+)%.(%d+)$')
      if s then
        dS, dN = norm(tonumber(s) - nowS, tonumber(ns) - nowN)
        if dS < 0 then dS, dN = 0, 0 end
      end
    end
    local xS, xN = norm(dS + iS, dN + iN)           -- next - now
    local bS, bN = norm(burst * iS, burst * iN)      -- burst × interval
    local oS, oN = norm(xS - bS, xN - bN)            -- how far next is over
    local ov = own and 0 or 1
    if oS > 0 or (oS == 0 and oN > 0) then
      out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = 0, oS, oN, ov
      if ARGV[p] ~= '1' then denied = true end
    else
      local tS, tN = norm(nowS + xS, nowN + xN)
      -- the key goes idle idleMs after its bucket refills; it lives 1s longer
      local idleAt = tS * 1000 + math.floor(tN / 1000000) + idleMs
      local ms = math.max(idleAt - nowMs + 1000, ttlFloor)
      redis.call('SET', key, string.format('%.0f.%09.0f', tS, tN), 'PX', ms)
      if own then
        redis.call('ZADD', index, idleAt, bucket)
        if redis.call('PTTL', index) < ms then redis.call('PEXPIRE', index, ms) end
      end
      out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = 1, 0, 0, ov
    end
  end
end
return out
`

// carryLua carries Open breakers over to a budget's new store ID when a
// reload changes its windows (breakerCarrier). For each triple it copies an
// Open breaker (Open at now under the old spec: Manual, or Auto within its
// cooldown) into the new hash unless that exists, with an empty log, and
// deletes the old keys, so a later revert of the edit finds no stale state.
//
// KEYS: per key: old hash, old log, new hash.
// ARGV: nowS|"" (empty: Redis TIME), nowNs, fromManual, fromCooldownNs,
// toManual, toCooldownNs, ttlFloorMs.
// Returns the 1-based numbers of the triples carried.
const carryLua = luaNowFromArgv1 + `
local fromManual, fromCd = ARGV[3] == '1', tonumber(ARGV[4])
local toManual, toCd = ARGV[5] == '1', tonumber(ARGV[6])
local ttlFloor = tonumber(ARGV[7])
local out = {}
for i = 1, math.floor(#KEYS / 3) do
  local oh, oz, nh = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local f = redis.call('HMGET', oh, 'st', 'ss', 'sn')
  local st, ss, sn = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or 0
  local d = (nowS - ss) * E9 + (nowN - sn)
  if st == 1 and (fromManual or d < fromCd) and redis.call('EXISTS', nh) == 0 then
    redis.call('HSET', nh, 'b', nowS, 'st', 1, 'ss', ss, 'sn', sn, 'ho', 0, 'q', 0)
    if toManual then
      redis.call('PERSIST', nh)
    else
      redis.call('PEXPIRE', nh, math.max(math.floor((2 * toCd - d) / 1000000) + 1000, ttlFloor))
    end
    redis.call('DEL', oh, oz)
    out[#out + 1] = i
  end
end
return out
`

// heartbeatLua records one replica as alive and counts the live ones.
//
// KEYS[1]: sorted set of replica ids by last-seen Redis time (ms).
// ARGV: replica id, ttlMs. Returns the number of replicas seen within ttl.
const heartbeatLua = `
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - ttl)
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return redis.call('ZCARD', KEYS[1])
`

// redisScripts are the store's scripts, each run with EVALSHA and loaded
// with EVAL on NOSCRIPT (go-redis Script.Run).
type redisScripts struct {
	budget, rate, heartbeat, carry *redis.Script
}

func newRedisScripts() redisScripts {
	return redisScripts{
		budget:    redis.NewScript(budgetLua),
		rate:      redis.NewScript(rateLua),
		heartbeat: redis.NewScript(heartbeatLua),
		carry:     redis.NewScript(carryLua),
	}
}
