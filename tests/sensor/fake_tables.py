"""Tables that exist only for engine tests; each records the contexts it was given."""

import threading

from sensor.event_table import event_generator
from sensor.schema import BIGINT, TEXT, Column, Table, TableSchema

CONTEXTS = []

NUMBERS = TableSchema(
    "test_numbers",
    "The numbers 0 to 9, with their names",
    (
        Column("n", BIGINT, index=True),
        Column("name", TEXT),
        Column("secret", TEXT, hidden=True),
    ),
)

FILES = TableSchema(
    "test_files",
    "One row per requested path",
    (
        Column("path", TEXT, required=True),
        Column("directory", TEXT, required=True),
        Column("size", BIGINT),
    ),
)


def generate_numbers(context):
    CONTEXTS.append(context)
    requested = context.equals("n")
    for n in range(10):
        if requested is None or n in requested:
            yield {"n": str(n), "name": f"number {n}".encode(), "secret": "x"}


def generate_files(context):
    CONTEXTS.append(context)
    for path in context.equals("path") or ():
        yield {"path": path, "directory": "/", "size": 1}
    for directory in context.equals("directory") or ():
        yield {"path": directory.encode() + b"/caf\xe9", "directory": directory}


TABLES = [Table(NUMBERS, generate_numbers), Table(FILES, generate_files)]

# Rows of test_items; tests change this list between scheduled runs.
ITEMS = []

ITEMS_SCHEMA = TableSchema(
    "test_items", "Rows taken from ITEMS", (Column("item", TEXT),)
)

EVENTS_SCHEMA = TableSchema(
    "test_events",
    "Events stored under the subscriber name test_events",
    (
        Column("value", TEXT),
        Column("time", BIGINT, additional=True),
        Column("eid", TEXT, hidden=True),
    ),
    event_table=True,
)


def generate_items(context):
    return [{"item": item} for item in ITEMS]


TABLES += [
    Table(ITEMS_SCHEMA, generate_items),
    Table(EVENTS_SCHEMA, event_generator("test_events")),
]

# test_slow blocks in its generator until a test sets this event.
SLOW_GATE = threading.Event()
# Seconds test_slow waits for SLOW_GATE before it gives up, so a broken test ends.
SLOW_TIMEOUT = 30

SLOW_SCHEMA = TableSchema(
    "test_slow",
    "One row, once SLOW_GATE is set or its wait times out",
    (Column("n", BIGINT),),
)


def generate_slow(context):
    # n is 1 when the gate was set in time and 0 when the wait timed out.
    return [{"n": int(SLOW_GATE.wait(SLOW_TIMEOUT))}]


TABLES.append(Table(SLOW_SCHEMA, generate_slow))
