"""Mosquitto's password file: read, check, change and write it back.

The format is the one ``mosquitto_passwd`` writes and ``mosquitto`` reads
(mosquitto 2.0: ``apps/mosquitto_passwd/mosquitto_passwd.c``,
``src/password_mosq.c``, ``src/security_default.c``), one user a line::

    alice:$7$101$<salt>$<hash>     PBKDF2-HMAC-SHA512 (mosquitto 2.0's default)
    bob:$6$<salt>$<hash>           SHA-512 of password || salt (mosquitto <= 1.6)

The salt is 12 bytes and the hash 64, both standard base64 without line
breaks; ``$7$`` carries its iteration count (``mosquitto_passwd`` writes 101,
any count of at least 1 is read). The password is hashed as its UTF-8 bytes.

Where we differ from mosquitto, we are stricter: mosquitto skips a line it
cannot use (with a log line, or silently when it has no ``:``) and the user
then cannot log in; here such a line is an ``AuthFileError`` naming the file
and the line, so a typo is found when the file is loaded, not when a client is
refused. Comments (``#``, also after leading blanks) and blank lines are kept
when the file is saved again.

``PasswordFile.verify`` is CPU-bound (PBKDF2) and synchronous on purpose: the
worker runs it in a thread executor, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass

from .files import AuthFileError, read_file, split_lines

__all__ = [
    "DEFAULT_ITERATIONS",
    "HASH_LEN",
    "SALT_LEN",
    "PasswordFile",
    "PasswordHash",
    "check_username",
]

#: ``PW_DEFAULT_ITERATIONS`` in mosquitto's ``src/password_mosq.h``.
DEFAULT_ITERATIONS = 101
#: ``SALT_LEN`` in ``password_mosq.h``; mosquitto refuses any other length.
SALT_LEN = 12
#: SHA-512's output; mosquitto refuses any other decoded length.
HASH_LEN = 64
#: mosquitto_passwd's limit on a username (and MQTT's on any string).
MAX_USERNAME_LEN = 65535

#: The setting these files belong to, for the errors they raise.
SETTING = "password_file"


def _b64decode(text: str, what: str, expected: int) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) != expected:
        raise ValueError(f"{what} is {len(raw)} bytes, expected {expected}")
    return raw


def _as_bytes(password: str | bytes) -> bytes:
    # MQTT passwords are binary data [MQTT-3.1.3.5]; a str is taken as UTF-8,
    # which is what mosquitto_passwd hashes for a typed password.
    return password.encode("utf-8") if isinstance(password, str) else password


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One user's stored hash: ``$7$`` when ``iterations`` is set, else ``$6$``."""

    iterations: int | None
    salt: bytes
    digest: bytes

    @classmethod
    def create(
        cls,
        password: str | bytes,
        iterations: int = DEFAULT_ITERATIONS,
        salt: bytes | None = None,
    ) -> PasswordHash:
        """A new ``$7$`` hash of ``password`` with a fresh random salt."""
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
        if len(salt) != SALT_LEN:
            raise ValueError(f"salt must be {SALT_LEN} bytes")
        digest = hashlib.pbkdf2_hmac("sha512", _as_bytes(password), salt, iterations, HASH_LEN)
        return cls(iterations, salt, digest)

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse ``$7$iterations$salt$hash`` or ``$6$salt$hash``; ValueError says why not."""
        if text.startswith("$7$"):
            parts = text[3:].split("$")
            if len(parts) != 3:
                raise ValueError("expected $7$iterations$salt$hash")
            count, salt, digest = parts
            # mosquitto reads the count with atoi(); we want all of it to be digits.
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"iterations must be a whole number >= 1, got {count!r}")
            return cls(
                int(count),
                _b64decode(salt, "salt", SALT_LEN),
                _b64decode(digest, "hash", HASH_LEN),
            )
        if text.startswith("$6$"):
            parts = text[3:].split("$")
            if len(parts) != 2:
                raise ValueError("expected $6$salt$hash")
            salt, digest = parts
            return cls(
                None, _b64decode(salt, "salt", SALT_LEN), _b64decode(digest, "hash", HASH_LEN)
            )
        raise ValueError(
            "unknown hash type, expected $7$ or $6$ (a plain-text password? "
            "hash the file with mosquitto_passwd -U)"
        )

    def encode(self) -> str:
        """The text after ``user:`` in the file, as mosquitto_passwd writes it."""
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        if self.iterations is None:
            return f"$6${salt}${digest}"
        return f"$7${self.iterations}${salt}${digest}"

    def compute(self, password: str | bytes) -> bytes:
        """The digest ``password`` would have with this salt and method."""
        data = _as_bytes(password)
        if self.iterations is None:
            # pw__digest for pw_sha512: SHA-512 over the password, then the salt.
            return hashlib.sha512(data + self.salt).digest()
        return hashlib.pbkdf2_hmac("sha512", data, self.salt, self.iterations, HASH_LEN)

    def matches(self, password: str | bytes) -> bool:
        """True if ``password`` is the one hashed here (constant-time compare)."""
        return hmac.compare_digest(self.compute(password), self.digest)


def check_username(username: str) -> None:
    """Raise ValueError unless ``username`` can be stored in the file.

    mosquitto_passwd refuses ``:`` and control characters and more than
    65,535 characters; we also refuse what would not read back as written:
    an empty name, blanks at either end (mosquitto trims them) and a leading
    ``#`` (the line would be a comment).
    """
    if not username:
        raise ValueError("username must not be empty")
    if len(username) > MAX_USERNAME_LEN:
        raise ValueError(f"username must be at most {MAX_USERNAME_LEN} characters")
    if ":" in username:
        raise ValueError("username must not contain ':'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in username):
        raise ValueError("username must not contain control characters")
    if username != username.strip():
        raise ValueError("username must not start or end with blanks")
    if username.startswith("#"):
        raise ValueError("username must not start with '#'")


class PasswordFile:
    """The users of one password file and their hashes, in file order.

    ``load`` or ``parse`` it, ``verify`` credentials, change it with ``set``
    and ``delete``, and ``save`` it (atomically). Comments and blank lines
    stay where they were; new users go at the end.
    """

    def __init__(self) -> None:
        self._hashes: dict[str, PasswordHash] = {}
        # Each line as it will be written: a username (its entry) or raw text.
        self._layout: list[tuple[bool, str]] = []
        self._dummy: PasswordHash | None = None

    # -- reading ---------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PasswordFile:
        """Read the file at ``path``; AuthFileError names the file (and line)."""
        return cls.parse(read_file(SETTING, path), os.fspath(path))

    @classmethod
    def parse(cls, data: str | bytes, path: str | os.PathLike[str] = "<string>") -> PasswordFile:
        """Parse the file's content; ``path`` only names it in errors."""
        result = cls()
        first_seen: dict[str, int] = {}
        for number, line in enumerate(split_lines(SETTING, path, data), start=1):

            def fail(message: str, number: int = number) -> AuthFileError:
                return AuthFileError(SETTING, path, message, line=number)

            text = line.strip()
            if not text or text.startswith("#"):
                result._layout.append((False, line))
                continue
            username, sep, encoded = text.partition(":")
            username, encoded = username.strip(), encoded.strip()
            if not sep:
                raise fail("expected 'username:hash'")
            if not username:
                raise fail("empty username")
            if not encoded:
                raise fail(f"no password hash for user {username!r}")
            if ":" in encoded:
                raise fail(f"more than one ':' in the line of user {username!r}")
            try:
                entry = PasswordHash.parse(encoded)
            except ValueError as exc:
                raise fail(f"user {username!r}: {exc}") from None
            if username in first_seen:
                raise fail(f"user {username!r} again (first on line {first_seen[username]})")
            first_seen[username] = number
            result._hashes[username] = entry
            result._layout.append((True, username))
        return result

    # -- checking --------------------------------------------------------

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def users(self) -> list[str]:
        """The usernames, in file order."""
        return [text for is_user, text in self._layout if is_user]

    def get(self, username: str) -> PasswordHash | None:
        return self._hashes.get(username)

    def verify(self, username: str, password: str | bytes) -> bool:
        """True if ``username`` is in the file and ``password`` is its password.

        An unknown user costs one hash like a known one (against a dummy
        entry with the file's usual iteration count), so the time taken does
        not tell which usernames exist. CPU-bound: call it from a thread.
        """
        entry = self._hashes.get(username)
        if entry is None:
            dummy = self._dummy_entry()
            hmac.compare_digest(dummy.compute(password), dummy.digest)
            return False
        return entry.matches(password)

    def iterations_for(self, username: str) -> int:
        """PBKDF2 iterations ``verify`` will run for ``username`` (the dummy
        entry's for an unknown user; 1 for a ``$6$`` SHA-512 entry): what a
        caller weighs to decide whether the check may run on its thread."""
        entry = self._hashes.get(username) or self._dummy_entry()
        return entry.iterations or 1

    def _dummy_entry(self) -> PasswordHash:
        if self._dummy is None:
            counts = collections.Counter(
                h.iterations for h in self._hashes.values() if h.iterations is not None
            )
            iterations = counts.most_common(1)[0][0] if counts else DEFAULT_ITERATIONS
            # A random digest that no password is known to produce.
            self._dummy = PasswordHash(
                iterations, secrets.token_bytes(SALT_LEN), secrets.token_bytes(HASH_LEN)
            )
        return self._dummy

    # -- changing --------------------------------------------------------

    def set(
        self, username: str, password: str | bytes, iterations: int = DEFAULT_ITERATIONS
    ) -> None:
        """Add ``username`` or replace its password (a new ``$7$`` hash, new salt)."""
        check_username(username)
        if username not in self._hashes:
            self._layout.append((True, username))
        self._hashes[username] = PasswordHash.create(password, iterations)
        self._dummy = None

    def delete(self, username: str) -> None:
        """Remove ``username``; KeyError if it is not in the file."""
        if username not in self._hashes:
            raise KeyError(username)
        del self._hashes[username]
        self._layout.remove((True, username))
        self._dummy = None

    # -- writing ---------------------------------------------------------

    def dumps(self) -> str:
        """The file's content: every line ends with a newline."""
        lines = [
            f"{text}:{self._hashes[text].encode()}" if is_user else text
            for is_user, text in self._layout
        ]
        return "".join(line + "\n" for line in lines)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file atomically: a temporary file beside it, fsync, rename.

        A reader (mosquitto reloading on SIGHUP, or us) sees the old file or
        the new one, never half of one. A new file gets mode 0600 (hashes are
        secrets); an existing one keeps its mode and, where we may, its owner,
        so a broker that dropped privileges can still read it.
        """
        target = os.path.realpath(os.fspath(path))  # replace a symlink's target, not the link
        directory = os.path.dirname(target)
        try:
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
                file.write(self.dumps())
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, stat.S_IMODE(st.st_mode) if st is not None else 0o600)
            if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as with any editor
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
