"""EMQX's password hashing, on published test vectors."""

from __future__ import annotations

import sys
import time

import pytest

from shardmq.auth.hashing import PasswordHasher, bcrypt_available
from shardmq.errors import ConfigError

# Digests of b"abc" (FIPS 180-2, RFC 1321 test suites): the salted forms below
# split "abc" into salt and password, so the salt position decides the result.
ABC = {
    "md5": b"900150983cd24fb0d6963f7d28e17f72",
    "sha": b"a9993e364706816aba3e25717850c26c9cd0d89d",
    "sha256": b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    "sha512": (
        b"ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        b"2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    ),
}


@pytest.mark.parametrize("algorithm", sorted(ABC))
def test_salt_positions(algorithm: str) -> None:
    digest = ABC[algorithm]
    # prefix: hash(salt + password)
    prefix = PasswordHasher(algorithm, "prefix")
    assert prefix.check(b"bc", digest, b"a")
    assert not prefix.check(b"ab", digest, b"c")
    # suffix: hash(password + salt)
    suffix = PasswordHasher(algorithm, "suffix")
    assert suffix.check(b"ab", digest, b"c")
    assert not suffix.check(b"bc", digest, b"a")
    # disable: the salt field is ignored
    disable = PasswordHasher(algorithm, "disable")
    assert disable.check(b"abc", digest, b"ignored")
    assert not disable.check(b"ab", digest, b"c")
    # EMQX compares hex case-insensitively
    assert disable.check(b"abc", digest.upper(), b"")
    assert not disable.check(b"abd", digest, b"")


def test_emqx_documentation_example() -> None:
    # EMQX docs, "使用 Redis 进行密码认证": user emqx_u, password public,
    # salt slat_foo123, sha256, salt as suffix.
    stored = b"44edc2d57cde8d79c98145003e105b90a14f1460b79186ea9cfe83942fc5abb5"
    assert PasswordHasher("sha256", "suffix").check(b"public", stored, b"slat_foo123")
    assert not PasswordHasher("sha256", "prefix").check(b"public", stored, b"slat_foo123")


@pytest.mark.parametrize(
    ("position", "password", "salt", "stored", "ok"),
    [
        ("disable", b"secret", b"", b"secret", True),
        ("disable", b"secret", b"", b"SECRET", False),  # plain is compared as is
        ("prefix", b"secret", b"s1", b"s1secret", True),
        ("suffix", b"secret", b"s1", b"secrets1", True),
        ("suffix", b"secret", b"s1", b"s1secret", False),
    ],
)
def test_plain(position: str, password: bytes, salt: bytes, stored: bytes, ok: bool) -> None:
    assert PasswordHasher("plain", position).check(password, stored, salt) is ok


@pytest.mark.parametrize(
    ("iterations", "dk_length", "stored"),
    [
        # RFC 6070: PBKDF2-HMAC-SHA1, P = "password", S = "salt"
        (1, None, b"0c60c80f961f0e71f3a9b524af6012062fe037a6"),
        (2, None, b"ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"),
        (4096, None, b"4b007901b765489abead49d926f721d065a429c1"),
        (4096, 25, b"3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"),
    ],
)
def test_pbkdf2_rfc6070(iterations: int, dk_length: int | None, stored: bytes) -> None:
    if dk_length == 25:
        password, salt = b"passwordPASSWORDpassword", b"saltSALTsaltSALTsaltSALTsaltSALTsalt"
    else:
        password, salt = b"password", b"salt"
    hasher = PasswordHasher(
        "pbkdf2", pbkdf2_mac_fun="sha", pbkdf2_iterations=iterations, pbkdf2_dk_length=dk_length
    )
    assert hasher.check(password, stored, salt)
    assert not hasher.check(password + b"!", stored, salt)
    assert not hasher.check(password, stored, salt + b"!")
    # the salt position does not apply to pbkdf2
    suffix = PasswordHasher(
        "pbkdf2",
        "suffix",
        pbkdf2_mac_fun="sha",
        pbkdf2_iterations=iterations,
        pbkdf2_dk_length=dk_length,
    )
    assert suffix.check(password, stored, salt)


def test_pbkdf2_default_length_is_the_digest_size() -> None:
    for mac_fun, hex_len in [("sha", 40), ("sha256", 64), ("sha512", 128), ("md5", 32)]:
        hasher = PasswordHasher("pbkdf2", pbkdf2_mac_fun=mac_fun, pbkdf2_iterations=1)
        assert len(hasher.hash(b"p", b"s")) == hex_len


# OpenWall crypt_blowfish test vectors.
BCRYPT_U = b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"  # "U*U"
BCRYPT_U2 = b"$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"  # "U*U*"

needs_bcrypt = pytest.mark.skipif(not bcrypt_available(), reason="bcrypt package not installed")


@needs_bcrypt
def test_bcrypt_vectors_and_the_salt_field_is_ignored() -> None:
    hasher = PasswordHasher("bcrypt")
    assert hasher.expensive
    assert hasher.check(b"U*U", BCRYPT_U, b"")
    assert hasher.check(b"U*U", BCRYPT_U, BCRYPT_U)  # EMQX stores the hash as salt too
    assert hasher.check(b"U*U*", BCRYPT_U2, b"whatever")
    assert not hasher.check(b"U*U*", BCRYPT_U, b"")
    assert not hasher.check(b"U*U", b"not-a-bcrypt-hash", b"")


@needs_bcrypt
def test_bcrypt_reads_72_bytes_of_a_password() -> None:
    import bcrypt

    stored = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4))
    hasher = PasswordHasher("bcrypt")
    assert hasher.check(b"x" * 80, stored, b"")
    assert not hasher.check(b"x" * 71, stored, b"")


def test_bcrypt_without_the_package_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # as if not installed
    assert not bcrypt_available()
    with pytest.raises(ConfigError) as info:
        PasswordHasher("bcrypt")
    assert info.value.setting == "auth_redis_algorithm"
    assert "pip install 'shardmq[auth-bcrypt]'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"algorithm": "sha1"}, "auth_redis_algorithm"),
        ({"salt_position": "middle"}, "auth_redis_salt_position"),
        ({"algorithm": "pbkdf2", "pbkdf2_mac_fun": "sha3"}, "auth_redis_pbkdf2_mac_fun"),
        ({"algorithm": "pbkdf2", "pbkdf2_iterations": 0}, "auth_redis_pbkdf2_iterations"),
        ({"algorithm": "pbkdf2", "pbkdf2_dk_length": 0}, "auth_redis_pbkdf2_dk_length"),
    ],
)
def test_bad_choices(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        PasswordHasher(**kwargs)  # type: ignore[arg-type]
    assert info.value.setting == setting


def test_dummy_check_costs_like_a_real_one() -> None:
    hasher = PasswordHasher("pbkdf2", pbkdf2_mac_fun="sha512", pbkdf2_iterations=40_000)
    stored = hasher.hash(b"right", b"salt")

    def fastest(func: object) -> float:
        assert callable(func)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            func()
            best = min(best, time.perf_counter() - start)
        return best

    real = fastest(lambda: hasher.check(b"wrong", stored, b"salt"))
    dummy = fastest(lambda: hasher.check_dummy(b"wrong"))
    assert dummy > 0.3 * real, (dummy, real)
