import os
import socket
import time

import pytest

from sensor.engine import Engine
from tables import system


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def single_row(engine: Engine, table: str) -> dict:
    rows = engine.execute(f"SELECT * FROM {table}").dicts()
    assert len(rows) == 1
    return rows[0]


def read_os_release() -> dict[str, str]:
    values = {}
    with open("/etc/os-release") as file:
        for line in file:
            key, sep, value = line.strip().partition("=")
            if sep:
                values[key] = value.strip("\"'")
    return values


# --- os_version ---------------------------------------------------------------


def test_os_version_matches_os_release(engine):
    row = single_row(engine, "os_version")
    release = read_os_release()
    assert row["name"] == release.get("NAME", "Unknown")
    assert row["version"] == release.get("VERSION")
    assert row["platform"] == release.get("ID", "posix")
    assert row["platform_like"] == release.get("ID_LIKE")
    assert row["arch"] == os.uname().machine
    major = release.get("VERSION_ID", "0").split(".")[0]
    assert row["major"] == int(major)


def test_os_version_types(engine):
    row = single_row(engine, "os_version")
    for column in ("major", "minor", "patch"):
        assert isinstance(row[column], int)
    for column in ("name", "platform", "arch"):
        assert isinstance(row[column], str)


def test_os_version_fixture_file(engine, tmp_path, monkeypatch):
    release = tmp_path / "os-release"
    release.write_text(
        'NAME="Ubuntu"\n'
        'VERSION="22.04.3 LTS (Jammy Jellyfish)"\n'
        "ID=ubuntu\n"
        "ID_LIKE=debian\n"
        'VERSION_ID="22.04.3"\n'
        "VERSION_CODENAME=jammy\n"
        "UBUNTU_CODENAME=jammy2\n"
        "BUILD_ID=rolling\n"
    )
    monkeypatch.setattr(system, "OS_RELEASE_PATH", str(release))
    monkeypatch.setattr(system, "REDHAT_RELEASE_PATH", str(tmp_path / "none"))
    monkeypatch.setattr(system, "GENTOO_RELEASE_PATH", str(tmp_path / "none"))
    row = single_row(engine, "os_version")
    assert row["name"] == "Ubuntu"
    assert row["version"] == "22.04.3 LTS (Jammy Jellyfish)"
    assert (row["major"], row["minor"], row["patch"]) == (22, 4, 3)
    assert row["platform"] == "ubuntu"
    assert row["platform_like"] == "debian"
    # Any key naming a codename counts, and the last one read wins, as in osquery.
    assert row["codename"] == "jammy2"
    assert row["build"] == "rolling"


def test_os_version_missing_file_defaults(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(system, "OS_RELEASE_PATH", str(tmp_path / "none"))
    monkeypatch.setattr(system, "REDHAT_RELEASE_PATH", str(tmp_path / "none"))
    monkeypatch.setattr(system, "GENTOO_RELEASE_PATH", str(tmp_path / "none"))
    row = single_row(engine, "os_version")
    assert row["name"] == "Unknown"
    assert (row["major"], row["minor"], row["patch"]) == (0, 0, 0)
    assert row["platform"] == "posix"


def test_os_version_redhat_release(engine, tmp_path, monkeypatch):
    redhat = tmp_path / "redhat-release"
    redhat.write_text("CentOS release 6.10 (Final)\n")
    monkeypatch.setattr(system, "OS_RELEASE_PATH", str(tmp_path / "none"))
    monkeypatch.setattr(system, "REDHAT_RELEASE_PATH", str(redhat))
    row = single_row(engine, "os_version")
    assert row["name"] == "CentOS"
    assert (row["major"], row["minor"], row["patch"]) == (6, 10, 0)
    assert row["platform"] == "rhel"
    assert row["version"] == "CentOS release 6.10 (Final)"


# --- system_info --------------------------------------------------------------


def test_system_info_names(engine):
    row = single_row(engine, "system_info")
    assert row["hostname"] == socket.gethostname()
    assert row["computer_name"] == os.uname().nodename
    assert row["local_hostname"] == row["hostname"]
    assert row["cpu_type"] == os.uname().machine


def test_system_info_cpu(engine):
    row = single_row(engine, "system_info")
    assert row["cpu_logical_cores"] == os.cpu_count()
    assert 1 <= row["cpu_physical_cores"] <= row["cpu_logical_cores"]
    with open("/proc/cpuinfo") as file:
        cpuinfo = file.read()
    if "model name" in cpuinfo:
        assert row["cpu_brand"] in cpuinfo
    if "siblings" in cpuinfo:
        assert row["cpu_sockets"] >= 1


def test_system_info_memory_matches_meminfo(engine):
    row = single_row(engine, "system_info")
    with open("/proc/meminfo") as file:
        fields = dict(line.split(":", 1) for line in file)
    mem_total = int(fields["MemTotal"].split()[0]) * 1024
    # MemTotal is rounded down to whole KiB, the page count is not.
    assert abs(row["physical_memory"] - mem_total) < os.sysconf("SC_PAGE_SIZE")


def test_system_info_dmi(engine):
    row = single_row(engine, "system_info")
    vendor_path = "/sys/class/dmi/id/sys_vendor"
    if os.access(vendor_path, os.R_OK):
        with open(vendor_path) as file:
            assert row["hardware_vendor"] == file.read().strip()
    elif not os.path.isdir("/sys/class/dmi/id"):
        assert row["hardware_model"] == ""
        assert row["hardware_vendor"] is None
    assert isinstance(row["uuid"], str)


def test_cpuinfo_fields_first_processor():
    content = (
        "processor\t: 0\nmodel\t\t: 85\nmodel name\t: Test CPU\n"
        "microcode\t: 0x2\nphysical id\t: 0\nsiblings\t: 4\ncore id\t\t: 0\n\n"
        "processor\t: 1\nmodel\t\t: 99\nphysical id\t: 0\ncore id\t\t: 1\n\n"
        "processor\t: 2\nphysical id\t: 0\ncore id\t\t: 1\n"
    )
    fields = system._cpuinfo_fields(content)
    assert fields["cpu_subtype"] == "85"
    assert fields["cpu_brand"] == "Test CPU"
    assert fields["cpu_microcode"] == "0x2"
    assert fields["siblings"] == "4"
    assert fields["cpu_physical_cores"] == 2


# --- uptime -------------------------------------------------------------------


def test_uptime_matches_proc(engine):
    with open("/proc/uptime") as file:
        before = float(file.read().split()[0])
    row = single_row(engine, "uptime")
    with open("/proc/uptime") as file:
        after = float(file.read().split()[0])
    assert int(before) <= row["total_seconds"] <= int(after)


def test_uptime_split(engine):
    row = single_row(engine, "uptime")
    total = (
        row["days"] * 86400 + row["hours"] * 3600 + row["minutes"] * 60 + row["seconds"]
    )
    assert total == row["total_seconds"]
    assert 0 <= row["hours"] < 24
    assert 0 <= row["minutes"] < 60
    assert 0 <= row["seconds"] < 60


# --- kernel_info --------------------------------------------------------------


def test_kernel_info_matches_proc(engine):
    row = single_row(engine, "kernel_info")
    assert row["version"] == os.uname().release
    with open("/proc/cmdline") as file:
        arguments = file.read().split()
    expected = [
        argument
        for argument in arguments
        if not argument.startswith(("BOOT_IMAGE=", "root="))
    ]
    assert row["arguments"] == " ".join(expected)


def test_parse_cmdline_boot_image_and_root():
    row = system.parse_cmdline(
        "BOOT_IMAGE=/boot/vmlinuz-6.1.0 root=UUID=1234 ro quiet\n"
    )
    assert row["path"] == "/boot/vmlinuz-6.1.0"
    assert row["device"] == "UUID=1234"
    assert row["arguments"] == "ro quiet"


# --- time ---------------------------------------------------------------------


def test_time_matches_clock(engine):
    before = int(time.time())
    row = single_row(engine, "time")
    after = int(time.time())
    assert before <= row["unix_time"] <= after
    utc = time.gmtime(row["unix_time"])
    assert (row["year"], row["month"], row["day"]) == (
        utc.tm_year,
        utc.tm_mon,
        utc.tm_mday,
    )
    assert (row["hour"], row["minutes"], row["seconds"]) == (
        utc.tm_hour,
        utc.tm_min,
        utc.tm_sec,
    )
    assert row["timezone"] == "UTC"
    assert row["local_timezone"] == (time.strftime("%Z", time.localtime()) or "UTC")


def test_time_row_formats():
    # 2011-09-21 10:27:52 UTC was a Wednesday.
    row = system.time_row(1316600872)
    assert row["weekday"] == "Wednesday"
    assert row["timestamp"] == "Wed Sep 21 10:27:52 2011 UTC"
    assert row["datetime"] == "2011-09-21T10:27:52Z"
    assert row["iso_8601"] == "2011-09-21T10:27:52Z"


def test_time_row_pads_single_digit_day():
    # asctime(3) pads the day with a space: 2024-03-05 was a Tuesday.
    row = system.time_row(1709596800)
    assert row["timestamp"] == "Tue Mar  5 00:00:00 2024 UTC"


def test_host_uuid_prefers_dmi(tmp_path, monkeypatch):
    (tmp_path / "product_uuid").write_text("4C4C4544-0042-4810-8056-B4C04F4E3232\n")
    (tmp_path / "machine-id").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    monkeypatch.setattr(system, "DMI_PATH", str(tmp_path))
    monkeypatch.setattr(system, "MACHINE_ID_PATH", str(tmp_path / "machine-id"))
    assert system.host_uuid() == "4C4C4544-0042-4810-8056-B4C04F4E3232"


def test_host_uuid_falls_back_to_machine_id(tmp_path, monkeypatch):
    (tmp_path / "machine-id").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    monkeypatch.setattr(system, "DMI_PATH", str(tmp_path / "no-dmi"))
    monkeypatch.setattr(system, "MACHINE_ID_PATH", str(tmp_path / "machine-id"))
    assert system.host_uuid() == "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4"


def test_host_uuid_empty_without_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(system, "DMI_PATH", str(tmp_path / "no-dmi"))
    monkeypatch.setattr(system, "MACHINE_ID_PATH", str(tmp_path / "no-machine-id"))
    assert system.host_uuid() == ""


def test_uuid_identifier_matches_system_info():
    from sensor.config import parse_config
    from sensor.daemon import host_identifier

    options = parse_config({"options": {"host_identifier": "uuid"}}).options
    row = Engine().execute("SELECT uuid FROM system_info").dicts()[0]
    if row["uuid"]:
        assert host_identifier(options) == row["uuid"]
