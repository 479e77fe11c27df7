"""The table registry: which module declares each table.

Modules are imported on first use, so a query pays only for the tables it reads.
Each module listed here exposes `TABLES`, a sequence of `sensor.schema.Table`.
"""

from __future__ import annotations

import importlib

from sensor.schema import Table

__all__ = ["TABLE_MODULES", "table_names", "load_table"]

TABLE_MODULES: dict[str, str] = {
    "processes": "tables.processes",
    "users": "tables.users",
    "groups": "tables.users",
    "os_version": "tables.system",
    "system_info": "tables.system",
    "uptime": "tables.system",
    "kernel_info": "tables.system",
    "time": "tables.system",
    "file": "tables.file",
    "hash": "tables.file",
    "file_events": "subscribers.file_events",
    "sensor_events": "tables.sensor_events",
}


def table_names() -> list[str]:
    return sorted(TABLE_MODULES)


def load_table(name: str) -> Table:
    """Import the module that declares a table and return the table."""
    module = importlib.import_module(TABLE_MODULES[name])
    for table in module.TABLES:
        if table.schema.name == name:
            return table
    raise LookupError(f"module {module.__name__} does not declare table {name}")
