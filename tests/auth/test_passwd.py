"""Mosquitto's password file: parsing, checking, changing, writing."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from shardmq.auth.files import AuthFileError
from shardmq.auth.passwd import (
    DEFAULT_ITERATIONS,
    PasswordFile,
    PasswordHash,
    check_username,
)
from shardmq.errors import ConfigError

# Written by mosquitto_passwd 2.0.11 (Debian 12): `-c -b pw alice s3cret`,
# `-b pw bob pässwörd`, `-H sha512 -b pw carol old`.
MOSQUITTO_LINES = (
    "alice:$7$101$GFpOLVaMxLPnEUXP$qilHG5eW7FaXemOcldmfwgIQMMQK1MLiE1BbpZG0kx200F"
    "mXPYtZXsviDinwgeANEcYEmSa2r2F9Iabd/vwC7A==\n"
    "bob:$7$101$TixrgG/jQZvqxeZA$/bXywoaOJvrkCkXSiNSkt3eu1t5FKtWyb926FLYZDzZiGstkm"
    "DUhEwtfKlRpKZznpHsY/LGwsMrFAF51pFYNGQ==\n"
    "carol:$6$Zo+hOKkGG+w/IZMr$GOMu1puadgKhOuZD3ddnevY32eTPwrwoHoOzIW0O268RX/2IEveI"
    "Y5dWxVjBDLFqAVyEXulP1Em/beG2Yk8L6A==\n"
)
ALICE_HASH = MOSQUITTO_LINES.splitlines()[0].partition(":")[2]
SALT = "AAAAAAAAAAAAAAAA"  # 12 zero bytes
HASH = "A" * 86 + "=="  # 64 zero bytes


# -- hashes ------------------------------------------------------------------


def test_mosquitto_vectors_verify() -> None:
    pw = PasswordFile.parse(MOSQUITTO_LINES)
    assert pw.users() == ["alice", "bob", "carol"]
    assert pw.verify("alice", "s3cret")
    assert pw.verify("bob", "pässwörd")
    assert pw.verify("bob", "pässwörd".encode())
    assert pw.verify("carol", "old")  # the older $6$ form
    for user, wrong in [
        ("alice", "s3cret "),
        ("alice", "S3cret"),
        ("bob", "passwort"),
        ("carol", ""),
    ]:
        assert not pw.verify(user, wrong)


def test_unknown_user_is_refused() -> None:
    pw = PasswordFile.parse(MOSQUITTO_LINES)
    assert not pw.verify("mallory", "s3cret")
    assert not pw.verify("", "")
    assert "mallory" not in pw and "alice" in pw


def test_hash_round_trip_and_fields() -> None:
    parsed = PasswordHash.parse(ALICE_HASH)
    assert parsed.iterations == 101
    assert len(parsed.salt) == 12 and len(parsed.digest) == 64
    assert parsed.encode() == ALICE_HASH
    old = PasswordHash.parse("$6$" + SALT + "$" + HASH)
    assert old.iterations is None
    assert old.encode() == "$6$" + SALT + "$" + HASH


def test_create_reads_back_with_any_iteration_count() -> None:
    for iterations in (1, DEFAULT_ITERATIONS, 5000):
        made = PasswordHash.create("pw", iterations)
        again = PasswordHash.parse(made.encode())
        assert again == made
        assert again.matches("pw") and not again.matches("pW")
        assert made.encode().startswith(f"$7${iterations}$")
    assert PasswordHash.create("pw").salt != PasswordHash.create("pw").salt


def test_create_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="iterations"):
        PasswordHash.create("pw", 0)
    with pytest.raises(ValueError, match="salt"):
        PasswordHash.create("pw", salt=b"short")


# -- parsing -----------------------------------------------------------------


def test_comments_blank_lines_crlf_and_blanks_are_accepted() -> None:
    text = f"# users\r\n\r\n   \n  # indented comment\n  alice : {ALICE_HASH}  \r\n"
    pw = PasswordFile.parse(text)
    assert pw.users() == ["alice"]
    assert pw.verify("alice", "s3cret")


def test_empty_file_has_no_users() -> None:
    assert len(PasswordFile.parse("")) == 0
    assert len(PasswordFile.parse("# nobody\n")) == 0


GOOD = f"alice:{ALICE_HASH}\n"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("just-a-name", "expected 'username:hash'"),
        (f":{ALICE_HASH}", "empty username"),
        ("bob:", "no password hash for user 'bob'"),
        ("bob:   ", "no password hash"),
        ("bob:plaintext", "unknown hash type"),
        (f"bob:$5${SALT}${HASH}", "unknown hash type"),
        (f"bob:$7$0${SALT}${HASH}", "iterations must be a whole number >= 1"),
        (f"bob:$7$-5${SALT}${HASH}", "iterations"),
        (f"bob:$7$10x${SALT}${HASH}", "iterations"),
        (f"bob:$7${SALT}${HASH}", "expected $7$iterations$salt$hash"),
        (f"bob:$6$101${SALT}${HASH}", "expected $6$salt$hash"),
        (f"bob:$7$101$AAAA${HASH}", "salt is 3 bytes, expected 12"),
        (f"bob:$7$101${SALT}$AAAA", "hash is 3 bytes, expected 64"),
        (f"bob:$7$101$!!!!${HASH}", "salt is not valid base64"),
        (f"bob:$7$101${SALT}${HASH}:extra", "more than one ':'"),
        (GOOD.strip(), "user 'alice' again (first on line 2)"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# header\n{GOOD}\n{line}\n", encoding="utf-8")
    with pytest.raises(AuthFileError) as info:
        PasswordFile.load(path)
    message = str(info.value)
    assert message == f"password_file: {path}:4: {message.split(':4: ', 1)[1]}"
    assert fragment in message
    assert "\n" not in message
    assert info.value.line == 4
    assert isinstance(info.value, ConfigError) and info.value.setting == "password_file"


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(GOOD.encode() + b"b\xffb:" + ALICE_HASH.encode() + b"\n")
    with pytest.raises(AuthFileError, match=r":2: not valid UTF-8"):
        PasswordFile.load(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match=r"^password_file: .*nope: no such file$"):
        PasswordFile.load(tmp_path / "nope")
    with pytest.raises(AuthFileError, match="is a directory"):
        PasswordFile.load(tmp_path)


# -- usernames ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("a:b", "':'"),
        ("a\tb", "control"),
        ("a\x7fb", "control"),
        (" alice", "blanks"),
        ("alice ", "blanks"),
        ("#alice", "'#'"),
        ("x" * 65536, "65535"),
    ],
)
def test_usernames_that_would_not_read_back_are_refused(name: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_username(name)
    with pytest.raises(ValueError):
        PasswordFile().set(name, "pw")


def test_fine_usernames() -> None:
    for name in ("alice", "sensor 12", "ünï", "a#b", "x" * 65535):
        check_username(name)


# -- changing and saving -----------------------------------------------------


def test_set_delete_and_save_keep_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# team\n" + MOSQUITTO_LINES + "\n# end\n", encoding="utf-8")
    pw = PasswordFile.load(path)
    pw.set("bob", "new")
    pw.delete("carol")
    pw.set("dave", "d", iterations=7)
    pw.save(path)

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# team\nalice:" + ALICE_HASH + "\nbob:$7$101$")
    assert text.endswith("\n\n# end\ndave:" + pw.dumps().rsplit("dave:", 1)[1])
    assert "carol" not in text

    again = PasswordFile.load(path)
    assert again.users() == ["alice", "bob", "dave"]
    assert again.verify("alice", "s3cret")
    assert again.verify("bob", "new") and not again.verify("bob", "pässwörd")
    assert again.verify("dave", "d")
    assert again.get("dave") is not None and again.get("dave").iterations == 7  # type: ignore[union-attr]


def test_delete_unknown_user_raises_keyerror() -> None:
    pw = PasswordFile.parse(MOSQUITTO_LINES)
    with pytest.raises(KeyError):
        pw.delete("mallory")
    assert pw.users() == ["alice", "bob", "carol"]


def test_new_file_is_private_and_no_temp_file_is_left(tmp_path: Path) -> None:
    pw = PasswordFile()
    pw.set("alice", "pw")
    old_umask = os.umask(0o022)  # a umask that would make a plain open() 0644
    try:
        pw.save(tmp_path / "passwd")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(GOOD, encoding="utf-8")
    path.chmod(0o640)
    pw = PasswordFile.load(path)
    pw.set("bob", "pw")
    pw.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert PasswordFile.load(path).users() == ["alice", "bob"]


def test_save_replaces_the_target_of_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text(GOOD, encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(real)
    pw = PasswordFile.load(link)
    pw.set("bob", "pw")
    pw.save(link)
    assert link.is_symlink()
    assert PasswordFile.load(real).users() == ["alice", "bob"]


def test_save_is_atomic_on_failure(tmp_path: Path) -> None:
    """A failed write leaves the old file whole and no temporary file."""
    path = tmp_path / "passwd"
    path.write_text(GOOD, encoding="utf-8")
    pw = PasswordFile.load(path)
    pw.set("bob", "pw")
    pw._layout.append((True, "ghost"))  # a user without a hash: dumps() fails mid-way
    with pytest.raises(KeyError):
        pw.save(path)
    assert path.read_text(encoding="utf-8") == GOOD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd"]


# -- timing --------------------------------------------------------------------


def _fastest(func: object, runs: int = 3) -> float:
    assert callable(func)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def test_unknown_user_costs_a_hash_like_a_wrong_password() -> None:
    """No early return for unknown names: the dummy check uses the file's
    iteration count, so it costs what a real one does (a missing check
    would be thousands of times faster)."""
    pw = PasswordFile()
    pw.set("alice", "pw", iterations=40_000)
    wrong = _fastest(lambda: pw.verify("alice", "nope"))
    unknown = _fastest(lambda: pw.verify("mallory", "nope"))
    assert unknown > 0.3 * wrong, (unknown, wrong)


def test_iterations_for_a_user_and_for_an_unknown_one() -> None:
    """What the broker weighs to check a password inline or in a thread: an
    unknown user costs what the file's usual entry costs."""
    pw = PasswordFile()
    pw.set("a", "x", iterations=50)
    pw.set("b", "x", iterations=50)
    pw.set("slow", "x", iterations=5000)
    assert pw.iterations_for("slow") == 5000
    assert pw.iterations_for("a") == 50
    assert pw.iterations_for("nobody") == 50
