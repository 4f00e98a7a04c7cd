-- Frequency-cap ledger of one subject: check, reserve (with priority
-- preemption of held reservations), commit and release, atomically.
--
-- This file holds functions only; caps.py appends the main chunk of each
-- script that uses them (the ledger's own, and decide.lua's).
--
-- z  sorted set: decision id -> time (ms) of every entry that counts (held or committed)
-- o  sorted set: decision id -> time (ms) of every other entry (denied, released, preempted,
--    expired), kept only so that its hash field is pruned at the horizon with it
-- h  hash: decision id -> "state|priority|expires_ms|channel|tags|preempted_by"
--    state: h held, c committed, p preempted, r released, d denied, x expired
-- All three keys carry the subject's hash tag, so every script is Redis-Cluster-safe.
--
-- A decision reads the entries of z within the widest window, so its cost is
-- bounded by what the caps admit, not by how often the subject was refused:
-- an entry moves from z to o when it stops counting. Entries that stopped
-- counting but are still in z (written by an earlier version of this script)
-- are moved when a decision meets them.
--
-- Arguments of count_or_reserve(z, o, h, A, at), from A[at + 1] on:
--   op (check | reserve | commit: a reservation committed as it is made), now_ms, decision_id, priority, hold_ms, retention_ms,
--   channel, tags (comma-separated), number of caps, then per cap:
--   id, kind (c channel | a all | t tag), value, limit, window_start_ms
-- Reply: {outcome, replayed, {cap_id, count, limit}..., victims...}
--   outcome: "allowed" | "denied"; counts are before this message.
-- settle(z, o, h, op, now_ms, decision_id) commits or releases; its reply is
-- {state after the call (or "missing"), preempting decision id}.

local function parse(meta)
  local state, prio, exp, ch, tg, by = string.match(meta, '^(%a)|(-?%d+)|(%d+)|([^|]*)|([^|]*)|(.*)$')
  return {state = state, prio = tonumber(prio), exp = tonumber(exp), ch = ch, tags = tg, by = by}
end

local function pack(e)
  return e.state .. '|' .. e.prio .. '|' .. e.exp .. '|' .. e.ch .. '|' .. e.tags .. '|' .. (e.by or '')
end

-- Move an entry that no longer counts from z to o, at its time t (or z's).
local function retire(z, o, id, t)
  t = t or redis.call('ZSCORE', z, id)
  if t then
    redis.call('ZREM', z, id)
    redis.call('ZADD', o, t, id)
  end
end

local function settle(z, o, h, op, now, id)
  local meta = redis.call('HGET', h, id)
  if not meta then return {'missing', ''} end
  local e = parse(meta)
  if e.state == 'h' and e.exp < now then
    e.state = 'x'
    redis.call('HSET', h, id, pack(e))
    retire(z, o, id)
    return {'x', ''}
  end
  if op == 'commit' and e.state == 'h' then
    e.state = 'c'
    redis.call('HSET', h, id, pack(e))
  elseif op == 'release' and (e.state == 'h' or e.state == 'c') then
    e.state = 'r'
    redis.call('HSET', h, id, pack(e))
    retire(z, o, id)
  end
  return {e.state, e.by or ''}
end

local function counts(cap, e)
  if cap.kind == 'a' then return true end
  if cap.kind == 'c' then return e.ch == cap.value end
  return string.find(',' .. e.tags .. ',', ',' .. cap.value .. ',', 1, true) ~= nil
end

local function count_or_reserve(z, o, h, A, at)
  local op = A[at + 1]
  local now = tonumber(A[at + 2])
  local id = A[at + 3]
  local prio = tonumber(A[at + 4])
  local hold = tonumber(A[at + 5])
  local retention = tonumber(A[at + 6])
  local channel = A[at + 7]
  local tags = A[at + 8]
  local ncaps = tonumber(A[at + 9])

  -- Forget what no window can reach any more.
  local horizon = now - retention
  for _, key in ipairs({z, o}) do
    local old = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. horizon)
    for _, m in ipairs(old) do redis.call('HDEL', h, m) end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. horizon) end
  end

  local caps = {}
  local widest = now
  for i = 0, ncaps - 1 do
    local b = at + 10 + i * 5
    local cap = {id = A[b], kind = A[b + 1], value = A[b + 2], limit = tonumber(A[b + 3]),
                 start = tonumber(A[b + 4]), count = 0, victim = nil}
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
        retire(z, o, m, members[i + 1])
      elseif e.state == 'h' or e.state == 'c' then
        entries[#entries + 1] = e
      else
        retire(z, o, m, members[i + 1])
      end
    end
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

  local reserving = op == 'reserve' or op == 'commit'
  local outcome = 'allowed'
  local victims = {}
  for _, cap in ipairs(caps) do
    if cap.count >= cap.limit then
      if reserving and cap.victim ~= nil and not replayed then
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

  if reserving then
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
        retire(z, o, vid, v.t)
        reply[#reply + 1] = vid
      end
    end
    local state = 'd'
    if outcome == 'allowed' then state = op == 'commit' and 'c' or 'h' end
    redis.call('HSET', h, id, pack({state = state, prio = prio, exp = now + hold, ch = channel, tags = tags}))
    -- Every entry stays in a sorted set until the horizon, so that the hash
    -- is pruned with it: in z while it counts, in o otherwise.
    redis.call('ZADD', state == 'd' and o or z, now, id)
    redis.call('PEXPIRE', z, retention)
    redis.call('PEXPIRE', o, retention)
    redis.call('PEXPIRE', h, retention)
  end
  return reply
end
