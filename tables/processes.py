"""The processes table: one row per process, read from /proc.

Each process costs up to eight procfs reads: stat, status, cmdline, io, cgroup and the
exe, cwd and root links. A full scan reads them for every process, so the per-process
path is written for speed. It uses raw `os.open`/`os.read`, reads each file once,
searches bytes instead of using regular expressions, and skips the files of columns
that the query does not use.

Columns follow osquery's Linux `processes` table (osquery 5.x,
`osquery/tables/system/linux/processes.cpp`), except where a comment notes a difference.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sensor.forkscan import scan_split
from sensor.schema import (
    BIGINT,
    INTEGER,
    TEXT,
    Column,
    QueryContext,
    Table,
    TableSchema,
)
from sensor.text import fs_text

__all__ = ["PROC_ROOT", "SCHEMA", "TABLES", "generate"]

# Tests may point this at another procfs mount or a fixture tree.
PROC_ROOT = "/proc"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# A full scan of at least this many processes is split with a forked child (see
# sensor.forkscan). An estimate: on a 2-CPU test machine a fork cost about 1 ms, the
# time to read some 50 processes, and a 2,000-process scan took 0.6 of its time.
PARALLEL_SCAN_MINIMUM = 500

# One read of this size returns a whole stat, status, io or cgroup file. A longer
# cmdline is read on in further chunks.
_READ_SIZE = 16384

# The kernel appends this to a link target whose file has been unlinked (d_path).
_DELETED = " (deleted)"

_IO_NAMES = [b"read_bytes:", b"write_bytes:", b"cancelled_write_bytes:"]

SCHEMA = TableSchema(
    name="processes",
    description="All processes running on the host.",
    typed_rows=True,
    columns=(
        Column("pid", BIGINT, "Process ID.", index=True),
        Column("name", TEXT, "Process name (the kernel's comm, at most 15 bytes)."),
        Column("path", TEXT, "Path to the executed binary, from /proc/<pid>/exe."),
        Column("cmdline", TEXT, "Command line arguments, joined with spaces."),
        Column("state", TEXT, "Process state letter, as in /proc/<pid>/stat."),
        Column("cwd", TEXT, "Current working directory of the process."),
        Column("root", TEXT, "Root directory of the process, as chroot sets it."),
        Column("uid", BIGINT, "Real user ID."),
        Column("gid", BIGINT, "Real group ID."),
        Column("euid", BIGINT, "Effective user ID."),
        Column("egid", BIGINT, "Effective group ID."),
        Column("suid", BIGINT, "Saved set-user-ID."),
        Column("sgid", BIGINT, "Saved set-group-ID."),
        Column(
            "on_disk",
            INTEGER,
            "1 when the binary is still on disk, 0 when it was deleted, -1 unknown.",
        ),
        Column("wired_size", BIGINT, "Unpageable memory in bytes; always 0 on Linux."),
        Column("resident_size", BIGINT, "Resident memory in bytes (VmRSS)."),
        Column("total_size", BIGINT, "Virtual memory size in bytes (VmSize)."),
        Column("user_time", BIGINT, "CPU time spent in user mode, in milliseconds."),
        Column(
            "system_time", BIGINT, "CPU time spent in kernel mode, in milliseconds."
        ),
        Column(
            "disk_bytes_read", BIGINT, "Bytes the process caused to be read from disk."
        ),
        Column(
            "disk_bytes_written",
            BIGINT,
            "Bytes the process caused to be written to disk, less cancelled writes.",
        ),
        Column(
            "start_time", BIGINT, "Process start time in seconds since the Unix epoch."
        ),
        Column("parent", BIGINT, "Parent process ID."),
        Column("pgroup", BIGINT, "Process group ID."),
        Column("threads", INTEGER, "Number of threads in the process."),
        Column("nice", INTEGER, "Nice value, from -20 (highest priority) to 19."),
        Column(
            "cgroup_path", TEXT, "Path of the process's cgroup, from its first line."
        ),
    ),
)


class _ProcessGone(Exception):
    """The process exited while its row was being read."""


def generate(context: QueryContext) -> Iterator[dict[str, Any]]:
    """Yield a row per process, or per requested pid under `pid =` or `pid IN`."""
    plan = _Plan(context)
    requested = context.equals("pid")
    if requested is not None:
        pids = sorted(_valid_pids(requested))
        return iter(_read_processes(pids, plan, check_leader=True))

    def scan(pids: Sequence[int]) -> list[dict[str, Any]]:
        return _read_processes(pids, plan, check_leader=False)

    return iter(scan_split(_list_pids(), scan, minimum=PARALLEL_SCAN_MINIMUM))


def _read_processes(
    pids: Iterable[int], plan: _Plan, check_leader: bool
) -> list[dict[str, Any]]:
    rows = []
    for pid in pids:
        try:
            row = _read_process(pid, plan, check_leader)
        except _ProcessGone:
            continue
        if row is not None:
            rows.append(row)
    return rows


class _Plan:
    """The procfs files that a scan reads, chosen from the columns its query uses."""

    def __init__(self, context: QueryContext):
        uses = context.uses
        self.status = any(
            uses(name)
            for name in (
                "uid",
                "gid",
                "euid",
                "egid",
                "suid",
                "sgid",
                "resident_size",
                "total_size",
            )
        )
        self.cmdline = uses("cmdline")
        self.exe = uses("path") or uses("on_disk")
        self.cwd = uses("cwd")
        self.root = uses("root")
        self.io = uses("disk_bytes_read") or uses("disk_bytes_written")
        self.cgroup = uses("cgroup_path")
        self.boot_time = _read_boot_time() if uses("start_time") else None


def _list_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC_ROOT) if name.isdigit()]


def _valid_pids(values: Iterable[Any]) -> set[int]:
    # A constraint value may be any SQL value, `pid = '42'` included. Values that are
    # not positive integers match no process.
    pids = set()
    for value in values:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if type(value) is int and value > 0:
            pids.add(value)
    return pids


def _read_process(pid: int, plan: _Plan, check_leader: bool) -> dict[str, Any] | None:
    """Read one process's row, or None when `pid` is a thread, not a process.

    Raise `_ProcessGone` when the process exits before its files are read.
    """
    prefix = f"{PROC_ROOT}/{pid}/"
    row: dict[str, Any] = {"pid": pid, "wired_size": 0}

    # stat comes first because it also proves that the process exists.
    try:
        stat = _read(prefix + "stat")
    except OSError as error:
        raise _ProcessGone from error
    if not _parse_stat(row, stat, plan.boot_time):
        raise _ProcessGone

    # /proc lists only thread group leaders, but /proc/<tid> of any thread opens too,
    # so a pid that came from a WHERE clause must be its own thread group leader.
    if plan.status or check_leader:
        status = _read_file(prefix + "status")
        if status is not None:
            if check_leader and not _is_leader(pid, status):
                return None
            _parse_status(row, status)
    if plan.cmdline:
        cmdline = _read_file(prefix + "cmdline")
        if cmdline is not None:
            row["cmdline"] = fs_text(cmdline.replace(b"\0", b" ").strip())
    if plan.io:
        io = _read_file(prefix + "io")
        if io is not None:
            _parse_io(row, io)
    if plan.cgroup:
        cgroup = _read_file(prefix + "cgroup")
        if cgroup is not None:
            row["cgroup_path"] = fs_text(_parse_cgroup(cgroup))

    if plan.exe:
        _read_exe(row, prefix)
    if plan.cwd:
        row["cwd"] = _read_link(prefix + "cwd")
    if plan.root:
        row["root"] = _read_link(prefix + "root")
    return row


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) == _READ_SIZE:
            data += _read_rest(fd)
    finally:
        os.close(fd)
    return data


def _read_rest(fd: int) -> bytes:
    # procfs returns a whole file in one read when the buffer can hold it, so only
    # a long cmdline fills the buffer and needs more reads.
    chunks = []
    while chunk := os.read(fd, _READ_SIZE):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: str) -> bytes | None:
    """Read a procfs file of a process that was alive a moment ago.

    Return None when reading is not permitted, so that its columns stay NULL.
    Raise `_ProcessGone` when the process has exited.
    """
    try:
        return _read(path)
    except (FileNotFoundError, ProcessLookupError) as error:
        raise _ProcessGone from error
    except OSError:
        return None


def _read_link(path: str) -> str | None:
    """Read a link such as cwd.

    Return "" when the link has no target and None when reading is not permitted.
    Kernel threads and zombies have no exe, and zombies have no cwd or root, so
    readlink fails with ENOENT for them. osquery reports "" in that case.
    """
    try:
        return fs_text(os.readlink(os.fsencode(path)))
    except FileNotFoundError:
        return ""
    except OSError:
        return None


def _read_exe(row: dict[str, Any], prefix: str) -> None:
    """Fill `path` and `on_disk` from the exe link.

    The kernel appends " (deleted)" to the target of a binary that has been unlinked,
    so a target without that suffix is on disk and needs no stat. With the suffix,
    the link count of the running binary distinguishes a deleted binary from one
    whose name ends in " (deleted)".

    NOTE: osquery instead looks the path up in its own mount namespace, so it
    reports 0 for a binary inside a container, where this reports 1.
    """
    path = _read_link(prefix + "exe")
    row["path"] = path
    if not path:
        row["on_disk"] = -1
        return
    if not path.endswith(_DELETED):
        row["on_disk"] = 1
        return
    try:
        links = os.stat(prefix + "exe").st_nlink
    except OSError:
        row["on_disk"] = -1
        return
    if links == 0:
        row["path"] = path[: -len(_DELETED)]
        row["on_disk"] = 0
    else:
        row["on_disk"] = 1


def _parse_stat(row: dict[str, Any], stat: bytes, boot_time: int | None) -> bool:
    """Fill the columns that come from /proc/<pid>/stat, or return False if malformed.

    Field positions are those of proc(5), counted from the state field that follows
    the parenthesised comm. The comm may itself contain ") ", so the last one ends it.
    """
    open_at = stat.find(b"(")
    close_at = stat.rfind(b") ")
    if open_at < 0 or close_at < open_at:
        return False
    fields = stat[close_at + 2 :].split(b" ", 20)
    if len(fields) < 21:
        return False

    row["name"] = fs_text(stat[open_at + 1 : close_at])
    row["state"] = fs_text(fields[0])
    row["parent"] = int(fields[1])
    row["pgroup"] = int(fields[2])
    # utime and stime count clock ticks (sysconf(_SC_CLK_TCK) per second).
    row["user_time"] = int(fields[11]) * 1000 // _CLOCK_TICKS
    row["system_time"] = int(fields[12]) * 1000 // _CLOCK_TICKS
    row["nice"] = int(fields[16])
    row["threads"] = int(fields[17])
    # starttime counts clock ticks since boot. osquery reports -1 when the boot
    # time is unknown.
    if boot_time is None:
        row["start_time"] = -1
    else:
        row["start_time"] = boot_time + int(fields[19]) // _CLOCK_TICKS
    return True


def _parse_status(row: dict[str, Any], status: bytes) -> None:
    # The Gid line follows the Uid line, and each lists the real, effective, saved
    # and filesystem IDs, tab-separated (task_state() in fs/proc/array.c).
    uid_at = status.find(b"\nUid:\t")
    if uid_at >= 0:
        uid_end = status.find(b"\n", uid_at + 6)
        gid_end = status.find(b"\n", uid_end + 6)
        uids = status[uid_at + 6 : uid_end].split(b"\t")
        gids = status[uid_end + 6 : gid_end].split(b"\t")
        if status.startswith(b"\nGid:\t", uid_end) and len(uids) == len(gids) == 4:
            row["uid"] = int(uids[0])
            row["euid"] = int(uids[1])
            row["suid"] = int(uids[2])
            row["gid"] = int(gids[0])
            row["egid"] = int(gids[1])
            row["sgid"] = int(gids[2])

    # Kernel threads have no VmSize and VmRSS lines, so their sizes stay NULL.
    # NOTE: osquery 5.x turns "N kB" into N followed by "000", so its sizes are
    # 1000-based. Here a kB is 1024 bytes, as proc(5) defines it.
    size = _status_kilobytes(status, b"\nVmSize:\t")
    if size is not None:
        row["total_size"] = size
    rss = _status_kilobytes(status, b"\nVmRSS:\t")
    if rss is not None:
        row["resident_size"] = rss


def _status_kilobytes(status: bytes, key: bytes) -> int | None:
    """Return the size in a status line "Key:\t   N kB" in bytes.

    `key` is the line's name with the newline before it and the tab after it.
    """
    at = status.find(key)
    if at < 0:
        return None
    end = status.find(b" kB\n", at)
    return int(status[at + len(key) : end]) * 1024


def _status_field(status: bytes, key: bytes) -> bytes | None:
    """Return the value of a status line, where `key` is like "\\nTgid:\\t"."""
    start = status.find(key)
    if start < 0:
        return None
    start += len(key)
    end = status.find(b"\n", start)
    return status[start:] if end < 0 else status[start:end]


def _is_leader(pid: int, status: bytes) -> bool:
    tgid = _status_field(status, b"\nTgid:\t")
    return tgid is None or int(tgid) == pid


def _parse_io(row: dict[str, Any], io: bytes) -> None:
    # Seven "name: value" lines in the order proc(5) lists them: rchar, wchar,
    # syscr, syscw, read_bytes, write_bytes, cancelled_write_bytes.
    words = io.split()
    if words[8:14:2] == _IO_NAMES:
        row["disk_bytes_read"] = int(words[9])
        row["disk_bytes_written"] = int(words[11]) - int(words[13])


def _parse_cgroup(cgroup: bytes) -> bytes:
    """Return the path of the first line of /proc/<pid>/cgroup, as osquery does.

    Lines are "hierarchy-ID:controllers:path" (cgroups(7)), and the path may
    contain ':'.
    """
    line = cgroup.split(b"\n", 1)[0]
    parts = line.split(b":", 2)
    return parts[2] if len(parts) == 3 else b""


def _read_boot_time() -> int | None:
    """Return the boot time in seconds since the epoch, from `btime` in /proc/stat.

    osquery subtracts the uptime from the current time instead. Both give the boot
    time, but btime stays fixed, so start_time cannot change by a second between
    two scans.
    """
    try:
        stat = _read(f"{PROC_ROOT}/stat")
    except OSError:
        return None
    start = stat.find(b"\nbtime ")
    if start < 0:
        return None
    end = stat.find(b"\n", start + 1)
    return int(stat[start + 7 : end])


TABLES = [Table(SCHEMA, generate)]
