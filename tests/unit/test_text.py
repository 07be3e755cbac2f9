from ddm.text import counted


def test_counted_uses_the_singular_for_one() -> None:
    assert counted(1, "file") == "1 file"
    assert counted(1, "entry", "entries") == "1 entry"


def test_counted_uses_the_plural_for_zero_and_many() -> None:
    assert counted(0, "file") == "0 files"
    assert counted(3, "entry", "entries") == "3 entries"
