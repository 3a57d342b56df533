package redisstore

// The budget script. Each call judges one or more BudgetBatches (a group of
// decisions the store coalesced, coalesce.go), one after the other, each
// judged and charged all or nothing, exactly as if each were a call of its
// own at that instant (Redis runs a script alone).
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
// Budget keys (all under one hash tag, so every batch is in one slot). One
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
// and the k-th newest token by binary search over the string (after looking
// at both ends: most windows hold the whole log or none of it), and drops
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
//
// Cost. The script is written for Redis's Lua: no table per window, entry
// formats built once per call, numbers handed to redis.call as strings
// (Redis's own conversion of a Lua number costs more), one table per check.

// budgetLua judges and (with commit) charges a group of BudgetBatches.
//
// KEYS: per batch, per check: the key (v2); then, when the batch has one,
// its charge-once key. The hash and log of the layout of before, <key>:h
// and <key>:z (the key without ":v2"), are read and deleted without being
// named in KEYS: they are in the same slot (hash tag {b}).
// ARGV: nowS|"" (empty: Redis TIME), nowNs, ttlFloorMs, batches: every batch
// packed (budgetCall.encode: commit, hasOnce (1 byte each), onceTtlMs (8),
// nChecks (4), then each check as appendBudgetCheck packs it: shadow, cost,
// then the rule's spec: nWindows, breakerEnabled, manual, cooldownNs,
// halfOpenLimit, (lengthNs, limit)×nWindows).
// Returns one string, every batch's answer packed (little endian, sizes in
// bytes; decodeBudgets reads it): status (1), nowS (8), nowNs (8), then
//   - status 0 (denied) or 1 (admitted): per check: allowed (1), reason (1),
//     window (1, signed: 0-based, -1), prev (1), state (1), sinceS (8),
//     sinceNs (8), retryNs (8), used (8)×nWindows;
//   - status 2: a committed batch whose charge-once key exists is a repeat of
//     a request already admitted and charged: nothing more, nothing changed
//     (an admitted committed batch sets the key for onceTtlMs);
//   - status 3: the check whose key is in another layout (2, 1-based),
//     nothing changed.
var budgetLua = recordsByIndex(luaNow(1) + `
local MAXCOST = 16384 -- MaxCost (limiter/store.go)
local CLOSED, OPEN, HALF = 0, 1, 2
local EXHAUSTED, ISOPEN, HOFULL = 1, 2, 3
local REBASE = 4000000 * E9 -- move the base when it is more than 46 days behind
local VERSION, HDR, HLEN = 2, '<BBBBi8i8i4i8i8', 40
local ttlFloor = tonumber(ARGV[3])
local specs = ARGV[4]
local tunpack = unpack -- a table's elements
local unpack, pack, floor, max, fmt = struct.unpack, struct.pack, math.floor, math.max, string.format
-- Numbers go to struct.pack as Lua numbers: integers below 2^53 are exact,
-- and times are whole nanoseconds, so "more than x" is "at least x+1".

local function norm(s, n)
  local q = floor(n / E9)
  return s + q, n - q * E9
end
local function diff(s1, n1, s2, n2) return (s1 - s2) * E9 + (n1 - n2) end
-- the decimal of an integer, for redis.call
local function dec(x) return fmt('%d', x) end

-- entry, window and result formats, and the specs of the call's rules
-- (by their packed bytes), built once per call
local EF, WF, RF, SPEC = {}, {}, {}, {}
local function efOf(tw, cw)
  local k = tw * 8 + cw
  local f = EF[k]
  if not f then f = '<i' .. tw .. 'I' .. cw; EF[k] = f end
  return f
end
local function wfOf(nw)
  local f = WF[nw]
  if not f then f = '<' .. string.rep('i8i8', nw); WF[nw] = f end
  return f
end
local function rfOf(nw)
  local f = RF[nw]
  if not f then f = '<BBbBBi8i8i8' .. string.rep('i8', nw); RF[nw] = f end
  return f
end

-- Every key of the call is read with one MGET up front (one per 1000 keys:
-- Lua unpacks at most a few thousand values); what the call writes is kept
-- in WRITTEN (false: deleted), so a later batch of the call sees what an
-- earlier one wrote, as it would with a call of its own.
local PRE, WRITTEN = {}, {}
if #KEYS <= 1000 then
  if #KEYS > 0 then PRE = redis.call('MGET', tunpack(KEYS)) end
else
  for i = 1, #KEYS, 1000 do
    local vs = redis.call('MGET', tunpack(KEYS, i, math.min(i + 999, #KEYS)))
    for j = 1, #vs do PRE[i + j - 1] = vs[j] end
  end
end
-- the value of KEYS[i] now, nil when there is none
local function get(i)
  local v = WRITTEN[KEYS[i]]
  if v == nil then v = PRE[i] end
  return v or nil
end
local function set(k, v, px)
  WRITTEN[k] = v
  if px then redis.call('SET', k, v, 'PX', dec(px)) else redis.call('SET', k, v) end
end

-- Entry i (1-based) of c's log: time (ns since base), cumulative count.
local function ent(c, i)
  return unpack(c.ef, c.log, HLEN + (i - 1) * c.es + 1)
end
-- the cumulative count through entry i (c0 through entry 0)
local function cumAt(c, i)
  if i == 0 then return c.c0 end
  local _, q = unpack(c.ef, c.log, HLEN + (i - 1) * c.es + 1)
  return q
end
-- the first entry later than cut (n+1 when none is): the ends first, then a
-- binary search between them
local function firstAfter(c, cut)
  local n = c.n
  if n == 0 or c.newest <= cut then return n + 1 end
  if c.oldest > cut then return 1 end
  -- entry 1 is at or before cut, entry n after it
  local log, ef, es, lo, hi = c.log, c.ef, c.es, 2, n
  while lo < hi do
    local mid = lo + hi
    mid = (mid - mid % 2) / 2
    if unpack(ef, log, HLEN + (mid - 1) * es + 1) <= cut then lo = mid + 1 else hi = mid end
  end
  return lo
end
-- the time of the k-th newest token (1 <= k <= tokens in the log): the
-- first entry whose count reaches token number last-k+1. Entry i holds
-- c0+i tokens or more, so that entry is at most r-c0; it is that one when
-- the entries before hold one token each (the common case: one probe).
local function kthNewest(c, k)
  local r = c.last - k + 1
  local log, ef, es, lo, hi = c.log, c.ef, c.es, 1, math.min(c.n, r - c.c0)
  if hi == 1 or cumAt(c, hi - 1) < r then return (ent(c, hi)) end
  hi = hi - 1
  while lo < hi do
    local mid = lo + hi
    mid = (mid - mid % 2) / 2
    local _, q = unpack(ef, log, HLEN + (mid - 1) * es + 1)
    if q < r then lo = mid + 1 else hi = mid end
  end
  return (ent(c, lo))
end
-- widths of a log whose longest window is L, whose times reach span from
-- its base and whose counts reach need: times keep room for twice the
-- window (a rebase is due at most once a window), counts for four times
-- what they hold (a repack is due at most every 3×need tokens)
local function widths(L, span, need)
  local tw, cw = 4, 1
  while tw < 8 and 2 ^ (8 * tw - 1) < 2 * (max(L, span) + E9) do tw = tw + 1 end
  while cw < 7 and 2 ^ (8 * cw) <= 4 * need do cw = cw + 1 end
  return tw, cw
end
local function header(tw, cw, st, base, ss, sn, ho, c0)
  return pack(HDR, VERSION, tw, cw, st, base, ss, sn, ho, c0)
end
-- pack entries ts (times since base) and qs (cumulative counts) of a log
-- under spec sp
local function packLog(sp, st, base, ss, sn, ho, ts, qs, c0)
  local span, need = 0, 1
  if #ts > 0 then span, need = max(-ts[1], ts[#ts]), qs[#qs] end
  local tw, cw = widths(sp[2 * sp.nw - 1], span, need)
  local parts = {header(tw, cw, st, base, ss, sn, ho, c0)}
  local ef = efOf(tw, cw)
  for i = 1, #ts do parts[i + 1] = pack(ef, ts[i], qs[i]) end
  return table.concat(parts)
end
-- a check's record: its key, whether it is shadow, its rule's spec, its
-- cost, and the log as v holds it (nil: no key yet, an empty log at base
-- now); nil when v is in another layout (or not a whole header and whole
-- entries). Every field up front, in the order of recordFields (records.go,
-- which makes the table an array).
local function record(k, shadow, sp, cost, v, now)
  if not v then
    return --[[record]]{k = k, shadow = shadow, sp = sp, cost = cost,
      st = CLOSED, base = now, ss = 0, sn = 0, ho = 0, c0 = 0, log = '', ef = '', es = 0, tw = 0, cw = 0, n = 0, last = 0,
      newest = false, oldest = false, d = false, dc0 = 0,
      now = 0, allowed = 0, reason = 0, window = -1, retry = 0, used = false, rst = 0, rss = 0, rsn = 0}
  end
  if #v < HLEN then return nil end
  local ver, tw, cw, st, base, ss, sn, ho, c0 = unpack(HDR, v)
  if ver ~= VERSION or tw < 4 or tw > 8 or cw < 1 or cw > 7 or (#v - HLEN) % (tw + cw) ~= 0 then return nil end
  local es, ef = tw + cw, efOf(tw, cw)
  local n = (#v - HLEN) / es
  local newest, last, oldest = false, c0, false
  if n > 0 then
    newest, last = unpack(ef, v, HLEN + (n - 1) * es + 1)
    oldest = (unpack(ef, v, HLEN + 1))
  end
  return --[[record]]{k = k, shadow = shadow, sp = sp, cost = cost,
    st = st, base = base, ss = ss, sn = sn, ho = ho, c0 = c0, log = v, ef = ef, es = es, tw = tw, cw = cw, n = n, last = last,
    newest = newest, oldest = oldest, d = false, dc0 = 0,
    now = 0, allowed = 0, reason = 0, window = -1, retry = 0, used = false, rst = 0, rss = 0, rsn = 0}
end
local batch, apply
` + budgetBatchLua + budgetApplyLua + `
local out = {}
local p, kb = 1, 0
while p <= #specs do
  local commit, hasOnce, onceTtl, n
  commit, hasOnce, onceTtl, n, p = unpack('<BBi8I4', specs, p)
  p, kb = batch(out, kb, commit == 1, hasOnce == 1, onceTtl, n, p)
end
return table.concat(out)
`)

// budgetBatchLua is the script's batch: it loads and judges one batch's
// checks at one clamped now and (commit) applies them, appending the
// batch's answer to out. It returns the position of the next batch in the
// packed checks and the number of KEYS it used.
const budgetBatchLua = `
-- the breaker as it is at now (c's spec, stored state)
local function effective(c, nowS, nowN)
  local st, ss, sn, ho = c.st, c.ss, c.sn, c.ho
  -- a reload removed the breaker: it denies nothing any more
  if not c.sp.br then return CLOSED, ss, sn, 0 end
  if c.sp.manual then
    -- a reload made an Auto breaker Manual while HalfOpen: no probation, Closed
    if st == HALF then return CLOSED, ss, sn, 0 end
    return st, ss, sn, ho
  end
  if st == OPEN and diff(nowS, nowN, ss, sn) >= c.sp.cd then
    st, ho = HALF, 0
    ss, sn = norm(ss, sn + c.sp.cd)
  end
  if st == HALF and diff(nowS, nowN, ss, sn) >= c.sp.cd then
    st, ho = CLOSED, 0
    ss, sn = norm(ss, sn + c.sp.cd)
  end
  return st, ss, sn, ho
end

-- the position after the next n packed checks from p
local function skip(n, p)
  for _ = 1, n do
    local _s, _c, nw = unpack('<Bi8B', specs, p)
    p = p + 28 + 16 * nw
  end
  return p
end

function batch(out, kb, commit, hasOnce, onceTtl, n, p)
  local nowS, nowN = nowS, nowN
  local once = nil
  if hasOnce then
    once = KEYS[kb + n + 1]
    if not commit then once = nil end
  end
  local used = n
  if hasOnce then used = used + 1 end
  -- The charge-once key holds its expiry "S.NNNNNNNNN" (the clock may be the
  -- client's); PX only bounds memory.
  if once then
    local v = get(kb + n + 1)
    if v then
      local es, en = string.match(v, '^(%d+)%.(%d+)$')
      if es and (tonumber(es) - nowS) * 1000000000 + (tonumber(en) - nowN) > 0 then
        out[#out + 1] = pack('<Bi8i8', 2, nowS, nowN)
        return skip(n, p), kb + used
      end
    end
  end

  -- load every check
  local cs = {}
  for i = 1, n do
    local shadow, cost, nw
    shadow, cost, nw, p = unpack('<Bi8B', specs, p)
    -- the rule's spec, read once per call
    local q = p + 18 + 16 * nw
    local key = string.sub(specs, p - 1, q - 1)
    local sp = SPEC[key]
    if not sp then
      -- lengths and limits, interleaved (the position after them last)
      sp = {unpack(wfOf(nw), specs, p + 18)}
      local br, manual
      br, manual, sp.cd, sp.hol = unpack('<BBi8i8', specs, p)
      sp.br, sp.manual, sp.nw = br == 1, manual == 1, nw
      SPEC[key] = sp
    end
    p = q
    local k = KEYS[kb + i]
    local v, imported = get(kb + i), false
    if not v then
      -- not in this layout yet: take a key of the hash-and-sorted-set layout
      -- of before, if any (its hash gives the base), as a packed log
      local old = string.sub(k, 1, -4) -- the key without ":v2"
      local f = redis.call('HMGET', old .. ':h', 'b', 'st', 'ss', 'sn', 'ho')
      local base = tonumber(f[1])
      if base then
        local ts, qs = {}, {}
        imported = true
        local all = redis.call('ZRANGE', old .. ':z', 0, -1, 'WITHSCORES')
        for j = 2, #all, 2 do
          local t = tonumber(all[j])
          if #ts > 0 and ts[#ts] == t then
            qs[#qs] = qs[#qs] + 1
          else
            ts[#ts + 1], qs[#qs + 1] = t, (qs[#qs] or 0) + 1
          end
        end
        v = packLog(sp, tonumber(f[2]) or CLOSED, base, tonumber(f[3]) or 0, tonumber(f[4]) or 0, tonumber(f[5]) or 0, ts, qs, 0)
      end
    end
    -- no v: a new key, no log, a closed breaker
    local c = record(k, shadow == 1, sp, cost, v, nowS)
    if not c then
      out[#out + 1] = pack('<Bi8i8H', 3, nowS, nowN, i)
      return skip(n - i, p), kb + used
    end
    if imported then c.imported = true end
    -- clampNow: time never runs backwards for a key
    if c.n > 0 and c.newest > (nowS - c.base) * E9 + nowN then
      nowS, nowN = norm(c.base, c.newest)
    elseif (c.ss - nowS) * E9 + (c.sn - nowN) > 0 then
      nowS, nowN = c.ss, c.sn
    end
    cs[i] = c
  end

  -- per key: now relative to its base (exact below 2^53 ns)
  for i = 1, n do
    local c = cs[i]
    if c.n == 0 then c.base = nowS end
    c.now = (nowS - c.base) * E9 + nowN
  end

  -- judge every check at now; the result lives on the check (allowed,
  -- reason, window, retry, rst/rss/rsn = state and since after, used)
  local admitted = true
  for i = 1, n do
    local c = cs[i]
    local w, now, last, cost = c.sp, c.now, c.last, c.cost
    local nw = w.nw
    local u = {0, 0, 0, 0, 0, 0, 0, 0} -- MaxWindows
    c.used = u
    local st, ss, sn, ho = CLOSED, c.ss, c.sn, 0
    if c.sp.br then st, ss, sn, ho = effective(c, nowS, nowN) end
    c.rst, c.rss, c.rsn = st, ss, sn
    local ln, newest, oldest, c0 = c.n, c.newest, c.oldest, c.c0
    for j = 1, nw do
      -- the window's first entry, and the tokens before it: the ends of the
      -- log first (firstAfter's own test, without a call)
      local cut, f, before = now - w[2 * j - 1], 1, c0
      if ln == 0 or newest <= cut then
        f, before = ln + 1, last
      elseif oldest <= cut then
        f = firstAfter(c, cut)
        before = cumAt(c, f - 1)
      end
      u[j] = last - before
      -- the longest window's first entry: what apply keeps
      if j == nw then c.d, c.dc0 = f, before end
    end
    if st == OPEN then
      c.reason = ISOPEN
      if not c.sp.manual then c.retry = c.sp.cd - diff(nowS, nowN, ss, sn) end
    elseif st == HALF and ho >= c.sp.hol then
      c.reason = HOFULL
      c.retry = c.sp.cd - diff(nowS, nowN, ss, sn)
    else
      -- freeIn: how long until the window has room; kept relative to now,
      -- as now plus a window may pass 2^53 ns from an old base (a dry run
      -- does not rebase)
      local freeIn, window = 0, -1
      for j = 1, nw do
        local lim = w[2 * j]
        if cost > MAXCOST or cost > lim - u[j] then
          -- the window has room for cost when its (lim-cost+1)-th newest
          -- token leaves it; a cost above the limit never fits (a whole
          -- window)
          local r = w[2 * j - 1]
          if cost <= lim and cost <= MAXCOST then
            r = kthNewest(c, lim - cost + 1) - now + r
          end
          if window < 0 or r > freeIn then window, freeIn = j - 1, r end
        end
      end
      c.window = window
      if window < 0 then
        c.allowed = 1
      else
        c.reason = EXHAUSTED
        c.retry = freeIn
        if c.sp.br then
          c.rst, c.rss, c.rsn = OPEN, nowS, nowN
          if c.sp.manual then c.retry = 0 elseif freeIn < c.sp.cd then c.retry = c.sp.cd end
        end
      end
    end
    if c.allowed == 0 and not c.shadow then admitted = false end
  end

  if commit then apply(cs, n, admitted, nowS, nowN) end

  if admitted and once then
    local q = floor((nowN + onceTtl * 1000000) / E9)
    local ev = fmt('%.0f.%09.0f', nowS + q, nowN + onceTtl * 1000000 - q * E9)
    set(once, ev, max(onceTtl, ttlFloor))
  end

  local k = #out + 1
  out[k] = pack('<Bi8i8', admitted and 1 or 0, nowS, nowN)
  for i = 1, n do
    local c = cs[i]
    out[k + i] = pack(rfOf(c.sp.nw), c.allowed, c.reason, c.window, c.st, c.rst, c.rss, c.rsn, c.retry, tunpack(c.used, 1, c.sp.nw))
  end
  return p, kb + used
end
`

// budgetApplyLua is the script's apply: the admitted checks of a committed
// batch take a token from every window, exhaustion trips, and every key
// that changed is written.
const budgetApplyLua = `
-- the log after apply: what left the longest window dropped, cost tokens
-- pushed at now (one entry with the newest when that is at now). The tail
-- of the packed string is kept as it is; the whole log is packed again
-- only when the base moves (it is 46 days old, or far enough that times
-- would outgrow their width) or counts outgrow theirs.
local function applied(c, nowS, nowN, st, ss, sn, ho, push)
  local longest = c.sp[2 * c.sp.nw - 1]
  local d, c0 = c.d, c.dc0
  if not d then
    d = firstAfter(c, c.now - longest)
    c0 = cumAt(c, d - 1)
  end
  local last = c.last
  if push then last = last + c.cost end
  local kept = c.n - d + 1
  local merge = push and kept > 0 and c.newest == c.now
  if kept > 0 and not (c.now > math.min(2 ^ (8 * c.tw - 2), REBASE) or last >= 2 ^ (8 * c.cw)) then
    local tail = ''
    local upto = #c.log
    if push then
      tail = pack(c.ef, c.now, last)
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
  return packLog(c.sp, st, nowS, ss, sn, ho, ts, qs, 0)
end

-- apply: admitted requests take a token from every window; exhaustion
-- trips. A check that changes nothing (a denial by an open breaker, say)
-- writes nothing: no write amplification under a storm of denied requests.
function apply(cs, n, admitted, nowS, nowN)
  local written = {}
  for i = 1, n do
    local c = cs[i]
    local w = written[c.k]
    if w ~= nil then
      -- a key an earlier check of the batch wrote: apply to what it wrote
      local nc = record(c.k, c.shadow, c.sp, c.cost, w or nil, nowS)
      nc.allowed, nc.reason, nc.window, nc.retry, nc.used = c.allowed, c.reason, c.window, c.retry, c.used
      nc.rst, nc.rss, nc.rsn = c.rst, c.rss, c.rsn
      c = nc
      cs[i] = c
      if c.n == 0 then c.base = nowS end
      c.now = diff(nowS, nowN, c.base, 0)
    end
    local st, ss, sn, ho = effective(c, nowS, nowN)
    local longest = c.sp[2 * c.sp.nw - 1]
    local push = c.allowed == 1 and admitted
    local trip = not push and c.reason == EXHAUSTED and c.sp.br
    if trip then st, ss, sn, ho = OPEN, nowS, nowN, 0 end
    local dirty = push or st ~= c.st or ss ~= c.ss or sn ~= c.sn or ho ~= c.ho
    if dirty then
      local newest = nil
      if push then
        newest = c.now
        local u = c.used
        for j = 1, c.sp.nw do u[j] = u[j] + c.cost end
        if st == HALF then ho = ho + 1 end
      elseif c.n > 0 then
        local t = c.newest
        if t > c.now - longest then newest = t end
      end
      -- keep the key while its log or its breaker matters
      local keep = 0
      if newest then keep = newest + longest - c.now end
      if c.sp.br and not c.sp.manual then
        if st == OPEN then keep = max(keep, 2 * c.sp.cd - diff(nowS, nowN, ss, sn)) end
        if st == HALF then keep = max(keep, c.sp.cd - diff(nowS, nowN, ss, sn)) end
      end
      local persist = c.sp.br and c.sp.manual and st == OPEN
      if c.imported then
        local old = string.sub(c.k, 1, -4)
        redis.call('DEL', old .. ':h', old .. ':z')
      end
      if keep <= 0 and not persist then
        redis.call('DEL', c.k)
        WRITTEN[c.k] = false
        written[c.k] = false
      else
        local v = applied(c, nowS, nowN, st, ss, sn, ho, push)
        written[c.k] = v
        if persist then
          set(c.k, v, nil)
        else
          set(c.k, v, max(floor(keep / 1000000) + 1000, ttlFloor))
        end
      end
    end
  end
end
`
