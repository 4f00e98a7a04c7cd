"""Reading the console builder's form back into a journey spec."""

from __future__ import annotations

from overture_console.builder import read_form


def test_a_map_of_plain_values_is_read_whole_from_its_json_field() -> None:
    """An update-profile step's increment (a map of numbers, drawn as one JSON field) comes back as the map it was."""
    fields = [("name", "reviews"), ("trigger.@kind", "event"), ("trigger.event.event_type", "review.submitted"),
              ("steps.0.id", "count"), ("steps.0.@kind", "update_profile"),
              ("steps.0.update_profile.increment.@json", '{"reviews_written": 1, "score": 2.5}'),
              ("steps.0.update_profile.add_tags.@csv", "reviewer")]
    name, _, spec, problems = read_form(fields)
    assert (name, problems) == ("reviews", {})
    assert spec is not None
    update = spec.steps[0].update_profile
    assert dict(update.increment) == {"reviews_written": 1.0, "score": 2.5} and list(update.add_tags) == ["reviewer"]
