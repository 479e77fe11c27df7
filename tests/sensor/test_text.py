import pytest

from sensor.text import candidate_paths, fs_text, sql_text

CASES = [
    (b"/etc/hosts", "/etc/hosts"),
    (b"/tmp/caf\xc3\xa9", "/tmp/caf\u00e9"),
    (b"/tmp/caf\xe9", "/tmp/caf\\xe9"),
    (b"/tmp/bad\xff\xfename", "/tmp/bad\\xff\\xfename"),
    (b"/tmp/new\nline", "/tmp/new\\x0aline"),
    (b"/tmp/\x1b]0;title\x07", "/tmp/\\x1b]0;title\\x07"),
    (b"/tmp/del\x7f", "/tmp/del\\x7f"),
    (b"/run/dev-disk-by\\x2duuid.swap", "/run/dev-disk-by\\x2duuid.swap"),
]


@pytest.mark.parametrize("name, text", CASES)
def test_fs_text_escapes(name, text):
    assert fs_text(name) == text


@pytest.mark.parametrize("name, text", CASES)
def test_candidates_include_name(name, text):
    assert name in candidate_paths(text)


def test_literal_reading_comes_first():
    assert candidate_paths("/run/a\\x2db") == [b"/run/a\\x2db", b"/run/a-b"]


def test_plain_text_has_one_reading():
    assert candidate_paths("/etc/hosts") == [b"/etc/hosts"]


def test_surrogate_str_is_escaped():
    assert fs_text("caf\udce9") == "caf\\xe9"


def test_sql_text_keeps_backslashes():
    assert sql_text("SELECT 'a\\b'") == "SELECT 'a\\b'"
    assert sql_text("SELECT 'caf\udce9'") == "SELECT 'caf\\xe9'"
