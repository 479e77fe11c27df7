"""Host snapshot tables: os_version, system_info, uptime, kernel_info and time."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sensor.schema import (
    BIGINT,
    INTEGER,
    TEXT,
    Column,
    QueryContext,
    Table,
    TableSchema,
)
from tables.users import reject_namespace

__all__ = [
    "CMDLINE_PATH",
    "CPUINFO_PATH",
    "DMI_PATH",
    "GENTOO_RELEASE_PATH",
    "OS_RELEASE_PATH",
    "REDHAT_RELEASE_PATH",
    "TABLES",
    "UPTIME_PATH",
]

# Module-level so tests can point them at fixture files.
OS_RELEASE_PATH = "/etc/os-release"
REDHAT_RELEASE_PATH = "/etc/redhat-release"
GENTOO_RELEASE_PATH = "/etc/gentoo-release"
CPUINFO_PATH = "/proc/cpuinfo"
UPTIME_PATH = "/proc/uptime"
CMDLINE_PATH = "/proc/cmdline"
DMI_PATH = "/sys/class/dmi/id"
MACHINE_ID_PATH = "/etc/machine-id"

OS_VERSION = TableSchema(
    name="os_version",
    description="The operating system's name and version.",
    columns=(
        Column("name", TEXT, "Distribution name (NAME in os-release)"),
        Column("version", TEXT, "Version with its codename (VERSION in os-release)"),
        Column("major", INTEGER, "Major version, from VERSION_ID"),
        Column("minor", INTEGER, "Minor version, from VERSION_ID"),
        Column("patch", INTEGER, "Patch version, from VERSION_ID"),
        Column("build", TEXT, "Build identifier (BUILD_ID in os-release)"),
        Column("platform", TEXT, "Distribution id (ID in os-release)"),
        Column("platform_like", TEXT, "Related distribution ids (ID_LIKE)"),
        Column("codename", TEXT, "Release codename (VERSION_CODENAME)"),
        Column("arch", TEXT, "Machine hardware name from uname"),
        Column(
            "pid_with_namespace",
            INTEGER,
            "Read the release files seen from this process's mount namespace",
            additional=True,
            hidden=True,
        ),
        Column(
            "mount_namespace_id",
            TEXT,
            "Mount namespace the release files were read in",
            hidden=True,
        ),
    ),
)

SYSTEM_INFO = TableSchema(
    name="system_info",
    description="Identity of the host: names, CPU, memory and DMI hardware strings.",
    columns=(
        Column("hostname", TEXT, "Network host name"),
        Column("uuid", TEXT, "Hardware UUID from DMI (product_uuid)"),
        Column("cpu_type", TEXT, "Machine hardware name from uname"),
        Column("cpu_subtype", TEXT, "CPU model number from /proc/cpuinfo"),
        Column("cpu_brand", TEXT, "CPU model name from /proc/cpuinfo"),
        Column("cpu_physical_cores", INTEGER, "Number of distinct physical cores"),
        Column("cpu_logical_cores", INTEGER, "Number of online logical CPUs"),
        Column("cpu_sockets", INTEGER, "Number of processor sockets"),
        Column("cpu_microcode", TEXT, "Microcode revision from /proc/cpuinfo"),
        Column("physical_memory", BIGINT, "Total usable memory in bytes"),
        Column("hardware_vendor", TEXT, "System vendor from DMI"),
        Column("hardware_model", TEXT, "Product name from DMI"),
        Column("hardware_version", TEXT, "Product version from DMI"),
        Column("hardware_serial", TEXT, "Product serial number from DMI"),
        Column("board_vendor", TEXT, "Mainboard vendor from DMI"),
        Column("board_model", TEXT, "Mainboard name from DMI"),
        Column("board_version", TEXT, "Mainboard version from DMI"),
        Column("board_serial", TEXT, "Mainboard serial number from DMI"),
        Column("computer_name", TEXT, "Host name from uname"),
        Column("local_hostname", TEXT, "Local host name, the same as hostname"),
    ),
)

UPTIME = TableSchema(
    name="uptime",
    description="Time since the system booted.",
    columns=(
        Column("days", INTEGER, "Whole days since boot"),
        Column("hours", INTEGER, "Hours past the whole days"),
        Column("minutes", INTEGER, "Minutes past the whole hours"),
        Column("seconds", INTEGER, "Seconds past the whole minutes"),
        Column("total_seconds", BIGINT, "Seconds since boot"),
    ),
)

KERNEL_INFO = TableSchema(
    name="kernel_info",
    description="The running kernel's release and boot command line.",
    columns=(
        Column("version", TEXT, "Kernel release from uname"),
        Column("arguments", TEXT, "Command line less BOOT_IMAGE= and root="),
        Column("path", TEXT, "Kernel image path, the BOOT_IMAGE= value"),
        Column("device", TEXT, "Root device, the root= value"),
    ),
)

TIME = TableSchema(
    name="time",
    description="The current time, in UTC fields and as a Unix time.",
    columns=(
        Column("weekday", TEXT, "Day of the week in UTC, in English"),
        Column("year", INTEGER, "Year in UTC"),
        Column("month", INTEGER, "Month in UTC, 1 to 12"),
        Column("day", INTEGER, "Day of the month in UTC"),
        Column("hour", INTEGER, "Hour in UTC, 0 to 23"),
        Column("minutes", INTEGER, "Minutes in UTC"),
        Column("seconds", INTEGER, "Seconds in UTC"),
        Column("timezone", TEXT, "Time zone of the fields, always UTC"),
        Column("local_timezone", TEXT, "Abbreviation of the local time zone"),
        Column("unix_time", INTEGER, "Seconds since the Unix epoch"),
        Column("timestamp", TEXT, "UTC time as asctime(3) text with a UTC suffix"),
        Column("datetime", TEXT, "UTC time in ISO 8601 form"),
        Column("iso_8601", TEXT, "UTC time in ISO 8601 form"),
    ),
)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


# --- os_version ---------------------------------------------------------------

# os-release(5) keys and the columns they fill. VERSION_ID only feeds
# major.minor.patch.
_OS_RELEASE_COLUMNS = {
    "NAME": "name",
    "VERSION": "version",
    "BUILD_ID": "build",
    "ID": "platform",
    "ID_LIKE": "platform_like",
    "VERSION_CODENAME": "codename",
}


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_os_release(content: str) -> dict[str, Any]:
    """Return the os_version columns that an os-release(5) file sets."""
    row: dict[str, Any] = {}
    for line in content.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        value = _unquote(value.strip())
        if key == "VERSION_ID":
            parts = value.split(".", 2)
            for column, part in zip(("major", "minor", "patch"), parts):
                row[column] = part
        elif key in _OS_RELEASE_COLUMNS:
            row[_OS_RELEASE_COLUMNS[key]] = value
        elif "CODENAME" in key:
            # Some distributions add their own codename key, such as
            # UBUNTU_CODENAME, and osquery reads those too.
            row["codename"] = value
    return row


def _parse_legacy_release(content: str, row: dict[str, Any]) -> None:
    """Fill the row from a one-line redhat-release or gentoo-release file.

    The line reads like "CentOS release 6.10 (Final)": a name, then a dotted
    version somewhere after it.
    """
    line = " ".join(content.split())
    match = re.search(r"([\w+\s]+) .* ([0-9]+)\.([0-9]+)\.?(\w+)?", line)
    if match:
        row["name"] = match.group(1)
        row["major"] = match.group(2)
        row["minor"] = match.group(3)
        row["patch"] = match.group(4) or "0"
    row["version"] = line
    row["build"] = ""


def generate_os_version(context: QueryContext) -> Iterator[dict[str, Any]]:
    reject_namespace(context, "os_version")
    row: dict[str, Any] = {
        "name": "Unknown",
        "major": 0,
        "minor": 0,
        "patch": 0,
        "platform": "posix",
        "pid_with_namespace": 0,
        "arch": os.uname().machine,
    }
    content = _read_text(OS_RELEASE_PATH)
    if content:
        row.update(parse_os_release(content))

    # Old Red Hat and Gentoo releases carry their version in a one-line file,
    # which osquery prefers over os-release when it exists.
    for path, platform in (
        (REDHAT_RELEASE_PATH, "rhel"),
        (GENTOO_RELEASE_PATH, "gentoo"),
    ):
        legacy = _read_text(path)
        if legacy is not None:
            row["platform"] = platform
            row["platform_like"] = platform
            _parse_legacy_release(legacy, row)
            break
    yield row


# --- system_info --------------------------------------------------------------


def _cpuinfo_fields(content: str) -> dict[str, Any]:
    """Return the system_info columns that /proc/cpuinfo gives.

    The fields of the first processor stand for all of them, as in osquery.
    Physical cores are the distinct (physical id, core id) pairs across every
    processor.
    """
    fields: dict[str, Any] = {}
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = None
    first_block = True
    for line in content.splitlines() + [""]:
        if not line.strip():
            if physical_id is not None and core_id is not None:
                cores.add((physical_id, core_id))
            physical_id = core_id = None
            first_block = False
            continue
        key, _, value = line.partition(":")
        key = key.strip()
        value = value.strip()
        if key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif first_block:
            _take_first_cpu_field(fields, key, value)
    # Without core ids, as on many ARM systems, osquery's source of this count
    # (boost::thread::physical_concurrency) falls back to the online CPU count.
    fields["cpu_physical_cores"] = len(cores) if cores else os.cpu_count()
    return fields


def _take_first_cpu_field(fields: dict[str, Any], key: str, value: str) -> None:
    if key == "model":
        fields["cpu_subtype"] = value
    elif key == "model name":
        fields["cpu_brand"] = value
    elif key == "microcode":
        fields["cpu_microcode"] = value
    elif key == "siblings":
        fields["siblings"] = value


def _read_dmi(name: str) -> str | None:
    value = _read_text(os.path.join(DMI_PATH, name))
    if value is None:
        return None
    return value.replace("\0", "").strip()


def host_uuid() -> str:
    """Return the host's UUID: DMI's product_uuid, else the systemd machine ID.

    A machine without DMI (many virtual machines and containers) has no hardware
    UUID, and /etc/machine-id (machine-id(5)) is then the stable identity, written
    in UUID form. "" when neither exists. The daemon's `host_identifier = "uuid"`
    uses the same value, so result lines and system_info agree.
    """
    product_uuid = _read_dmi("product_uuid")
    if product_uuid:
        return product_uuid
    machine_id = (_read_text(MACHINE_ID_PATH) or "").strip()
    try:
        return str(uuid.UUID(hex=machine_id))
    except ValueError:
        return ""


def _dmi_fields() -> dict[str, Any]:
    """Return the hardware and board columns from the kernel's DMI attributes.

    The serial numbers are readable by root only. When the kernel exposes no
    DMI at all, hardware_model is "" and the rest NULL, as osquery returns.
    """
    if not os.path.isdir(DMI_PATH):
        return {"hardware_model": ""}
    fields = {
        "hardware_vendor": _read_dmi("sys_vendor"),
        "hardware_model": _read_dmi("product_name"),
        "hardware_version": _read_dmi("product_version"),
        "hardware_serial": _read_dmi("product_serial"),
        "board_vendor": _read_dmi("board_vendor"),
        "board_model": _read_dmi("board_name"),
        "board_version": _read_dmi("board_version"),
        "board_serial": _read_dmi("board_serial"),
    }
    # Lenovo stores the model in the version string and a SKU in the product
    # name. osquery swaps the two, so the model reads as other vendors' do.
    if (fields["hardware_vendor"] or "").lower() == "lenovo":
        fields["hardware_model"], fields["hardware_version"] = (
            fields["hardware_version"],
            fields["hardware_model"],
        )
    return fields


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return -1


def generate_system_info(context: QueryContext) -> Iterator[dict[str, Any]]:
    uname = os.uname()
    logical_cores = os.cpu_count() or -1

    # NOTE: osquery's hostname is the FQDN from getaddrinfo(3), which may query
    # DNS. This table never sends a network request, so it reports the uname
    # node name.
    row: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "computer_name": uname.nodename,
        "cpu_type": uname.machine,
        "cpu_subtype": "0",
        "cpu_logical_cores": logical_cores,
        "physical_memory": _physical_memory(),
    }
    row["local_hostname"] = row["hostname"]

    cpuinfo = _cpuinfo_fields(_read_text(CPUINFO_PATH) or "")
    siblings = cpuinfo.pop("siblings", None)
    row.update(cpuinfo)
    if siblings is not None:
        # "siblings" counts the logical CPUs of one socket.
        per_socket = int(siblings) if siblings.isdigit() else 0
        row["cpu_sockets"] = (
            logical_cores // per_socket if per_socket > 0 and logical_cores > 0 else -1
        )

    row.update(_dmi_fields())
    row["uuid"] = host_uuid()
    yield row


# --- uptime -------------------------------------------------------------------


def generate_uptime(context: QueryContext) -> Iterator[dict[str, Any]]:
    content = _read_text(UPTIME_PATH)
    if not content:
        return
    # /proc/uptime contains the seconds since boot, then the idle seconds summed
    # over all CPUs (proc(5)).
    total = int(float(content.split()[0]))
    yield {
        "days": total // 86400,
        "hours": total // 3600 % 24,
        "minutes": total // 60 % 60,
        "seconds": total % 60,
        "total_seconds": total,
    }


# --- kernel_info --------------------------------------------------------------


def parse_cmdline(content: str) -> dict[str, Any]:
    """Split a kernel command line into the kernel_info path, device and arguments."""
    row: dict[str, Any] = {}
    arguments = []
    for argument in content.split():
        if argument.startswith("BOOT_IMAGE="):
            row["path"] = argument.removeprefix("BOOT_IMAGE=")
        elif argument.startswith("root="):
            row["device"] = argument.removeprefix("root=")
        else:
            arguments.append(argument)
    row["arguments"] = " ".join(arguments)
    return row


def generate_kernel_info(context: QueryContext) -> Iterator[dict[str, Any]]:
    row: dict[str, Any] = {"version": os.uname().release}
    content = _read_text(CMDLINE_PATH)
    if content is not None:
        row.update(parse_cmdline(content))
    yield row


# --- time ---------------------------------------------------------------------


def time_row(unix_time: int) -> dict[str, Any]:
    """Return the time table's row for a Unix time."""
    utc = time.gmtime(unix_time)
    iso_8601 = time.strftime("%Y-%m-%dT%H:%M:%SZ", utc)
    return {
        "weekday": time.strftime("%A", utc),
        "year": utc.tm_year,
        "month": utc.tm_mon,
        "day": utc.tm_mday,
        "hour": utc.tm_hour,
        "minutes": utc.tm_min,
        "seconds": utc.tm_sec,
        "timezone": "UTC",
        "local_timezone": time.strftime("%Z", time.localtime(unix_time)) or "UTC",
        "unix_time": unix_time,
        "timestamp": time.asctime(utc) + " UTC",
        "datetime": iso_8601,
        "iso_8601": iso_8601,
    }


def generate_time(context: QueryContext) -> Iterator[dict[str, Any]]:
    yield time_row(int(time.time()))


TABLES = [
    Table(OS_VERSION, generate_os_version),
    Table(SYSTEM_INFO, generate_system_info),
    Table(UPTIME, generate_uptime),
    Table(KERNEL_INFO, generate_kernel_info),
    Table(TIME, generate_time),
]
