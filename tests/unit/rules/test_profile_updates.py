"""UpdateProfile's change, applied in memory: the order of each list kept,
integers kept integers, and every refusal named at its field."""

from __future__ import annotations

import pytest

from overture_rules.profile_updates import TAGS_MAX, ProfileChange, ProfileState, apply_change, conflicts
from overture_runtime.errors import InvalidArgument


def _state(**traits: object) -> ProfileState:
    return ProfileState(traits=dict(traits), tags=["a", "b"], segments=["s1", "s2"])


def test_integers_added_stay_integers_and_fractions_stay_floats() -> None:
    """5 + 10 is the integer 15, a missing trait counts as 0, and 1 + 0.5 is 1.5."""
    state = _state(score=5, ratio=1)
    apply_change(state, ProfileChange(increment={"score": 10.0, "fresh": 2.0, "ratio": 0.5}))
    assert state.traits == {"score": 15, "fresh": 2, "ratio": 1.5}
    assert isinstance(state.traits["score"], int) and isinstance(state.traits["ratio"], float)


def test_a_huge_sum_stays_a_float() -> None:
    """Past 2**53 a sum is kept as a float, which is all a double can tell apart."""
    state = _state(big=2**60)
    apply_change(state, ProfileChange(increment={"big": 1.0}))
    assert isinstance(state.traits["big"], float)


@pytest.mark.parametrize("value", ["12", True, None, [1], {"n": 1}])
def test_adding_to_anything_but_a_number_is_refused(value: object) -> None:
    """Text, booleans, null, lists and objects cannot be added to; the violation names the trait."""
    with pytest.raises(InvalidArgument) as caught:
        apply_change(_state(x=value), ProfileChange(increment={"x": 1.0}))
    assert [(v.field, v.reason) for v in caught.value.violations] == [("increment[x]", "NOT_A_NUMBER")]


def test_an_overflowing_sum_is_refused() -> None:
    """A sum that is no longer finite is OUT_OF_RANGE."""
    with pytest.raises(InvalidArgument) as caught:
        apply_change(_state(x=1.7e308), ProfileChange(increment={"x": 1.7e308}))
    assert [v.reason for v in caught.value.violations] == ["OUT_OF_RANGE"]


def test_tags_and_segments_keep_their_order_and_report_what_changed() -> None:
    """Added names go last once each, removed ones go, and only real entries and exits are reported."""
    state = _state()
    apply_change(state, ProfileChange(add_tags=["c", "a", "c"], remove_tags=["b", "zz"], enter_segments=["s3", "s1"],
                                      exit_segments=["s2", "nope"]))
    assert state.tags == ["a", "c"] and state.segments == ["s1", "s3"]
    assert state.entered == ["s3"] and state.exited == ["s2"]


def test_a_null_value_removes_a_trait() -> None:
    """set_traits with null removes the trait, like an identify event."""
    state = _state(plan="pro", city="Oslo")
    apply_change(state, ProfileChange(set_traits={"city": None, "plan": "team"}, unset_traits=["nothing"]))
    assert state.traits == {"plan": "team"}


def test_too_many_tags_or_traits_are_refused() -> None:
    """A profile holds at most TAGS_MAX tags and 256 traits."""
    with pytest.raises(InvalidArgument) as caught:
        apply_change(_state(), ProfileChange(add_tags=[f"t{i}" for i in range(TAGS_MAX)],
                                             set_traits={f"k{i}": i for i in range(257)}))
    assert {v.field for v in caught.value.violations} == {"add_tags", "set_traits"}


def test_a_name_both_set_and_removed_is_a_conflict() -> None:
    """A trait set and unset (or set and added to), a tag added and removed, a segment entered and left, are each named."""
    found = conflicts(ProfileChange(set_traits={"a": 1}, unset_traits=["a"], increment={"a": 1.0, "b": 1.0}, add_tags=["t"],
                                    remove_tags=["t"], enter_segments=["s"], exit_segments=["s"]))
    assert [where for where, _ in found] == ["unset_traits[0]", "increment[a]", "remove_tags[0]", "exit_segments[0]"]
    assert not conflicts(ProfileChange(set_traits={"a": 1}, increment={"b": 1.0}, add_tags=["t"], exit_segments=["s"]))
