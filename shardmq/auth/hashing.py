"""EMQX's password hashing: checks a password against a stored hash and salt.

As EMQX's ``emqx_passwd`` and ``emqx_authn_password_hashing`` (EMQX 5):

- ``plain``, ``md5``, ``sha`` (SHA-1), ``sha256``, ``sha512`` hash the
  password with the salt before it (``prefix``: hash(salt + password)), after
  it (``suffix``: hash(password + salt)) or without it (``disable``). The
  result is lower-case hex (``plain``: the bytes themselves); a stored hex
  digest is compared case-insensitively, as EMQX's documentation says.
- ``pbkdf2``: PBKDF2-HMAC with ``mac_fun``, ``iterations`` and ``dk_length``
  (default: the digest's size, as Erlang's ``pbkdf2:pbkdf2/4``), the salt
  field's bytes as salt, hex. The salt position does not apply.
- ``bcrypt``: the stored hash is the whole bcrypt string, salt included
  (EMQX's ``check_password`` passes the hash as the salt). Needs the
  optional ``bcrypt`` package (``pip install 'shardmq[auth-bcrypt]'``): the
  standard library has no bcrypt. Only a password's first 72 bytes count.

Pure (no I/O); ``check`` of pbkdf2 and bcrypt is CPU-bound and belongs in a
thread (``expensive`` says so).
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "PBKDF2_MAC_FUNS",
    "SALT_POSITIONS",
    "PasswordHasher",
    "bcrypt_available",
]

ALGORITHMS = ("plain", "md5", "sha", "sha256", "sha512", "bcrypt", "pbkdf2")
SALT_POSITIONS = ("disable", "prefix", "suffix")
PBKDF2_MAC_FUNS = ("md4", "md5", "ripemd160", "sha", "sha224", "sha256", "sha384", "sha512")

#: EMQX's names -> hashlib's.
_HASHLIB_NAMES = {"sha": "sha1"}

#: bcrypt reads at most this many bytes of a password.
BCRYPT_MAX_PASSWORD = 72
#: EMQX's default bcrypt work factor, for the dummy check of an unknown user.
BCRYPT_DUMMY_ROUNDS = 10


def bcrypt_available() -> bool:
    """True if the optional ``bcrypt`` package can be imported."""
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        return False
    return True


def _hashlib_name(mac_fun: str) -> str:
    return _HASHLIB_NAMES.get(mac_fun, mac_fun)


class PasswordHasher:
    """Checks a password against a stored hash and salt with one algorithm.

    Raises ConfigError (naming the setting) for an unknown or unusable
    choice, so a bad setting stops the broker at start rather than failing
    every CONNECT.
    """

    def __init__(
        self,
        algorithm: str = "sha256",
        salt_position: str = "suffix",
        *,
        pbkdf2_mac_fun: str = "sha256",
        pbkdf2_iterations: int = 4096,
        pbkdf2_dk_length: int | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError("auth_redis_algorithm", f"unknown algorithm {algorithm!r}")
        if salt_position not in SALT_POSITIONS:
            raise ConfigError("auth_redis_salt_position", f"unknown position {salt_position!r}")
        if algorithm == "bcrypt" and not bcrypt_available():
            raise ConfigError(
                "auth_redis_algorithm",
                "bcrypt needs the bcrypt package: pip install 'shardmq[auth-bcrypt]'",
            )
        if algorithm == "pbkdf2":
            if pbkdf2_mac_fun not in PBKDF2_MAC_FUNS:
                raise ConfigError("auth_redis_pbkdf2_mac_fun", f"unknown {pbkdf2_mac_fun!r}")
            try:
                hashlib.new(_hashlib_name(pbkdf2_mac_fun))
            except ValueError:
                raise ConfigError(
                    "auth_redis_pbkdf2_mac_fun",
                    f"{pbkdf2_mac_fun!r} is not available in this Python's OpenSSL",
                ) from None
            if pbkdf2_iterations < 1:
                raise ConfigError("auth_redis_pbkdf2_iterations", "must be at least 1")
            if pbkdf2_dk_length is not None and pbkdf2_dk_length < 1:
                raise ConfigError("auth_redis_pbkdf2_dk_length", "must be at least 1")
        self.algorithm = algorithm
        self.salt_position = salt_position
        self.pbkdf2_mac_fun = pbkdf2_mac_fun
        self.pbkdf2_iterations = pbkdf2_iterations
        self.pbkdf2_dk_length = pbkdf2_dk_length
        self._dummy: tuple[bytes, bytes] | None = None

    @property
    def expensive(self) -> bool:
        """True for the slow algorithms, which belong in a thread, not on the loop."""
        return self.algorithm in ("bcrypt", "pbkdf2")

    def hash(self, password: bytes, salt: bytes) -> bytes:
        """The stored form of ``password`` for the simple algorithms and pbkdf2."""
        if self.algorithm == "pbkdf2":
            return (
                hashlib.pbkdf2_hmac(
                    _hashlib_name(self.pbkdf2_mac_fun),
                    password,
                    salt,
                    self.pbkdf2_iterations,
                    self.pbkdf2_dk_length,
                )
                .hex()
                .encode("ascii")
            )
        if self.algorithm == "bcrypt":
            raise ValueError("a bcrypt hash is made with bcrypt.hashpw")
        if self.salt_position == "prefix":
            data = salt + password
        elif self.salt_position == "suffix":
            data = password + salt
        else:
            data = password
        if self.algorithm == "plain":
            return data
        return hashlib.new(_hashlib_name(self.algorithm), data).hexdigest().encode("ascii")

    def check(self, password: bytes, stored: bytes, salt: bytes) -> bool:
        """True if ``password`` hashes to ``stored`` (constant-time compare)."""
        if self.algorithm == "bcrypt":
            import bcrypt

            try:
                return bool(bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored))
            except ValueError:  # not a bcrypt hash
                return False
        computed = self.hash(password, salt)
        if self.algorithm != "plain":
            # EMQX compares hex digests case-insensitively; ours are lower-case.
            stored = stored.lower()
        return hmac.compare_digest(computed, stored)

    def check_dummy(self, password: bytes) -> None:
        """Spend what ``check`` costs, for a user that does not exist."""
        if self._dummy is None:
            if self.algorithm == "bcrypt":
                import bcrypt

                stored = bcrypt.hashpw(b"", bcrypt.gensalt(BCRYPT_DUMMY_ROUNDS))
            else:
                stored = self.hash(b"", b"")
            self._dummy = (stored, b"")
        stored, salt = self._dummy
        self.check(password, stored, salt)
