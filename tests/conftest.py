"""Fixtures shared across the test tree."""

import pytest

from sensor import registry


@pytest.fixture
def fake_tables(monkeypatch):
    """Register the tables of tests/sensor/fake_tables.py and return that module."""
    from tests.sensor import fake_tables

    fake_tables.CONTEXTS.clear()
    for table in fake_tables.TABLES:
        monkeypatch.setitem(
            registry.TABLE_MODULES, table.schema.name, "tests.sensor.fake_tables"
        )
    return fake_tables
