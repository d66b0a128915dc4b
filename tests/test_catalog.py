"""Tests for lookalike.catalog: the SQLite table of indexed files."""

from __future__ import annotations

import sqlite3

import pytest

from lookalike.catalog import Catalog, CatalogEntry, label_for
from lookalike.errors import LookalikeError


def entry(i: int, path: str) -> CatalogEntry:
    return CatalogEntry(i, path, size=100 + i, mtime_ns=1_700_000_000_123_456_789 + i,
                        sha256=f"{i:064x}", label=label_for(path))  # fmt: skip


ENTRIES = [entry(7, "cats/tabby/a.jpg"), entry(2, "dogs/b.png"), entry(40, "root.gif"), entry(3, "dogs/é ü.webp")]


@pytest.mark.parametrize(
    "relative, label",
    [("a/b/c.jpg", "a/b"), ("c.jpg", None), ("dogs/x.png", "dogs"), ("a b/ü/c d.png", "a b/ü")],
)
def test_label_for(relative, label):
    assert label_for(relative) == label


def test_create_add_and_read_back(tmp_path):
    path = tmp_path / "catalog.sqlite"
    cat = Catalog.create(path)
    assert len(cat) == 0 and cat.entries() == []
    cat.add(ENTRIES[:2])
    cat.add(ENTRIES[2:])
    assert len(cat) == 4
    assert cat.entries() == sorted(ENTRIES, key=lambda e: e.id)  # by id, every field intact
    assert cat.get(7) == ENTRIES[0] and cat.get(7).label == "cats/tabby"
    assert cat.get(40).label is None
    assert cat.get(5) is None
    assert cat.id_of("dogs/é ü.webp") == 3
    assert cat.id_of("dogs/b.png") == 2
    assert cat.id_of("missing.png") is None
    cat.close()

    again = Catalog.open(path)
    assert again.entries() == sorted(ENTRIES, key=lambda e: e.id)
    assert again.get(40) == ENTRIES[2]
    assert again.get(40).mtime_ns == 1_700_000_000_123_456_829  # nanoseconds survive (64-bit ints)
    again.close()


def test_add_is_one_transaction(tmp_path):
    cat = Catalog.create(tmp_path / "c.db")
    cat.add(ENTRIES[:1])
    with pytest.raises(LookalikeError, match=r"c\.db: cannot add.*UNIQUE"):  # second entry reuses a path
        cat.add([entry(100, "new.png"), entry(101, "cats/tabby/a.jpg")])
    assert [e.id for e in cat.entries()] == [7]
    with pytest.raises(LookalikeError, match="UNIQUE"):  # reused id
        cat.add([entry(7, "other.png")])
    assert len(cat) == 1


def test_create_refuses_an_existing_file(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog.create(path).close()
    with pytest.raises(LookalikeError, match="already exists") as exc:
        Catalog.create(path)
    assert str(path) in str(exc.value)
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(LookalikeError):
        Catalog.create(other)
    assert other.read_text() == "keep me"


def test_open_missing_or_not_sqlite(tmp_path):
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(LookalikeError, match="not found") as exc:
        Catalog.open(missing)
    assert str(missing) in str(exc.value)
    assert not missing.exists()  # opening does not create it

    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, only some text " * 50)
    with pytest.raises(LookalikeError) as exc:
        Catalog.open(junk)
    assert str(junk) in str(exc.value)
    with pytest.raises(LookalikeError, match=str(junk)):
        Catalog.open(junk, readonly=False)

    other_db = tmp_path / "other.sqlite"
    with sqlite3.connect(other_db) as db:
        db.execute("CREATE TABLE something (x INTEGER)")
    db.close()
    with pytest.raises(LookalikeError, match="other.sqlite"):
        Catalog.open(other_db)


def test_open_handles_awkward_path_characters(tmp_path):
    folder = tmp_path / "my photos?#%20 100%"
    folder.mkdir()
    path = folder / "cat?.sqlite"
    created = Catalog.create(path)
    created.add(ENTRIES)
    created.close()
    cat = Catalog.open(path)
    assert len(cat) == 4 and cat.path == path
    cat.close()


def test_read_only_open_cannot_write(tmp_path):
    path = tmp_path / "catalog.sqlite"
    cat = Catalog.create(path)
    cat.add(ENTRIES[:2])
    cat.close()

    ro = Catalog.open(path)  # read-only is the default
    with pytest.raises(LookalikeError, match="(?i)read.?only"):
        ro.add([entry(99, "new.png")])
    assert len(ro) == 2
    ro.close()

    rw = Catalog.open(path, readonly=False)
    rw.add([entry(99, "new.png")])
    rw.close()
    assert Catalog.open(path).id_of("new.png") == 99
