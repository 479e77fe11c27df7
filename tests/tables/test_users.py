import os
import subprocess

import pytest

from sensor.engine import Engine
from sensor.errors import QueryError
from tables import users


def getent(database: str) -> list[list[str]]:
    output = subprocess.run(
        ["getent", database], capture_output=True, text=True, check=True
    ).stdout
    return [line.split(":") for line in output.splitlines() if line]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def test_users_match_getent(engine):
    expected = {
        (int(uid), int(gid), name, home, shell)
        for name, _, uid, gid, _, home, shell in getent("passwd")
    }
    rows = engine.execute("SELECT uid, gid, username, directory, shell FROM users").rows
    assert set(rows) == expected
    assert len(rows) == len(getent("passwd"))


def test_users_uid_pushdown(engine):
    rows = engine.execute("SELECT uid, username FROM users WHERE uid = 0").rows
    assert rows == [(0, "root")]


def test_users_uid_in_skips_unknown(engine):
    unused = max(int(fields[2]) for fields in getent("passwd")) + 1
    rows = engine.execute(
        f"SELECT uid FROM users WHERE uid IN (0, {unused}) ORDER BY uid"
    ).rows
    assert rows == [(0,)]


def test_users_username_pushdown(engine):
    rows = engine.execute("SELECT uid FROM users WHERE username = 'root'").rows
    assert rows == [(0,)]


def test_users_signed_ids(engine):
    rows = engine.execute("SELECT uid, uid_signed, gid, gid_signed FROM users").rows
    for uid, uid_signed, gid, gid_signed in rows:
        assert uid_signed == users.signed32(uid)
        assert gid_signed == users.signed32(gid)


def test_signed32_wraps_high_ids():
    assert users.signed32(0) == 0
    assert users.signed32(65534) == 65534
    assert users.signed32(2**31) == -(2**31)
    assert users.signed32(4294967295) == -1


def test_users_uuid_is_null(engine):
    rows = engine.execute("SELECT uuid FROM users").rows
    assert rows
    assert {uuid for (uuid,) in rows} == {None}


def test_users_local_reads_passwd_file(engine, tmp_path, monkeypatch):
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "# a comment\n"
        "alice:x:1000:1000:Alice,,,:/home/alice:/bin/sh\n"
        "broken line\n"
        "nobody:x:4294967294:4294967294::/nonexistent:/usr/sbin/nologin\n"
    )
    monkeypatch.setattr(users, "PASSWD_PATH", str(passwd))
    rows = engine.execute(
        "SELECT uid, uid_signed, username, description, include_remote "
        "FROM users WHERE include_remote = 0 ORDER BY uid"
    ).rows
    assert rows == [
        (1000, 1000, "alice", "Alice,,,", 0),
        (4294967294, -2, "nobody", "", 0),
    ]


def test_users_local_uid_filter(engine, tmp_path, monkeypatch):
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n"
    )
    monkeypatch.setattr(users, "PASSWD_PATH", str(passwd))
    rows = engine.execute(
        "SELECT username FROM users WHERE include_remote = 0 AND uid = 1001"
    ).rows
    assert rows == [("bob",)]


def test_users_namespace_rejected(engine):
    with pytest.raises(QueryError, match="pid_with_namespace"):
        engine.execute(f"SELECT * FROM users WHERE pid_with_namespace = {os.getpid()}")


def test_groups_match_getent(engine):
    # Several sources may define one gid; the first definition wins.
    expected: dict[int, str] = {}
    for name, _, gid, _ in getent("group"):
        expected.setdefault(int(gid), name)
    rows = engine.execute("SELECT gid, groupname FROM groups").rows
    assert dict(rows) == expected
    assert len(rows) == len(expected)


def test_groups_gid_pushdown(engine):
    rows = engine.execute(
        "SELECT gid, gid_signed, groupname FROM groups WHERE gid = 0"
    ).rows
    assert rows == [(0, 0, "root")]


def test_groups_unknown_gid_empty(engine):
    unused = max(int(fields[2]) for fields in getent("group")) + 1
    rows = engine.execute(f"SELECT * FROM groups WHERE gid = {unused}").rows
    assert rows == []
