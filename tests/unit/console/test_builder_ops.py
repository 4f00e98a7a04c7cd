"""Unit tests of the builder's buttons (:func:`overture_console.builder_views._apply`):
add a step, remove a row, move a step up, add a row (a split's branch, a
template), on the values read from the form, and the redrawn form reading
back as the changed journey."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from starlette.datastructures import FormData
from starlette.requests import Request

from overture_console.builder import read_form, spec_values
from overture_console.builder_views import _apply
from overture_console.sessions import Session
from overture_console.web import BadInput, Visit

from .forms import form_of, journey_file


async def _no_calls(*_: object, **__: object) -> Any:
    raise AssertionError("the builder's buttons call no service")


def press(op: str, values: dict[str, Any], **form: str) -> dict[str, Any]:
    """*values* after the button *op*, with the other form fields *form* (``new_kind``); *values* is left as it was."""
    request = Request({"type": "http", "method": "POST", "path": "/builder", "headers": [], "query_string": b""})
    session = Session(key="k", token="t", tenant="acme", principal="tester", roles=frozenset({"*"}), csrf="c")
    # The buttons read only the form: no service is called and the console's shared state is not needed.
    visit = Visit(request=request, session=session, call=_no_calls, form=FormData(list(form.items())), console=None)  # type: ignore[arg-type]
    changed = copy.deepcopy(values)
    _apply(op, visit, changed)
    return changed


def welcome() -> dict[str, Any]:
    """The welcome series' values, as the builder holds them."""
    return spec_values(journey_file("welcome-series")[1])


def ids(values: dict[str, Any]) -> list[str]:
    """The step ids of *values*, in order."""
    return [s["id"] for s in values["steps"]]


def test_adding_a_step_appends_it_with_a_fresh_id_and_links_the_last_step_to_it() -> None:
    """Add step of kind send appends ``send-8`` (the eighth step) and makes it the last step's next; the journey still reads."""
    after = press("add-step", welcome(), new_kind="send")
    assert ids(after)[-1] == "send-8"
    assert after["steps"][-1] == {"id": "send-8", "send": {}}
    assert after["steps"][-2]["next"] == "send-8"


def test_an_added_step_takes_the_next_free_number_and_leaves_an_exit_alone() -> None:
    """When ``exit-2`` is taken the new exit step is ``exit-3``; an exit as last step gets no next."""
    values = {"steps": [{"id": "stop", "exit": {}}, {"id": "exit-2", "exit": {}}]}
    after = press("add-step", values, new_kind="exit")
    assert ids(after) == ["stop", "exit-2", "exit-3"]
    assert "next" not in after["steps"][1]


def test_adding_a_step_to_a_journey_with_none_starts_it() -> None:
    """The first step added to a journey with no steps is the whole chain."""
    assert press("add-step", {}, new_kind="wait_for_event")["steps"] == [{"id": "wait-for-event-1", "wait_for_event": {}}]


@pytest.mark.parametrize("kind", ["", "nonsense", "id"])
def test_adding_a_step_of_no_kind_is_refused(kind: str) -> None:
    """A new step's kind must be a step kind of the contract."""
    with pytest.raises(BadInput, match="choose a kind of step"):
        press("add-step", welcome(), new_kind=kind)


def test_removing_a_step_removes_that_step_only() -> None:
    """Remove on the third step drops it; the others keep their order."""
    before = welcome()
    assert ids(press("remove:steps.2", before)) == [i for n, i in enumerate(ids(before)) if n != 2]


def test_moving_a_step_up_swaps_it_with_the_one_before() -> None:
    """Up on the third step swaps it with the second; up on the first does nothing."""
    before = welcome()
    moved = ids(press("up:steps.2", before))
    assert moved[:3] == [ids(before)[0], ids(before)[2], ids(before)[1]] and moved[3:] == ids(before)[3:]
    assert press("up:steps.0", before) == before


def test_adding_a_branch_adds_an_empty_row_to_that_split() -> None:
    """Add on a split's branches appends an empty branch to that split and to nothing else."""
    values = spec_values(journey_file("ab-holdout")[1])
    after = press("add:steps.0.split.branches", values)
    assert after["steps"][0]["split"]["branches"] == [*values["steps"][0]["split"]["branches"], {}]
    assert after["steps"][1:] == values["steps"][1:]


def test_adding_a_case_to_a_step_without_cases_starts_the_list() -> None:
    """Add on a multi-split's cases when it has none yet makes a list of one empty case."""
    values = {"steps": [{"id": "route", "multi_split": {}}]}
    assert press("add:steps.0.multi_split.cases", values)["steps"][0]["multi_split"]["cases"] == [{}]


def test_adding_a_template_never_replaces_one() -> None:
    """Each added template has a name no template has yet, even after one was removed (``template-3`` is taken when two
    remain)."""
    values: dict[str, Any] = {"templates": {"message": {"subject": "a"}}}
    values = press("add:templates", values)
    values = press("add:templates", values)
    values["templates"]["template-3"] = {"subject": "kept"}
    values = press("remove:templates.0", values)
    assert list(values["templates"]) == ["template-2", "template-3"]
    values = press("add:templates", values)
    assert len(values["templates"]) == 3
    assert values["templates"]["template-3"] == {"subject": "kept"}


def test_removing_a_template_removes_the_row_by_its_number() -> None:
    """Remove on template row 1 drops the second template of the form."""
    values = {"templates": {"a": {"subject": "A"}, "b": {"subject": "B"}, "c": {"subject": "C"}}}
    assert press("remove:templates.1", values)["templates"] == {"a": {"subject": "A"}, "c": {"subject": "C"}}


def test_up_on_a_template_does_not_remove_it() -> None:
    """Templates have no order; up on a template row (a button the page does not draw, but a post can send) changes nothing."""
    values = {"templates": {"a": {"subject": "A"}, "b": {"subject": "B"}}}
    assert press("up:templates.1", values)["templates"] == values["templates"]


@pytest.mark.parametrize("op", ["remove:steps.x", "up:steps", "remove:steps.99", "up:steps.99"])
def test_a_button_for_no_row_changes_nothing_or_is_refused(op: str) -> None:
    """A row that is not a number is refused; a number past the end changes nothing."""
    before = welcome()
    try:
        after = press(op, before)
    except BadInput as error:
        assert str(error) == "no such row"
    else:
        assert after == before


def test_a_changed_journey_reads_back_from_its_redrawn_form() -> None:
    """After adding a delay step and filling in its duration, the values drawn as a form read back as a journey with that step
    last, linked from the step before it."""
    values = press("add-step", welcome(), new_kind="delay")
    values["steps"][-1]["delay"] = {"duration": "1d"}
    name, _, spec, problems = read_form(form_of("welcome-series", values))
    assert (name, problems) == ("welcome-series", {})
    assert spec is not None
    assert spec.steps[-1].id == "delay-8" and spec.steps[-2].next == "delay-8"
    assert spec.steps[-1].delay.duration.ToTimedelta().days == 1



def test_a_step_after_a_branching_step_is_not_linked_by_a_next_the_branching_step_has_no_use_for() -> None:
    """Adding after a condition, a split or a wait leaves the last step without ``next`` (its own edges say where it goes);
    after an approval (whose ``next`` is where an approval leads) or a send, the new step is linked."""
    for kind in ("condition", "split", "multi_split", "wait_for_event", "wait_until", "parallel"):
        after = press("add-step", {"steps": [{"id": "last", kind: {}}]}, new_kind="send")
        assert "next" not in after["steps"][0], kind
    for kind in ("approval", "send", "delay", "update_profile"):
        after = press("add-step", {"steps": [{"id": "last", kind: {}}]}, new_kind="send")
        assert after["steps"][0]["next"] == "send-2", kind
