-- Frequency-cap ledger of one subject: check, reserve (with priority
-- preemption of held reservations), commit and release, atomically.
--
-- This file holds functions only; caps.py appends the main chunk of each
-- script that uses them (the ledger's own, and decide.lua's).
--
-- Keys, in the order caps.py passes them (profile_cache.LEDGER_PARTS), all
-- under the subject's hash tag, so every script is Redis-Cluster-safe:
--   z  sorted set: decision id -> time (ms) of every entry that counts (held or
--      committed), and the member '~' at score 0 while the sets below are complete
--   h  hash: decision id -> "state|priority|expires_ms|channel|tags|preempted_by"
--      state: h held, c committed, p preempted, r released, d denied, x expired
--   o  sorted set: decision id -> time of every other entry (denied, released,
--      preempted, expired), kept only so that its hash field is pruned with it
--   x  sorted set: decision id -> expiry (ms) of every held entry
--   c:<channel>, one per channel: decision id -> time of the entries of z on it
--
-- A cap on all messages counts z and a channel cap counts its channel's set,
-- each with one ZCOUNT: the cost of a decision does not grow with what the
-- subject was sent, nor with how often it was refused. A tag cap (tags are open-
-- ended, so have no set of their own) reads z's entries in its window. Holds
-- that expired leave z when a decision meets them in x; only the live holds are
-- read, and only to find whom a full cap lets a higher priority preempt.
--
-- The marker '~' says the channel sets and x hold exactly what z holds. A
-- ledger without it (new, or written by a version before these sets) is
-- rebuilt from z once. A ledger script of that earlier version removes the
-- marker whenever it checks or reserves (it prunes z below the horizon from
-- -inf), so during a rolling deploy what it wrote is counted after a rebuild.
--
-- Arguments of count_or_reserve(K, A, at), from A[at + 1] on:
--   op (check | reserve | commit: a reservation committed as it is made), now_ms, decision_id, priority, hold_ms, retention_ms,
--   channel, tags (comma-separated), number of caps, then per cap:
--   id, kind (c channel | a all | t tag), value, limit, window_start_ms
-- Reply: {outcome, replayed, {cap_id, count, limit}..., victims...}
--   outcome: "allowed" | "denied"; counts are before this message.
-- settle(K, op, now_ms, decision_id) commits or releases; its reply is
-- {state after the call (or "missing"), preempting decision id}.

local MARKER = '~'

local function parse(meta)
  local state, prio, exp, ch, tg, by = string.match(meta, '^(%a)|(-?%d+)|(%d+)|([^|]*)|([^|]*)|(.*)$')
  return {state = state, prio = tonumber(prio), exp = tonumber(exp), ch = ch, tags = tg, by = by}
end

local function pack(e)
  return e.state .. '|' .. e.prio .. '|' .. e.exp .. '|' .. e.ch .. '|' .. e.tags .. '|' .. (e.by or '')
end

-- The ledger's keys, from KEYS[first] on.
local function ledger_keys(first)
  local K = {z = KEYS[first], h = KEYS[first + 1], o = KEYS[first + 2], x = KEYS[first + 3], ch = {}}
  local prefix = string.sub(K.z, 1, -2) .. 'c:'
  for i = first + 4, #KEYS do
    K.ch[string.sub(KEYS[i], #prefix + 1)] = KEYS[i]
  end
  return K
end

-- Entry e (id) no longer counts: out of z (into o, at its time t or z's),
-- its channel's set and x.
local function retire(K, id, e, t)
  t = t or redis.call('ZSCORE', K.z, id)
  if t then
    redis.call('ZREM', K.z, id)
    redis.call('ZADD', K.o, t, id)
  end
  redis.call('ZREM', K.x, id)
  local key = K.ch[e.ch]
  if key then redis.call('ZREM', key, id) end
end

-- Entry e (id), held past its expiry, becomes expired and stops counting;
-- whether it did.
local function expire_if_due(K, id, e, now, t)
  if e.state ~= 'h' or e.exp >= now then return false end
  e.state = 'x'
  redis.call('HSET', K.h, id, pack(e))
  retire(K, id, e, t)
  return true
end

-- Fill the channel sets and x from z, and mark the ledger complete.
local function rebuild(K, now, retention)
  for _, key in pairs(K.ch) do redis.call('DEL', key) end
  redis.call('DEL', K.x)
  local members = redis.call('ZRANGEBYSCORE', K.z, '(0', '+inf', 'WITHSCORES')
  for i = 1, #members, 2 do
    local m, t = members[i], members[i + 1]
    local meta = redis.call('HGET', K.h, m)
    if not meta then
      redis.call('ZREM', K.z, m)
    else
      local e = parse(meta)
      if expire_if_due(K, m, e, now, t) then
        -- retired
      elseif e.state == 'h' or e.state == 'c' then
        local key = K.ch[e.ch]
        if key then
          redis.call('ZADD', key, t, m)
          redis.call('PEXPIRE', key, retention)
        end
        if e.state == 'h' then
          redis.call('ZADD', K.x, e.exp, m)
          redis.call('PEXPIRE', K.x, retention)
        end
      else
        retire(K, m, e, t)
      end
    end
  end
  redis.call('ZADD', K.z, 0, MARKER)
  redis.call('PEXPIRE', K.z, retention)
end

local function settle(K, op, now, id)
  local meta = redis.call('HGET', K.h, id)
  if not meta then return {'missing', ''} end
  local e = parse(meta)
  if expire_if_due(K, id, e, now) then return {'x', ''} end
  if op == 'commit' and e.state == 'h' then
    e.state = 'c'
    redis.call('HSET', K.h, id, pack(e))
    redis.call('ZREM', K.x, id)
  elseif op == 'release' and (e.state == 'h' or e.state == 'c') then
    e.state = 'r'
    redis.call('HSET', K.h, id, pack(e))
    retire(K, id, e)
  end
  return {e.state, e.by or ''}
end

local function counts(cap, e)
  if cap.kind == 'a' then return true end
  if cap.kind == 'c' then return e.ch == cap.value end
  return string.find(',' .. e.tags .. ',', ',' .. cap.value .. ',', 1, true) ~= nil
end

local function count_or_reserve(K, A, at)
  local op = A[at + 1]
  local now = tonumber(A[at + 2])
  local id = A[at + 3]
  local prio = tonumber(A[at + 4])
  local hold = tonumber(A[at + 5])
  local retention = tonumber(A[at + 6])
  local channel = A[at + 7]
  local tags = A[at + 8]
  local ncaps = tonumber(A[at + 9])
  -- Checked before anything is written: every channel named has its set.
  local own = K.ch[channel]
  if not own then return redis.error_reply('ERR the ledger has no key for channel ' .. channel) end
  for i = 0, ncaps - 1 do
    local b = at + 10 + i * 5
    if A[b + 1] == 'c' and not K.ch[A[b + 2]] then
      return redis.error_reply('ERR the ledger has no key for channel ' .. A[b + 2])
    end
  end

  -- Forget what no window can reach any more (z from above its marker).
  local horizon = '(' .. (now - retention)
  for _, range in ipairs({{K.z, '(0'}, {K.o, '-inf'}}) do
    local key, low = range[1], range[2]
    local old = redis.call('ZRANGEBYSCORE', key, low, horizon)
    for _, m in ipairs(old) do redis.call('HDEL', K.h, m) end
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', key, low, horizon) end
  end
  redis.call('ZREMRANGEBYSCORE', own, '-inf', horizon)

  if not redis.call('ZSCORE', K.z, MARKER) then rebuild(K, now, retention) end

  -- Holds that expired stop counting; x forgets entries settled by other means.
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', K.x, '-inf', '(' .. now)) do
    local meta = redis.call('HGET', K.h, m)
    local e = meta and parse(meta)
    if not e or e.state == 'c' then
      redis.call('ZREM', K.x, m)
    elseif e.state == 'h' then
      expire_if_due(K, m, e, now)
    else
      retire(K, m, e)
    end
  end

  local previous = redis.call('HGET', K.h, id)
  local replayed = previous ~= false and previous ~= nil
  -- A repeated decision is not counted against itself.
  local self, self_t = nil, nil
  if replayed then
    self = parse(previous)
    self_t = tonumber(redis.call('ZSCORE', K.z, id))
  end

  local caps = {}
  local tag_start = nil
  for i = 0, ncaps - 1 do
    local b = at + 10 + i * 5
    local cap = {id = A[b], kind = A[b + 1], value = A[b + 2], limit = tonumber(A[b + 3]),
                 start = tonumber(A[b + 4]), count = 0, victim = nil}
    caps[#caps + 1] = cap
    if cap.kind == 't' then
      if tag_start == nil or cap.start < tag_start then tag_start = cap.start end
    else
      cap.count = redis.call('ZCOUNT', cap.kind == 'a' and K.z or K.ch[cap.value], cap.start, '+inf')
      if self_t and self_t >= cap.start and counts(cap, self) then cap.count = cap.count - 1 end
    end
  end
  if tag_start ~= nil then
    local members = redis.call('ZRANGEBYSCORE', K.z, tag_start, '+inf', 'WITHSCORES')
    for i = 1, #members, 2 do
      local m = members[i]
      local meta = m ~= id and redis.call('HGET', K.h, m)
      if meta then
        local e = parse(meta)
        local t = tonumber(members[i + 1])
        for _, cap in ipairs(caps) do
          if cap.kind == 't' and t >= cap.start and counts(cap, e) then cap.count = cap.count + 1 end
        end
      end
    end
  end

  local reserving = op == 'reserve' or op == 'commit'
  local outcome = 'allowed'
  local victims = {}
  local held = nil
  for _, cap in ipairs(caps) do
    if cap.count >= cap.limit then
      if reserving and not replayed then
        if held == nil then  -- the live holds, read once: the only entries a message may preempt
          held = {}
          for _, m in ipairs(redis.call('ZRANGEBYSCORE', K.x, now, '+inf')) do
            local meta = redis.call('HGET', K.h, m)
            local t = redis.call('ZSCORE', K.z, m)
            if meta and t then
              local e = parse(meta)
              e.id, e.t = m, tonumber(t)
              if e.state == 'h' then held[#held + 1] = e end
            end
          end
        end
        for _, e in ipairs(held) do
          if e.prio < prio and e.t >= cap.start and counts(cap, e) then
            local v = cap.victim
            if v == nil or e.prio < v.prio or (e.prio == v.prio and e.t > v.t) then cap.victim = e end
          end
        end
      end
      if cap.victim ~= nil then
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
      reply[1] = (self.state == 'h' or self.state == 'c') and 'allowed' or 'denied'
      return reply
    end
    if outcome == 'allowed' then
      for vid, v in pairs(victims) do
        v.state = 'p'
        v.by = id
        redis.call('HSET', K.h, vid, pack(v))
        retire(K, vid, v, v.t)
        reply[#reply + 1] = vid
      end
    end
    local state = 'd'
    if outcome == 'allowed' then state = op == 'commit' and 'c' or 'h' end
    redis.call('HSET', K.h, id, pack({state = state, prio = prio, exp = now + hold, ch = channel, tags = tags}))
    -- Every entry stays in a sorted set until the horizon, so that the hash
    -- is pruned with it: in z while it counts, in o otherwise.
    if state == 'd' then
      redis.call('ZADD', K.o, now, id)
    else
      redis.call('ZADD', K.z, now, id)
      redis.call('ZADD', own, now, id)
      redis.call('PEXPIRE', own, retention)
      if state == 'h' then
        redis.call('ZADD', K.x, now + hold, id)
        redis.call('PEXPIRE', K.x, retention)
      end
    end
    redis.call('PEXPIRE', K.z, retention)
    redis.call('PEXPIRE', K.o, retention)
    redis.call('PEXPIRE', K.h, retention)
  end
  return reply
end
