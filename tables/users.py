"""The users and groups tables: accounts from the passwd and group databases."""

from __future__ import annotations

import grp
import pwd
from collections.abc import Iterable, Iterator
from typing import Any

from sensor.errors import QueryError
from sensor.schema import (
    BIGINT,
    INTEGER,
    TEXT,
    Column,
    QueryContext,
    Table,
    TableSchema,
)

__all__ = ["PASSWD_PATH", "TABLES"]

# Read directly, bypassing NSS, when a query sets `include_remote = 0`.
PASSWD_PATH = "/etc/passwd"

USERS = TableSchema(
    name="users",
    description="User accounts from the passwd database, including NSS sources.",
    columns=(
        Column("uid", BIGINT, "User ID", index=True),
        Column("gid", BIGINT, "Primary group ID"),
        Column("uid_signed", BIGINT, "User ID read as a signed 32-bit integer"),
        Column(
            "gid_signed", BIGINT, "Primary group ID read as a signed 32-bit integer"
        ),
        Column("username", TEXT, "Login name", additional=True),
        Column("description", TEXT, "GECOS field, usually the full name"),
        Column("directory", TEXT, "Home directory"),
        Column("shell", TEXT, "Login shell"),
        Column(
            "uuid",
            TEXT,
            "Account UUID (macOS and Windows)",
            index=True,
            unsupported=True,
        ),
        Column(
            "pid_with_namespace",
            INTEGER,
            "Read the accounts seen from this process's mount namespace",
            additional=True,
            hidden=True,
        ),
        Column(
            "include_remote",
            INTEGER,
            "1 to read every NSS source (LDAP included), 0 for /etc/passwd only",
            additional=True,
            hidden=True,
        ),
    ),
)

GROUPS = TableSchema(
    name="groups",
    description="Groups from the group database, including NSS sources.",
    columns=(
        Column("gid", BIGINT, "Group ID", index=True),
        Column("gid_signed", BIGINT, "Group ID read as a signed 32-bit integer"),
        Column("groupname", TEXT, "Group name"),
        Column(
            "pid_with_namespace",
            INTEGER,
            "Read the groups seen from this process's mount namespace",
            additional=True,
            hidden=True,
        ),
    ),
)


def signed32(value: int) -> int:
    """Return an unsigned 32-bit id as the signed value with the same bits."""
    return (value + 2**31) % 2**32 - 2**31


def reject_namespace(context: QueryContext, table: str) -> None:
    # NOTE: osquery reads the table inside the mount namespace of the given
    # process. Ignoring the constraint would return the host's rows instead.
    if context.constraints.get("pid_with_namespace"):
        raise QueryError(
            f"table {table}: the pid_with_namespace constraint is not supported. "
            "Remove it to read the host's rows"
        )


def _integers(values: Iterable[Any]) -> list[int]:
    """Return the values that read as integers, skipping the rest as osquery does."""
    numbers = []
    for value in values:
        try:
            numbers.append(int(value))
        except (TypeError, ValueError):
            continue
    return sorted(set(numbers))


def _user_row(entry: pwd.struct_passwd, include_remote: int) -> dict[str, Any]:
    return {
        "uid": entry.pw_uid,
        "gid": entry.pw_gid,
        "uid_signed": signed32(entry.pw_uid),
        "gid_signed": signed32(entry.pw_gid),
        "username": entry.pw_name,
        "description": entry.pw_gecos,
        "directory": entry.pw_dir,
        "shell": entry.pw_shell,
        "pid_with_namespace": 0,
        "include_remote": include_remote,
    }


def _lookup_users(
    uids: set[Any] | None, usernames: set[Any] | None
) -> Iterator[pwd.struct_passwd]:
    """Yield passwd entries through NSS, one lookup per requested id or name."""
    if uids is not None:
        for uid in _integers(uids):
            try:
                yield pwd.getpwuid(uid)
            except (KeyError, OverflowError):
                continue
    elif usernames is not None:
        for name in sorted(str(name) for name in usernames):
            try:
                yield pwd.getpwnam(name)
            except (KeyError, ValueError):
                continue
    else:
        yield from pwd.getpwall()


def _parse_passwd(content: str) -> Iterator[pwd.struct_passwd]:
    """Yield the well-formed entries of a passwd(5) file."""
    for line in content.splitlines():
        fields = line.split(":")
        if len(fields) != 7 or not fields[0] or fields[0].startswith(("#", "+", "-")):
            continue
        try:
            fields[2] = int(fields[2])
            fields[3] = int(fields[3])
        except ValueError:
            continue
        yield pwd.struct_passwd(fields)


def _local_users(
    uids: set[Any] | None, usernames: set[Any] | None
) -> Iterator[pwd.struct_passwd]:
    """Yield entries of the passwd file alone, which never queries a directory server."""
    try:
        with open(PASSWD_PATH, encoding="utf-8", errors="surrogateescape") as file:
            content = file.read()
    except OSError:
        return
    requested_uids = set(_integers(uids)) if uids is not None else None
    requested_names = (
        {str(name) for name in usernames} if usernames is not None else None
    )
    for entry in _parse_passwd(content):
        if requested_uids is not None:
            if entry.pw_uid in requested_uids:
                yield entry
        elif requested_names is not None:
            if entry.pw_name in requested_names:
                yield entry
        else:
            yield entry


def generate_users(context: QueryContext) -> Iterator[dict[str, Any]]:
    reject_namespace(context, "users")
    uids = context.equals("uid")
    usernames = context.equals("username")

    # NOTE: osquery's current source reads only /etc/passwd unless
    # `include_remote = 1`. This table reads every NSS source by default, as
    # `getent passwd` does, and keeps the file-only read for `include_remote = 0`.
    remote = context.equals("include_remote")
    if remote is not None and _integers(remote) == [0]:
        entries = _local_users(uids, usernames)
        include_remote = 0
    else:
        entries = _lookup_users(uids, usernames)
        include_remote = 1
    for entry in entries:
        yield _user_row(entry, include_remote)


def _group_row(entry: grp.struct_group) -> dict[str, Any]:
    return {
        "gid": entry.gr_gid,
        "gid_signed": signed32(entry.gr_gid),
        "groupname": entry.gr_name,
        "pid_with_namespace": 0,
    }


def generate_groups(context: QueryContext) -> Iterator[dict[str, Any]]:
    reject_namespace(context, "groups")
    gids = context.equals("gid")
    if gids is not None:
        for gid in _integers(gids):
            try:
                yield _group_row(grp.getgrgid(gid))
            except (KeyError, OverflowError):
                continue
        return

    # Several NSS sources may define one gid, so the first definition wins, as
    # in osquery.
    seen: set[int] = set()
    for entry in grp.getgrall():
        if entry.gr_gid in seen:
            continue
        seen.add(entry.gr_gid)
        yield _group_row(entry)


TABLES = [Table(USERS, generate_users), Table(GROUPS, generate_groups)]
