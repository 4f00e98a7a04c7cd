"""The work every pipeline of the end-to-end benchmark does, as plain data
(no imports beyond the standard library, so that the Celery pipeline in
``.bench-venv/`` and Overture's side in ``.venv`` read the same thing).

Each event is one ``user.signed_up`` for a preloaded, consenting profile;
each becomes one email through three rules, a consent check and a
frequency cap that never binds, so every event must give exactly one
email. Profiles and addresses are synthetic.
"""

from __future__ import annotations

__all__ = [
    "CAP_LIMIT", "EVENT_TYPE", "RULES", "SENDER", "STEP_ID", "SUBJECT_TEMPLATE", "TEXT_TEMPLATE", "address", "subject_id", "traits",
]

EVENT_TYPE = "user.signed_up"
STEP_ID = "send-welcome"
SENDER = "Overture Bench <bench@example.com>"
# The rule set of examples/marketing-email.yaml has the first rule; the two
# others and the cap bring it to the "consent, a cap and three rules".
RULES = [
    ("not-churned", 'plan == "churned"', "deny"),
    ("market", 'country in ["DE", "FR", "US", "GB", "NL"]', "require"),
    ("adult", "age >= 18", "require"),
]
CAP_LIMIT = 1_000_000
"""Emails per subject per calendar day: high enough never to deny here."""
SUBJECT_TEMPLATE = "Welcome to Overture, {first_name}! [ev:{event_id}]"
TEXT_TEMPLATE = "Hi {first_name},\n\nThanks for signing up for the {plan} plan.\n"


def subject_id(i: int) -> str:
    return f"bench-subscriber-{i}"


def address(i: int) -> str:
    return f"subscriber{i}@example.com"


def traits(i: int) -> dict[str, object]:
    return {"email": address(i), "first_name": f"Subscriber{i}", "plan": "pro", "country": ("DE", "FR", "US", "GB", "NL")[i % 5],
            "age": 20 + i % 50}
