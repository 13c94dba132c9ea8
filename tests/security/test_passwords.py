"""Password hashing with scrypt."""

from __future__ import annotations

import pytest

from security.passwords import hash_password, new_secret, verify_password


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password("correct horse 电池")


def test_right_password_verifies(stored: str) -> None:
    assert verify_password("correct horse 电池", stored) is True


@pytest.mark.parametrize(
    "attempt", ["correct horse 电", "Correct horse 电池", "", "correct horse 电池 "]
)
def test_wrong_password_is_refused(stored: str, attempt: str) -> None:
    assert verify_password(attempt, stored) is False


def test_hash_format_names_the_algorithm_and_cost(stored: str) -> None:
    parts = stored.split("$")
    assert parts[:4] == ["scrypt", "16384", "8", "1"]
    assert len(parts) == 6
    assert "correct horse" not in stored


def test_hashes_are_salted() -> None:
    first, second = hash_password("same password"), hash_password("same password")
    assert first != second
    assert first.split("$")[4] != second.split("$")[4]  # the salts differ
    assert verify_password("same password", first)
    assert verify_password("same password", second)


def test_changed_digest_is_refused(stored: str) -> None:
    prefix, n, r, p, salt, digest = stored.split("$")
    other_digest = hash_password("x").split("$")[5]
    assert (
        verify_password("correct horse 电池", "$".join([prefix, n, r, p, salt, other_digest]))
        is False
    )


@pytest.mark.parametrize("garbage", ["", "garbage", "plain-text-password", "bcrypt$1$2$3$4$5"])
def test_garbage_stored_value_is_false(garbage: str) -> None:
    assert verify_password("garbage", garbage) is False


# A damaged stored hash of the right shape must give False, not an exception (a 500 at login).
@pytest.mark.parametrize(
    "garbage",
    [
        "scrypt$abc$8$1$AAAA$AAAA",  # cost is not a number
        "scrypt$16384$8$1$AAA$AAAA",  # salt is not valid base64
        "scrypt$1000$8$1$AAAA$AAAA",  # n is not a power of two
    ],
)
def test_malformed_scrypt_value_is_false(garbage: str) -> None:
    assert verify_password("garbage", garbage) is False


def test_new_secret_is_random_and_long_enough() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    assert all(len(s) >= 32 for s in secrets)
