-- Decides, in order, every operation of ONE campaign from one batch.
--
-- This script is the only writer of the campaign's keys, and Redis runs it
-- atomically, so these invariants hold after every call:
--   available + reserved + paid == total   (stock is conserved)
--   available >= 0                         (nothing is oversold)
--   users[u] <= per_user_limit             (no user holds more than allowed)
--   an order leaves `reserved` once, to paid, cancelled or expired, and only
--   cancelled and expired return its units (so stock comes back once);
--   a request id is decided once: a redelivered request gets the answer
--   stored under its id, and changes nothing.
-- Time comes from the Redis server (TIME), never from a process clock.
--
-- KEYS: 1 meta, 2 stock, 3 users, 4 requests, 5 orders, 6 deadlines,
--       7 attempts, 8 prizes, 9 stats, 10 loans, 11 parked (all tagged
--       {c:<id>}, or {c:<id>#<b>} for stock bucket b: one slot)
-- ARGV[1]: JSON array of operations, in offset order (t = operation name,
-- as in schemas/src/state/mod.rs `op`):
--   purchase  {r, u, q, o, d = draw point or absent, ne = 1 if not eligible}
--   create    {r, def, kind, stock, limit, start, end, timeout, price,
--              draft, max_att, strategy, table = [{id, p, price, stock}],
--              table_json = the same table as the JSON text to store}
--   add_stock {r, q, prize}   close {r}   publish {r}   reset {r}
--   pay {r, o, u, ref}   cancel {r, o, u}   expire (what is due) {r}
--   fence {r, token, until_ms}: a repair's fence (below)
--   create also {nb, b} on a campaign of nb > 1 stock buckets: this is
--   bucket b (its stock is the bucket's share); purchases then carry
--   {at = requested at, ms}, and the buckets exchange
--   borrow {r, from, want, round, ask}   transfer {r, from, units, round, ask}
--   (see "Stock buckets" below)
-- ARGV[2]: retention, seconds: how long a retired campaign (closed, or its
--   window over) keeps its per-request records (KEYS 3-7 and 9) before
--   Redis drops them by themselves; meta, stock and prizes stay.
-- Returns one string per operation: records joined by "\n", fields by "|"
-- (the codecs in schemas/src/state/records.rs read them):
--   d|status|reason|order|q|decided|expires|price|prize|confirmed
--   c|outcome|reason|decided
--   t|to|order|user|q|price|purchase_request|created|expires|prize|decided[|ref]
--   r|reason|decided
--   f|token   (held, not decided: the campaign is fenced for a repair)
--   stock buckets: q|decided (a purchase parked), b|to|want|round|ask
--   (ask bucket `to` to lend), l|to|units|round|ask (units lent to `to`),
--   s|request|user|requested_at|<fields of a d record> (a parked purchase
--   decided now)
--
-- A fence (`seckill reconcile --repair`) holds every operation after it
-- until the repair is written (restore.lua lifts it) or its time passes:
-- the call stops at the first operation it meets while fenced and answers
-- `f|token` for it and every one after; what came before is decided and
-- written as usual. The processor retries the whole call later (recorded
-- requests repeat their answers), so nothing is decided against the state
-- a repair is about to replace.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- `now` as the records write it, formatted once per call.
local now_s = string.format('%d', now)
local ops = cjson.decode(ARGV[1])
local retention_ms = (tonumber(ARGV[2]) or 604800) * 1000
local out = {}
-- The per-request and per-order records: what retirement drops.
local RECORD_KEYS = { KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[9], KEYS[10], KEYS[11] }
-- Stock buckets (filled in below, used by purchase, close and reset).
local bk = {}

local function int(n)
  return string.format('%d', n)
end

local function decision(status, reason, order, q, expires, price, prize, confirmed)
  return 'd|' .. status .. '|' .. reason .. '|' .. (order or '') .. '|' .. (q and int(q) or '')
    .. '|' .. now_s .. '|' .. (expires and int(expires) or '') .. '|' .. (price or '')
    .. '|' .. (prize or '') .. '|' .. (confirmed and '1' or '0')
end

local function campaign(outcome, reason)
  return 'c|' .. outcome .. '|' .. (reason or '') .. '|' .. now_s
end

local function refused(reason)
  return 'r|' .. reason .. '|' .. now_s
end

-- Campaign fields, read once per call; nil = not read yet, false = none.
local meta = nil
-- Counters kept here and written back once at the end.
local available = nil
local d_total, d_avail, d_res, d_paid = 0, 0, 0, 0
-- Prize units left, read on first use and written back at the end.
local pstock = nil
local pdirty = {}
local stats = {}
-- Request records (KEYS[4]) and users' holdings (KEYS[3]) are read in bulk
-- before the first operation and request records written in bulk after the
-- last: one Redis call each instead of one or two per operation.
-- prior[r]: the stored answer, false = none; nil once a reset wiped them.
local prior = {}
-- Answers decided in this call, by request id: the ones to write.
local answered = {}
-- held[u]: units user u holds; nil = not read yet.
local held = {}

local function hmget_into(key, names, into, convert)
  local chunk = 500
  for s = 1, #names, chunk do
    local e = math.min(s + chunk - 1, #names)
    local vals = redis.call('HMGET', key, unpack(names, s, e))
    for j = s, e do
      into[names[j]] = convert(vals[j - s + 1])
    end
  end
end

local function get_held(u)
  local h = held[u]
  if h == nil then
    h = tonumber(redis.call('HGET', KEYS[3], u) or '0')
    held[u] = h
  end
  return h
end

-- Users whose holding changed in this call: written back in bulk at the
-- end (one HSET and one HDEL instead of a call per reservation).
local held_dirty = {}

-- Changes what user u holds; a user who holds nothing any more leaves the
-- hash, so its size is the number of users holding units.
local function add_held(u, delta)
  local h = get_held(u) + delta
  if h < 0 then
    h = 0
  end
  held[u] = h
  held_dirty[u] = true
end

-- The fence in force, if any; one past its time is dropped.
local fence = nil
do
  local f = redis.call('HMGET', KEYS[1], 'fence', 'fence_until')
  if f[1] then
    if tonumber(f[2] or '0') > now then
      fence = f[1]
    else
      redis.call('HDEL', KEYS[1], 'fence', 'fence_until', 'fence_ready')
    end
  end
end

local function set_fence(op)
  local till = tonumber(op.until_ms)
  redis.call('HSET', KEYS[1], 'fence', op.token, 'fence_until', int(till))
  redis.call('HDEL', KEYS[1], 'fence_ready')
  if till > now then
    fence = op.token
  end
  return campaign('applied')
end

local function load_meta()
  local v = redis.call('HMGET', KEYS[1], 'limit', 'start', 'end', 'timeout', 'price', 'closed',
    'draft', 'kind', 'max_att', 'strategy', 'table', 'buckets', 'bucket')
  if not v[1] then
    return false
  end
  return {
    limit = tonumber(v[1]),
    start = tonumber(v[2]),
    stop = tonumber(v[3]),
    timeout = tonumber(v[4]),
    price = v[5],
    closed = v[6] == '1',
    draft = v[7] == '1',
    lottery = v[8] == 'lottery',
    max_att = tonumber(v[9] or '0'),
    strategy = v[10] or 'fixed',
    table = v[11] and cjson.decode(v[11]) or {},
    nb = tonumber(v[12] or '1'),
    b = tonumber(v[13] or '0'),
  }
end

local function get_meta()
  if meta == nil then
    meta = load_meta()
  end
  return meta
end

local function get_available()
  if available == nil then
    available = tonumber(redis.call('HGET', KEYS[2], 'available') or '0')
  end
  return available
end

-- Every change to the stock counters goes through these four, and each
-- moves units between counters so that available + reserved + paid ==
-- total holds after it; `reserve` alone takes from `available` and refuses
-- to take it below 0.
local units = {}

-- New stock: total and available grow alike.
function units.add(q)
  get_available()
  available = available + q
  d_avail = d_avail + q
  d_total = d_total + q
end

-- available -> reserved (or straight to paid, for an order born paid).
-- Returns false, changing nothing, when fewer than q units are left.
function units.reserve(q, born_paid)
  if get_available() < q then
    return false
  end
  available = available - q
  d_avail = d_avail - q
  if born_paid then
    d_paid = d_paid + q
  else
    d_res = d_res + q
  end
  return true
end

-- Lent to a sibling bucket: total and available shrink alike (the
-- sibling's total grows by as much when it takes them).
function units.lend(q)
  get_available()
  available = available - q
  d_avail = d_avail - q
  d_total = d_total - q
end

-- reserved -> paid.
function units.pay(q)
  d_res = d_res - q
  d_paid = d_paid + q
end

-- reserved -> available (a cancel or an expiry).
function units.release(q)
  get_available()
  available = available + q
  d_avail = d_avail + q
  d_res = d_res - q
end

local function load_pstock()
  if pstock == nil then
    pstock = {}
    for _, pr in ipairs(meta.table) do
      pstock[pr.id] = tonumber(redis.call('HGET', KEYS[8], pr.id) or '0')
    end
  end
end

local function move_prize(id, delta)
  if id == nil or id == '' then
    return
  end
  load_pstock()
  pstock[id] = (pstock[id] or 0) + delta
  pdirty[id] = true
end

-- Picks a prize for draw point u, or returns nil and why not.
local function draw(u)
  load_pstock()
  if meta.strategy == 'renormalize' then
    local all, left = 0, 0
    for _, pr in ipairs(meta.table) do
      all = all + pr.p
      if pstock[pr.id] > 0 then
        left = left + pr.p
      end
    end
    if left <= 0 then
      return nil, 'sold_out'
    end
    local cum = 0
    for _, pr in ipairs(meta.table) do
      if pstock[pr.id] > 0 then
        cum = cum + pr.p * all / left
        if u < cum then
          return pr
        end
      end
    end
    return nil, 'lost'
  end
  local cum = 0
  for _, pr in ipairs(meta.table) do
    cum = cum + pr.p
    if u < cum then
      if pstock[pr.id] > 0 then
        return pr
      end
      return nil, 'lost'
    end
  end
  return nil, 'lost'
end

local function purchase(op)
  if not get_meta() then
    return decision('not_active', 'unknown_campaign')
  end
  if meta.draft then
    return decision('not_active', 'draft')
  end
  if meta.closed then
    return decision('not_active', 'closed')
  end
  if now < meta.start then
    return decision('not_active', 'not_started')
  end
  if now >= meta.stop then
    return decision('not_active', 'ended')
  end
  if op.ne then
    return decision('not_eligible', 'not_eligible')
  end
  local q = tonumber(op.q)
  if meta.lottery then
    q = 1
    if meta.max_att > 0 and tonumber(redis.call('HGET', KEYS[7], op.u) or '0') >= meta.max_att then
      return decision('limit_exceeded', 'max_attempts')
    end
  end
  if get_held(op.u) + q > meta.limit then
    if meta.limit == 1 then
      return decision('duplicate', 'already_bought')
    end
    return decision('limit_exceeded', 'per_user_limit')
  end
  if meta.nb > 1 then
    local held_back = bk.hold(op, q)
    if held_back then
      return held_back
    end
  end
  if get_available() < q then
    return decision('sold_out', 'sold_out')
  end
  local price = meta.price
  local prize = nil
  if meta.lottery then
    if op.d == nil then
      -- The processor sends a draw point for every lottery request; without
      -- one there is nothing fair to decide with.
      return decision('not_active', 'no_draw_point')
    end
    redis.call('HINCRBY', KEYS[7], op.u, 1)
    local why
    prize, why = draw(tonumber(op.d))
    if not prize then
      return decision(why, why)
    end
    move_prize(prize.id, -1)
    price = int(prize.price)
  end
  local confirmed = prize ~= nil and tonumber(price) == 0
  if not units.reserve(q, confirmed) then
    -- Checked above; only a draw that took the last units of another
    -- prize could get here.
    if prize then
      move_prize(prize.id, 1)
    end
    return decision('sold_out', 'sold_out')
  end
  add_held(op.u, q)
  local expires = now + meta.timeout * 1000
  local state = 'reserved'
  if confirmed then
    expires = now
    state = 'paid'
  else
    redis.call('ZADD', KEYS[6], expires, op.o)
  end
  local prize_id = prize and prize.id or ''
  redis.call('HSET', KEYS[5], op.o, op.u .. '|' .. int(q) .. '|' .. state .. '|' .. int(expires)
    .. '|' .. op.r .. '|' .. price .. '|' .. now_s .. '|' .. prize_id)
  return decision(prize and 'won' or 'reserved', '', op.o, q, expires, price, prize_id, confirmed)
end

local function create(op)
  local existing = redis.call('HGET', KEYS[1], 'def')
  if existing then
    if existing == op.def then
      return campaign('unchanged')
    end
    return campaign('conflict', 'different_definition')
  end
  redis.call('HSET', KEYS[1], 'def', op.def, 'kind', op.kind, 'limit', op.limit,
    'start', op.start, 'end', op['end'], 'timeout', op.timeout, 'price', op.price,
    'closed', '0', 'draft', op.draft and '1' or '0', 'max_att', op.max_att or 0,
    'strategy', op.strategy or 'fixed', 'table', op.table_json,
    'created_at', now_s)
  if op.nb then
    redis.call('HSET', KEYS[1], 'buckets', op.nb, 'bucket', op.b)
  end
  redis.call('HSET', KEYS[2], 'total', op.stock, 'available', op.stock, 'reserved', 0, 'paid', 0)
  for _, pr in ipairs(op.table or {}) do
    redis.call('HSET', KEYS[8], pr.id, pr.stock, pr.id .. ':total', pr.stock)
  end
  -- Answers recorded while the campaign was unknown carry a retention
  -- TTL (see retire): a live campaign's records never expire.
  for _, key in ipairs(RECORD_KEYS) do
    redis.call('PERSIST', key)
  end
  meta = nil
  available = nil
  pstock = nil
  return campaign('created')
end

local function add_stock(op)
  if not get_meta() then
    return campaign('refused', 'unknown_campaign')
  end
  local prize = op.prize
  if meta.lottery then
    if (prize == nil or prize == cjson.null) and #meta.table == 1 then
      prize = meta.table[1].id
    end
    local known = false
    for _, pr in ipairs(meta.table) do
      if pr.id == prize then
        known = true
      end
    end
    if not known then
      return campaign('refused', 'unknown_prize')
    end
  elseif prize ~= nil and prize ~= cjson.null then
    return campaign('refused', 'unknown_prize')
  end
  local q = tonumber(op.q)
  units.add(q)
  if meta.lottery then
    move_prize(prize, q)
    redis.call('HINCRBY', KEYS[8], prize .. ':total', q)
  end
  return campaign('applied')
end

local function set_flag(field, value)
  if not get_meta() then
    return campaign('refused', 'unknown_campaign')
  end
  redis.call('HSET', KEYS[1], field, value)
  meta = nil
  return campaign('applied')
end

local function reset()
  if not get_meta() then
    return campaign('refused', 'unknown_campaign')
  end
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[9])
  bk.forget()
  local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0') + d_total
  redis.call('HSET', KEYS[2], 'total', total, 'available', total, 'reserved', 0, 'paid', 0)
  for _, pr in ipairs(meta.table) do
    redis.call('HSET', KEYS[8], pr.id, redis.call('HGET', KEYS[8], pr.id .. ':total') or 0)
  end
  available, pstock, pdirty, stats = nil, nil, {}, {}
  d_total, d_avail, d_res, d_paid = 0, 0, 0, 0
  -- Every recorded request and holding is gone, including the answers of
  -- this call not written yet.
  prior, answered, held, held_dirty = nil, {}, {}, {}
  return campaign('applied')
end

-- An order record: user|q|state|expires|rid|price|created|prize, then
-- |paid_at|ref once the payments service paid it. The reference is the
-- last field and may itself contain '|': it is the rest of the record.
local function parse_order(raw)
  local f = {}
  local pos = 1
  while #f < 9 do
    local sep = string.find(raw, '|', pos, true)
    if not sep then
      break
    end
    f[#f + 1] = string.sub(raw, pos, sep - 1)
    pos = sep + 1
  end
  f[#f + 1] = string.sub(raw, pos)
  return { user = f[1], q = tonumber(f[2]), state = f[3], expires = tonumber(f[4]),
    rid = f[5], price = f[6], created = f[7], prize = f[8] or '',
    paid_at = tonumber(f[9] or ''), ref = f[10] or '' }
end

local function store_order(id, o)
  local raw = o.user .. '|' .. int(o.q) .. '|' .. o.state .. '|' .. int(o.expires) .. '|'
    .. o.rid .. '|' .. o.price .. '|' .. o.created .. '|' .. o.prize
  if o.ref ~= '' then
    raw = raw .. '|' .. int(o.paid_at) .. '|' .. o.ref
  end
  redis.call('HSET', KEYS[5], id, raw)
end

-- A transition record, decided `at` (now unless given); a paid order's
-- reference goes last.
local function transition(to, id, o, at)
  local rec = 't|' .. to .. '|' .. id .. '|' .. o.user .. '|' .. int(o.q) .. '|' .. o.price
    .. '|' .. o.rid .. '|' .. o.created .. '|' .. int(o.expires) .. '|' .. o.prize .. '|'
    .. int(at or now)
  if to == 'paid' and o.ref ~= '' then
    rec = rec .. '|' .. o.ref
  end
  return rec
end

-- Ends a reservation and returns its units. Only ever called on an order in
-- state `reserved`, so units come back once.
local function release(id, o, to)
  o.state = to
  store_order(id, o)
  redis.call('ZREM', KEYS[6], id)
  units.release(o.q)
  add_held(o.user, -o.q)
  if o.prize ~= '' and get_meta() then
    move_prize(o.prize, o.q)
  end
  return transition(to, id, o)
end

-- A pay comes from the payments service, so `u` (its caller) need not be
-- the owner; it carries the payment's reference `ref` (validation refuses
-- a pay without one before it gets here). A cancel is the owner's alone.
local function order_command(op, pay)
  if pay and (type(op.ref) ~= 'string' or op.ref == '') then
    return refused('unknown_operation')
  end
  local raw = redis.call('HGET', KEYS[5], op.o)
  if not raw then
    return refused('not_found')
  end
  local o = parse_order(raw)
  if not pay and o.user ~= op.u then
    return refused('not_owner')
  end
  if o.state == 'paid' then
    if pay and o.ref == op.ref and o.paid_at then
      -- The pay that paid it, again (a retry under another request id, or
      -- after a repair forgot the first one's answer): the same answer.
      return transition('paid', op.o, o, o.paid_at)
    end
    return refused('already_paid')
  end
  if o.state == 'cancelled' or o.state == 'expired' then
    return refused(o.state)
  end
  if now >= o.expires then
    -- The deadline passed before the sweeper got to it: expire it here, so
    -- a late pay can never win against an expiry.
    return release(op.o, o, 'expired') .. '\n' .. refused('expired')
  end
  if pay then
    o.state = 'paid'
    o.ref = op.ref
    o.paid_at = now
    store_order(op.o, o)
    redis.call('ZREM', KEYS[6], op.o)
    units.pay(o.q)
    return transition('paid', op.o, o)
  end
  return release(op.o, o, 'cancelled')
end

local function expire_due()
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 1000)
  local records = {}
  for _, id in ipairs(due) do
    local raw = redis.call('HGET', KEYS[5], id)
    if raw then
      local o = parse_order(raw)
      if o.state == 'reserved' then
        records[#records + 1] = release(id, o, 'expired')
      else
        redis.call('ZREM', KEYS[6], id)
      end
    else
      redis.call('ZREM', KEYS[6], id)
    end
  end
  return table.concat(records, '\n')
end

-- Stock buckets. A campaign of nb > 1 buckets keeps each bucket's stock
-- under the bucket's own keys, decided by the bucket's own partition; a
-- user's purchases always go to one bucket, so its `users` hash is the
-- whole truth for the per-user limit. When a bucket cannot serve a
-- purchase (fewer than q units left) it does not answer sold_out while a
-- sibling may still have stock: it parks the purchase (KEYS[11], in
-- arrival order; later purchases park behind it) and asks its siblings
-- one at a time, in the order b+1, b+2, ... (mod nb), through the ordered
-- path: the processor sends a signed `borrow` keyed to the sibling, whose
-- call lends min(available, want) (the units leave its total at once) and
-- answers `l|...`; the processor sends a signed `transfer` of those units
-- back, and this bucket adds them to its total and available and decides
-- its parked purchases in order, with every check of a purchase made
-- again. Purchases still short ask the next sibling; once every sibling
-- answered (a round), the rest are decided as they stand (sold_out).
-- Invariants, beside the ones above (each holds per bucket):
--   units leave a lender only in the call that decides the borrow, whose
--   answer (recorded under the borrow's request id) names them, so a
--   redelivered borrow lends nothing more; they join the borrower only in
--   the call that decides the transfer, recorded likewise: units in
--   transit are exactly the lends whose transfer is not decided yet, each
--   a message in the requests log;
--   one ask is outstanding per bucket at a time (KEYS[10]: round, open,
--   ask), and the record that asks (b|...) is in the recorded answer of
--   the operation that opened or advanced the round, so a redelivery asks
--   again (answered from the lender's record, changing nothing);
--   a bucket with parked purchases lends nothing (its own wait first).
-- `round` only grows, also across a reset: borrow and transfer request
-- ids are built from it and must never repeat.
bk.mode = 'normal' -- 'serve': deciding parked ones; 'final': the round is over
bk.qlen = nil
bk.WAIT = {} -- a parked purchase still short of units while serving

function bk.queue_len()
  if bk.qlen == nil then
    bk.qlen = redis.call('LLEN', KEYS[11])
  end
  return bk.qlen
end

-- The bucket's borrowing state, read once per call; callers change the
-- table they get and write what they change, so it stays current.
function bk.state()
  if bk.st == nil then
    local v = redis.call('HMGET', KEYS[10], 'round', 'open', 'ask', 'dry')
    bk.st = { round = tonumber(v[1] or '0'), open = tonumber(v[2] or '0'),
      ask = tonumber(v[3] or '0'), dry = tonumber(v[4] or '0') }
  end
  return bk.st
end

-- After a round in which no sibling had units left, a bucket answers what
-- it cannot serve sold_out at once for DRY_MS instead of asking again: in a
-- flash sale almost every request comes after the stock is gone, and a
-- round per batch of them (nb - 1 trips through the log each) would hold
-- every one of them back. Units that come back to a sibling meanwhile
-- (a cancel, an expiry, added stock) are borrowed by the first purchase
-- after the window.
bk.DRY_MS = 1000

-- Units the parked purchases need beyond what is available (at least 1).
-- `need` (KEYS[10]) is the sum of the parked quantities, kept as they park
-- and leave, so an ask does not read the whole queue: a sold-out flood can
-- park tens of thousands. It counts purchases the per-user limit will
-- refuse too; units lent for them stay in this bucket, sellable to its
-- users, and the checker's conservation still holds.
function bk.want()
  local need = tonumber(redis.call('HGET', KEYS[10], 'need') or '0')
  return math.max(need - get_available(), 1)
end

function bk.ask_record(st)
  return 'b|' .. int((meta.b + st.ask) % meta.nb) .. '|' .. int(bk.want()) .. '|'
    .. int(st.round) .. '|' .. int(st.ask)
end

-- Called by purchase once the request passed every check but stock: a
-- record to answer instead of deciding (parked, or still short while
-- serving), or nil to decide now.
function bk.hold(op, q)
  if bk.mode == 'final' then
    return nil
  end
  if bk.mode == 'serve' then
    if get_available() < q then
      return bk.WAIT
    end
    return nil
  end
  local n = bk.queue_len()
  if n == 0 and get_available() >= q then
    return nil
  end
  if n == 0 and now - bk.state().dry < bk.DRY_MS then
    return nil
  end
  redis.call('RPUSH', KEYS[11], cjson.encode({ r = op.r, u = op.u, q = q, o = op.o,
    at = tonumber(op.at) or now }))
  bk.qlen = n + 1
  redis.call('HINCRBY', KEYS[10], 'need', q)
  local rec = 'q|' .. now_s
  local st = bk.state()
  if st.open == 0 then
    st.round = st.round + 1
    st.open = st.round
    st.ask = 1
    redis.call('HSET', KEYS[10], 'round', st.round, 'open', st.open, 'ask', st.ask)
    rec = rec .. '\n' .. bk.ask_record(st)
  end
  return rec
end

-- Decides parked purchases in order into `records` (s|...), stopping at
-- the first still short of units (mode 'serve') or deciding them all
-- (mode 'final').
function bk.serve(mode, records)
  local n = bk.queue_len()
  if n == 0 then
    return
  end
  bk.mode = mode
  local done, left = 0, 0
  local CHUNK = 200
  local short = false
  for s = 0, n - 1, CHUNK do
    -- Read in chunks: serving usually stops at the first purchase still
    -- short of units, near the head of a long queue.
    for _, raw in ipairs(redis.call('LRANGE', KEYS[11], s, s + CHUNK - 1)) do
      local p = cjson.decode(raw)
      local r = purchase(p)
      if r == bk.WAIT then
        short = true
        break
      end
      answered[p.r] = r
      local status = string.match(r, '^d|([^|]*)|')
      stats[status] = (stats[status] or 0) + 1
      records[#records + 1] = 's|' .. p.r .. '|' .. p.u .. '|' .. int(p.at) .. '|' .. string.sub(r, 3)
      done = done + 1
      left = left + tonumber(p.q)
    end
    if short then
      break
    end
  end
  bk.mode = 'normal'
  if done == n then
    redis.call('DEL', KEYS[11])
    redis.call('HDEL', KEYS[10], 'need')
  elseif done > 0 then
    redis.call('LTRIM', KEYS[11], done, -1)
    redis.call('HINCRBY', KEYS[10], 'need', -left)
  end
  bk.qlen = n - done
end

function bk.close_round()
  redis.call('HDEL', KEYS[10], 'open', 'ask')
  local st = bk.state()
  st.open, st.ask = 0, 0
end

-- A sibling asks for units.
function bk.borrow(op)
  local lend = 0
  if get_meta() and bk.queue_len() == 0 then
    lend = math.max(math.min(get_available(), tonumber(op.want)), 0)
    if lend > 0 then
      units.lend(lend)
    end
  end
  return campaign('applied') .. '\n' .. 'l|' .. int(op.from) .. '|' .. int(lend) .. '|'
    .. int(op.round) .. '|' .. int(op.ask)
end

-- A sibling's answer to this bucket's ask: its units (maybe none).
function bk.transfer(op)
  local n = tonumber(op.units)
  if n > 0 then
    units.add(n)
  end
  local records = { campaign('applied') }
  if not get_meta() then
    return table.concat(records, '\n')
  end
  local st = bk.state()
  bk.serve('serve', records)
  if st.open ~= tonumber(op.round) or st.ask ~= tonumber(op.ask) then
    -- Not the answer the open round waits for (a repeat is answered from
    -- its record before it gets here): its units are stock all the same.
    return table.concat(records, '\n')
  end
  if bk.queue_len() == 0 then
    bk.close_round()
  elseif st.ask < meta.nb - 1 then
    st.ask = st.ask + 1
    redis.call('HSET', KEYS[10], 'ask', st.ask)
    records[#records + 1] = bk.ask_record(st)
  else
    -- Every sibling answered: what is still short is sold out, and so
    -- is what comes short in the next DRY_MS.
    bk.serve('final', records)
    bk.close_round()
    st.dry = now
    redis.call('HSET', KEYS[10], 'dry', now_s)
  end
  return table.concat(records, '\n')
end

-- A close decides every parked purchase (they are refused as closed).
function bk.after_close(rec)
  if get_meta() and meta.nb > 1 then
    local records = { rec }
    bk.serve('final', records)
    bk.close_round()
    return table.concat(records, '\n')
  end
  return rec
end

-- A reset forgets parked purchases and the open round (not the round
-- count).
function bk.forget()
  redis.call('DEL', KEYS[11])
  redis.call('HDEL', KEYS[10], 'open', 'ask', 'dry', 'need')
  bk.qlen = 0
  bk.st = nil
end

local handlers = {
  purchase = purchase,
  create = create,
  add_stock = add_stock,
  close = function() return bk.after_close(set_flag('closed', '1')) end,
  borrow = function(op) return bk.borrow(op) end,
  transfer = function(op) return bk.transfer(op) end,
  publish = function() return set_flag('draft', '0') end,
  pay = function(op) return order_command(op, true) end,
  cancel = function(op) return order_command(op, false) end,
  fence = set_fence,
}

do
  local rids, users, seen_r, seen_u = {}, {}, {}, {}
  for _, op in ipairs(ops) do
    if op.t ~= 'reset' and not seen_r[op.r] then
      seen_r[op.r] = true
      rids[#rids + 1] = op.r
    end
    if op.t == 'purchase' and op.u and not seen_u[op.u] then
      seen_u[op.u] = true
      users[#users + 1] = op.u
    end
  end
  hmget_into(KEYS[4], rids, prior, function(v) return v or false end)
  hmget_into(KEYS[3], users, held, function(v) return tonumber(v or '0') end)
end

local function recorded(r)
  local a = answered[r]
  if a then
    return a
  end
  return prior and prior[r] or nil
end

for i, op in ipairs(ops) do
  if fence then
    for j = i, #ops do
      out[j] = 'f|' .. fence
    end
    break
  end
  if op.t == 'reset' then
    -- Not recorded: a reset forgets every recorded request.
    out[i] = reset()
  else
    local known = recorded(op.r)
    if known then
      -- An expiry sweep is recorded too (its transitions, or '' when
      -- nothing was due): a retry after a lost reply must emit the orders
      -- it expired, which are no longer due.
      out[i] = known
    else
      local handler = handlers[op.t]
      local r
      if op.t == 'expire' then
        r = expire_due()
      elseif handler then
        r = handler(op)
      else
        r = refused('unknown_operation')
      end
      answered[op.r] = r
      if op.t == 'purchase' then
        local status = string.match(r, '^d|([^|]*)|')
        -- A parked purchase (q|...) has no status yet.
        if status then
          stats[status] = (stats[status] or 0) + 1
        end
      end
      out[i] = r
    end
  end
end

local answer_writes = {}
for r, a in pairs(answered) do
  answer_writes[#answer_writes + 1] = r
  answer_writes[#answer_writes + 1] = a
end
for s = 1, #answer_writes, 1000 do
  redis.call('HSET', KEYS[4], unpack(answer_writes, s, math.min(s + 999, #answer_writes)))
end
do
  local keep, gone = {}, {}
  for u in pairs(held_dirty) do
    if held[u] > 0 then
      keep[#keep + 1] = u
      keep[#keep + 1] = int(held[u])
    else
      gone[#gone + 1] = u
    end
  end
  for s = 1, #keep, 1000 do
    redis.call('HSET', KEYS[3], unpack(keep, s, math.min(s + 999, #keep)))
  end
  for s = 1, #gone, 1000 do
    redis.call('HDEL', KEYS[3], unpack(gone, s, math.min(s + 999, #gone)))
  end
end
if d_total ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'total', d_total)
end
if d_avail ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'available', d_avail)
end
if d_res ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'reserved', d_res)
end
if d_paid ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'paid', d_paid)
end
for id in pairs(pdirty) do
  redis.call('HSET', KEYS[8], id, pstock[id])
end
for status, n in pairs(stats) do
  redis.call('HINCRBY', KEYS[9], status, n)
end

-- Retirement. Once a campaign is closed or its window is over, no new
-- reservation can be made, so its per-request records only serve late
-- redeliveries and pending reservations: they get a TTL of `retention`
-- after the retirement or after the last pending payment deadline,
-- whichever is later. A live campaign's records carry no TTL (so even a
-- volatile-* eviction policy leaves them alone). Checked after every
-- write of the call, so a key created (or created again after it expired)
-- by a late request gets its TTL in the same atomic call; a key that has
-- one keeps it.
do
  local m = get_meta()
  local at
  if not m then
    -- Requests for a campaign that does not exist (yet): their answers
    -- last one retention; a create clears the TTL.
    at = now + retention_ms
  elseif m.closed or now >= m.stop then
    -- Closed at some time <= now (the flag has no time): count from now.
    local base = m.closed and now or m.stop
    local last = redis.call('ZRANGE', KEYS[6], -1, -1, 'WITHSCORES')
    if last[2] then
      base = math.max(base, tonumber(last[2]))
    end
    at = base + retention_ms
    if at <= now then
      at = now + retention_ms
    end
  end
  if at then
    for _, key in ipairs(RECORD_KEYS) do
      if redis.call('PTTL', key) == -1 then
        redis.call('PEXPIREAT', key, int(at))
      end
    end
  end
end
return out
