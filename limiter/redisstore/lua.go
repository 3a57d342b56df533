package redisstore

import (
	"fmt"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts of the Redis store beside the budget script (budgetlua.go,
// with the layout of budget keys): rates, the carrying of breakers over a
// reload, heartbeats. Each is one script call, so what it judges and
// charges is atomic (Redis runs a script alone).

// luaNow starts a script whose ARGV[i], ARGV[i+1] are the time (seconds,
// nanoseconds), or ARGV[i] empty for Redis TIME: it sets E9, nowS and nowN.
func luaNow(i int) string {
	return fmt.Sprintf(`
local E9 = 1000000000
local nowS, nowN
if ARGV[%[1]d] == '' then
  if redis.replicate_commands then pcall(redis.replicate_commands) end
  local t = redis.call('TIME')
  nowS, nowN = tonumber(t[1]), tonumber(t[2]) * 1000
else
  nowS, nowN = tonumber(ARGV[%[1]d]), tonumber(ARGV[%[2]d])
end
`, i, i+1)
}

// rateLua is GCRA over one or more rate keys, in order, stopping at the
// first non-shadow denial (later checks are reported skipped, charged nothing).
// It is rateAllow (limiter/budget.go) with durations kept as (seconds, nanoseconds)
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
var rateLua = luaNow(1) + `
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
// reload changes its windows (Store.CarryBreakers). For each key it copies an
// Open breaker (Open at now under the old spec: Manual, or Auto within its
// cooldown), read in either layout (budgetLua), into the new ID's key unless
// that exists in either layout, with an empty log, and deletes the old keys,
// so a later revert of the edit finds no stale state.
//
// KEYS: per key: the old ID's key, hash and log (the layout of before), the
// new ID's key and hash.
// ARGV: nowS|"" (empty: Redis TIME), nowNs, fromManual, fromCooldownNs,
// toManual, toCooldownNs, ttlFloorMs.
// Returns the 1-based numbers of the keys carried.
var carryLua = luaNow(1) + `
local fromManual, fromCd = ARGV[3] == '1', tonumber(ARGV[4])
local toManual, toCd = ARGV[5] == '1', tonumber(ARGV[6])
local ttlFloor = tonumber(ARGV[7])
local out = {}
for i = 1, math.floor(#KEYS / 5) do
  local ok, oh, oz, nk, nh = KEYS[5 * i - 4], KEYS[5 * i - 3], KEYS[5 * i - 2], KEYS[5 * i - 1], KEYS[5 * i]
  local st, ss, sn = 0, 0, 0
  local v = redis.call('GET', ok)
  if v then
    local ver, _, _, s1, _, s2, s3 = struct.unpack('<BBBBi8i8i4', v)
    if ver == 2 then st, ss, sn = s1, s2, s3 end
  else
    local f = redis.call('HMGET', oh, 'st', 'ss', 'sn')
    st, ss, sn = tonumber(f[1]) or 0, tonumber(f[2]) or 0, tonumber(f[3]) or 0
  end
  local d = (nowS - ss) * E9 + (nowN - sn)
  if st == 1 and (fromManual or d < fromCd) and redis.call('EXISTS', nk, nh) == 0 then
    -- the header of budgetLua's layout (version 2), no entries
    local nv = struct.pack('<BBBBi8i8i4i8i8', 2, 4, 1, 1, nowS, ss, sn, 0, 0)
    if toManual then
      redis.call('SET', nk, nv)
    else
      redis.call('SET', nk, nv, 'PX', math.max(math.floor((2 * toCd - d) / 1000000) + 1000, ttlFloor))
    end
    redis.call('DEL', ok, oh, oz)
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
