"""Sending failed runs back to the step that failed: RetryRun and
RedriveDeadLetters.

By default a run continues on the journey version it started on, which is
right when the cause was outside the journey (a provider outage, a bad
address). When the version itself is broken (it names a rule set that does
not exist, say) and a fixed version has been published, ``to_latest`` moves
the run to the journey's latest version, where it continues from the step
with the failed step's id. If that version has no such step the run is not
moved: it stays in the dead-letter queue and the refusal says why
(``STEP_NOT_IN_VERSION``). Runs sent with Enqueue belong to no journey and
cannot move (``NO_JOURNEY``). Each retried run is audited.
"""

from __future__ import annotations

from collections.abc import Sequence

from overture_runtime.errors import NotFound

from .journeys import JourneyStore
from .runs import JourneyTarget, RetryRefusal, RunStore

__all__ = ["Retrier"]

_PAGE = 500


class Retrier:
    """Retries and re-drives failed runs."""

    def __init__(self, *, runs: RunStore, journeys: JourneyStore) -> None:
        self._runs = runs
        self._journeys = journeys

    async def retry(self, tenant: str, run_id: str, *, to_latest: bool, actor: str, reason: str, via: str = "RetryRun",
                    targets: dict[str, JourneyTarget] | None = None) -> RetryRefusal | None:
        """Send one failed run back to its failed step; None, or why not.
        Raises NotFound for a run that does not exist."""
        journey = (await self._runs.get(tenant, run_id)).journey
        move_to = None
        if to_latest:
            if not journey:
                return RetryRefusal("NO_JOURNEY", f"run {run_id!r} was sent with Enqueue; it has no journey version to move to")
            cache = targets if targets is not None else {}
            if journey not in cache:
                latest = await self._journeys.get(tenant=tenant, name=journey)
                cache[journey] = JourneyTarget(latest.version, frozenset(s.id for s in latest.spec.steps))
            move_to = cache[journey]
        return await self._runs.retry(tenant, run_id, actor=actor, reason=reason, via=via, move_to=move_to)

    async def redrive(self, tenant: str, *, run_ids: Sequence[str], journey: str, to_latest: bool, actor: str,
                      reason: str) -> tuple[int, list[tuple[str, RetryRefusal]]]:
        """Re-drive the named runs, or every dead-lettered run of *journey*;
        returns how many went back and the (run id, refusal) of the others."""
        ids = list(run_ids) or await self._dead_lettered(tenant, journey)
        targets: dict[str, JourneyTarget] = {}
        redriven = 0
        refused: list[tuple[str, RetryRefusal]] = []
        for run_id in ids:
            try:
                refusal = await self.retry(tenant, run_id, to_latest=to_latest, actor=actor, reason=reason,
                                           via="RedriveDeadLetters", targets=targets)
            except NotFound:
                refusal = RetryRefusal("RUN_NOT_FOUND", f"run {run_id!r} does not exist")
            if refusal is None:
                redriven += 1
            else:
                refused.append((run_id, refusal))
        return redriven, refused

    async def _dead_lettered(self, tenant: str, journey: str) -> list[str]:
        ids: list[str] = []
        before: str | None = None
        while True:  # every dead-lettered run of the journey, page by page
            page = await self._runs.list_runs(tenant=tenant, journey=journey, state="failed", limit=_PAGE, before=before)
            ids += [r.run_id for r in page]
            if len(page) < _PAGE:
                return ids
            before = page[-1].run_id
