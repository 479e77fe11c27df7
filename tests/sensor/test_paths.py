import fnmatch
import os

import pytest

from sensor.paths import expand, nearest_directory, parse_pattern


@pytest.mark.parametrize(
    ("text", "levels", "recursive"),
    [
        ("/etc/hosts", (b"etc", b"hosts"), False),
        ("/etc/%.conf", (b"etc", b"%.conf"), False),
        ("/etc/", (b"etc", b"%"), False),
        ("/etc/**", (b"etc",), True),
        ("/home/%%", (b"home",), True),
        ("/var/www/%/htdocs/%%", (b"var", b"www", b"%", b"htdocs"), True),
        ("//etc//hosts", (b"etc", b"hosts"), False),
        ("/%", (b"%",), False),
        ("/[e]tc/%%", (b"[e]tc",), True),
        ("/?/**", (b"?",), True),
        ("/etc/" + "x" * 255, (b"etc", b"x" * 255), False),
        ("/etc/" + "é" * 127 + "x", (b"etc", "é".encode() * 127 + b"x"), False),
        ("/etc/" + "%?" * 255, (b"etc", b"%?" * 255), False),
        ("/etc/" + "[ab]" * 255, (b"etc", b"[ab]" * 255), False),
    ],
)
def test_parse_pattern_levels(text, levels, recursive):
    pattern = parse_pattern(text)
    assert pattern.levels == levels
    assert pattern.recursive == recursive
    assert pattern.text == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file path pattern is empty"),
        ("etc/hosts", "'etc/hosts' is not absolute: start it with /"),
        ("/etc/%%/x", "'/etc/%%/x': a recursive wildcard (%% or **) must be the whole"),
        ("/etc/**/x", "'/etc/**/x': a recursive wildcard"),
        ("/etc/a%%", "'/etc/a%%': a recursive wildcard"),
        ("/etc/\0", "contains a NUL character"),
        ("/etc/../x", "contains '..': write the path without . or .. components"),
        (
            "/etc/[abc",
            "'/etc/[abc' has an unclosed [ in component '[abc': close it with ]",
        ),
        ("/etc/[]", "has an unclosed [ in component '[]'"),
        ("/etc/[!]", "has an unclosed [ in component '[!]'"),
        ("/etc/x[/y", "has an unclosed [ in component 'x['"),
        ("/etc/[a/b]", "has an unclosed [ in component '[a'"),
        ("[z", "'[z' is not absolute: start it with /"),
        ("/[z", "'/[z' has an unclosed [ in component '[z'"),
        ("/etc/" + "x" * 256, "longer than 255 bytes, the maximum length of a file"),
        ("/" + "x" * 256 + "/%", "longer than 255 bytes"),
        ("/etc/" + "é" * 128, "longer than 255 bytes"),
        ("/etc/" + "?" * 256, "longer than 255 bytes"),
        ("/etc/" + "[ab]" * 256, "longer than 255 bytes"),
        ("/etc/" + "x" * 256 + "%", "longer than 255 bytes"),
        ("/**", "'/**' watches every directory, /proc and /sys included"),
        ("/%%", "name the directories to watch, such as /etc/**"),
        ("/%/**", "'/%/**' watches every directory"),
        ("//*%/%%", "'//*%/%%' watches every directory"),
    ],
)
def test_parse_pattern_rejects(text, message):
    with pytest.raises(ValueError) as error:
        parse_pattern(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_pattern_start_stops_at_wildcard():
    assert parse_pattern("/var/www/%/htdocs/%%").start() == b"/var/www"
    assert parse_pattern("/etc/rc[0-6].d/%").start() == b"/etc"
    assert parse_pattern("/etc/hosts").start() == b"/etc"
    assert parse_pattern("/[e]tc/%%").start() == b"/"


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("/etc/%.conf", b"/etc/a.conf", True),
        ("/etc/%.conf", b"/etc/a.txt", False),
        ("/etc/%.conf", b"/etc/sub/a.conf", False),
        ("/etc/*.con?", b"/etc/x.conf", True),
        ("/etc/%%", b"/etc/a/b/c", True),
        ("/etc/%%", b"/etc", False),
        ("/etc/**", b"/etc/a", True),
        ("/v/%/htdocs/%%", b"/v/site/htdocs/index.html", True),
        ("/v/%/htdocs/%%", b"/v/site/other/index.html", False),
        ("/etc/hosts", b"/etc/hosts", True),
        ("/etc/hosts", b"/etc/hosts2", False),
        ("/etc/a.b", b"/etc/aXb", False),
        ("/etc/%", b"/etc/caf\xe9", True),
        ("/etc/[ab]x", b"/etc/ax", True),
        ("/etc/[ab]x", b"/etc/bx", True),
        ("/etc/[ab]x", b"/etc/cx", False),
        ("/etc/[ab]x", b"/etc/[ab]x", False),
        ("/etc/[!ab]x", b"/etc/cx", True),
        ("/etc/[!ab]x", b"/etc/ax", False),
        ("/etc/rc[0-6].d/%", b"/etc/rc3.d/S01x", True),
        ("/etc/rc[0-6].d/%", b"/etc/rcS.d/S01x", False),
        ("/etc/[[]x]", b"/etc/[x]", True),
        ("/etc/[%]", b"/etc/%", True),
        ("/etc/[%]", b"/etc/a", False),
        ("/etc/caf[\xe9e]", "/etc/café".encode(), True),
        ("/etc/caf[\xe9e]", b"/etc/caf\xc3", False),
        ("/etc/caf?", "/etc/café".encode(), True),
        ("/etc/caf?", b"/etc/caf\xe9", True),
        ("/etc/[à-ÿ]", "/etc/é".encode(), True),
        ("/etc/[!à-ÿ]", "/etc/é".encode(), False),
        ("/etc/caf\udce9", b"/etc/caf\xe9", True),
        ("/etc/caf[\udce9]", b"/etc/caf\xe9", True),
        ("/etc/caf[\udce9]", "/etc/café".encode(), False),
        ("/etc/[\n]", b"/etc/\n", True),
    ],
)
def test_pattern_matches(text, path, expected):
    assert parse_pattern(text).matches(path) is expected


CLASS_PATTERNS = [
    "[ab]",
    "[!ab]",
    "[a-c]x",
    "[!a-c]*",
    "[]a]",
    "[!]a]",
    "[a-]",
    "[-a]",
    "[z-a]",
    "[!z-a]",
    "[a-c-e]",
    "[+--]",
    "[\\]",
    "[^a]",
    "[*?]",
    "*[0-9].conf",
    "[[]",
    "a]",
]
NAMES = [
    "a",
    "b",
    "c",
    "d",
    "e",
    "x",
    "ax",
    "bx",
    "dx",
    "]",
    "-",
    "+",
    ",",
    "\\",
    "^",
    "*",
    "?",
    "[",
    "a]",
    "1.conf",
    "x1.conf",
    "x.conf",
    "ab",
    "",
]


@pytest.mark.parametrize("glob", CLASS_PATTERNS)
def test_pattern_classes_match_fnmatch(glob):
    pattern = parse_pattern(f"/d/{glob}")
    for name in NAMES:
        path = b"/d/" + name.encode()
        expected = fnmatch.fnmatchcase(name, glob)
        assert pattern.matches(path) is expected, (glob, name)


def make_tree(root, paths):
    for relative in paths:
        path = root / relative
        if relative.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")


def expanded(pattern):
    return {
        (os.fsdecode(directory), depth, tuple(sorted(os.fsdecode(n) for n in names)))
        for directory, depth, names in expand(pattern)
    }


def test_expand_one_level(tmp_path):
    make_tree(tmp_path, ["a.conf", "b.txt", "sub/c.conf"])
    pattern = parse_pattern(f"{tmp_path}/%.conf")
    depth = len(pattern.levels) - 1
    assert expanded(pattern) == {(str(tmp_path), depth, ("a.conf",))}


def test_expand_percent_recursive(tmp_path):
    make_tree(tmp_path, ["a", "sub/b", "sub/deeper/c", "empty/"])
    os.symlink(tmp_path / "sub", tmp_path / "link")
    pattern = parse_pattern(f"{tmp_path}/%%")
    depth = len(pattern.levels)
    assert expanded(pattern) == {
        (str(tmp_path), depth, ("a", "empty", "link", "sub")),
        (str(tmp_path / "sub"), depth, ("b", "deeper")),
        (str(tmp_path / "sub/deeper"), depth, ("c",)),
        (str(tmp_path / "empty"), depth, ()),
    }


def test_expand_star_star_equals_percent(tmp_path):
    make_tree(tmp_path, ["a", "sub/b"])
    stars = expanded(parse_pattern(f"{tmp_path}/**"))
    percents = expanded(parse_pattern(f"{tmp_path}/%%"))
    assert stars == percents
    assert len(stars) == 2


def test_expand_wildcard_in_middle(tmp_path):
    make_tree(tmp_path, ["one/htdocs/index", "two/htdocs/x/y", "two/logs/z", "file"])
    pattern = parse_pattern(f"{tmp_path}/%/htdocs/%%")
    base = len(pattern.levels)
    dirs = {(directory, depth) for directory, depth, _ in expanded(pattern)}
    assert dirs == {
        (str(tmp_path), base - 2),
        (str(tmp_path / "one"), base - 1),
        (str(tmp_path / "two"), base - 1),
        (str(tmp_path / "one/htdocs"), base),
        (str(tmp_path / "two/htdocs"), base),
        (str(tmp_path / "two/htdocs/x"), base),
    }


def test_expand_character_class(tmp_path):
    make_tree(tmp_path, ["ax/f", "bx/g", "cx/h", "ax.conf", "cx.conf"])
    pattern = parse_pattern(f"{tmp_path}/[ab]x/%")
    base = len(pattern.levels) - 1
    assert expanded(pattern) == {
        (str(tmp_path), base - 1, ()),
        (str(tmp_path / "ax"), base, ("f",)),
        (str(tmp_path / "bx"), base, ("g",)),
    }


def test_expand_missing_start_uses_ancestor(tmp_path):
    pattern = parse_pattern(f"{tmp_path}/not/yet/%%")
    directory, depth = nearest_directory(pattern)
    assert directory == os.fsencode(tmp_path)
    assert depth == len(pattern.levels) - 2
    assert expanded(pattern) == {(str(tmp_path), depth, ())}
