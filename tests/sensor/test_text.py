import pytest

from sensor.text import fs_text, path_bytes

CASES = [
    (b"/etc/hosts", "/etc/hosts"),
    (b"/tmp/caf\xc3\xa9", "/tmp/caf\u00e9"),
    (b"/tmp/caf\xe9", "/tmp/caf\\xe9"),
    (b"/tmp/bad\xff\xfename", "/tmp/bad\\xff\\xfename"),
    (b"/tmp/bad\\xff\\xfename", "/tmp/bad\\\\xff\\\\xfename"),
    (b"/tmp/new\nline", "/tmp/new\\x0aline"),
    (b"/tmp/\x1b]0;title\x07", "/tmp/\\x1b]0;title\\x07"),
    (b"/tmp/del\x7f", "/tmp/del\\x7f"),
    (b"C:\\temp", "C:\\\\temp"),
]


@pytest.mark.parametrize("name, text", CASES)
def test_fs_text_escapes(name, text):
    assert fs_text(name) == text


@pytest.mark.parametrize("name, text", CASES)
def test_path_bytes_reverses(name, text):
    assert path_bytes(text) == name


def test_distinct_names_render_distinctly():
    names = [b"bad\xff", b"bad\\xff", b"bad\\\\xff"]
    assert len({fs_text(name) for name in names}) == len(names)


def test_surrogate_str_is_escaped():
    assert fs_text("caf\udce9") == "caf\\xe9"


def test_lone_backslash_typed_by_hand():
    assert path_bytes("/tmp/a\\b") == b"/tmp/a\\b"
