-- Decides, in order, every operation of ONE campaign from one batch.
--
-- This script is the only writer of the campaign's keys, and Redis runs it
-- atomically, so these invariants hold after every call:
--   available + reserved + paid == total   (stock is conserved)
--   available >= 0                         (nothing is oversold)
--   users[u] <= per_user_limit             (no user holds more than allowed)
--   a request id is decided once: a redelivered request gets the decision
--   stored under its id, and changes nothing.
-- Time comes from the Redis server (TIME), never from a process clock.
--
-- KEYS: 1 meta, 2 stock, 3 users, 4 requests, 5 orders (all {c:<id>} tagged)
-- ARGV[1]: JSON array of operations, in offset order:
--   {"t":"p","r":request,"u":user,"q":quantity,"o":order_id}
--   {"t":"c","r":request,"def":canonical_json,"stock":n,"limit":n,
--    "start":ms,"end":ms,"timeout":secs,"price":n}
-- Returns one string per operation, fields joined by '|':
--   status|reason|order_id|quantity|decided_at_ms|expires_at_ms|price
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ops = cjson.decode(ARGV[1])
local out = {}

local function int(n)
  return string.format('%d', n)
end

local function result(status, reason, order, q, expires, price)
  return status .. '|' .. reason .. '|' .. (order or '') .. '|' .. (q and int(q) or '')
    .. '|' .. int(now) .. '|' .. (expires and int(expires) or '') .. '|' .. (price or '')
end

-- Campaign fields, read once per call; nil = not read yet, false = no campaign.
local meta = nil
-- The available counter is kept here and written back once at the end.
local available = nil
local reserved_delta = 0

local function load_meta()
  local v = redis.call('HMGET', KEYS[1], 'limit', 'start', 'end', 'timeout', 'price', 'closed')
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
  }
end

local function purchase(op)
  if meta == nil then
    meta = load_meta()
  end
  if not meta then
    return result('not_active', 'unknown_campaign')
  end
  if meta.closed then
    return result('not_active', 'closed')
  end
  if now < meta.start then
    return result('not_active', 'not_started')
  end
  if now >= meta.stop then
    return result('not_active', 'ended')
  end
  local q = tonumber(op.q)
  local held = tonumber(redis.call('HGET', KEYS[3], op.u) or '0')
  if held + q > meta.limit then
    if meta.limit == 1 then
      return result('duplicate', 'already_bought')
    end
    return result('limit_exceeded', 'per_user_limit')
  end
  if available == nil then
    available = tonumber(redis.call('HGET', KEYS[2], 'available') or '0')
  end
  if available < q then
    return result('sold_out', 'sold_out')
  end
  available = available - q
  reserved_delta = reserved_delta + q
  redis.call('HINCRBY', KEYS[3], op.u, q)
  local expires = now + meta.timeout * 1000
  redis.call('HSET', KEYS[5], op.o, op.u .. '|' .. int(q) .. '|reserved|' .. int(expires))
  return result('reserved', '', op.o, q, expires, meta.price)
end

local function create(op)
  local existing = redis.call('HGET', KEYS[1], 'def')
  if existing then
    if existing == op.def then
      return result('unchanged', '')
    end
    return result('conflict', 'different_definition')
  end
  redis.call('HSET', KEYS[1], 'def', op.def, 'limit', op.limit, 'start', op.start,
    'end', op['end'], 'timeout', op.timeout, 'price', op.price, 'closed', '0',
    'created_at', int(now))
  redis.call('HSET', KEYS[2], 'total', op.stock, 'available', op.stock, 'reserved', 0, 'paid', 0)
  meta = nil
  available = nil
  return result('created', '')
end

for i, op in ipairs(ops) do
  local prior = redis.call('HGET', KEYS[4], op.r)
  if prior then
    out[i] = prior
  else
    local r
    if op.t == 'p' then
      r = purchase(op)
    elseif op.t == 'c' then
      r = create(op)
    else
      r = result('invalid', 'unknown_operation')
    end
    redis.call('HSET', KEYS[4], op.r, r)
    out[i] = r
  end
end

if reserved_delta ~= 0 then
  redis.call('HINCRBY', KEYS[2], 'available', -reserved_delta)
  redis.call('HINCRBY', KEYS[2], 'reserved', reserved_delta)
end
return out
