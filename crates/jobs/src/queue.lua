-- The job queue on Redis (crates/jobs/src/redis.rs): every state change of a job is one call
-- of this script, so it is atomic on the server. ARGV[1] is the key prefix, ARGV[2] the
-- operation, the rest its arguments. Numbers travel as decimal strings; times are unix
-- milliseconds (13 digits: exact in Lua's doubles and in its number formatting).
--
-- Keys (P = prefix):
--   P.next                     job id counter
--   P.job:<id>                 hash of the job's fields
--   P.due                      zset of queued job ids (padded, mem) by run_at
--   P.leased                   zset of running job ids (padded) by lease_until
--   P.finished                 zset of finished job ids (padded) by finished_at
--   P.author:<did>             zset of the author's job ids (score = id)
--   P.unfinished:<did>         count of the author's queued and running jobs (the quota)
--   P.idem                     hash author\0bundle\0task\0key -> job id
--   P.open:<did>\0<b>\0<t>     set of the idempotency keys of unfinished jobs of one task
--   P.counts                   hash state -> number of jobs
local P = ARGV[1]
local op = ARGV[2]

local function jk(id) return P .. 'job:' .. id end
-- Members of the due, leased and finished sets: ids padded to 20 digits, so that jobs with
-- the same score come out in id (enqueue) order, as the set orders them as text.
local function mem(id) return string.format('%020d', tonumber(id)) end
local function field(j, f) return redis.call('HGET', j, f) end
local function openkey(j)
  return P .. 'open:' .. field(j, 'author') .. '\0' .. field(j, 'bundle') .. '\0' .. field(j, 'task')
end
local function move(from, to)
  redis.call('HINCRBY', P .. 'counts', from, -1)
  redis.call('HINCRBY', P .. 'counts', to, 1)
end

-- A job leaves queued/running for good: out of the quota and the open keys.
local function finish(id, state, now)
  local j = jk(id)
  local from = field(j, 'state')
  redis.call('HSET', j, 'state', state, 'finished_at', now)
  redis.call('HDEL', j, 'lease_until')
  redis.call('ZREM', P .. 'due', mem(id))
  redis.call('ZREM', P .. 'leased', mem(id))
  redis.call('ZADD', P .. 'finished', now, mem(id))
  redis.call('DECR', P .. 'unfinished:' .. field(j, 'author'))
  local key = field(j, 'key')
  if key then redis.call('SREM', openkey(j), key) end
  move(from, state)
end

-- A running job whose lease ran out: due again now, or dead if that was its last attempt.
local function reap(now)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'leased', '-inf', now, 'LIMIT', 0, 256)
  for _, m in ipairs(ids) do
    local id = tonumber(m)
    local j = jk(id)
    if tonumber(field(j, 'attempts')) >= tonumber(field(j, 'max_attempts')) then
      redis.call('HSET', j, 'last_error',
        'the attempt did not finish: its lease ran out (the runner stopped or lost it)')
      finish(id, 'dead', now)
    else
      redis.call('ZREM', P .. 'leased', mem(id))
      redis.call('HDEL', j, 'lease_until')
      redis.call('HSET', j, 'state', 'queued')
      redis.call('ZADD', P .. 'due', tonumber(field(j, 'run_at')), mem(id))
      move('running', 'queued')
    end
  end
  return #ids
end

if op == 'enqueue' then
  -- author bundle version task payload key delay max_attempts quota now
  local author, bundle, version, task, payload, key =
    ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
  local now = tonumber(ARGV[12])
  local idem = author .. '\0' .. bundle .. '\0' .. task .. '\0' .. key
  if key ~= '' then
    local existing = redis.call('HGET', P .. 'idem', idem)
    if existing then return {0, tonumber(existing)} end
  end
  local unfinished = tonumber(redis.call('GET', P .. 'unfinished:' .. author) or '0')
  if unfinished >= tonumber(ARGV[11]) then return {-1, 0} end
  local id = redis.call('INCR', P .. 'next')
  local run_at = now + tonumber(ARGV[9])
  local j = jk(id)
  redis.call('HSET', j, 'author', author, 'bundle', bundle, 'version', version, 'task', task,
    'payload', payload, 'state', 'queued', 'attempts', 0,
    'max_attempts', math.max(1, tonumber(ARGV[10])), 'run_at', run_at, 'created_at', now)
  if key ~= '' then
    redis.call('HSET', j, 'key', key)
    redis.call('HSET', P .. 'idem', idem, id)
    redis.call('SADD', openkey(j), key)
  end
  redis.call('ZADD', P .. 'due', run_at, mem(id))
  redis.call('INCR', P .. 'unfinished:' .. author)
  redis.call('ZADD', P .. 'author:' .. author, id, id)
  redis.call('HINCRBY', P .. 'counts', 'queued', 1)
  return {1, id}

elseif op == 'due' then
  -- now window: reaps lost leases, then the ids due first
  local now = tonumber(ARGV[3])
  reap(now)
  return redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))

elseif op == 'claim' then
  -- id now lease_until: 1 when this call took the job
  local id, now = ARGV[3], tonumber(ARGV[4])
  local j = jk(id)
  if field(j, 'state') ~= 'queued' or tonumber(field(j, 'run_at')) > now then return 0 end
  redis.call('HSET', j, 'state', 'running', 'lease_until', ARGV[5])
  redis.call('HINCRBY', j, 'attempts', 1)
  redis.call('ZREM', P .. 'due', mem(id))
  redis.call('ZADD', P .. 'leased', tonumber(ARGV[5]), mem(id))
  move('queued', 'running')
  return 1

elseif op == 'extend' then
  -- id attempt lease_until
  local id = ARGV[3]
  local j = jk(id)
  if field(j, 'state') ~= 'running' or field(j, 'attempts') ~= ARGV[4] then return 0 end
  redis.call('HSET', j, 'lease_until', ARGV[5])
  redis.call('ZADD', P .. 'leased', tonumber(ARGV[5]), mem(id))
  return 1

elseif op == 'complete' then
  -- id attempt result now (result '' = none)
  local id = ARGV[3]
  local j = jk(id)
  if field(j, 'state') ~= 'running' or field(j, 'attempts') ~= ARGV[4] then return 0 end
  if ARGV[5] ~= '' then redis.call('HSET', j, 'result', ARGV[5]) end
  finish(id, 'succeeded', tonumber(ARGV[6]))
  return 1

elseif op == 'fail' then
  -- id attempt error now backoff_delay: the state after, or false
  local id, now = ARGV[3], tonumber(ARGV[6])
  local j = jk(id)
  if field(j, 'state') ~= 'running' or field(j, 'attempts') ~= ARGV[4] then return false end
  redis.call('HSET', j, 'last_error', ARGV[5])
  if tonumber(field(j, 'attempts')) >= tonumber(field(j, 'max_attempts')) then
    finish(id, 'dead', now)
    return 'dead'
  end
  local run_at = now + tonumber(ARGV[7])
  redis.call('HSET', j, 'state', 'queued', 'run_at', run_at)
  redis.call('HDEL', j, 'lease_until')
  redis.call('ZREM', P .. 'leased', mem(id))
  redis.call('ZADD', P .. 'due', run_at, mem(id))
  move('running', 'queued')
  return 'queued'

elseif op == 'cancel' or op == 'retry' then
  -- author id now [quota]: the state after (or the one that prevented it), 'quota' when a
  -- retry would pass the author's quota, or false for no such job
  local id, now = ARGV[4], tonumber(ARGV[5])
  local j = jk(id)
  if field(j, 'author') ~= ARGV[3] then return false end
  local state = field(j, 'state')
  if op == 'cancel' then
    if state ~= 'queued' then return state end
    finish(id, 'cancelled', now)
    return 'cancelled'
  end
  if state ~= 'dead' and state ~= 'cancelled' then return state end
  local unfinished = tonumber(redis.call('GET', P .. 'unfinished:' .. ARGV[3]) or '0')
  if unfinished >= tonumber(ARGV[6]) then return 'quota' end
  redis.call('HSET', j, 'state', 'queued', 'attempts', 0, 'run_at', now)
  redis.call('HDEL', j, 'finished_at')
  redis.call('ZREM', P .. 'finished', mem(id))
  redis.call('ZADD', P .. 'due', now, mem(id))
  redis.call('INCR', P .. 'unfinished:' .. ARGV[3])
  local key = field(j, 'key')
  if key then redis.call('SADD', openkey(j), key) end
  move(state, 'queued')
  return 'queued'

elseif op == 'purge' then
  -- before: deletes up to 500 jobs finished before it; the number deleted
  local ids = redis.call('ZRANGEBYSCORE', P .. 'finished', '-inf', '(' .. ARGV[3], 'LIMIT', 0, 500)
  for _, m in ipairs(ids) do
    local id = tonumber(m)
    local j = jk(id)
    local author = field(j, 'author')
    local key = field(j, 'key')
    if key then
      redis.call('HDEL', P .. 'idem',
        author .. '\0' .. field(j, 'bundle') .. '\0' .. field(j, 'task') .. '\0' .. key)
    end
    redis.call('HINCRBY', P .. 'counts', field(j, 'state'), -1)
    redis.call('ZREM', P .. 'author:' .. author, id)
    redis.call('ZREM', P .. 'finished', mem(id))
    redis.call('DEL', j)
  end
  return #ids

elseif op == 'unfinished' then
  -- author bundle task key_prefix: 1 when an unfinished job of the task has such a key
  local keys = redis.call('SMEMBERS', P .. 'open:' .. ARGV[3] .. '\0' .. ARGV[4] .. '\0' .. ARGV[5])
  for _, k in ipairs(keys) do
    if string.sub(k, 1, #ARGV[6]) == ARGV[6] then return 1 end
  end
  return 0
end
return redis.error_reply('unknown queue operation ' .. tostring(op))
