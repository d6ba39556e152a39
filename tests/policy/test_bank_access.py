"""Which banks a user may use in a generation (lib_safe_denoiser/policy/bank_access.py)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lib_safe_denoiser.banks.store import BankStore
from lib_safe_denoiser.errors import BankNotFoundError
from lib_safe_denoiser.policy.bank_access import visible_bank, visible_names
from lib_safe_denoiser.policy.users import User


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 255 - value, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    s = BankStore(tmp_path)
    s.create("shared", [png(1)])
    s.create("alice-own", [png(2)], owner="alice")
    s.create("bob-own", [png(3)], owner="bob")
    return s


ALICE, BOB, OPERATOR = User("alice", False), User("bob", False), User("root", True)


def test_each_user_sees_shared_banks_and_their_own(store):
    assert visible_names(store, ALICE) == ["alice-own", "shared"]
    assert visible_names(store, BOB) == ["bob-own", "shared"]
    assert visible_names(store, OPERATOR) == ["alice-own", "bob-own", "shared"]


def test_another_users_bank_is_indistinguishable_from_a_missing_one(store):
    assert visible_bank(store, "alice-own", ALICE).owner == "alice"
    with pytest.raises(BankNotFoundError) as hidden:
        visible_bank(store, "alice-own", BOB)
    with pytest.raises(BankNotFoundError) as missing:
        visible_bank(store, "nothing-here", BOB)
    assert str(hidden.value).replace("alice-own", "X") == str(missing.value).replace("nothing-here", "X")
    assert "'bob-own', 'shared'" in str(hidden.value) and "alice" not in str(hidden.value).split("use:")[1]
