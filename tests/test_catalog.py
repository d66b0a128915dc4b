"""Tests for lookalike.catalog: the SQLite table of indexed files."""

from __future__ import annotations

import sqlite3
import tracemalloc

import numpy as np
import pytest

from lookalike.catalog import Catalog, CatalogEntry, Entries, Located, label_for
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


# ------------------------------------------------------------------ Entries: the rows in memory, as columns
ODD = [*ENTRIES, entry(9, "bad_\udcff.png"), entry(11, "dogs/puppies/c.jpg"), entry(12, "dogsled.jpg")]


def test_entries_are_the_catalog_rows(tmp_path):
    store = Catalog.create_store(tmp_path / "c.sqlite")
    store.apply(put=[Located(e, shard=0, row=r) for r, e in enumerate(ODD)], add_shard=(0, len(ODD)))
    state = store.snapshot()
    store.close()
    for entries in (state.entries, Entries.of(reversed(ODD))):  # from SQLite (streamed), from objects
        want = sorted(ODD, key=lambda e: e.id)
        assert len(entries) == len(ODD) and list(entries) == [e.id for e in want]
        assert list(entries.rows()) == want and [entries[e.id] for e in want] == want  # every field, byte-exact
        assert dict(entries.items()) == {e.id: e for e in want}
        assert entries.ids.tolist() == [e.id for e in want]
        assert entries.labels() == {e.id: e.label for e in want if e.label is not None}
        assert sorted(entries.label_names()) == ["cats/tabby", "dogs", "dogs/puppies"]
        for e in want:
            assert entries.id_of(e.path) == e.id
        assert entries.id_of("bad_\udcfe.png") is None and entries.id_of("dogs") is None
        assert entries.id_of("dogs/b.pn") is None and entries.id_of("") is None
        assert entries.has_under("dogs") and entries.has_under("dogs/") and entries.has_under("dogs/puppies")
        assert not entries.has_under("dogsl") and not entries.has_under("cats/tab") and entries.has_under("")
        for missing in (5, -1, 10**12, "7", 7.0, True, None):
            assert missing not in entries
            with pytest.raises(KeyError):
                entries[missing]
        assert entries.get(5) is None and entries.get(np.int64(7)) == ENTRIES[0]
    # The place of each vector comes with its row, by position.
    assert state.shard.tolist() == [0] * len(ODD)
    assert [state.entries.ids[p] for p in np.argsort(state.row)] == [e.id for e in ODD]


def test_entries_empty_and_out_of_order():
    empty = Entries()
    assert len(empty) == 0 and list(empty) == [] and empty.labels() == {} and empty.id_of("a.png") is None
    assert not empty.has_under("") and 0 not in empty
    with pytest.raises(ValueError, match="out of order"):
        Entries([(2, b"a.png", 1, 1, "00", None), (1, b"b.png", 1, 1, "00", None)])


def test_entries_hold_no_object_per_image():
    """An index's rows cost bytes in a few buffers, not Python objects per image: a server reloading a
    50,000-image index kept ~90 MiB more after each of its first reloads while it held a dict of entries."""
    n = 20_000
    rows = [(i, f"class{i % 10}/image-{i:06d}.jpg".encode(), 1000 + i, 1_700_000_000_000_000_000 + i, f"{i:064x}",
             f"class{i % 10}".encode()) for i in range(n)]  # fmt: skip
    tracemalloc.start()
    try:
        entries = Entries(iter(rows))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(entries) == n and entries[n - 1].path == f"class9/image-{n - 1:06d}.jpg"
    assert held / n < 200, f"{held / n:.0f} bytes per image"  # dicts of CatalogEntry and of paths: ~300


@pytest.mark.parametrize(
    "depth, label",
    [
        (None, "art/dog/big"),
        (1, "art"),
        (2, "art/dog"),
        (-1, "big"),
        (-2, "dog/big"),
        (5, "art/dog/big"),
        (-9, "art/dog/big"),
    ],  # fmt: skip
)
def test_label_depth_keeps_part_of_a_nested_folder(depth, label):
    assert label_for("art/dog/big/x.jpg", depth) == label
    assert label_for("x.jpg", depth) is None  # no folder, no label, at any depth
