"""The line-based files of access control: reading them, and their errors."""

from __future__ import annotations

import os

from ..errors import ConfigError

__all__ = ["AuthFileError", "read_file", "split_lines"]


class AuthFileError(ConfigError):
    """A password or ACL file cannot be used.

    ``str()`` is one line that names the setting, the file and, for a bad
    line, its number: ``acl_file: /etc/shardmq/acl:7: unknown access 'rw'``.
    It is a ``ConfigError`` because these files are settings: the CLI prints
    it and exits with the configuration-error status.
    """

    def __init__(
        self,
        setting: str,
        path: str | os.PathLike[str],
        message: str,
        line: int | None = None,
    ) -> None:
        where = os.fspath(path) if line is None else f"{os.fspath(path)}:{line}"
        super().__init__(setting, f"{where}: {message}")
        self.path = os.fspath(path)
        self.line = line


def read_file(setting: str, path: str | os.PathLike[str]) -> bytes:
    """The bytes of the file at ``path``; AuthFileError if it cannot be read."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise AuthFileError(setting, where, "no such file") from None
    except IsADirectoryError:
        raise AuthFileError(setting, where, "is a directory") from None
    except OSError as exc:
        raise AuthFileError(setting, where, f"cannot read: {exc.strerror}") from None


def split_lines(setting: str, path: str | os.PathLike[str], data: str | bytes) -> list[str]:
    """The lines of ``data`` without their ends (``\\n`` or ``\\r\\n``).

    Bytes are decoded as UTF-8 line by line, so an error names its line.
    """
    if isinstance(data, str):
        lines = data.split("\n")
    else:
        lines = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise AuthFileError(setting, path, "not valid UTF-8", line=number) from None
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line
    return [line.removesuffix("\r") for line in lines]
