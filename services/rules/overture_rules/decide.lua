-- One decision's single round trip: validate the profile view the caller
-- decided on, and only then check or reserve its cap slots (caps.lua's
-- count_or_reserve, which caps.py prepends to this chunk).
--
-- KEYS[1] the subject's profile generation, KEYS[2] its cached profile view,
-- KEYS[3] on its cap ledger's keys (see caps.lua). All carry the subject's
-- hash tag.
-- ARGV[1] the generation the caller's view was read at ('' if it has none),
-- ARGV[2] a fresh random generation, set when the key is missing, and
-- ARGV[3] the generation key's lifetime (ms); from ARGV[4] on, the ledger
-- arguments of count_or_reserve, or 'none' when no cap is to be counted.
--
-- The generation key is kept alive while it is read (refreshed once half of
-- its lifetime is gone), and a missing key gets a random value rather than
-- '0': so a generation seen once never comes back after an expiry or a lost
-- Redis, and a view validated by it is the latest one committed.
-- Reply: {'ok', generation, ledger reply or nothing}, or, when the caller's
-- view is not the current one, {'stale', generation, cached view or nil},
-- without touching the ledger.

local gen = redis.call('GET', KEYS[1])
local life = tonumber(ARGV[3])
if not gen then
  gen = ARGV[2]
  redis.call('SET', KEYS[1], gen, 'PX', life)
else
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl >= 0 and ttl * 2 < life then redis.call('PEXPIRE', KEYS[1], life) end
end
if gen ~= ARGV[1] then
  return {'stale', gen, redis.call('GET', KEYS[2])}
end
if ARGV[4] == 'none' then
  return {'ok', gen}
end
return {'ok', gen, count_or_reserve(ledger_keys(3), ARGV, 3)}
