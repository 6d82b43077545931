-- stormbreaker: storms, their keys and decided messages in Redis, stepped atomically server side.
--
-- A line-by-line port of the in-process store (store/memory.rs) and the breaker step
-- (breaker/mod.rs, window.rs, senders.rs, circuit.rs); keep them in step (tests/it/redis/store.rs
-- compares them on random sequences). The contract is in store/mod.rs.
--
-- KEYS[1] is the index of opened breakers (a sorted set of storm ids scored by the end of their
-- half-open time). Every other key is named here from the prefixes in ARGV, all under one hash
-- tag, so they sit in one slot:
--   TPREFIX .. id   a key: either a storm (fields s: packed state, l: label, k: JSON array of
--                   the labels of keys joined to it) or a link (p: the storm's id, e: expiry)
--   MPREFIX .. id   a decided message: JSON {e = expiry, o = its outcomes}
-- Ids are 16 hex digits (Lua numbers cannot hold 64 bits). Times are the caller's Unix seconds
-- (never Redis' clock, so simulated clocks work): a state past its logical expiry reads as
-- absent, and TTLs run a little past it.
--
-- ARGV[1] is the command, ARGV[2] now, ARGV[3] TPREFIX, ARGV[4] MPREFIX:
--   observe now T M sender fast cap max_open message ttl n
--           {rule trip window block max_block fast_senders fast_window nkeys {id label}...}...
--       -> 11 values per counter: phase held opened rule count senders opened_at until
--          storm_id copy label ('' unless held or opened)
--   trip now T M block window max_open id label   -> the storm's label
--   reset now T M id                              -> the storm's label, or false
--   open now T M                                  -> {label, members JSON, rule, phase,
--                                                    opened_at, until, replies, senders} per
--                                                    breaker open or half-open at now

local U32 = 4294967295
local BUCKETS = 8
local MAX_STRIKES = 16
local MAX_LINK_HOPS = 8
local MAX_MEMBERS = 8
local RULE_FAST = 1
local RULE_MANUAL = 3
-- Seconds a key outlives the moment its state stops mattering (clock skew between nodes).
local GRACE = 60

-- Packed state, little-endian: expires, opened_at, until, open window, window head (u32),
-- strikes, rule (u8), 8 bucket counts (u16), then (hash, last seen) u32 pairs, one per sender.
local HEAD = '<I4I4I4I4I4I1I1' .. string.rep('I2', BUCKETS)
local HEAD_LEN = struct.size(HEAD)

local index = KEYS[1]
local cmd = ARGV[1]
local now = tonumber(ARGV[2])
local TPREFIX = ARGV[3]
local MPREFIX = ARGV[4]

local function sat(x)
  if x > U32 then return U32 end
  return x
end

local function fresh_state()
  local s = { e = 0, oa = 0, u = 0, ow = 0, head = 0, k = 0, r = 0, w = {}, sh = {}, st = {} }
  for i = 0, BUCKETS - 1 do s.w[i] = 0 end
  return s
end

local function unpack_state(packed)
  if #packed < HEAD_LEN or (#packed - HEAD_LEN) % 8 ~= 0 then return nil end
  local n = (#packed - HEAD_LEN) / 8
  local v = { struct.unpack(HEAD .. string.rep('I4I4', n), packed) }
  local s = { e = v[1], oa = v[2], u = v[3], ow = v[4], head = v[5], k = v[6], r = v[7],
              w = {}, sh = {}, st = {} }
  for i = 0, BUCKETS - 1 do s.w[i] = v[8 + i] end
  for i = 1, n do
    s.sh[i] = v[14 + 2 * i]
    s.st[i] = v[15 + 2 * i]
  end
  return s
end

local function pack_state(s)
  local w, sl = s.w, {}
  for i = 1, #s.sh do
    sl[2 * i - 1] = s.sh[i]
    sl[2 * i] = s.st[i]
  end
  return struct.pack(HEAD .. string.rep('I4I4', #s.sh), s.e, s.oa, s.u, s.ow, s.head, s.k, s.r,
    w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], unpack(sl))
end

-- Entries of this call, loaded once and written back at the end: {kind = 'storm', s = state,
-- l = label, m = members} or {kind = 'link', p = storm id, le = expiry} or {kind = 'none'}.
local cache = {}
local dirty = {}
local order = {}

local function load(id)
  local v = redis.call('HMGET', TPREFIX .. id, 's', 'l', 'k', 'p', 'e')
  if v[1] then
    local s = unpack_state(v[1])
    if s then
      local members = {}
      if v[3] and v[3] ~= '' and v[3] ~= '[]' then members = cjson.decode(v[3]) end
      return { kind = 'storm', s = s, l = v[2] or '', m = members, was = 'storm' }
    end
  elseif v[4] then
    return { kind = 'link', p = v[4], le = tonumber(v[5]) or 0, was = 'link' }
  end
  return { kind = 'none', was = 'none' }
end

local function entry(id)
  local e = cache[id]
  if e == nil then
    e = load(id)
    cache[id] = e
  end
  return e
end

local function put(id, e)
  local old = entry(id)
  e.was = old.was
  cache[id] = e
  if not dirty[id] then
    dirty[id] = true
    order[#order + 1] = id
  end
end

local function touch_entry(id)
  if not dirty[id] then
    dirty[id] = true
    order[#order + 1] = id
  end
end

local function flush()
  for _, id in ipairs(order) do
    local e = cache[id]
    local key = TPREFIX .. id
    if e.was ~= e.kind and e.was ~= 'none' then redis.call('DEL', key) end
    local expires
    if e.kind == 'storm' then
      local members = '[]'
      if #e.m > 0 then members = cjson.encode(e.m) end
      redis.call('HSET', key, 's', pack_state(e.s), 'l', e.l, 'k', members)
      expires = e.s.e
    else
      redis.call('HSET', key, 'p', e.p, 'e', e.le)
      expires = e.le
    end
    local ttl = expires - now
    if ttl < 1 then ttl = 1 end
    redis.call('EXPIRE', key, ttl + GRACE)
  end
end

-- The storm a key belongs to at now, following links.
local function resolve(id)
  for _ = 0, MAX_LINK_HOPS do
    local e = entry(id)
    if e.kind == 'storm' then
      if now >= e.s.e then return nil end
      return id
    elseif e.kind == 'link' then
      if now >= e.le then return nil end
      id = e.p
    else
      return nil
    end
  end
  return nil
end

local function add_member(storm, label)
  if storm.l == label or #storm.m >= MAX_MEMBERS then return end
  for _, m in ipairs(storm.m) do
    if m == label then return end
  end
  storm.m[#storm.m + 1] = label
end

-- window.rs

local function bucket_width(window)
  local w = math.floor(window / BUCKETS)
  if w < 1 then return 1 end
  return w
end

local function advance_to(s, bucket)
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

local function add(s, window)
  advance_to(s, math.floor(now / bucket_width(window)))
  local i = s.head % BUCKETS
  if s.w[i] < 65535 then s.w[i] = s.w[i] + 1 end
  return total(s, window)
end

-- Total at now without recording (the state is not saved after).
local function count_at(s, window)
  advance_to(s, math.floor(now / bucket_width(window)))
  return total(s, window)
end

local function merge_window(s, o)
  local head = math.max(s.head, o.head)
  advance_to(s, head)
  advance_to(o, head)
  for i = 0, BUCKETS - 1 do
    local v = s.w[i] + o.w[i]
    if v > 65535 then v = 65535 end
    s.w[i] = v
  end
end

-- senders.rs

local function record(s, sender, at, cap)
  if at < 1 then at = 1 end
  for i = 1, #s.sh do
    if s.sh[i] == sender then
      if at > s.st[i] then s.st[i] = at end
      return
    end
  end
  if cap < 1 then cap = 1 end
  if #s.sh < cap then
    s.sh[#s.sh + 1], s.st[#s.st + 1] = sender, at
    return
  end
  local oldest = 1
  for i = 2, #s.st do
    if s.st[i] < s.st[oldest] then oldest = i end
  end
  s.sh[oldest], s.st[oldest] = sender, at
end

local function distinct_since(s, since)
  local n = 0
  for i = 1, #s.st do
    if s.st[i] >= since then n = n + 1 end
  end
  return n
end

local function since(span)
  if span >= now then return 0 end
  return now - span
end

-- circuit.rs (phases: 0 closed, 1 open, 2 half-open; rank: closed 0, half-open 1, open 2)

local function peek(s, half_open)
  if s.u == 0 then return 0 end
  if now < s.u then return 1 end
  if now < sat(s.u + half_open) then return 2 end
  return 0
end

local function rank(ph)
  if ph == 1 then return 2 end
  if ph == 2 then return 1 end
  return 0
end

local function close(s)
  s.oa, s.u, s.k, s.r = 0, 0, 0, 0
end

local function phase(s, half_open)
  local ph = peek(s, half_open)
  if ph == 0 and s.u ~= 0 then close(s) end
  return ph
end

local function open(s, rule, block)
  s.oa, s.u, s.k, s.r = now, sat(now + block), 0, rule
end

local function block_after(strikes, block, max_block)
  local cap = max_block
  if block > cap then cap = block end
  local doubled = block * 2 ^ math.min(strikes, 32)
  if doubled > cap then return cap end
  return doubled
end

local function reopen(s, block, max_block)
  local strikes = math.min(s.k + 1, MAX_STRIKES)
  s.oa, s.u, s.k = now, sat(now + block_after(strikes, block, max_block)), strikes
end

local function half_open_trip(trip)
  return math.max(math.floor((trip + 1) / 2), 1)
end

-- breaker/mod.rs

local function touch(s, window)
  local e = math.max(s.e, sat(now + window))
  if s.u ~= 0 then e = math.max(e, sat(s.u + sat(window * 2))) end
  s.e = e
end

local function observe(s, sender, rule, fast, cap, l)
  local ph = phase(s, l.window)
  local count = add(s, l.window)
  record(s, sender, now, cap)
  local senders = distinct_since(s, since(l.window))
  local held, opened = 0, 0
  if ph == 1 then
    held = 1
  elseif ph == 2 then
    if distinct_since(s, s.u) >= half_open_trip(l.trip) then
      reopen(s, l.block, l.max_block)
      opened = 1
    end
  elseif senders >= l.trip then
    open(s, rule, l.block)
    opened = 1
  elseif fast and l.fast_senders > 0
      and distinct_since(s, since(l.fast_window)) >= l.fast_senders then
    open(s, RULE_FAST, l.block)
    opened = 1
  end
  touch(s, l.window)
  return { ph, held, opened, s.r, count, senders, s.oa, s.u }
end

local function merge_state(s, o, cap)
  merge_window(s, o)
  for i = 1, #o.sh do record(s, o.sh[i], o.st[i], cap) end
  s.e = math.max(s.e, o.e)
end

local function link_s(l)
  return sat(math.max(l.max_block, l.block) + sat(l.window * 2))
end

-- The index of opened breakers: scored by the end of half-open, trimmed of closed ones and
-- capped at max_open members (those closing soonest go first); expires after its last member.
local function index_open(id, s, max_open)
  local score = sat(s.u + s.ow)
  redis.call('ZADD', index, score, id)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local n = redis.call('ZCARD', index)
  if n > max_open then redis.call('ZREMRANGEBYRANK', index, 0, n - max_open - 1) end
  local ttl = score - now + GRACE
  if redis.call('TTL', index) < ttl then redis.call('EXPIRE', index, ttl) end
end

local function new_storm(label)
  local s = fresh_state()
  return { kind = 'storm', s = s, l = label, m = {} }
end

-- memory.rs observe_counter
local function observe_counter(c, sender, fast, cap, max_open)
  local l = c.limits
  local link_expires = sat(now + link_s(l))
  local storms = {}
  for _, key in ipairs(c.keys) do
    local s = resolve(key.id)
    if s then
      local seen = false
      for _, x in ipairs(storms) do
        if x == s then seen = true end
      end
      if not seen then storms[#storms + 1] = s end
    end
  end
  local survivor
  local fresh = #storms == 0
  if fresh then
    survivor = c.keys[1].id
    put(survivor, new_storm(c.keys[1].label))
  else
    survivor = storms[1]
    local best = rank(peek(entry(survivor).s, l.window))
    for i = 2, #storms do
      local r = rank(peek(entry(storms[i]).s, l.window))
      if r > best then
        survivor, best = storms[i], r
      end
    end
  end
  for _, other in ipairs(storms) do
    if other ~= survivor then
      local absorbed = entry(other)
      put(other, { kind = 'link', p = survivor, le = link_expires })
      redis.call('ZREM', index, other)
      local storm = entry(survivor)
      merge_state(storm.s, absorbed.s, cap)
      add_member(storm, absorbed.l)
      for _, m in ipairs(absorbed.m) do add_member(storm, m) end
      touch_entry(survivor)
    end
  end
  for _, key in ipairs(c.keys) do
    if key.id ~= survivor then
      local e = entry(key.id)
      local joined = false
      if e.kind == 'link' and e.p == survivor and now < e.le then
        if link_expires > e.le then e.le = link_expires end
        touch_entry(key.id)
        joined = true
      else
        put(key.id, { kind = 'link', p = survivor, le = link_expires })
      end
      if fresh or not joined then add_member(entry(survivor), key.label) end
    end
  end
  local storm = entry(survivor)
  touch_entry(survivor)
  local o = observe(storm.s, sender, c.rule, fast, cap, l)
  local label = ''
  if o[2] == 1 or o[3] == 1 then label = storm.l end
  if o[3] == 1 then
    storm.s.ow = l.window
    index_open(survivor, storm.s, max_open)
  end
  return { o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], survivor, 0, label }
end

if cmd == 'observe' then
  local sender, fast, cap = tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
  local max_open, message, ttl = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
  local n = tonumber(ARGV[11])
  local out = {}
  if message ~= '' then
    local raw = redis.call('GET', MPREFIX .. message)
    if raw then
      local rec = cjson.decode(raw)
      if now < rec.e then
        for _, o in ipairs(rec.o) do
          -- A copy opens nothing and is marked as a copy.
          local values = { o[1], o[2], 0, o[4], o[5], o[6], o[7], o[8], o[9], 1, o[11] }
          for _, v in ipairs(values) do out[#out + 1] = v end
        end
        return out
      end
    end
  end
  local at = 12
  local outcomes = {}
  for _ = 1, n do
    local c = {
      rule = tonumber(ARGV[at]),
      limits = {
        trip = tonumber(ARGV[at + 1]), window = tonumber(ARGV[at + 2]),
        block = tonumber(ARGV[at + 3]), max_block = tonumber(ARGV[at + 4]),
        fast_senders = tonumber(ARGV[at + 5]), fast_window = tonumber(ARGV[at + 6]),
      },
      keys = {},
    }
    local nkeys = tonumber(ARGV[at + 7])
    at = at + 8
    for i = 1, nkeys do
      c.keys[i] = { id = ARGV[at], label = ARGV[at + 1] }
      at = at + 2
    end
    if nkeys > 0 then
      local o = observe_counter(c, sender, fast, cap, max_open)
      outcomes[#outcomes + 1] = o
      for _, v in ipairs(o) do out[#out + 1] = v end
    end
  end
  flush()
  if message ~= '' then
    if ttl < 1 then ttl = 1 end
    redis.call('SET', MPREFIX .. message, cjson.encode({ e = sat(now + ttl), o = outcomes }),
      'EX', ttl + GRACE)
  end
  return out
elseif cmd == 'trip' then
  local block, window, max_open = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local id, label = ARGV[8], ARGV[9]
  local storm_id = resolve(id)
  if not storm_id then
    storm_id = id
    put(id, new_storm(label))
  end
  local storm = entry(storm_id)
  touch_entry(storm_id)
  open(storm.s, RULE_MANUAL, block)
  touch(storm.s, window)
  storm.s.ow = window
  flush()
  index_open(storm_id, storm.s, max_open)
  return storm.l
elseif cmd == 'reset' then
  local storm_id = resolve(ARGV[5])
  if not storm_id then return false end
  local storm = entry(storm_id)
  local expires = storm.s.e
  storm.s = fresh_state()
  storm.s.e = expires
  touch_entry(storm_id)
  flush()
  redis.call('ZREM', index, storm_id)
  return storm.l
elseif cmd == 'open' then
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf')) do
    local e = entry(id)
    local ph = 0
    if e.kind == 'storm' and now < e.s.e then ph = peek(e.s, e.s.ow) end
    if ph == 0 then
      redis.call('ZREM', index, id)
    else
      local members = '[]'
      if #e.m > 0 then members = cjson.encode(e.m) end
      out[#out + 1] = { e.l, members, e.s.r, ph, e.s.oa, e.s.u, count_at(e.s, e.s.ow),
                        distinct_since(e.s, since(e.s.ow)) }
    end
  end
  return out
end
return redis.error_reply('stormbreaker: unknown command ' .. tostring(cmd))
