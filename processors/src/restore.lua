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
