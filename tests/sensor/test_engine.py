import threading

import pytest

from sensor.engine import Engine
from sensor.errors import QueryError


def test_select_without_tables():
    result = Engine().execute("SELECT 1 AS one, 'a' AS two")
    assert result.columns == ["one", "two"]
    assert result.rows == [(1, "a")]


def test_equality_reaches_generator(fake_tables):
    result = Engine().execute("SELECT n, name FROM test_numbers WHERE n = 3")
    assert result.rows == [(3, "number 3")]
    assert fake_tables.CONTEXTS[-1].equals("n") == {3}


def test_in_reaches_generator_as_set(fake_tables):
    result = Engine().execute("SELECT n FROM test_numbers WHERE n IN (2, 4, 40)")
    assert sorted(result.rows) == [(2,), (4,)]
    assert fake_tables.CONTEXTS[-1].equals("n") == {2, 4, 40}


def test_range_constraint_is_pushed_down(fake_tables):
    result = Engine().execute("SELECT n FROM test_numbers WHERE n > 7")
    assert result.rows == [(8,), (9,)]
    assert fake_tables.CONTEXTS[-1].ranges("n") == [(">", 7)]


def test_declared_types_are_enforced(fake_tables):
    result = Engine().execute("SELECT n, name FROM test_numbers WHERE n = 1")
    n, name = result.rows[0]
    assert type(n) is int
    assert type(name) is str


def test_hidden_column_not_in_star(fake_tables):
    result = Engine().execute("SELECT * FROM test_numbers WHERE n = 1")
    assert result.columns == ["n", "name"]
    assert Engine().execute("SELECT secret FROM test_numbers WHERE n = 1").rows == [
        ("x",)
    ]


def test_columns_used_reach_generator(fake_tables):
    Engine().execute("SELECT name FROM test_numbers")
    assert fake_tables.CONTEXTS[-1].columns_used == {"name"}


def test_missing_required_column_is_named(fake_tables):
    with pytest.raises(QueryError) as raised:
        Engine().execute("SELECT * FROM test_files")
    message = str(raised.value)
    assert "test_files" in message
    assert "path or directory" in message


def test_required_column_from_join(fake_tables):
    sql = (
        "SELECT test_files.path FROM test_numbers "
        "JOIN test_files ON test_files.path = test_numbers.name WHERE test_numbers.n < 2"
    )
    result = Engine().execute(sql)
    assert sorted(result.rows) == [("number 0",), ("number 1",)]


def test_non_utf8_text_is_escaped(fake_tables):
    result = Engine().execute("SELECT path FROM test_files WHERE directory = '/d'")
    assert result.rows == [("/d/caf\\xe9",)]


def test_no_such_table_is_one_line():
    with pytest.raises(QueryError) as raised:
        Engine().execute("SELECT * FROM nope")
    assert str(raised.value) == "no such table: nope"


def test_syntax_error_is_one_line():
    with pytest.raises(QueryError) as raised:
        Engine().execute("SELEC 1")
    assert "syntax error" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_last_statement_result_is_returned():
    result = Engine().execute("SELECT 1; SELECT 2 AS two")
    assert result.columns == ["two"]
    assert result.rows == [(2,)]


def test_empty_result_keeps_columns(fake_tables):
    result = Engine().execute("SELECT n, name FROM test_numbers WHERE n = 99")
    assert result.columns == ["n", "name"]
    assert result.rows == []


def test_execute_all_returns_each_result():
    results = Engine().execute_all("SELECT 1 AS a; SELECT 2 AS b, 3 AS c")
    assert [result.columns for result in results] == [["a"], ["b", "c"]]
    assert [result.rows for result in results] == [[(1,)], [(2, 3)]]


def test_empty_sql_has_empty_result():
    result = Engine().execute("")
    assert result.columns == []
    assert result.rows == []


COUNT_FOREVER = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM c"
)


def test_stop_from_another_thread():
    engine = Engine()
    timer = threading.Timer(0.2, engine.stop)
    timer.start()
    try:
        with pytest.raises(QueryError) as raised:
            engine.execute(COUNT_FOREVER)
    finally:
        timer.cancel()
    assert str(raised.value) == "interrupted"


def test_stopped_engine_aborts_later_statements():
    engine = Engine()
    engine.stop()
    with pytest.raises(QueryError) as raised:
        engine.execute(COUNT_FOREVER)
    assert str(raised.value) == "interrupted"


def test_attach_is_denied(tmp_path):
    with pytest.raises(QueryError) as raised:
        Engine().execute(f"ATTACH '{tmp_path / 'x.db'}' AS x")
    assert str(raised.value).startswith("not authorized: ATTACH, DETACH")
    assert not (tmp_path / "x.db").exists()
