"""One sanity check over every registered table: declaration, reference, and types."""

import json
import pathlib

import pytest

from sensor.engine import Engine
from sensor.registry import TABLE_MODULES, load_table, table_names
from sensor.schema import BIGINT, DOUBLE, INTEGER, TEXT

REFERENCE = (
    pathlib.Path(__file__).parents[1] / "data/reference/osquery-linux-tables.json"
)
# Tables of sensor's own that osquery does not have.
OWN_TABLES = {"sensor_events"}
# Constraints that make a table with required columns return rows.
WHERE = {"file": "WHERE path = '/etc/passwd'", "hash": "WHERE path = '/etc/passwd'"}
PYTHON_TYPES = {TEXT: str, INTEGER: int, BIGINT: int, DOUBLE: float}


def reference_tables():
    document = json.loads(REFERENCE.read_text())
    return {table["name"]: table for table in document["tables"]}


@pytest.mark.parametrize("name", table_names())
def test_module_declares_table(name):
    assert load_table(name).schema.name == name


@pytest.mark.parametrize("name", sorted(set(TABLE_MODULES) - OWN_TABLES))
def test_columns_match_osquery(name):
    expected = [
        (column["name"], column["type"])
        for column in reference_tables()[name]["columns"]
        if column is not None
    ]
    declared = [
        (column.name, column.type) for column in load_table(name).schema.columns
    ]
    assert declared == expected


@pytest.mark.parametrize("name", table_names())
def test_select_star_has_declared_types(name):
    schema = load_table(name).schema
    # Hidden columns are named explicitly, because SELECT * leaves them out.
    columns = ", ".join(f"`{column}`" for column in schema.column_names)
    result = Engine().execute(f"SELECT {columns} FROM {name} {WHERE.get(name, '')}")
    assert result.columns == list(schema.column_names)
    if name not in ("file_events", "sensor_events"):
        assert result.rows, f"{name} returned no rows"
    for row in result.rows:
        for column, value in zip(schema.columns, row):
            if value is None:
                continue
            assert type(value) is PYTHON_TYPES[column.type], (name, column.name, value)
            if column.unsupported:
                pytest.fail(
                    f"{name}.{column.name} is declared unsupported but has {value!r}"
                )
