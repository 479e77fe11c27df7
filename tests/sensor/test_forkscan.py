import os

from sensor.forkscan import scan_split


def squares(items):
    return [item * item for item in items]


def test_split_matches_single_scan():
    items = list(range(1001))
    assert scan_split(items, squares, minimum=10) == squares(items)


def test_small_input_stays_here():
    parent = os.getpid()
    result = scan_split(
        [1, 2, 3], lambda items: [os.getpid() for _ in items], minimum=10
    )
    assert result == [parent, parent, parent]


def test_child_half_runs_elsewhere():
    parent = os.getpid()
    result = scan_split(
        list(range(10)), lambda items: [os.getpid() for _ in items], minimum=0
    )
    assert result[:5] == [parent] * 5
    assert parent not in result[5:]


def test_failed_child_falls_back():
    parent = os.getpid()

    def scan(items):
        if os.getpid() != parent:
            raise RuntimeError("child fails")
        return [item + 1 for item in items]

    assert scan_split(list(range(8)), scan, minimum=0) == list(range(1, 9))


def test_unmarshalable_result_falls_back():
    parent = os.getpid()

    def scan(items):
        # Plain objects are not marshal data, so the child fails to dump them.
        if os.getpid() != parent:
            return [object() for _ in items]
        return list(items)

    assert scan_split(list(range(6)), scan, minimum=0) == list(range(6))
