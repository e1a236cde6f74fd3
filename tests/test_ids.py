"""Message ids are the UUIDs the standard library would make, in its text form."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from roomd.node._ids import message_id_for, new_message_id

DERIVED = uuid.UUID("5b0c6f1e-8d0a-4e5c-9f7a-3c2d1e0f4a6b")


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=80))
def test_a_derived_id_is_the_version_5_uuid_of_user_and_cmid(user: str, cmid: str) -> None:
    assert message_id_for(user, cmid) == str(uuid.uuid5(DERIVED, f"{user}\x00{cmid}"))


def test_a_random_id_is_a_version_4_uuid_in_canonical_form() -> None:
    ids = {new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert uuid.UUID(message_id_for("alice", None)).version == 4
