package redisstore

import (
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Lua scripts of the Redis store. Each decision is one script call, so a
// budget batch is judged and charged atomically (Redis runs a script alone).
//
// Time. Scripts take the time from Redis TIME (seconds, microseconds) unless
// the client passes one (RedisConfig.Clock, for tests) as ARGV seconds and
// nanoseconds. Lua numbers are doubles, exact only below 2^53, so absolute
// times are kept as a pair (seconds, nanoseconds) or as the decimal string
// "S.NNNNNNNNN"; the admission log of a budget key keeps nanoseconds relative
// to a per-key base second, which is moved forward (the log packed again)
// when it falls more than 46 days behind (or sooner, see below), so log
// arithmetic is exact to the nanosecond for windows up to about 50 days.
//
// Budget keys (all under one hash tag, so a whole batch is in one slot). One
// string per key, read with one GET and written with one SET (PX: it expires
// when neither its log nor its breaker matters any more):
//
//	<prefix>{b}:<rule id>:<key>:v2  the header, then the log
//
// The "v2" names the layout: a key of another layout is never read as this
// one (and the script refuses a value whose version byte is not 2). All
// integers are little endian (Lua struct.pack):
//
//	header, 40 bytes: version (1 byte, 2), tw, cw (1 byte each: widths of
//	  an entry's time and count), breaker state (1), base second (8),
//	  breaker since seconds (8) and nanoseconds (4), half-open admissions
//	  (8), c0 (8: the count before the first entry)
//	entries, tw+cw bytes each, oldest first: time (signed, ns since base),
//	  count (unsigned, cumulative: the tokens of every entry up to this one,
//	  plus c0). A check of cost k at one instant is one entry, and so are
//	  several checks at the same instant.
//
// Entries have one width, so the script finds the first entry of a window
// and the k-th newest token by binary search over the string, and drops
// what left the longest window by cutting the string: one decision costs
// O(log n) unpacks and one copy of the string, whatever the cost it charges.
// The widths fit the key: times 4 to 8 bytes, room for twice the longest
// window (5 bytes for a minute, 6 for an hour, 7 for a day); counts 1 to 7
// bytes, room for four times the tokens held. The log is packed again (at
// base now, counts from 0: a loop over every entry) only when the base is
// half the time width or 46 days behind, or a count would overflow: at most
// once a window and once every 3× the tokens held.
//
// The layout of before (<key>:h, a hash with the base second and the
// breaker, and <key>:z, a sorted set with one member per token) is read when
// a key has no v2 string yet, and deleted when the key is first written in
// v2, so breakers and logs survive an upgrade. During a rolling upgrade
// replicas of the old version still write the old keys; a key charged on
// both sides counts each side apart until the old replicas are gone.
//
// The algorithm is limiter/budget.go line by line (judge every check at one
// clamped now, then apply every check when committing).

// budgetLua judges and (with commit) charges one BudgetBatch.
//
// KEYS: per check i: the key (v2), and the hash and log of the layout of
// before; then, optionally, the batch's charge-once key.
// ARGV: commit, nowS|"" (empty: Redis TIME), nowNs, ttlFloorMs, onceTtlMs,
// checks: every check packed (appendBudgetCheck: shadow, breakerEnabled,
// manual, nWindows, cooldownNs, halfOpenLimit, cost, (lengthNs, limit)×nWindows).
// Returns: nowS, nowNs, admitted, then per check: allowed, reason, window
// (0-based, -1), prev, state, sinceS, sinceNs, retryNs, used×nWindows.
// A committed batch whose charge-once key exists is a repeat of a request
// already admitted and charged: the script returns nowS, nowNs, 2 and changes
// nothing. An admitted committed batch sets the key for onceTtlMs.
var budgetLua = luaNow(2) + `
local MAXCOST = 16384 -- MaxCost (store.go)
local CLOSED, OPEN, HALF = 0, 1, 2
local EXHAUSTED, ISOPEN, HOFULL = 1, 2, 3
local REBASE = 4000000 * E9 -- move the base when it is more than 46 days behind
local VERSION, HDR, HLEN = 2, '<BBBBi8i8i4i8i8', 40
local commit = ARGV[1] == '1'
local ttlFloor = tonumber(ARGV[4])
local onceTtl = tonumber(ARGV[5])
local n = math.floor(#KEYS / 3)
local once = nil
if #KEYS % 3 == 1 and commit then once = KEYS[#KEYS] end
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
-- Numbers go to redis.call and struct.pack as Lua numbers: integers below
-- 2^53 are exact, and times are whole nanoseconds, so "more than x" is "at
-- least x+1".

local function norm(s, n)
  local q = math.floor(n / E9)
  return s + q, n - q * E9
end
local function diff(s1, n1, s2, n2) return (s1 - s2) * E9 + (n1 - n2) end
-- Entry i (1-based) of c's log: time (ns since base), cumulative count,
-- read where a search looks (entries have one width).
local unpack = struct.unpack
local function ent(c, i)
  return unpack(c.ef, c.log, HLEN + (i - 1) * c.es + 1)
end
-- the cumulative count through entry i (c0 through entry 0)
local function cumAt(c, i)
  if i == 0 then return c.c0 end
  local _, q = unpack(c.ef, c.log, HLEN + (i - 1) * c.es + 1)
  return q
end
-- the first entry later than cut (n+1 when none is), by binary search
local function firstAfter(c, cut)
  local log, ef, es, lo, hi = c.log, c.ef, c.es, 1, c.n + 1
  while lo < hi do
    local mid = lo + hi
    mid = (mid - mid % 2) / 2
    if unpack(ef, log, HLEN + (mid - 1) * es + 1) <= cut then lo = mid + 1 else hi = mid end
  end
  return lo
end
-- the time of the k-th newest token (1 <= k <= tokens in the log): the
-- first entry whose count reaches token number last-k+1
local function kthNewest(c, k)
  local r = c.last - k + 1
  local lo, hi = 1, c.n
  while lo < hi do
    local mid = lo + hi
    mid = (mid - mid % 2) / 2
    if cumAt(c, mid) < r then lo = mid + 1 else hi = mid end
  end
  return (ent(c, lo))
end
-- widths of a log whose longest window is L, whose times reach span from
-- its base and whose counts reach need: times keep room for twice the
-- window (a rebase is due at most once a window), counts for four times
-- what they hold (a repack is due at most every 3×need tokens)
local function widths(L, span, need)
  local tw, cw = 4, 1
  while tw < 8 and 2 ^ (8 * tw - 1) < 2 * (math.max(L, span) + E9) do tw = tw + 1 end
  while cw < 7 and 2 ^ (8 * cw) <= 4 * need do cw = cw + 1 end
  return tw, cw
end
local function header(tw, cw, st, base, ss, sn, ho, c0)
  return struct.pack(HDR, VERSION, tw, cw, st, base, ss, sn, ho, c0)
end
-- pack entries ts (times since base) and qs (cumulative counts)
local function packLog(c, st, base, ss, sn, ho, ts, qs, c0)
  local span, need = 0, 1
  if #ts > 0 then span, need = math.max(-ts[1], ts[#ts]), qs[#qs] end
  local tw, cw = widths(c.wl[c.nw], span, need)
  local parts = {header(tw, cw, st, base, ss, sn, ho, c0)}
  local ef = '<i' .. tw .. 'I' .. cw
  for i = 1, #ts do parts[i + 1] = struct.pack(ef, ts[i], qs[i]) end
  return table.concat(parts)
end
-- read a packed log: c.log, its entry format and size, entries, counts
local function useLog(c, v)
  local ver, tw, cw
  ver, tw, cw, c.st, c.base, c.ss, c.sn, c.ho, c.c0 = struct.unpack(HDR, v)
  if ver ~= VERSION then return false end
  c.log, c.ef, c.es, c.tw, c.cw = v, '<i' .. tw .. 'I' .. cw, tw + cw, tw, cw
  c.cap = 2 ^ (8 * cw) - 1
  c.n = (#v - HLEN) / c.es
  c.newest, c.last = nil, c.c0
  if c.n > 0 then c.newest, c.last = ent(c, c.n) end
  c.d = nil
  return true
end

-- load every check
local cs = {}
local specs, p = ARGV[6], 1
for i = 1, n do
  -- every field up front: the table is sized once
  local c = {k = KEYS[3 * i - 2], oh = KEYS[3 * i - 1], oz = KEYS[3 * i], shadow = false, nw = 0, wl = {}, wm = {},
    br = false, manual = false, cd = 0, hol = 0, cost = 0, imported = false,
    st = CLOSED, base = nowS, ss = 0, sn = 0, ho = 0, c0 = 0, log = '', ef = '', es = 0, tw = 0, cw = 0, cap = 0, n = 0, last = 0,
    newest = false, d = false, dc0 = 0,
    card = 0, now = 0, allowed = 0, reason = 0, window = -1, retry = 0, used = false, rst = 0, rss = 0, rsn = 0}
  local shadow, br, manual
  shadow, br, manual, c.nw, c.cd, c.hol, c.cost, p = struct.unpack('<BBBBi8i8i8', specs, p)
  c.shadow, c.br, c.manual = shadow == 1, br == 1, manual == 1
  for j = 1, c.nw do c.wl[j], c.wm[j], p = struct.unpack('<i8i8', specs, p) end
  local v = redis.call('GET', c.k)
  if not v then
    -- not in this layout yet: take a key of the hash-and-sorted-set layout
    -- of before, if any (its hash gives the base), as a packed log
    local f = redis.call('HMGET', c.oh, 'b', 'st', 'ss', 'sn', 'ho')
    local base = tonumber(f[1])
    if base then
      local ts, qs = {}, {}
      c.imported = true
      local all = redis.call('ZRANGE', c.oz, 0, -1, 'WITHSCORES')
      for k = 2, #all, 2 do
        local t = tonumber(all[k])
        if #ts > 0 and ts[#ts] == t then
          qs[#qs] = qs[#qs] + 1
        else
          ts[#ts + 1], qs[#qs + 1] = t, (qs[#qs] or 0) + 1
        end
      end
      v = packLog(c, tonumber(f[2]) or CLOSED, base, tonumber(f[3]) or 0, tonumber(f[4]) or 0, tonumber(f[5]) or 0, ts, qs, 0)
    end
  end
  -- no v: a new key, no log, a closed breaker (the defaults above)
  if v and not useLog(c, v) then
    return redis.error_reply('budget key ' .. c.k .. ' is not in layout version ' .. VERSION)
  end
  c.card = c.last - c.c0
  -- clampNow: time never runs backwards for a key
  local newest = nil
  if c.n > 0 then newest = c.newest end
  if newest and newest > diff(nowS, nowN, c.base, 0) then
    nowS, nowN = norm(c.base, newest)
  elseif diff(c.ss, c.sn, nowS, nowN) > 0 then
    nowS, nowN = c.ss, c.sn
  end
  cs[i] = c
end

-- per key: now relative to its base (exact below 2^53 ns)
for i = 1, n do
  local c = cs[i]
  if c.n == 0 then c.base = nowS end
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
    local f = firstAfter(c, c.now - c.wl[j])
    local before = cumAt(c, f - 1)
    c.used[j] = c.last - before
    -- the longest window's first entry: what apply keeps
    if j == c.nw then c.d, c.dc0 = f, before end
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
      local lim = c.wm[j]
      if c.cost > MAXCOST or c.cost > lim - c.used[j] then
        -- the window has room for cost when its (lim-cost+1)-th newest
        -- token leaves it; a cost above the limit never fits (a whole window)
        local r = c.wl[j]
        if c.cost <= lim and c.cost <= MAXCOST then
          r = kthNewest(c, lim - c.cost + 1) - c.now + c.wl[j]
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

-- the log after apply: what left the longest window dropped, cost tokens
-- pushed at now (one entry with the newest when that is at now). The tail
-- of the packed string is kept as it is; the whole log is packed again
-- only when the base moves (it is 46 days old, or far enough that times
-- would outgrow their width) or counts outgrow theirs.
local function applied(c, st, ss, sn, ho, push)
  local longest = c.wl[c.nw]
  local d, c0 = c.d, c.dc0
  if not d then
    d = firstAfter(c, c.now - longest)
    c0 = cumAt(c, d - 1)
  end
  local last = c.last
  if push then last = last + c.cost end
  local kept = c.n - d + 1
  local merge = push and kept > 0 and c.newest == c.now
  if kept > 0 and not (c.now > math.min(2 ^ (8 * c.tw - 2), REBASE) or last > c.cap) then
    local tail = ''
    local upto = #c.log
    if push then
      tail = struct.pack(c.ef, c.now, last)
      if merge then upto = upto - c.es end
    end
    return header(c.tw, c.cw, st, c.base, ss, sn, ho, c0) .. string.sub(c.log, HLEN + (d - 1) * c.es + 1, upto) .. tail
  end
  -- pack again at base nowS, counts from 0
  local shift = (c.base - nowS) * E9
  local ts, qs = {}, {}
  for k = d, c.n do
    local t, q = ent(c, k)
    ts[#ts + 1], qs[#qs + 1] = t + shift, q - c0
  end
  if push then
    if merge then
      qs[#qs] = last - c0
    else
      -- now is nowN past the new base, exactly: c.now + shift is not when
      -- the old base is more than 104 days back (c.now is past 2^53 ns)
      ts[#ts + 1], qs[#qs + 1] = nowN, last - c0
    end
  end
  return packLog(c, st, nowS, ss, sn, ho, ts, qs, 0)
end

-- apply: admitted requests take a token from every window; exhaustion trips.
-- A check that changes nothing (a denial by an open breaker, say) writes
-- nothing: no write amplification under a storm of denied requests.
if commit then
  local written = {}
  for i = 1, n do
    local c = cs[i]
    local w = written[c.k]
    if w ~= nil then
      -- a key an earlier check of the batch wrote: apply to what it wrote
      if not w then w = packLog(c, CLOSED, nowS, 0, 0, 0, {}, {}, 0) end
      useLog(c, w)
      if c.n == 0 then c.base = nowS end
      c.now, c.imported = diff(nowS, nowN, c.base, 0), false
    end
    local st, ss, sn, ho = effective(c)
    local longest = c.wl[c.nw]
    local push = c.allowed == 1 and admitted
    local trip = not push and c.reason == EXHAUSTED and c.br
    if trip then st, ss, sn, ho = OPEN, nowS, nowN, 0 end
    local dirty = push or st ~= c.st or ss ~= c.ss or sn ~= c.sn or ho ~= c.ho
    if dirty then
      local newest = nil
      if push then
        newest = c.now
        for j = 1, c.nw do c.used[j] = c.used[j] + c.cost end
        if st == HALF then ho = ho + 1 end
      elseif c.n > 0 then
        local t = c.newest
        if t > c.now - longest then newest = t end
      end
      -- keep the key while its log or its breaker matters
      local keep = 0
      if newest then keep = newest + longest - c.now end
      if c.br and not c.manual then
        if st == OPEN then keep = math.max(keep, 2 * c.cd - diff(nowS, nowN, ss, sn)) end
        if st == HALF then keep = math.max(keep, c.cd - diff(nowS, nowN, ss, sn)) end
      end
      local persist = c.br and c.manual and st == OPEN
      if c.imported then redis.call('DEL', c.oh, c.oz) end
      if keep <= 0 and not persist then
        redis.call('DEL', c.k)
        written[c.k] = false
      else
        local v = applied(c, st, ss, sn, ho, push)
        written[c.k] = v
        if persist then
          redis.call('SET', c.k, v)
        else
          redis.call('SET', c.k, v, 'PX', math.max(math.floor(keep / 1000000) + 1000, ttlFloor))
        end
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
