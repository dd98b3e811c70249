-- Rewrites ONE campaign's Redis state from an image that
-- `seckill reconcile --repair` rebuilt from the order store and the order
-- log (after Redis lost data, say). Atomic: the processors see the old
-- state or the new one, never a mix. The image keeps the invariants the
-- decision script keeps (available + reserved + paid == total, users within
-- their limit), because it is computed from the orders themselves.
--
-- KEYS: as decide.lua (meta, stock, users, requests, orders, deadlines,
--       attempts, prizes, stats)
-- ARGV[1]: JSON {meta, stock, users, requests, orders, attempts, prizes}
--          (objects of field -> string) and deadlines (object id -> ms).
-- ARGV[2]: the token of the repair's fence. The image is written only
--          while that fence holds and its processor has reached it (see
--          decide.lua): then no decision of the campaign is in flight and
--          none is made until this lifts the fence (the image's meta has
--          none). Otherwise nothing is written.
local f = redis.call('HMGET', KEYS[1], 'fence', 'fence_until', 'fence_ready')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if f[1] ~= ARGV[2] or f[3] ~= ARGV[2] or tonumber(f[2] or '0') <= now then
  return redis.error_reply('FENCE_LOST the repair fence ' .. ARGV[2]
    .. ' no longer holds (it timed out, or another repair replaced it)')
end
local img = cjson.decode(ARGV[1])
for i = 1, 9 do
  redis.call('DEL', KEYS[i])
end

local function put(key, tbl)
  local args = {}
  for k, v in pairs(tbl or {}) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  -- In slices: unpack() has a limit on how many values it spreads.
  for i = 1, #args, 1000 do
    redis.call('HSET', key, unpack(args, i, math.min(i + 999, #args)))
  end
end

put(KEYS[1], img.meta)
put(KEYS[2], img.stock)
put(KEYS[3], img.users)
put(KEYS[4], img.requests)
put(KEYS[5], img.orders)
put(KEYS[7], img.attempts)
put(KEYS[8], img.prizes)
local z = {}
for id, at in pairs(img.deadlines or {}) do
  z[#z + 1] = at
  z[#z + 1] = id
end
for i = 1, #z, 1000 do
  redis.call('ZADD', KEYS[6], unpack(z, i, math.min(i + 999, #z)))
end
return 1
