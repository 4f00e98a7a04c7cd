"""A journey's graph, laid out for drawing: its steps as nodes in layers,
and its named edges, with the counters of ``GetJourneyStats`` on both.

Steps are layered by their longest distance from the trigger along edges
that do not close a loop (a loop's edge back to its head is drawn, but
does not push the head down). The page draws the layout as SVG, with no
script.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from overture.common.v1 import messaging_pb2
from overture.orchestrator.v1 import journey_pb2, orchestrator_service_pb2

from .render import fmt_duration

__all__ = ["Edge", "Layout", "Node", "edges_of", "layout", "trigger_label"]

NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 210, 74, 40, 70, 20
TRIGGER = "(trigger)"


@dataclass
class Node:
    """One step (or the trigger) and where it is drawn."""

    id: str
    kind: str
    label: str
    x: int = 0
    y: int = 0
    entered: int = 0
    waiting: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class Edge:
    """One named edge; ``target`` empty ends the run."""

    source: str
    name: str
    target: str
    count: int = 0
    back: bool = False
    points: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Layout:
    """Nodes, edges and the drawing's size."""

    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def trigger_label(trigger: journey_pb2.JourneyTrigger) -> str:
    """What starts the journey, in a few words."""
    kind = trigger.WhichOneof("kind") or "manual"
    if kind == "event":
        return f"event {trigger.event.event_type}"
    if kind == "schedule":
        return f"schedule {trigger.schedule.cron}"
    if kind == "inactivity":
        return f"no {trigger.inactivity.event_type}"
    if kind == "segment_entered":
        return f"enters {trigger.segment_entered.segment}"
    return "manual trigger"


def _step_label(step: journey_pb2.Step) -> str:
    kind = step.WhichOneof("kind") or ""
    if kind == "send":
        channel = messaging_pb2.Channel.Name(step.send.channel).removeprefix("CHANNEL_").lower()
        return f"send {channel} · {step.send.template}"
    if kind == "delay" and step.delay.HasField("duration"):
        return f"delay {fmt_duration(step.delay.duration)}"
    if kind == "wait_for_event":
        return f"wait for {step.wait_for_event.event_type}"
    return kind.replace("_", " ")


def edges_of(step: journey_pb2.Step) -> list[tuple[str, str]]:
    """The step's outgoing edges as (edge name, target step id; empty ends the run)."""
    kind = step.WhichOneof("kind")
    if kind == "condition":
        return [("true", step.condition.then_step), ("false", step.condition.else_step)]
    if kind == "wait_for_event":
        return [("event", step.wait_for_event.on_event_step), ("timeout", step.wait_for_event.on_timeout_step)]
    if kind == "wait_until":
        return [("true", step.wait_until.on_true_step), ("timeout", step.wait_until.on_timeout_step)]
    if kind == "approval":
        return [("approved", step.next), ("rejected", step.approval.on_reject_step)]
    if kind == "split":
        return [(b.name, b.step) for b in step.split.branches]
    if kind == "multi_split":
        return [*((c.name, c.step) for c in step.multi_split.cases), ("default", step.multi_split.default_step)]
    if kind == "parallel":
        return [(f"branch:{i}", target) for i, target in enumerate(step.parallel.branches)]
    if kind == "exit":
        return []
    found = [("next", step.next)]
    if kind == "delay" and step.delay.HasField("until_trait"):
        found.append(("missing", step.delay.until_trait.on_missing_step))
    return found


def layout(spec: journey_pb2.JourneySpec, stats: orchestrator_service_pb2.JourneyStats | None = None) -> Layout:
    """The drawing of *spec*, with *stats*' counters when given."""
    steps = {s.id: s for s in spec.steps}
    nodes = {TRIGGER: Node(id=TRIGGER, kind="trigger", label=trigger_label(spec.trigger))}
    for step in spec.steps:
        nodes[step.id] = Node(id=step.id, kind=step.WhichOneof("kind") or "", label=_step_label(step))
    edges = [Edge(source=TRIGGER, name="start", target=spec.steps[0].id)] if spec.steps else []
    for step in spec.steps:
        edges += [Edge(source=step.id, name=name, target=target if target in steps else "") for name, target in edges_of(step)]
    # Layers: longest distance from the trigger, ignoring edges back to a step already on the path (loops).
    depth: dict[str, int] = {TRIGGER: 0}
    out: dict[str, list[Edge]] = defaultdict(list)
    for edge in edges:
        out[edge.source].append(edge)

    def visit(node: str, path: frozenset[str]) -> None:
        for edge in out[node]:
            if not edge.target:
                continue
            if edge.target in path:
                edge.back = True
                continue
            if depth.get(edge.target, -1) < depth[node] + 1 and len(path) < 200:
                depth[edge.target] = depth[node] + 1
                visit(edge.target, path | {edge.target})

    visit(TRIGGER, frozenset({TRIGGER}))
    for step_id in steps:  # unreachable steps (publish refuses them; drafts may have them) go last
        depth.setdefault(step_id, max(depth.values()) + 1)
    layers: dict[int, list[str]] = defaultdict(list)
    for node_id in nodes:
        layers[depth[node_id]].append(node_id)
    widest = max(len(v) for v in layers.values())
    width = MARGIN * 2 + widest * NODE_W + (widest - 1) * GAP_X
    for level, ids in layers.items():
        row = len(ids) * NODE_W + (len(ids) - 1) * GAP_X
        for i, node_id in enumerate(ids):
            nodes[node_id].x = (width - row) // 2 + i * (NODE_W + GAP_X)
            nodes[node_id].y = MARGIN + level * (NODE_H + GAP_Y)
    height = MARGIN * 2 + (max(layers) + 1) * (NODE_H + GAP_Y)
    if stats is not None:
        for counters in stats.steps:
            node = nodes.get(counters.step_id)
            if node is not None:
                node.entered, node.waiting, node.failed, node.skipped = counters.entered, counters.waiting, counters.failed, counters.skipped
                for edge in out[counters.step_id]:
                    edge.count = int(counters.edges.get(edge.name, 0))
        nodes[TRIGGER].entered = stats.entered
        for edge in out[TRIGGER]:
            edge.count = stats.entered
    for source_id, leaving in out.items():
        source = nodes[source_id]
        for k, edge in enumerate(leaving):  # a node's edges leave side by side, so their labels do not overlap
            offset = int((k - (len(leaving) - 1) / 2) * min(70, NODE_W // max(1, len(leaving))))
            start = (source.x + NODE_W // 2 + offset, source.y + NODE_H)
            if edge.target:
                target = nodes[edge.target]
                end = (target.x + NODE_W // 2, target.y) if not edge.back else (target.x + NODE_W, target.y + NODE_H // 2)
            else:
                end = (start[0] + offset // 2, start[1] + GAP_Y // 2)
            edge.points = [start, end]
    return Layout(nodes=list(nodes.values()), edges=edges, width=width, height=height)
