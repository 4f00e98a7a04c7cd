-- Frequency-cap ledger of one subject: check, reserve (with priority
-- preemption of held reservations), commit and release, atomically.
--
-- KEYS[1]  sorted set: decision id -> time (ms) of every ledger entry (pruned at the horizon)
-- KEYS[2]  hash: decision id -> "state|priority|expires_ms|channel|tags|preempted_by"
--          state: h held, c committed, p preempted, r released, d denied, x expired
-- Both keys carry the subject's hash tag, so the script is Redis-Cluster-safe.
--
-- ARGV for check/reserve:
--   1 op, 2 now_ms, 3 decision_id, 4 priority, 5 hold_ms, 6 retention_ms,
--   7 channel, 8 tags (comma-separated), 9 number of caps, then per cap:
--   id, kind (c channel | a all | t tag), value, limit, window_start_ms
-- ARGV for commit/release: 1 op, 2 now_ms, 3 decision_id
--
-- Reply for check/reserve: {outcome, replayed, {cap_id, count, limit}..., victims...}
--   outcome: "allowed" | "denied"; counts are before this message.
-- Reply for commit/release: {state after the call (or "missing"), preempting decision id}.

local z, h = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local id = ARGV[3]

local function parse(meta)
  local state, prio, exp, ch, tg, by = string.match(meta, '^(%a)|(-?%d+)|(%d+)|([^|]*)|([^|]*)|(.*)$')
  return {state = state, prio = tonumber(prio), exp = tonumber(exp), ch = ch, tags = tg, by = by}
end

local function pack(e)
  return e.state .. '|' .. e.prio .. '|' .. e.exp .. '|' .. e.ch .. '|' .. e.tags .. '|' .. (e.by or '')
end

if op == 'commit' or op == 'release' then
  local meta = redis.call('HGET', h, id)
  if not meta then return {'missing', ''} end
  local e = parse(meta)
  if e.state == 'h' and e.exp < now then
    e.state = 'x'
    redis.call('HSET', h, id, pack(e))
    return {'x', ''}
  end
  if op == 'commit' and e.state == 'h' then
    e.state = 'c'
    redis.call('HSET', h, id, pack(e))
  elseif op == 'release' and (e.state == 'h' or e.state == 'c') then
    e.state = 'r'
    redis.call('HSET', h, id, pack(e))
  end
  return {e.state, e.by or ''}
end

local prio = tonumber(ARGV[4])
local hold = tonumber(ARGV[5])
local retention = tonumber(ARGV[6])
local channel = ARGV[7]
local tags = ARGV[8]
local ncaps = tonumber(ARGV[9])

-- Forget what no window can reach any more.
local horizon = now - retention
local old = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. horizon)
for _, m in ipairs(old) do redis.call('HDEL', h, m) end
if #old > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. horizon) end

local caps = {}
local widest = now
for i = 0, ncaps - 1 do
  local b = 10 + i * 5
  local cap = {id = ARGV[b], kind = ARGV[b + 1], value = ARGV[b + 2], limit = tonumber(ARGV[b + 3]),
               start = tonumber(ARGV[b + 4]), count = 0, victim = nil}
  caps[#caps + 1] = cap
  if cap.start < widest then widest = cap.start end
end

local previous = redis.call('HGET', h, id)
local replayed = previous ~= false and previous ~= nil

local entries = {}
local members = redis.call('ZRANGEBYSCORE', z, widest, '+inf', 'WITHSCORES')
for i = 1, #members, 2 do
  local m = members[i]
  local meta = redis.call('HGET', h, m)
  if meta and m ~= id then
    local e = parse(meta)
    e.id = m
    e.t = tonumber(members[i + 1])
    if e.state == 'h' and e.exp < now then
      e.state = 'x'
      redis.call('HSET', h, m, pack(e))
    elseif e.state == 'h' or e.state == 'c' then
      entries[#entries + 1] = e
    end
  end
end

local function counts(cap, e)
  if cap.kind == 'a' then return true end
  if cap.kind == 'c' then return e.ch == cap.value end
  return string.find(',' .. e.tags .. ',', ',' .. cap.value .. ',', 1, true) ~= nil
end

for _, cap in ipairs(caps) do
  for _, e in ipairs(entries) do
    if e.t >= cap.start and counts(cap, e) then
      cap.count = cap.count + 1
      if e.state == 'h' and e.prio < prio then
        local v = cap.victim
        if v == nil or e.prio < v.prio or (e.prio == v.prio and e.t > v.t) then cap.victim = e end
      end
    end
  end
end

local outcome = 'allowed'
local victims = {}
for _, cap in ipairs(caps) do
  if cap.count >= cap.limit then
    if op == 'reserve' and cap.victim ~= nil and not replayed then
      victims[cap.victim.id] = cap.victim
    else
      outcome = 'denied'
    end
  end
end

local reply = {outcome, replayed and 1 or 0}
for _, cap in ipairs(caps) do
  reply[#reply + 1] = {cap.id, cap.count, cap.limit}
end

if op == 'reserve' then
  if replayed then
    local e = parse(previous)
    reply[1] = (e.state == 'h' or e.state == 'c') and 'allowed' or 'denied'
    return reply
  end
  if outcome == 'allowed' then
    for vid, v in pairs(victims) do
      v.state = 'p'
      v.by = id
      redis.call('HSET', h, vid, pack(v))
      reply[#reply + 1] = vid
    end
  end
  local state = outcome == 'allowed' and 'h' or 'd'
  redis.call('HSET', h, id, pack({state = state, prio = prio, exp = now + hold, ch = channel, tags = tags}))
  -- Every entry stays in the sorted set until the horizon, so that the
  -- hash is pruned with it; only held and committed entries are counted.
  redis.call('ZADD', z, now, id)
  redis.call('PEXPIRE', z, retention)
  redis.call('PEXPIRE', h, retention)
end
return reply
