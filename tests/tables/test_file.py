import hashlib
import os
import stat

import pytest

from sensor.engine import Engine
from sensor.errors import QueryError
from sensor.schema import QueryContext
from sensor.text import fs_text
from tables import file as file_table

FILE_COLUMNS = (
    "path, directory, filename, inode, uid, gid, mode, device, size, block_size, "
    "atime, mtime, ctime, btime, hard_links, symlink, type, symlink_target_path"
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture
def tree(tmp_path):
    """Create a directory with a regular file, a non-UTF-8 name, links and a subdir."""
    (tmp_path / "plain.txt").write_bytes(b"hello\n")
    latin1 = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    with open(latin1, "wb") as file:
        file.write(b"non-utf-8 name\n")
    os.chmod(latin1, 0o640)
    (tmp_path / "link").symlink_to("plain.txt")
    (tmp_path / "dangling").symlink_to("missing")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo")
    return tmp_path


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def select_file(engine: Engine, where: str) -> dict[str, dict]:
    rows = engine.execute(f"SELECT {FILE_COLUMNS} FROM file WHERE {where}").dicts()
    return {row["path"]: row for row in rows}


def expected_file_row(path: bytes) -> dict:
    link = os.lstat(path)
    status = link
    if stat.S_ISLNK(link.st_mode) and os.path.exists(path):
        status = os.stat(path)
    return {
        "path": fs_text(path),
        "directory": fs_text(os.path.dirname(path)),
        "filename": fs_text(os.path.basename(path)),
        "inode": status.st_ino,
        "uid": status.st_uid,
        "gid": status.st_gid,
        "mode": f"{stat.S_IMODE(status.st_mode):04o}",
        "device": status.st_rdev,
        "size": status.st_size,
        "block_size": status.st_blksize,
        "atime": int(status.st_atime),
        "mtime": int(status.st_mtime),
        "ctime": int(status.st_ctime),
        "btime": 0,
        "hard_links": status.st_nlink,
        "symlink": int(stat.S_ISLNK(link.st_mode)),
    }


def assert_matches_stat(row: dict, path: bytes) -> None:
    for column, value in expected_file_row(path).items():
        assert row[column] == value, column


# --- file ---------------------------------------------------------------------


def test_file_path_matches_stat(engine, tree):
    path = os.fsencode(tree / "plain.txt")
    rows = select_file(engine, f"path = {sql_text(fs_text(path))}")
    assert list(rows) == [fs_text(path)]
    row = rows[fs_text(path)]
    assert_matches_stat(row, path)
    assert row["type"] == "regular"
    assert row["symlink_target_path"] is None


def test_file_non_utf8_name_round_trip(engine, tree):
    path = os.path.join(os.fsencode(tree), b"caf\xe9")
    listed = select_file(engine, f"directory = {sql_text(str(tree))}")
    rendered = fs_text(path)
    assert rendered.endswith("caf\\xe9")
    assert rendered in listed
    assert listed[rendered]["filename"] == "caf\\xe9"

    # The rendered name, typed back into the WHERE clause, finds the same file.
    rows = select_file(engine, f"path = {sql_text(rendered)}")
    assert list(rows) == [rendered]
    assert_matches_stat(rows[rendered], path)
    assert rows[rendered]["mode"] == "0640"


def test_file_directory_lists_entries(engine, tree):
    rows = select_file(engine, f"directory = {sql_text(str(tree))}")
    expected = {
        fs_text(os.path.join(os.fsencode(tree), name))
        for name in os.listdir(os.fsencode(tree))
    }
    assert set(rows) == expected
    for row in rows.values():
        assert row["directory"] == str(tree)
        path = os.path.join(os.fsencode(tree), os.fsencode(row["filename"]))
        if b"\\x" not in path:
            assert_matches_stat(row, path)


def test_file_types(engine, tree):
    rows = select_file(engine, f"directory = {sql_text(str(tree))}")
    types = {row["filename"]: row["type"] for row in rows.values()}
    assert types["plain.txt"] == "regular"
    assert types["sub"] == "directory"
    assert types["fifo"] == "fifo"
    # A link reports its target's type, and its own only when the target is missing.
    assert types["link"] == "regular"
    assert types["dangling"] == "symlink"


def test_file_symlink_columns(engine, tree):
    rows = select_file(engine, f"path = {sql_text(str(tree / 'link'))}")
    row = rows[str(tree / "link")]
    assert row["symlink"] == 1
    assert row["symlink_target_path"] == "plain.txt"
    assert_matches_stat(row, os.fsencode(tree / "link"))
    assert row["inode"] == os.stat(tree / "plain.txt").st_ino


def test_file_dangling_symlink(engine, tree):
    rows = select_file(engine, f"path = {sql_text(str(tree / 'dangling'))}")
    row = rows[str(tree / "dangling")]
    assert row["symlink"] == 1
    assert row["symlink_target_path"] == "missing"
    assert row["inode"] == os.lstat(tree / "dangling").st_ino


def test_file_directory_entry_row(engine, tree):
    rows = select_file(engine, f"path = {sql_text(str(tree / 'sub'))}")
    row = rows[str(tree / "sub")]
    assert row["type"] == "directory"
    assert row["directory"] == str(tree)
    assert row["filename"] == "sub"
    assert_matches_stat(row, os.fsencode(tree / "sub"))


def test_file_path_in_skips_missing(engine, tree):
    paths = [str(tree / "plain.txt"), str(tree / "sub"), str(tree / "missing")]
    where = "path IN (" + ", ".join(sql_text(path) for path in paths) + ")"
    rows = select_file(engine, where)
    assert set(rows) == {str(tree / "plain.txt"), str(tree / "sub")}


def test_file_missing_path_no_row(engine, tree):
    assert select_file(engine, f"path = {sql_text(str(tree / 'missing'))}") == {}


def test_file_missing_directory_no_row(engine, tree):
    assert select_file(engine, f"directory = {sql_text(str(tree / 'missing'))}") == {}


def test_file_unreadable_directory_no_row(engine, tree):
    # A regular file is not a directory to list.
    where = f"directory = {sql_text(str(tree / 'plain.txt'))}"
    assert select_file(engine, where) == {}


def test_file_requires_path_or_directory(engine):
    with pytest.raises(QueryError) as error:
        engine.execute("SELECT * FROM file")
    assert "path" in str(error.value)
    assert "directory" in str(error.value)


def test_file_namespace_rejected(engine, tree):
    where = f"path = {sql_text(str(tree))} AND pid_with_namespace = {os.getpid()}"
    with pytest.raises(QueryError, match="pid_with_namespace"):
        engine.execute(f"SELECT * FROM file WHERE {where}")


# --- LIKE patterns ------------------------------------------------------------


def like_paths(column: str, pattern: str) -> set[str]:
    context = QueryContext(constraints={column: [("LIKE", pattern)]})
    generate = file_table.generate_file
    return {fs_text(row["path"]) for row in generate(context)}


def test_like_one_level(tree):
    (tree / "sub" / "deep.txt").write_text("x")
    found = like_paths("path", f"{tree}/%")
    assert str(tree / "plain.txt") in found
    assert str(tree / "sub") in found
    assert fs_text(os.path.join(os.fsencode(tree), b"caf\xe9")) in found
    assert str(tree / "sub" / "deep.txt") not in found


def test_like_recursive(tree):
    (tree / "sub" / "deep.txt").write_text("x")
    found = like_paths("path", f"{tree}/%%")
    assert str(tree / "sub" / "deep.txt") in found
    assert str(tree / "plain.txt") in found


def test_like_within_name(tree):
    found = like_paths("path", f"{tree}/pl%.txt")
    assert found == {str(tree / "plain.txt")}


def test_like_escaped_non_utf8(tree):
    found = like_paths("path", f"{tree}/caf\\xe%")
    assert found == set()
    found = like_paths("path", f"{tree}/caf\\xe9%")
    assert found == {fs_text(os.path.join(os.fsencode(tree), b"caf\xe9"))}


def test_like_through_engine(engine, tree):
    result = engine.execute(f"SELECT path FROM file WHERE path LIKE '{tree}/pl%'")
    assert result.rows == [(str(tree / "plain.txt"),)]


def test_like_directory_lists_matched_dirs(tree):
    (tree / "sub" / "deep.txt").write_text("x")
    context = QueryContext(constraints={"directory": [("LIKE", f"{tree}/s%")]})
    rows = list(file_table.generate_file(context))
    assert {fs_text(row["path"]) for row in rows} == {str(tree / "sub" / "deep.txt")}


# --- hash ---------------------------------------------------------------------


def digests(path: bytes) -> tuple[str, str, str]:
    with open(path, "rb") as file:
        content = file.read()
    return (
        hashlib.md5(content).hexdigest(),
        hashlib.sha1(content).hexdigest(),
        hashlib.sha256(content).hexdigest(),
    )


def select_hash(engine: Engine, where: str) -> dict[str, tuple]:
    rows = engine.execute(
        f"SELECT path, directory, md5, sha1, sha256 FROM hash WHERE {where}"
    ).rows
    return {
        path: (directory, md5, sha1, sha256)
        for path, directory, md5, sha1, sha256 in rows
    }


def test_hash_path_matches_hashlib(engine, tree):
    path = os.fsencode(tree / "plain.txt")
    rows = select_hash(engine, f"path = {sql_text(str(tree / 'plain.txt'))}")
    assert rows == {str(tree / "plain.txt"): (str(tree), *digests(path))}


def test_hash_non_utf8_name_round_trip(engine, tree):
    path = os.path.join(os.fsencode(tree), b"caf\xe9")
    rendered = fs_text(path)
    by_directory = select_hash(engine, f"directory = {sql_text(str(tree))}")
    assert by_directory[rendered] == (str(tree), *digests(path))
    by_path = select_hash(engine, f"path = {sql_text(rendered)}")
    assert by_path == {rendered: (str(tree), *digests(path))}


def test_hash_directory_regular_files_only(engine, tree):
    rows = select_hash(engine, f"directory = {sql_text(str(tree))}")
    latin1 = fs_text(os.path.join(os.fsencode(tree), b"caf\xe9"))
    # The link to plain.txt counts, as it does in osquery.
    assert set(rows) == {str(tree / "plain.txt"), str(tree / "link"), latin1}
    assert rows[str(tree / "link")] == rows[str(tree / "plain.txt")]


def test_hash_path_in_skips_non_regular(engine, tree):
    names = ["plain.txt", "sub", "fifo", "dangling", "missing"]
    where = "path IN (" + ", ".join(sql_text(str(tree / n)) for n in names) + ")"
    assert set(select_hash(engine, where)) == {str(tree / "plain.txt")}


def test_hash_large_file_chunks(engine, tmp_path):
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(3 * (1 << 20) + 17))
    rows = select_hash(engine, f"path = {sql_text(str(path))}")
    assert rows[str(path)][1:] == digests(os.fsencode(path))


def test_hash_unreadable_file_null_digests(engine):
    # /proc/self/mem is a regular file whose read at offset 0 fails with EIO,
    # even for root.
    rows = select_hash(engine, "path = '/proc/self/mem'")
    assert rows == {"/proc/self/mem": ("/proc/self", None, None, None)}


def test_hash_skips_procfs_files(engine):
    # procfs files are never read: some block and some, like /proc/kmsg, consume
    # what they return. /proc/self/status is a harmless example of one.
    rows = select_hash(engine, "path = '/proc/self/status'")
    assert rows == {"/proc/self/status": ("/proc/self", None, None, None)}


def test_hash_computes_only_used_digests(tree):
    context = QueryContext(
        constraints={"path": [("=", str(tree / "plain.txt"))]},
        columns_used=frozenset({"path", "sha256"}),
    )
    rows = list(file_table.generate_hash(context))
    assert len(rows) == 1
    assert rows[0]["sha256"] == digests(os.fsencode(tree / "plain.txt"))[2]
    assert "md5" not in rows[0]
    assert "sha1" not in rows[0]


def test_hash_requires_path_or_directory(engine):
    with pytest.raises(QueryError) as error:
        engine.execute("SELECT md5 FROM hash")
    assert "path" in str(error.value)
    assert "directory" in str(error.value)


def test_escaped_twins_both_returned(engine, tmp_path):
    # The name of the byte 0xff and the name of the four characters \xff render
    # alike, so a lookup returns both rather than letting one hide the other.
    raw = os.path.join(os.fsencode(tmp_path), b"bad\xff")
    literal = os.path.join(os.fsencode(tmp_path), b"bad\\xff")
    for path, content in ((raw, b"raw"), (literal, b"literal")):
        with open(path, "wb") as stream:
            stream.write(content)

    shown = f"{tmp_path}/bad\\xff"
    listed = engine.execute(
        f"SELECT path, size FROM file WHERE directory = '{tmp_path}'"
    ).rows
    found = engine.execute("SELECT path, size FROM file WHERE path = ?", (shown,)).rows
    assert sorted(listed) == [(shown, 3), (shown, 7)]
    assert sorted(found) == [(shown, 3), (shown, 7)]


def test_systemd_escaped_name_is_literal(engine, tmp_path):
    # systemd writes '-' as \x2d in unit names. Such a name is shown and found as
    # ls prints it, so the file whose name has a real '-' is not returned for it.
    escaped = tmp_path / "dev-disk-by\\x2duuid.swap"
    plain = tmp_path / "dev-disk-by-uuid.swap"
    escaped.write_text("escaped")
    plain.write_text("plain")
    rows = engine.execute("SELECT path, size FROM file WHERE path = ?", (str(escaped),))
    assert rows.rows == [(str(escaped), 7)]


def test_hash_skips_files_over_read_max(engine, tmp_path, monkeypatch):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    monkeypatch.setattr(file_table, "READ_MAX", 99)
    rows = select_hash(engine, f"path = '{big}'")
    assert rows == {str(big): (str(tmp_path), None, None, None)}
