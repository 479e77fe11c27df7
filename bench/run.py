"""Benchmarks: the processes table against ps, and the start-up of `sensor query`.

Run by `make bench`. The script starts its own sleeping processes, ends each of them
by pid when it finishes (also after an error), prints a summary and writes
bench/RESULTS.md beside this file. The test suite never runs it.
"""

from __future__ import annotations

import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sensor.engine import Engine  # noqa: E402
from sensor.schema import QueryContext  # noqa: E402
from tables import processes  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
EXTRA_PROCESSES = 2000
RUNS = 15
PS_COMMAND = ["ps", "-eo", "pid,ppid,uid,comm,args"]
PROCESSES_SQL = "SELECT * FROM processes"
MAX_RATIO_TO_PS = 1.2
MAX_STARTUP_MS = 150.0
# A sleeper outlives the benchmark by far, and still ends on its own if this script
# is killed before it can end them.
SLEEP_SECONDS = "600"
# The files that a full scan of the processes table reads for each process.
PROC_FILES = ("stat", "status", "cmdline", "io", "cgroup")
PROC_LINKS = ("exe", "cwd", "root")


@dataclass
class Timing:
    label: str
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    sleepers: list[subprocess.Popen] = []
    try:
        sleepers = start_sleepers(EXTRA_PROCESSES)
        scan = bench_processes()
    finally:
        stop_sleepers(sleepers)
    startup = bench_startup()

    report = render_report(scan, startup)
    RESULTS.write_text(report)
    print(report)
    print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    # SystemExit unwinds through main's finally, which ends the sleepers.
    raise SystemExit(128 + signum)


def start_sleepers(count: int) -> list[subprocess.Popen]:
    sleepers: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            sleeper = subprocess.Popen(
                ["sleep", SLEEP_SECONDS],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            sleepers.append(sleeper)
    except BaseException:
        stop_sleepers(sleepers)
        raise
    return sleepers


def stop_sleepers(sleepers: list[subprocess.Popen]) -> None:
    for sleeper in sleepers:
        if sleeper.poll() is None:
            os.kill(sleeper.pid, signal.SIGKILL)
    for sleeper in sleepers:
        sleeper.wait()


def time_ms(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


@dataclass
class ScanResult:
    process_count: int
    engine: Timing
    ps: Timing
    generator: Timing
    single_generator: Timing
    raw_reads: Timing

    @property
    def ratio(self) -> float:
        return self.engine.median_ms / self.ps.median_ms


def bench_processes() -> ScanResult:
    """Time `SELECT * FROM processes` and ps, alternating so both see the same load."""
    engine = Engine()
    process_count = len(engine.execute(PROCESSES_SQL).rows)
    run_ps()

    engine_ms, ps_ms, generator_ms, single_ms, raw_ms = [], [], [], [], []
    pids = processes._list_pids()
    for _ in range(RUNS):
        engine_ms.append(time_ms(lambda: engine.execute(PROCESSES_SQL)))
        ps_ms.append(time_ms(run_ps))
        generator_ms.append(time_ms(lambda: list(processes.generate(QueryContext()))))
        single_ms.append(time_ms(generate_in_one_process))
        raw_ms.append(time_ms(lambda: read_proc_files(pids)))
    return ScanResult(
        process_count=process_count,
        engine=Timing(f"`{PROCESSES_SQL}` through Engine.execute", engine_ms),
        ps=Timing(f"`{' '.join(PS_COMMAND)}`, whole process", ps_ms),
        generator=Timing(
            "processes generator alone, no SQL, split with a forked child", generator_ms
        ),
        single_generator=Timing(
            "processes generator alone, no SQL, in one process", single_ms
        ),
        raw_reads=Timing(
            "open, read and close the same procfs files, no parsing", raw_ms
        ),
    )


def generate_in_one_process() -> None:
    """Run the generator with the forked split turned off."""
    minimum = processes.PARALLEL_SCAN_MINIMUM
    processes.PARALLEL_SCAN_MINIMUM = sys.maxsize
    try:
        list(processes.generate(QueryContext()))
    finally:
        processes.PARALLEL_SCAN_MINIMUM = minimum


def run_ps() -> None:
    subprocess.run(PS_COMMAND, stdout=subprocess.DEVNULL, check=True)


def read_proc_files(pids: list[int]) -> None:
    """Read the files a full scan reads, without parsing: the floor for Python."""
    for pid in pids:
        prefix = f"/proc/{pid}/"
        for name in PROC_FILES:
            try:
                fd = os.open(prefix + name, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.read(fd, 16384)
            except OSError:
                pass
            finally:
                os.close(fd)
        for name in PROC_LINKS:
            try:
                os.readlink(prefix + name)
            except OSError:
                pass


@dataclass
class StartupResult:
    sensor: Timing
    python: Timing
    command: list[str]
    stand_in: bool


def bench_startup() -> StartupResult:
    """Time `sensor query "SELECT 1"` and a bare interpreter as whole processes."""
    command = [str(REPO / ".venv/bin/sensor"), "query", "SELECT 1"]
    stand_in = not sensor_cli_works(command)
    if stand_in:
        code = "import sensor.engine; sensor.engine.Engine().execute('SELECT 1')"
        command = [sys.executable, "-c", code]
    baseline = [sys.executable, "-c", "pass"]

    run_quietly(command)
    run_quietly(baseline)
    sensor_ms, python_ms = [], []
    for _ in range(RUNS):
        sensor_ms.append(time_ms(lambda: run_quietly(command)))
        python_ms.append(time_ms(lambda: run_quietly(baseline)))
    label = "stand-in for `sensor query`" if stand_in else '`sensor query "SELECT 1"`'
    return StartupResult(
        sensor=Timing(f"{label}, whole process", sensor_ms),
        python=Timing("`python -c pass` with the venv's interpreter", python_ms),
        command=command,
        stand_in=stand_in,
    )


def sensor_cli_works(command: list[str]) -> bool:
    try:
        completed = subprocess.run(command, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return completed.returncode == 0


def run_quietly(command: list[str]) -> None:
    subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )


def display_command(command: list[str]) -> str:
    """Render a command with the repository's paths relative to it, for RESULTS.md."""
    words = []
    for word in command:
        path = Path(word)
        if path.is_absolute() and path.is_relative_to(REPO):
            word = str(path.relative_to(REPO))
        elif word == sys.executable:
            word = "python"
        words.append(f'"{word}"' if " " in word else word)
    return " ".join(words)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def verdict(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def render_report(scan: ScanResult, startup: StartupResult) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    ratio_ok = scan.ratio <= MAX_RATIO_TO_PS
    startup_ok = startup.sensor.median_ms <= MAX_STARTUP_MS
    engine_overhead = scan.engine.median_ms - scan.generator.median_ms
    parsing = scan.single_generator.median_ms - scan.raw_reads.median_ms

    lines = [
        "# Benchmark results",
        "",
        f"Written by `bench/run.py` (`make bench`) on {now:%Y-%m-%d %H:%M} UTC.",
        "",
        f"- CPUs (nproc): {len(os.sched_getaffinity(0))}",
        f"- CPU model: {cpu_model()}",
        f"- Kernel: {platform.release()}",
        f"- Python: {platform.python_version()}",
        "",
        "## Targets",
        "",
        "| measurement | median | target | result |",
        "| --- | ---: | --- | --- |",
        f"| {scan.engine.label} | {scan.engine.median_ms:.1f} ms "
        f"| at most {MAX_RATIO_TO_PS}x ps "
        f"| {scan.ratio:.2f}x ps: {verdict(ratio_ok)} |",
        f"| {scan.ps.label} | {scan.ps.median_ms:.1f} ms | baseline | |",
        f"| {startup.sensor.label} | {startup.sensor.median_ms:.1f} ms "
        f"| at most {MAX_STARTUP_MS:.0f} ms | {verdict(startup_ok)} |",
        f"| {startup.python.label} | {startup.python.median_ms:.1f} ms | baseline | |",
        "",
        "## Where the scan's time goes",
        "",
        "| part | median |",
        "| --- | ---: |",
        f"| {scan.raw_reads.label} | {scan.raw_reads.median_ms:.1f} ms |",
        f"| {scan.single_generator.label} | {scan.single_generator.median_ms:.1f} ms |",
        f"| parsing and row building (one-process generator less raw reads) "
        f"| {parsing:.1f} ms |",
        f"| {scan.generator.label} | {scan.generator.median_ms:.1f} ms |",
        f"| SQLite and the engine's value conversion (Engine less generator) "
        f"| {engine_overhead:.1f} ms |",
        "",
        "## Method",
        "",
        f"- The script starts {EXTRA_PROCESSES} extra `sleep` processes; the scans "
        f"saw {scan.process_count} processes in all.",
        f"- Each figure is the median of {RUNS} runs after one warm-up run. The scan, "
        "ps, the generator and the raw reads alternate within each run, so they see "
        "the same load.",
        "- ps and the start-up commands are timed as whole processes, from spawn to "
        "exit, with their output sent to /dev/null.",
        f"- The start-up command was `{display_command(startup.command)}`.",
        "- A full scan of many processes is split between the query's process and "
        "one forked child, each reading half of /proc on its own CPU "
        "(sensor/forkscan.py). That shortens the wall time, not the CPU time: the "
        "split scan costs about the CPU time of the one-process scan plus a fork.",
    ]
    if not ratio_ok:
        raw_ratio = scan.raw_reads.median_ms / scan.ps.median_ms
        lines.append(
            f"- The scan misses its target. The procfs reads alone take "
            f"{scan.raw_reads.median_ms:.1f} ms ({raw_ratio:.2f}x ps) in one process "
            "for the eight reads per process that a full row needs, where this ps "
            "reads four (stat, status, environ and cmdline, seen with strace). "
            f"Parsing adds {parsing:.1f} ms and the engine {engine_overhead:.1f} ms."
        )
    if startup.stand_in:
        lines.append(
            "- `sensor query` did not run, so a Python one-liner that imports the "
            "engine and runs SELECT 1 stood in for it."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
