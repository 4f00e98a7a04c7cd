"""A journey as a graph: each step's named outgoing edges, and the checks
publish makes on the graph. Pure.

Edges are named as run histories and statistics show them: ``next`` for a
linear step, ``true``/``false`` for a condition, a case's or branch's name
for splits, ``event``/``timeout`` for a wait for an event, ``true``/``timeout``
for a wait until a condition, ``approved``/``rejected`` for an approval,
``missing`` for a delay until a trait date the profile lacks, and
``branch:<n>`` for each branch of a parallel step. An edge with an empty
target ends the run.
"""

from __future__ import annotations

from collections.abc import Iterator

from overture.orchestrator.v1 import journey_pb2
from overture_runtime.errors import Violations

__all__ = ["ACTION_KINDS", "check_graph", "edges"]

ACTION_KINDS = frozenset({"send", "update_profile", "webhook", "notify"})
"""Step kinds that act on the world, counted against ``settings.max_actions``."""


def edges(step: journey_pb2.Step) -> Iterator[tuple[str, str, str]]:
    """(edge name, field path under the step, target step id) of each outgoing edge."""
    kind = step.WhichOneof("kind")
    if kind == "condition":
        yield "true", "condition.then_step", step.condition.then_step
        yield "false", "condition.else_step", step.condition.else_step
    elif kind == "multi_split":
        for i, case in enumerate(step.multi_split.cases):
            yield case.name, f"multi_split.cases[{i}].step", case.step
        yield "default", "multi_split.default_step", step.multi_split.default_step
    elif kind == "split":
        for i, arm in enumerate(step.split.branches):
            yield arm.name, f"split.branches[{i}].step", arm.step
    elif kind == "wait_for_event":
        yield "event", "wait_for_event.on_event_step", step.wait_for_event.on_event_step
        yield "timeout", "wait_for_event.on_timeout_step", step.wait_for_event.on_timeout_step
    elif kind == "wait_until":
        yield "true", "wait_until.on_true_step", step.wait_until.on_true_step
        yield "timeout", "wait_until.on_timeout_step", step.wait_until.on_timeout_step
    elif kind == "approval":
        yield "approved", "next", step.next
        yield "rejected", "approval.on_reject_step", step.approval.on_reject_step
    elif kind == "parallel":
        for i, start in enumerate(step.parallel.branches):
            yield f"branch:{i}", f"parallel.branches[{i}]", start
    elif kind == "exit":
        return
    else:
        yield "next", "next", step.next
        if kind == "delay" and step.delay.HasField("until_trait"):
            yield "missing", "delay.until_trait.on_missing_step", step.delay.until_trait.on_missing_step


def check_graph(v: Violations, spec: journey_pb2.JourneySpec, prefix: str) -> None:
    """The first step is the one entry; every step is reachable from it;
    every edge points to a step that exists; a path may lead back to a step
    only if that step bounds the loop (``max_visits``); parallel branches
    lead to their join and hold no parallel step of their own. Each problem
    names its step. Call only when every step id is unique."""
    index = {s.id: i for i, s in enumerate(spec.steps)}
    steps = {s.id: s for s in spec.steps}
    for step in spec.steps:
        for _, path, target in edges(step):
            if target and target not in steps:
                v.add(f"{prefix}.steps[{index[step.id]}].{path}", f"no step with id {target!r}", "UNKNOWN_STEP")
    if v or not spec.steps:
        return
    graph = {s.id: [t for _, _, t in edges(s) if t] for s in spec.steps}
    state: dict[str, int] = {}
    back_edges: list[tuple[str, str]] = []

    def visit(node: str) -> None:
        stack = [(node, iter(graph[node]))]
        state[node] = 1
        while stack:
            current, targets = stack[-1]
            target = next(targets, None)
            if target is None:
                state[current] = 2
                stack.pop()
            elif state.get(target) == 1:
                back_edges.append((current, target))
            elif target not in state:
                state[target] = 1
                stack.append((target, iter(graph[target])))

    visit(spec.steps[0].id)
    for source, target in back_edges:
        if steps[target].max_visits <= 0:
            v.add(f"{prefix}.steps[{index[source]}]", f"step {source!r} leads back to step {target!r}: a loop must be bounded, by "
                  f"max_visits on step {target!r}", "UNBOUNDED_LOOP")
    for step in spec.steps:
        if step.id not in state:
            v.add(f"{prefix}.steps[{index[step.id]}]", f"step {step.id!r} cannot be reached from the first step {spec.steps[0].id!r}",
                  "UNREACHABLE_STEP")
    named = {s.parallel.join for s in spec.steps if s.WhichOneof("kind") == "parallel"}
    for step in spec.steps:
        if step.WhichOneof("kind") == "parallel":
            _check_parallel(v, step, steps, index, prefix)
        elif step.WhichOneof("kind") == "join" and step.id not in named:
            v.add(f"{prefix}.steps[{index[step.id]}].join", f"no parallel step names {step.id!r} as its join", "ORPHAN_JOIN")


def _check_parallel(v: Violations, step: journey_pb2.Step, steps: dict[str, journey_pb2.Step], index: dict[str, int],
                    prefix: str) -> None:
    field = f"{prefix}.steps[{index[step.id]}].parallel"
    join = steps.get(step.parallel.join)
    if join is None or join.WhichOneof("kind") != "join":
        v.add(f"{field}.join", f"join must name a join step; {step.parallel.join!r} is not one", "NOT_A_JOIN")
        return
    for i, start in enumerate(step.parallel.branches):
        # Every path of the branch must reach the join or an exit, and pass no
        # other parallel step: branches do not nest.
        todo, seen = [start], set()
        while todo:
            node = todo.pop()
            if node in seen or node == join.id:
                continue
            seen.add(node)
            current = steps[node]
            kind = current.WhichOneof("kind")
            if kind == "parallel":
                v.add(f"{field}.branches[{i}]", f"branch {i} reaches the parallel step {node!r}: parallel steps do not nest", "NESTED_PARALLEL")
                break
            if kind == "join":
                v.add(f"{field}.branches[{i}]", f"branch {i} reaches the join {node!r}, not its own join {join.id!r}", "WRONG_JOIN")
                break
            targets = list(edges(current))
            if kind != "exit" and any(not t for _, _, t in targets):
                v.add(f"{field}.branches[{i}]", f"branch {i} can end at step {node!r} without reaching the join {join.id!r}; "
                      "a branch ends at its join or at an exit step", "BRANCH_WITHOUT_JOIN")
                break
            todo.extend(t for _, _, t in targets if t)
