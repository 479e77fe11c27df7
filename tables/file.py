"""The file and hash tables: stat(2) details and digests of the paths a query names.

Linux file names are byte strings, so every path here is bytes. A path written in
a WHERE clause goes through `candidate_paths` to find the bytes it stands for, and
path columns are returned as bytes, which the engine renders with `fs_text`. A name
shown in a result therefore finds the same file when typed back into `path = '...'`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import stat
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
from sensor.text import candidate_paths

__all__ = ["TABLES", "expand_pattern"]

_NAMESPACE_COLUMNS = (
    Column(
        "pid_with_namespace",
        INTEGER,
        "Resolve paths in this process's mount namespace",
        additional=True,
        hidden=True,
    ),
    Column(
        "mount_namespace_id",
        TEXT,
        "Mount namespace the paths were resolved in",
        hidden=True,
    ),
)

FILE = TableSchema(
    name="file",
    description="stat(2) details of the files named by path or listed in directory.",
    columns=(
        Column("path", TEXT, "Absolute path as written", index=True, required=True),
        Column("directory", TEXT, "Directory that contains the file", required=True),
        Column("filename", TEXT, "Last component of the path"),
        Column("inode", BIGINT, "Inode number"),
        Column("uid", BIGINT, "Owning user ID"),
        Column("gid", BIGINT, "Owning group ID"),
        Column("mode", TEXT, "Permission bits as four octal digits, as 0644"),
        Column("device", BIGINT, "Device number of a device file (st_rdev)"),
        Column("size", BIGINT, "Size in bytes"),
        Column("block_size", INTEGER, "Preferred I/O block size (st_blksize)"),
        Column("atime", BIGINT, "Last access time, Unix seconds"),
        Column("mtime", BIGINT, "Last modification time, Unix seconds"),
        Column("ctime", BIGINT, "Last status change time, Unix seconds"),
        Column("btime", BIGINT, "Creation time; 0 on Linux, as osquery reports"),
        Column("hard_links", INTEGER, "Number of hard links"),
        Column("symlink", INTEGER, "1 if the path itself is a symbolic link"),
        Column("type", TEXT, "File type: regular, directory, symlink, block, ..."),
        Column("symlink_target_path", TEXT, "Target of a symbolic link as stored"),
        *_NAMESPACE_COLUMNS,
    ),
)

HASH = TableSchema(
    name="hash",
    description="MD5, SHA-1 and SHA-256 digests of regular files.",
    columns=(
        Column("path", TEXT, "Path of the file as written", index=True, required=True),
        Column("directory", TEXT, "Directory that contains the file", required=True),
        Column("md5", TEXT, "MD5 digest, lowercase hex"),
        Column("sha1", TEXT, "SHA-1 digest, lowercase hex"),
        Column("sha256", TEXT, "SHA-256 digest, lowercase hex"),
        *_NAMESPACE_COLUMNS,
    ),
)

_TYPE_NAMES = {
    stat.S_IFREG: "regular",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFBLK: "block",
    stat.S_IFCHR: "character",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

_DIGESTS = ("md5", "sha1", "sha256")
_CHUNK_SIZE = 1 << 20

# The maximum bytes hashed from one file, osquery's default read_max (50 MiB). Larger
# files keep their row with NULL digests, so one query cannot read for minutes.
READ_MAX = 50 * 1024 * 1024

# Max directory depth that a recursive `%%` pattern descends, as in osquery.
# Symlink loops stop earlier, at a directory already visited.
_MAX_RECURSION_DEPTH = 64


# --- which paths a query names ------------------------------------------------


def _existing_paths(text: str) -> list[bytes]:
    """Return every existing byte path that the text may stand for.

    A name and its escaped twin may both exist (see sensor.text). Both rows are
    returned, and SQLite's check of the constraint keeps the ones it names.
    """
    return [path for path in candidate_paths(text) if os.path.lexists(path)]


def _glob_pattern(pattern: bytes) -> bytes:
    """Turn an SQL LIKE pattern into a glob pattern: `%` becomes `*`.

    Glob's own wildcards in the pattern are escaped, so they match literally as
    they do under LIKE.
    """
    pieces = [glob.escape(piece) for piece in pattern.split(b"%")]
    return b"*".join(pieces)


def _walk(
    directory: bytes, visited: set[tuple[int, int]], depth: int
) -> Iterator[bytes]:
    """Yield every entry below a directory, depth first, each directory once."""
    if depth >= _MAX_RECURSION_DEPTH:
        return
    try:
        status = os.stat(directory)
        entries = sorted(os.listdir(directory))
    except OSError:
        return
    key = (status.st_dev, status.st_ino)
    if key in visited:
        return
    visited.add(key)
    for name in entries:
        path = os.path.join(directory, name)
        yield path
        if os.path.isdir(path):
            yield from _walk(path, visited, depth + 1)


def expand_pattern(pattern: str, directories_only: bool = False) -> list[bytes]:
    """Return the paths that a LIKE pattern on `path` or `directory` matches.

    As in osquery, `%` matches within one path level and a trailing `%%` matches
    everything below the level it ends, recursively. Names that start with a dot
    match only a pattern that spells the dot, as with glob(3).
    """
    results: list[bytes] = []
    for candidate in candidate_paths(pattern):
        recursive = candidate.endswith(b"%%")
        if recursive:
            candidate = candidate[:-1]
        visited: set[tuple[int, int]] = set()
        for match in sorted(glob.glob(_glob_pattern(candidate))):
            results.append(match)
            if recursive and os.path.isdir(match):
                results.extend(_walk(match, visited, 0))
    # The two readings of a pattern rarely match the same names, but when they do,
    # each path is returned once.
    results = list(dict.fromkeys(results))
    if directories_only:
        results = [path for path in results if os.path.isdir(path)]
    return results


def _constraint_paths(context: QueryContext, column: str) -> list[bytes]:
    """Return the existing byte paths that `=`, `IN` and LIKE on a column name."""
    paths: list[bytes] = []
    for text in sorted(str(value) for value in context.equals(column) or ()):
        paths.extend(_existing_paths(text))
    for op, value in context.constraints.get(column, ()):
        if op == "LIKE" and value is not None:
            paths.extend(expand_pattern(str(value), column == "directory"))
    return paths


def _directory_entries(directory: bytes) -> list[bytes]:
    try:
        return sorted(os.path.join(directory, name) for name in os.listdir(directory))
    except OSError:
        return []


def requested_paths(context: QueryContext, table: str) -> Iterator[tuple[bytes, bytes]]:
    """Yield (path, directory) pairs for every file that the query names.

    Paths named by `path` come first, then the entries of each directory named by
    `directory`. Each path is yielded once. A missing or unreadable path or
    directory yields nothing.
    """
    _reject_namespace(context, table)
    seen: set[bytes] = set()
    for path in _constraint_paths(context, "path"):
        if path not in seen:
            seen.add(path)
            yield path, os.path.dirname(path)
    for directory in _constraint_paths(context, "directory"):
        for path in _directory_entries(directory):
            if path not in seen:
                seen.add(path)
                yield path, directory


def _reject_namespace(context: QueryContext, table: str) -> None:
    # NOTE: osquery resolves the paths inside the given process's mount
    # namespace. Without that, a constrained query would answer for the host.
    if context.constraints.get("pid_with_namespace"):
        raise QueryError(
            f"table {table}: the pid_with_namespace constraint is not supported. "
            "Remove it to read the host's files"
        )


# --- file ---------------------------------------------------------------------


def _file_row(path: bytes, directory: bytes) -> dict[str, Any] | None:
    """Return the file row of a path, or None when the path cannot be stat'ed.

    As in osquery, a symbolic link reports the details of its target, and its
    own only when the target is missing.
    """
    try:
        status = os.lstat(path)
    except OSError:
        return None
    row: dict[str, Any] = {
        "path": path,
        "directory": directory,
        "filename": os.path.basename(path),
        "symlink": 0,
        "pid_with_namespace": 0,
    }
    if stat.S_ISLNK(status.st_mode):
        row["symlink"] = 1
        try:
            row["symlink_target_path"] = os.readlink(path)
        except OSError:
            pass
        try:
            status = os.stat(path)
        except OSError:
            pass
    row.update(_stat_columns(status))
    return row


def _stat_columns(status: os.stat_result) -> dict[str, Any]:
    # NOTE: osquery names a dangling link's type "unknown". This table names it
    # "symlink", the type that lstat(2) reports.
    return {
        "inode": status.st_ino,
        "uid": status.st_uid,
        "gid": status.st_gid,
        "mode": format(stat.S_IMODE(status.st_mode), "04o"),
        "device": status.st_rdev,
        "size": status.st_size,
        "block_size": status.st_blksize,
        "atime": int(status.st_atime),
        "mtime": int(status.st_mtime),
        "ctime": int(status.st_ctime),
        # os.stat does not return the birth time on Linux, which needs statx(2),
        # so btime stays 0 as osquery reports it on Linux.
        "btime": 0,
        "hard_links": status.st_nlink,
        "type": _TYPE_NAMES.get(stat.S_IFMT(status.st_mode), "unknown"),
    }


def generate_file(context: QueryContext) -> Iterator[dict[str, Any]]:
    for path, directory in requested_paths(context, "file"):
        row = _file_row(path, directory)
        if row is not None:
            yield row


# --- hash ---------------------------------------------------------------------


def hash_file(path: bytes, algorithms: Iterable[str]) -> dict[str, str] | None:
    """Return hex digests of a file's content, or None when it cannot be read.

    Files of procfs and sysfs are not read, because some of them block or, like
    /proc/kmsg, consume what they return. Files larger than READ_MAX are not read
    either. The file is opened non-blocking so that
    no other special file can hang the query.
    """
    hashers = {name: hashlib.new(name) for name in algorithms}
    if not hashers:
        return {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as file:
        try:
            status = os.fstat(fd)
            if status.st_dev in _pseudo_filesystem_devices():
                return None
            if status.st_size > READ_MAX:
                return None
            while chunk := file.read(_CHUNK_SIZE):
                for hasher in hashers.values():
                    hasher.update(chunk)
        except OSError:
            return None
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


@functools.cache
def _pseudo_filesystem_devices() -> frozenset[int]:
    devices = set()
    for mount in ("/proc", "/sys"):
        try:
            devices.add(os.stat(mount).st_dev)
        except OSError:
            continue
    return frozenset(devices)


def generate_hash(context: QueryContext) -> Iterator[dict[str, Any]]:
    algorithms = [name for name in _DIGESTS if context.uses(name)]
    for path, directory in requested_paths(context, "hash"):
        # Only regular files, links to them included, are hashed, as in osquery.
        if not os.path.isfile(path):
            continue
        row: dict[str, Any] = {
            "path": path,
            "directory": directory,
            "pid_with_namespace": 0,
        }
        # An unreadable file keeps its row, with NULL digests.
        row.update(hash_file(path, algorithms) or {})
        yield row


TABLES = [Table(FILE, generate_file), Table(HASH, generate_hash)]
