"""Lua scripts run as ``EVALSHA``, any number of them in one round trip.

redis-py's ``Script`` objects, queued on a pipeline, first ask ``SCRIPT
EXISTS`` on every execution: a second round trip per pipeline. Here the
commands go out as they are; a script Redis does not know (after a restart
or ``SCRIPT FLUSH``) answers ``NOSCRIPT``, having done nothing, and only
then is it loaded and its commands sent again.

:class:`ScriptChannel` carries the decisions' scripts on one connection of
its own: the commands of every caller that arrives while a round trip is
out go together in the next one (packed by hiredis), so concurrent decisions
share round trips the way group commit shares transactions, and each pays
no connection-pool bookkeeping. With Redis Cluster, whose keys live on
several nodes, :func:`run_scripts` goes through redis-py's pipeline instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Script", "ScriptChannel", "run_scripts"]


class Script:
    """One Lua script, known by its SHA1."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names scripts by their SHA1

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command that runs this script on *keys* and *args*."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


async def run_scripts(redis: aioredis.Redis, commands: Sequence[tuple[Script, tuple[Any, ...]]]) -> list[Any]:
    """Run ``(script, command)`` pairs in one round trip (a pipeline when
    there are several); return their replies in order. A reply that is an
    error raises it, as a direct call would."""
    if not commands:
        return []
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    for _ in range(2):  # the second pass only after NOSCRIPT
        if len(todo) == 1:
            script, command = commands[todo[0]]
            try:
                replies[todo[0]] = await redis.execute_command(*command)  # type: ignore[no-untyped-call]
                return replies
            except NoScriptError:
                await redis.script_load(script.source)
                continue
        pipe = redis.pipeline(transaction=False)
        for i in todo:
            pipe.execute_command(*commands[i][1])  # type: ignore[no-untyped-call]
        answers = await pipe.execute(raise_on_error=False)
        missing = []
        for i, answer in zip(todo, answers, strict=True):
            if isinstance(answer, NoScriptError):
                missing.append(i)
            elif isinstance(answer, ResponseError):
                raise answer
            else:
                replies[i] = answer
        if not missing:
            return replies
        for source in {commands[i][0].source for i in missing}:
            await redis.script_load(source)
        todo = missing
    raise NoScriptError("the script could not be loaded")


Command = tuple["Script", tuple[Any, ...]]


class ScriptChannel:
    """Runs script commands on one dedicated connection, coalescing the
    commands of concurrent callers into shared round trips. Not thread-safe;
    one per process and Redis. Falls back to :func:`run_scripts` for a
    Redis Cluster client."""

    def __init__(self, redis: aioredis.Redis, *, timeout: float = 1.0) -> None:
        self._redis = redis
        self._timeout = timeout
        pool = getattr(redis, "connection_pool", None)
        self._connection: Any = pool.make_connection() if isinstance(redis, aioredis.Redis) and pool is not None else None
        self._queue: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._busy = False

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of *commands*, in order; raises a Redis error when
        Redis cannot be reached in time, or answers one of them with an error."""
        if not commands:
            return []
        if self._connection is None:
            return await run_scripts(self._redis, commands)
        if not self._busy:  # nothing in flight: this caller makes the round trip itself
            self._busy = True
            try:
                replies = await self._round_trip(list(commands))
            finally:
                if self._queue:  # others arrived meanwhile: a task takes them on
                    asyncio.get_running_loop().create_task(self._flush())
                else:
                    self._busy = False
            failed = next((r for r in replies if isinstance(r, ResponseError)), None)
            if failed is not None:
                raise failed
            return replies
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        return await future

    async def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            await self._connection.disconnect()

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    replies = await self._round_trip([c for commands, _ in batch for c in commands])
                except (RedisError, OSError) as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                at = 0
                for commands, future in batch:
                    mine, at = replies[at:at + len(commands)], at + len(commands)
                    failed = next((r for r in mine if isinstance(r, ResponseError)), None)
                    if not future.done():
                        if failed is not None:
                            future.set_exception(failed)
                        else:
                            future.set_result(mine)
        finally:
            self._busy = False

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        replies = await self._exchange([c for _, c in commands])
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # Redis forgot the scripts (a restart, SCRIPT FLUSH): load them, send those again
            sources = list({commands[i][0].source: None for i in missing})
            await self._exchange([("SCRIPT", "LOAD", source) for source in sources])
            for i, reply in zip(missing, await self._exchange([commands[i][1] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        conn = self._connection
        try:
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(b"".join(hiredis.pack_command(c) for c in commands), check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response(timeout=math.inf))
                    except ResponseError as error:  # a reply, read whole: the connection is still in step
                        replies.append(error)
                return replies
        except TimeoutError:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError("Redis did not answer in time") from None
        except BaseException:
            await conn.disconnect(nowait=True)  # replies may be left unread: never reuse the connection
            raise
