-- stormbreaker: breaker state of thread keys in Redis, stepped atomically server side.
--
-- A line-by-line port of `breaker::ThreadState::observe` (window.rs, senders.rs, circuit.rs);
-- keep the two in step (tests/it/redis/store.rs compares them on random sequences).
--
-- KEYS[1] is the index of opened breakers (a sorted set scored by the end of their half-open
-- time); KEYS[2..] are thread hashes. All keys share one hash tag, so they sit in one slot.
-- Times are the caller's Unix seconds (never Redis' clock, so simulated clocks work); TTLs are
-- relative to them.
--
-- ARGV[1] is the command:
--   observe now sender rule fast trip window block max_block fast_senders fast_window max_open
--           label...   -> 8 integers per thread key (phase held opened rule count senders
--                         opened_at until)
--   trip now block window max_open label   -> 1
--   reset                                  -> 1 when the key held state, else 0
--   open now                               -> {label, rule, phase, opened_at, until, replies,
--                                              senders} per breaker open or half-open at now

local U32 = 4294967295
local BUCKETS = 8
local SLOTS = 8
local MAX_STRIKES = 16
local RULE_FAST = 1
local RULE_MANUAL = 3
-- Seconds a key outlives the moment its state stops mattering (clock skew between nodes).
local GRACE = 60

-- A thread key's hash: `s` is the state packed little-endian (104 bytes: expires, opened_at,
-- until, open window, window head (u32), probe (u16), strikes, rule (u8), 8 bucket counts
-- (u16), 8 sender slots (hash, last seen: u32 each)); `l` is the key's label, written when its
-- breaker opens. One field instead of one per number keeps the script cheap.
local PACKED = '<I4I4I4I4I4I2I1I1' .. string.rep('I2', BUCKETS) .. string.rep('I4I4', SLOTS)
local PACKED_LEN = struct.size(PACKED)

local function sat(x)
  if x > U32 then return U32 end
  return x
end

local function fresh()
  local s = { exists = false, e = 0, oa = 0, u = 0, ow = 0, head = 0, p = 0, k = 0, r = 0,
              w = {}, sh = {}, st = {}, l = '' }
  for i = 0, BUCKETS - 1 do s.w[i] = 0 end
  for i = 0, SLOTS - 1 do s.sh[i], s.st[i] = 0, 0 end
  return s
end

-- A state past its expiry is read as absent, as if its key had already expired (the caller's
-- clock may run ahead of Redis', e.g. in simulations).
local function load(key, now, with_label)
  local packed, label
  if with_label then
    local v = redis.call('HMGET', key, 's', 'l')
    packed, label = v[1], v[2]
  else
    packed = redis.call('HGET', key, 's')
  end
  if not packed or #packed ~= PACKED_LEN then return fresh() end
  local v = { struct.unpack(PACKED, packed) }
  if v[1] <= now then return fresh() end
  local s = { exists = true, e = v[1], oa = v[2], u = v[3], ow = v[4], head = v[5], p = v[6],
              k = v[7], r = v[8], w = {}, sh = {}, st = {}, l = label or '' }
  for i = 0, BUCKETS - 1 do s.w[i] = v[9 + i] end
  for i = 0, SLOTS - 1 do
    s.sh[i] = v[17 + 2 * i]
    s.st[i] = v[18 + 2 * i]
  end
  return s
end

local function save(key, s, now, label)
  local w, sl = s.w, {}
  for i = 0, SLOTS - 1 do
    sl[2 * i + 1] = s.sh[i]
    sl[2 * i + 2] = s.st[i]
  end
  local packed = struct.pack(PACKED, s.e, s.oa, s.u, s.ow, s.head, s.p, s.k, s.r,
    w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], unpack(sl))
  if label then
    redis.call('HSET', key, 's', packed, 'l', label)
  else
    redis.call('HSET', key, 's', packed)
  end
  local ttl = s.e - now
  if ttl < 1 then ttl = 1 end
  redis.call('EXPIRE', key, ttl + GRACE)
end

-- window.rs

local function bucket_width(window)
  local w = math.floor(window / BUCKETS)
  if w < 1 then return 1 end
  return w
end

local function advance(s, now, window)
  local bucket = math.floor(now / bucket_width(window))
  if bucket <= s.head then return end
  if bucket - s.head >= BUCKETS then
    for i = 0, BUCKETS - 1 do s.w[i] = 0 end
  else
    for b = s.head + 1, bucket do s.w[b % BUCKETS] = 0 end
  end
  s.head = bucket
end

local function total(s, window)
  local span = math.floor(window / bucket_width(window))
  if span < 1 then span = 1 end
  if span > BUCKETS then span = BUCKETS end
  local sum = 0
  for back = 0, span - 1 do sum = sum + s.w[(s.head - back) % BUCKETS] end
  return sum
end

local function add(s, now, window)
  advance(s, now, window)
  local i = s.head % BUCKETS
  if s.w[i] < 65535 then s.w[i] = s.w[i] + 1 end
  return total(s, window)
end

-- Total at now without recording (the state is not saved after).
local function count_at(s, now, window)
  advance(s, now, window)
  return total(s, window)
end

-- senders.rs

local function record(s, sender, now)
  if now < 1 then now = 1 end
  for i = 0, SLOTS - 1 do
    if s.st[i] ~= 0 and s.sh[i] == sender then
      if now > s.st[i] then s.st[i] = now end
      return
    end
  end
  local oldest = 0
  for i = 1, SLOTS - 1 do
    if s.st[i] < s.st[oldest] then oldest = i end
  end
  s.sh[oldest], s.st[oldest] = sender, now
end

local function distinct_since(s, since)
  local n = 0
  for i = 0, SLOTS - 1 do
    if s.st[i] ~= 0 and s.st[i] >= since then n = n + 1 end
  end
  return n
end

local function since(now, span)
  if span >= now then return 0 end
  return now - span
end

-- circuit.rs (phases: 0 closed, 1 open, 2 half-open)

local function close(s)
  s.oa, s.u, s.k, s.r, s.p = 0, 0, 0, 0, 0
end

local function phase(s, now, half_open)
  if s.u == 0 then return 0 end
  if now < s.u then return 1 end
  if now < sat(s.u + half_open) then return 2 end
  close(s)
  return 0
end

local function open(s, rule, now, block)
  s.oa, s.u, s.k, s.r, s.p = now, sat(now + block), 0, rule, 0
end

local function block_after(strikes, block, max_block)
  local cap = max_block
  if block > cap then cap = block end
  local doubled = block * 2 ^ math.min(strikes, 32)
  if doubled > cap then return cap end
  return doubled
end

local function reopen(s, now, block, max_block)
  local strikes = math.min(s.k + 1, MAX_STRIKES)
  s.oa, s.u, s.k, s.p = now, sat(now + block_after(strikes, block, max_block)), strikes, 0
end

local function half_open_trip(trip)
  return math.max(math.floor((trip + 1) / 2), 1)
end

-- breaker/mod.rs

local function touch(s, now, window)
  local e = math.max(s.e, sat(now + window))
  if s.u ~= 0 then e = math.max(e, sat(s.u + sat(window * 2))) end
  s.e = e
end

local function observe(s, now, sender, rule, fast, l)
  local ph = phase(s, now, l.window)
  local count = add(s, now, l.window)
  record(s, sender, now)
  local senders = distinct_since(s, since(now, l.window))
  local held, opened = 0, 0
  if ph == 1 then
    held = 1
  elseif ph == 2 then
    s.p = math.min(s.p + 1, 65535)
    if s.p >= half_open_trip(l.trip) then
      reopen(s, now, l.block, l.max_block)
      opened = 1
    end
  elseif count >= l.trip then
    open(s, rule, now, l.block)
    opened = 1
  elseif fast and l.fast_senders > 0
      and distinct_since(s, since(now, l.fast_window)) >= l.fast_senders then
    open(s, RULE_FAST, now, l.block)
    opened = 1
  end
  touch(s, now, l.window)
  return { ph, held, opened, s.r, count, senders, s.oa, s.u }
end

-- The index of opened breakers: scored by the end of half-open, trimmed of closed ones and
-- capped at max_open members (those closing soonest go first); expires after its last member.
local function index_open(index, key, s, now, max_open)
  local score = sat(s.u + s.ow)
  redis.call('ZADD', index, score, key)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local n = redis.call('ZCARD', index)
  if n > max_open then redis.call('ZREMRANGEBYRANK', index, 0, n - max_open - 1) end
  local ttl = score - now + GRACE
  if redis.call('TTL', index) < ttl then redis.call('EXPIRE', index, ttl) end
end

local index = KEYS[1]
local cmd = ARGV[1]

if cmd == 'observe' then
  local now, sender, rule = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local fast = ARGV[5] == '1'
  local l = {
    trip = tonumber(ARGV[6]), window = tonumber(ARGV[7]), block = tonumber(ARGV[8]),
    max_block = tonumber(ARGV[9]), fast_senders = tonumber(ARGV[10]),
    fast_window = tonumber(ARGV[11]),
  }
  local max_open = tonumber(ARGV[12])
  local out = {}
  for i = 2, #KEYS do
    local s = load(KEYS[i], now, false)
    local o = observe(s, now, sender, rule, fast, l)
    local label = nil
    if o[3] == 1 then
      s.ow, label = l.window, ARGV[11 + i]
    end
    save(KEYS[i], s, now, label)
    if o[3] == 1 then index_open(index, KEYS[i], s, now, max_open) end
    for _, v in ipairs(o) do out[#out + 1] = v end
  end
  return out
elseif cmd == 'trip' then
  local now, block, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local s = load(KEYS[2], now, false)
  open(s, RULE_MANUAL, now, block)
  touch(s, now, window)
  s.ow = window
  save(KEYS[2], s, now, ARGV[6])
  index_open(index, KEYS[2], s, now, tonumber(ARGV[5]))
  return 1
elseif cmd == 'reset' then
  redis.call('ZREM', index, KEYS[2])
  return redis.call('DEL', KEYS[2])
elseif cmd == 'open' then
  local now = tonumber(ARGV[2])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local out = {}
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf')) do
    local s = load(key, now, true)
    local ph = 0
    if s.exists then ph = phase(s, now, s.ow) end
    if ph == 0 then
      redis.call('ZREM', index, key)
    else
      out[#out + 1] = { s.l, s.r, ph, s.oa, s.u, count_at(s, now, s.ow),
                        distinct_since(s, since(now, s.ow)) }
    end
  end
  return out
end
return redis.error_reply('stormbreaker: unknown command ' .. tostring(cmd))
