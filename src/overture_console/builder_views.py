"""The journey builder: a form over the whole definition (trigger and its
filter, a chain of steps of every kind with their edges, templates, entry,
goal), started from a template of the library or a published journey;
conditions built from the rule set's declared attributes; a preview on a
sample event and profile; publish; and every problem shown next to the
field it names. Without script, each button posts the form and the page
comes back with the change; with htmx a kind change redraws it at once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import yaml
from google.protobuf import json_format
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overture.orchestrator.v1 import journey_pb2
from overture.orchestrator.v1 import orchestrator_service_pb2 as OS
from overture.rules.v1 import profile_pb2, rule_set_pb2
from overture.rules.v1 import rules_service_pb2 as RS

from .builder import form_path, read_form, spec_values, widgets
from .graph import edges_of
from .render import page
from .services import ServiceError
from .web import BadInput, Visit, view

__all__ = ["routes"]

_OPERATORS = {"==": "equals", "!=": "is not", ">": "more than", ">=": "at least", "<": "less than", "<=": "at most",
              "contains": "contains", "set": "is set"}
_ATTRIBUTE_FIELDS = ("trigger.event.filter", "goal.filter", ".wait_for_event.filter")


def _blank() -> dict[str, Any]:
    return {"trigger": {"event": {"event_type": ""}}, "steps": [{"id": "send-1", "send": {"channel": "CHANNEL_EMAIL", "template": "message"}}],
            "templates": {"message": {"subject": "", "text_body": ""}}}


async def _catalogue(visit: Visit) -> tuple[dict[str, dict[str, tuple[str, bool]]], list[tuple[str, str]], str]:
    """Field help per kind, the step kinds to add (kind, title), and a notice when the catalogue is not served."""
    try:
        reply = await visit.call("orchestrator.ListStepTypes", OS.ListStepTypesRequest())
    except ServiceError as error:
        kinds = [(f.name, f.name.replace("_", " ")) for f in journey_pb2.Step.DESCRIPTOR.oneofs_by_name["kind"].fields]
        return {}, kinds, error.notice
    help_ = {t.kind: {f.name: (f.description, f.required) for f in t.fields} for t in [*reply.triggers, *reply.steps]}
    return help_, [(t.kind, t.title) for t in reply.steps], ""


async def _attributes(visit: Visit, rule_set: str) -> list[rule_set_pb2.AttributeDeclaration]:
    if not rule_set or not visit.can("rules.GetRuleSetVersion"):
        return []
    try:
        found = await visit.call("rules.GetRuleSetVersion", RS.GetRuleSetVersionRequest(rule_set=rule_set))
    except ServiceError:
        return []
    return list(found.rule_set_version.spec.attributes)


def _choices(path: str, attributes: list[rule_set_pb2.AttributeDeclaration]) -> list[tuple[str, str]]:
    """The names an expression at *path* can read, for the condition builder: (qualified name, type)."""
    found = []
    for a in attributes:
        kind = rule_set_pb2.AttributeType.Name(a.type).removeprefix("ATTRIBUTE_TYPE_").lower()
        if path.endswith(_ATTRIBUTE_FIELDS):
            found.append((f"attributes.{a.name}", kind))
        elif path.endswith("profile_condition") or ".wait_until." in path:
            found.append((f"profile.traits.{a.name}", kind))
        else:
            found += [(f"profile.traits.{a.name}", kind), (f"event.attributes.{a.name}", kind)]
    return found


def _condition(name: str, kind: str, operator: str, value: str) -> str:
    """One comparison in rule-engine syntax; raises BadInput for a value the type cannot hold."""
    if operator == "set":
        return f"{name} != null"
    if kind == "number":
        try:
            literal = json.dumps(float(value)) if "." in value else str(int(value))
        except ValueError:
            raise BadInput(f"{name} is a number; {value!r} is not") from None
    elif kind == "boolean":
        if value.lower() not in ("true", "false"):
            raise BadInput(f"{name} is true or false")
        literal = value.lower()
    else:
        literal = json.dumps(value)
    if operator == "contains":
        return f"{literal} in {name}" if kind == "string_list" else f"{name} =~ {json.dumps('.*' + value + '.*')}"
    return f"{name} {operator} {literal}"


def _container(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {} if part not in ("steps", "branches", "cases") else [])
        else:
            raise BadInput(f"no field {path}")
    return node


def _takes_next(step: dict[str, Any]) -> bool:
    """Whether a step (as values) goes on through ``next``: not an exit, nor a step that branches on edges of its own (a
    condition, a split, a wait), whose ``next`` the orchestrator would ignore."""
    kinds = journey_pb2.Step.DESCRIPTOR.oneofs_by_name["kind"].fields
    kind = next((f.name for f in kinds if f.name in step), None)
    if kind is None:
        return True
    probe = journey_pb2.Step()
    getattr(probe, kind).SetInParent()
    return "next" in dict(edges_of(probe)) or kind == "approval"


def _apply(op: str, visit: Visit, values: dict[str, Any]) -> None:
    """Change *values* as the button *op* says."""
    steps = values.setdefault("steps", [])
    action, _, where = op.partition(":")
    if action == "add-step":
        kind = visit.field("new_kind")
        if kind not in {f.name for f in journey_pb2.Step.DESCRIPTOR.oneofs_by_name["kind"].fields}:
            raise BadInput("choose a kind of step")
        taken = {s.get("id") for s in steps}
        number = len(steps) + 1
        while f"{kind.replace('_', '-')}-{number}" in taken:
            number += 1
        if steps and not steps[-1].get("next") and _takes_next(steps[-1]):
            steps[-1]["next"] = f"{kind.replace('_', '-')}-{number}"
        steps.append({"id": f"{kind.replace('_', '-')}-{number}", kind: {}})
    elif action in ("remove", "add", "up"):
        parent, _, index = where.rpartition(".") if action != "add" else (where, "", "")
        container = _container(values, parent)
        if action == "add":
            if isinstance(container, dict):
                number = len(container) + 1
                while f"template-{number}" in container:  # after a removal, template-N may be taken
                    number += 1
                container[f"template-{number}"] = {}
            elif isinstance(container, list):
                container.append({})
            return
        if not index.isdigit():
            raise BadInput("no such row")
        i = int(index)
        if isinstance(container, list) and i < len(container):
            if action == "remove":
                del container[i]
            elif i > 0:
                container[i - 1], container[i] = container[i], container[i - 1]
        elif isinstance(container, dict) and i < len(container) and action == "remove":  # a map has no order to move in
            del container[list(container)[i]]
    elif action == "cond":
        attribute, operator, value = visit.field(f"cond-attr:{where}"), visit.field(f"cond-op:{where}"), visit.field(f"cond-value:{where}")
        if operator not in _OPERATORS or not attribute:
            raise BadInput("choose an attribute and an operator")
        name, _, kind = attribute.partition("|")
        parent, _, leaf = where.rpartition(".")
        holder = _container(values, parent) if parent else values
        if not isinstance(holder, dict):
            raise BadInput(f"no field {where}")
        clause = _condition(name, kind, operator, value)
        holder[leaf] = f"{holder[leaf]} and {clause}" if holder.get(leaf) else clause


def _yaml(name: str, spec: journey_pb2.JourneySpec | None) -> str:
    if spec is None:
        return ""
    return yaml.safe_dump({"name": name, **json_format.MessageToDict(spec, preserving_proto_field_name=True)}, sort_keys=False,
                          allow_unicode=True)


async def _render(visit: Visit, name: str, values: dict[str, Any], *, errors: dict[str, str] | None = None, status: int = 200,
                  preview: Any = None, notices: list[tuple[str, str]] | None = None, spec: journey_pb2.JourneySpec | None = None) -> Response:
    help_, kinds, missing = await _catalogue(visit)
    notices = list(notices or [])
    if missing:
        notices.append(("info", missing))
    attributes = await _attributes(visit, str(values.get("rule_set", "")))
    rule_sets: list[str] = []
    if visit.can("rules.ListRuleSets"):
        try:
            rule_sets = [r.rule_set for r in (await visit.call("rules.ListRuleSets", RS.ListRuleSetsRequest(page_size=100))).rule_sets]
        except ServiceError:
            rule_sets = []
    form = widgets(values, help_)
    templates = visit.console.library.templates()
    return page(visit.request, "builder.html", status=status, name=name, form=form, errors=errors or {}, kinds=kinds,
                attributes=attributes, choices=_choices, operators=_OPERATORS, templates=templates, preview=preview,
                yaml_text=_yaml(name, spec), rule_sets=rule_sets, notices=notices,
                sample=dict(subject=visit.field("sample_subject", "preview-subject"), attributes=visit.field("sample_attributes", "{}"),
                            traits=visit.field("sample_traits", '{"first_name": "Ada", "email": "ada@example.com"}')))


@view("orchestrator.ListStepTypes")
async def builder(visit: Visit) -> Response:
    """The builder, blank, from a template (``?template=``) or from a published journey (``?journey=``)."""
    key, journey = visit.query("template"), visit.query("journey")
    notices: list[tuple[str, str]] = []
    if key:
        template = visit.console.library.get(key)
        if template is None:
            raise BadInput(f"no template {key!r}")
        return await _render(visit, template.name, spec_values(template.spec), spec=template.spec,
                             notices=[("info", f"Started from the template {key}.")])
    if journey:
        if len(journey) > 63:
            raise BadInput("no such journey")
        try:
            draft = (await visit.call("orchestrator.GetJourneyDraft", OS.GetJourneyDraftRequest(name=journey))).draft
            notices.append(("info", f"Editing the draft saved {draft.update_time.ToJsonString()} by {draft.author}."))
            values = spec_values(draft.spec)
            errors = {form_path(p.field, values): p.description for p in draft.problems}
            return await _render(visit, journey, values, spec=draft.spec, notices=notices, errors=errors)
        except ServiceError as error:
            if error.code not in ("NOT_FOUND", "UNIMPLEMENTED", "PERMISSION_DENIED"):
                raise
        found = (await visit.call("orchestrator.GetJourney", OS.GetJourneyRequest(name=journey))).journey
        return await _render(visit, journey, spec_values(found.spec), spec=found.spec,
                             notices=[("info", f"Editing a copy of version {found.version}; publishing makes a new version.")])
    return await _render(visit, "", _blank())


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise BadInput(f"{what} must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a JSON object")
    return value


async def _preview(visit: Visit, spec: journey_pb2.JourneySpec) -> Any:
    request = OS.PreviewJourneyRequest(spec=spec, subject_id=visit.field("sample_subject").strip() or "preview-subject")
    try:
        request.attributes.update(_json_object(visit.field("sample_attributes"), "The sample event's attributes"))
        traits = _json_object(visit.field("sample_traits"), "The sample profile's traits")
        if traits:
            request.profile.CopyFrom(profile_pb2.Profile(subject_id=request.subject_id))
            request.profile.traits.update(traits)
    except (ValueError, TypeError) as error:
        raise BadInput(f"the sample holds a value that is not JSON: {error}") from None
    return await visit.call("orchestrator.PreviewJourney", request, timeout=30)


@view("orchestrator.ListStepTypes")
async def builder_post(visit: Visit) -> Response:
    """Apply a button of the builder: change the form, preview, save a draft or publish."""
    assert visit.form is not None
    op = visit.field("op", "refresh")
    fields = [(k, v) for k, v in visit.form.multi_items() if isinstance(v, str)]
    name, values, spec, errors = read_form(fields)
    if op in ("preview", "publish", "draft") and op != "draft" and spec is None:
        return await _render(visit, name, values, errors=errors, status=400,
                             notices=[("error", "The journey has problems; each is shown next to its field.")])
    if op == "preview":
        assert spec is not None
        if not visit.can("orchestrator.PreviewJourney"):
            raise BadInput("previewing needs the role journeys.read")
        try:
            preview = await _preview(visit, spec)
        except ServiceError as error:
            if error.code != "INVALID_ARGUMENT":
                raise
            return await _render(visit, name, values, spec=spec, status=400, errors={form_path(f, values): d for f, d in error.violations},
                                 notices=[("error", error.notice)])
        return await _render(visit, name, values, spec=spec, preview=preview)
    if op in ("publish", "draft"):
        rpc = "orchestrator.PublishJourney" if op == "publish" else "orchestrator.SaveJourneyDraft"
        if not visit.can(rpc):
            return await _render(visit, name, values, spec=spec, status=403, notices=[("error", "Your token cannot publish journeys.")])
        try:
            if op == "publish":
                assert spec is not None
                reply = await visit.call(rpc, OS.PublishJourneyRequest(name=name, spec=spec, reason=visit.field("reason"),
                                                                       request_id=visit.field("request_id")[:64] or str(uuid.uuid4())))
                word = "is unchanged" if reply.unchanged else f"is published as version {reply.journey.version}"
                visit.notice(f"{name} {word}." + "".join(f" Warning: {w.field}: {w.description}." for w in reply.warnings))
                return RedirectResponse(f"/journeys/{name}", status_code=303)
            draft_spec = spec or journey_pb2.JourneySpec()
            saved = (await visit.call(rpc, OS.SaveJourneyDraftRequest(name=name, spec=draft_spec))).draft
            problems = {form_path(p.field, values): p.description for p in saved.problems}
            return await _render(visit, name, values, spec=spec, errors={**errors, **problems},
                                 notices=[("ok", f"Draft of {name} saved" + (f", with {len(problems)} problems to fix before publishing." if problems else "."))])
        except ServiceError as error:
            if error.code not in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "UNAVAILABLE", "UNIMPLEMENTED", "ALREADY_EXISTS"):
                raise
            return await _render(visit, name, values, spec=spec, status=error.http_status,
                                 errors={form_path(f, values): d for f, d in error.violations}, notices=[("error", error.notice)])
    _apply(op, visit, values)
    return await _render(visit, name, values, spec=spec, errors={} if op != "refresh" else errors)


routes = [
    Route("/builder", builder, methods=["GET"]),
    Route("/builder", builder_post, methods=["POST"]),
]
