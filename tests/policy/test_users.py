"""Who the caller is and what they may do: the rules both the REST routes and the bank tab apply."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from lib_safe_denoiser.policy.users import (
    AccessError,
    authenticate,
    can_edit,
    can_see,
    is_operator,
    make_user,
    owner_for_new_bank,
    parse_auth,
    parse_names,
    require_edit,
    require_operator,
)


@dataclass(frozen=True)
class Bank:
    name: str
    owner: str | None


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CREDENTIALS = parse_auth("alice:secret,bob:p:w:d,carol:")


def test_parse_auth_reads_the_webui_format():
    assert CREDENTIALS == {"alice": "secret", "bob": "p:w:d", "carol": ""}
    assert parse_auth(None) == {} and parse_auth("") == {}
    assert parse_auth("no-colon,:nouser,dave:x") == {"dave": "x"}  # malformed entries are ignored


def test_parse_names_strips_and_drops_blanks():
    assert parse_names(" alice, bob ,,") == frozenset({"alice", "bob"})
    assert parse_names(None) == frozenset() and parse_names("") == frozenset()


@pytest.mark.parametrize("header, expected", [
    (basic("alice", "secret"), "alice"),
    ("basic " + base64.b64encode(b"alice:secret").decode(), "alice"),  # scheme is case-insensitive
    (basic("bob", "p:w:d"), "bob"),  # the password is everything after the first colon
    (basic("carol", ""), "carol"),
    (basic("alice", "wrong"), None),
    (basic("alice", "secret "), None),
    (basic("mallory", "secret"), None),
    (basic("mallory", ""), None),
    ("Bearer " + base64.b64encode(b"alice:secret").decode(), None),
    ("Basic", None),
    ("Basic !!notbase64!!", None),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic " + base64.b64encode(b"alice:\xff\xfe").decode(), None),  # not UTF-8
    ("", None),
    (None, None),
])
def test_authenticate(header, expected):
    assert authenticate(header, CREDENTIALS) == expected


def test_authenticate_accepts_non_ascii_passwords():
    creds = parse_auth("zoë:pässwörd")
    assert authenticate(basic("zoë", "pässwörd"), creds) == "zoë"
    assert authenticate(basic("zoë", "passwort"), creds) is None


def test_without_any_auth_everyone_is_an_operator():
    assert is_operator(None, "", auth_enabled=False)
    assert is_operator("whoever", "", auth_enabled=False)


def test_with_auth_only_listed_names_are_operators():
    assert is_operator("alice", "alice, bob", auth_enabled=True)
    assert not is_operator("carol", "alice, bob", auth_enabled=True)
    assert not is_operator(None, "alice", auth_enabled=True)  # an anonymous caller never is
    assert not is_operator("alice", "", auth_enabled=True)


ALICE = make_user("alice", "carol", True)
BOB = make_user("bob", "carol", True)
CAROL = make_user("carol", "carol", True)
LOCAL = make_user(None, "", False)
ANONYMOUS_WITH_USERS = make_user(None, "carol", True)

SHARED = Bank("shared", None)
ALICES = Bank("alices", "alice")


def test_users():
    assert (ALICE.operator, CAROL.operator, LOCAL.operator, ANONYMOUS_WITH_USERS.operator) == (False, True, True, False)
    assert ALICE.label == "'alice'" and LOCAL.label == "the anonymous user"


@pytest.mark.parametrize("user, bank, sees, edits", [
    (ALICE, SHARED, True, False),
    (ALICE, ALICES, True, True),
    (BOB, ALICES, False, False),
    (CAROL, SHARED, True, True),
    (CAROL, ALICES, True, False),  # operators see private banks, but only the owner changes them
    (LOCAL, SHARED, True, True),
    (LOCAL, ALICES, True, False),
    (ANONYMOUS_WITH_USERS, SHARED, True, False),
    (ANONYMOUS_WITH_USERS, ALICES, False, False),
])
def test_can_see_and_edit(user, bank, sees, edits):
    assert can_see(bank, user) is sees
    assert can_edit(bank, user) is edits
    if edits:
        require_edit(bank, user)
    else:
        with pytest.raises(AccessError):
            require_edit(bank, user)


def test_refusals_say_who_may():
    with pytest.raises(AccessError, match="only operators may change the shared bank 'shared'; 'alice' is not one"):
        require_edit(SHARED, ALICE)
    with pytest.raises(AccessError, match="belongs to 'alice'; only its owner"):
        require_edit(ALICES, CAROL)
    with pytest.raises(AccessError, match="only operators may import; 'bob' is not one"):
        require_operator(BOB, "import")
    require_operator(CAROL, "import")


def test_owner_of_a_new_bank():
    assert owner_for_new_bank(ALICE, shared=False) == "alice"
    assert owner_for_new_bank(CAROL, shared=True) is None
    assert owner_for_new_bank(LOCAL, shared=False) is None  # the local user's banks are shared
    with pytest.raises(AccessError, match="create shared banks"):
        owner_for_new_bank(ALICE, shared=True)
    with pytest.raises(AccessError):
        owner_for_new_bank(ANONYMOUS_WITH_USERS, shared=False)
