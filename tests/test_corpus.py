"""The corpus of bad and odd inputs (tests/corpus.py) through every command: index, add, search, duplicates,
evaluate, train, the Python API and the server's upload route; each case must have its expected outcome.

The command line runs in a subprocess with a timeout and a memory cap, so a hang (a FIFO read) or an
unbounded read (/dev/zero) fails the test instead of blocking or exhausting the machine. Checks that
cover every case collect every failing case first and report them together, one line each.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from .corpus import NON_UTF8_NAME, Case, build_corpus, encode, picture, png_bilevel_black

CLI_TIMEOUT = 120  # seconds for one command; the whole corpus indexes in a few
QUICK_TIMEOUT = 30  # for commands that read one file
MEMORY_CAP = 8 << 30  # address space of a command: a read of /dev/zero fails fast instead of eating the machine
PIXELS = 32  # the pixels extractor's input side


# ------------------------------------------------------------------------------------------ helpers
@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        command = " ".join(map(repr, self.args))
        return f"lookalike {command} -> exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _env(cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", COLUMNS="400", TERM="dumb", NO_COLOR="1", PYTHONIOENCODING="utf-8:surrogateescape")
    if cache is not None:
        env["LOOKALIKE_CACHE"] = str(cache)
    return env


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def run_process(cmd: list[str], *, cwd: Path | None = None, timeout: float = CLI_TIMEOUT, what: str = "") -> Run:
    """Run a command in its own process group; on timeout kill the group and fail the test."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_limit_memory)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what or cmd} did not finish in {timeout} s (a hang?)\n--- stderr (last 3000 chars)\n"
                    f"{_decode(err)[-3000:]}")  # fmt: skip
    return Run([str(c) for c in cmd[3:]], proc.returncode, _decode(out), _decode(err))


def lookalike(*args: str | os.PathLike[str], cwd: Path | None = None, timeout: float = CLI_TIMEOUT) -> Run:
    """``python -m lookalike.cli ARGS`` (file names with any bytes pass through os.fsencode)."""
    cmd = [sys.executable, "-m", "lookalike.cli", *(os.fspath(a) for a in args)]
    return run_process(cmd, cwd=cwd, timeout=timeout, what=f"lookalike {' '.join(map(repr, cmd[3:]))}")


def lookalike_here(*args: str | os.PathLike[str], cwd: Path | None = None) -> Run:
    """The command line in this process (typer's CliRunner): for commands that cannot block (no FIFO or
    device among their files), a few seconds quicker than a subprocess."""
    from typer.testing import CliRunner

    from lookalike.cli import app

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [os.fspath(a) for a in args])
    finally:
        os.chdir(old)
    stdout, stderr = result.stdout, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "Traceback (CliRunner)\n" + "".join(traceback.format_exception(result.exception))
    return Run([os.fspath(a) for a in args], result.exit_code, stdout, stderr)


def assert_clean(run: Run, code: int = 0) -> None:
    assert "Traceback" not in run.output, run.describe()
    assert run.code == code, run.describe()


def assert_one_error_line(run: Run, *fragments: str) -> str:
    """Exit 1 and a single ``error: ...`` line (no traceback) containing every fragment."""
    assert_clean(run, 1)
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), run.describe()
    for fragment in fragments:
        assert fragment in lines[0].lower(), run.describe()
    return lines[0]


def made(cases: list[Case]) -> list[Case]:
    return [c for c in cases if not c.unavailable]


def problems_report(title: str, problems: list[str]) -> str:
    return f"{len(problems)} case(s) {title}:\n" + "\n".join(f"  - {p}" for p in problems)


def catalog_state(index_dir: Path) -> tuple[dict[str, object], dict[str, str]]:
    """(relative path -> entry, relative path -> skip reason) of an index folder."""
    from lookalike.catalog import Catalog
    from lookalike.search import Index
    from lookalike.store import CATALOG_NAME

    idx = Index.load(index_dir)
    entries = {e.path: e for e in idx.entries.values()}
    catalog = Catalog.open(index_dir / CATALOG_NAME)
    try:
        skipped = {s.path: s.reason for s in catalog.skipped()}
    finally:
        catalog.close()
    return entries, skipped


def is_under(path: str, rel: str) -> bool:
    return path == rel or path.startswith(rel.rstrip("/") + "/")


def lines_naming(text: str, rel: str) -> list[str]:
    """Lines of ``text`` that name the file ``rel``: its whole base name, or (for a name with a newline or
    other control characters, which may be escaped) every printable piece of it, on one line."""
    base = rel.rsplit("/", 1)[-1]
    pieces = [p for p in re.split(r"[\x00-\x1f\x7f]", base) if p]
    return [line for line in text.splitlines() if base in line or (pieces and all(p in line for p in pieces))]


# --------------------------------------------------------------------------------- reference decoder
def reference_pixels(path: Path, size: int = PIXELS) -> np.ndarray:
    """What a correct decoder gives, made with Pillow directly: first frame, ICC to sRGB, EXIF orientation,
    alpha onto white, high bit depths scaled, squashed to ``size`` squared (bilinear), uint8 (H, W, 3).

    Used to check that the corpus's expectations can be met, independent of lookalike."""
    with Image.open(path) as im:
        im.seek(0)
        im.load()
        icc = im.info.get("icc_profile")
        im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode == "F" or mode == "I" or mode.startswith("I;16"):
            arr = np.nan_to_num(np.asarray(im, np.float64))
            hi = arr.max() if arr.size else 1
            scale = 1 / 255 if mode == "F" and hi <= 1 else (257 if hi > 255 else 1)
            im = Image.fromarray(np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8), "L")
        elif mode == "LAB":
            lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
            im = ImageCms.applyTransform(im, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
        elif mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
        if icc and im.mode == "RGB" and mode not in ("CMYK", "LAB"):
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (ImageCms.PyCMSError, OSError):
                pass  # a corrupt profile: the pixels as stored
        im = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im)


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ---------------------------------------------------------------------------------------- fixtures
@dataclass
class Corpus:
    root: Path
    cases: list[Case]
    seconds: float

    def case(self, name: str) -> Case:
        return next(c for c in self.cases if c.name == name)

    def path(self, name: str) -> Path:
        return self.root / self.case(name).rel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = (tmp_path_factory.mktemp("corpus-parent") / "corpus").resolve()
    t0 = time.perf_counter()
    cases = build_corpus(root)
    return Corpus(root, cases, time.perf_counter() - t0)


@dataclass
class Indexed:
    run: Run
    out: Path


@pytest.fixture(scope="module")
def pixels_index(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Indexed:
    """The corpus indexed once with the raw-pixels extractor (no training)."""
    out = tmp_path_factory.mktemp("corpus-index") / "index"
    return Indexed(lookalike("index", corpus.root, "-o", out, "-e", "pixels"), out)


@pytest.fixture(scope="module")
def index_state(pixels_index: Indexed):
    assert_clean(pixels_index.run)
    return catalog_state(pixels_index.out)


@pytest.fixture(scope="module")
def loaded_index(pixels_index: Indexed):
    from lookalike.search import Index

    assert_clean(pixels_index.run)
    return Index.load(pixels_index.out)


# ------------------------------------------------------------------------------- the corpus itself
def test_the_corpus_has_at_least_60_kinds_and_accounts_for_every_file(corpus: Corpus) -> None:
    kinds = [c for c in corpus.cases if not c.is_reference]
    assert len(kinds) >= 60, len(kinds)
    names = [c.name for c in corpus.cases]
    assert len(set(names)) == len(names)
    rels = [c.rel for c in made(corpus.cases)]
    assert len(set(rels)) == len(rels)
    by_rel = {c.rel: c for c in made(corpus.cases)}
    for c in corpus.cases:
        assert c.expect in ("indexed", "skipped", "ignored"), c
        assert (c.reason is not None) == (c.expect == "skipped"), c
        if c.twin is not None:
            assert c.expect == "indexed" and by_rel[c.twin].expect == "indexed", c
        if not c.unavailable:
            assert os.path.lexists(corpus.root / c.rel), c
    # every file, link and special file under the root is a case (or inside an ignored folder case)
    ignored_dirs = [c.rel for c in made(corpus.cases) if c.expect == "ignored"]
    strays = []
    for dirpath, dirnames, filenames in os.walk(corpus.root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = os.path.relpath(os.path.join(dirpath, name), corpus.root).replace(os.sep, "/")
            if rel not in by_rel and not any(is_under(rel, d) for d in ignored_dirs):
                strays.append(rel)
    assert not strays
    unavailable = [f"{c.name}: {c.unavailable}" for c in corpus.cases if c.unavailable]
    print(f"{len(kinds)} kinds, {len(corpus.cases) - len(kinds)} reference pictures; not made here: {unavailable}")


def test_the_corpus_is_small_on_disk(corpus: Corpus) -> None:
    # (how long it takes to make, ~2 s on a quiet machine, is not asserted: a timed test fails on a busy one)
    on_disk = 0
    for dirpath, _, filenames in os.walk(corpus.root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            on_disk += st.st_blocks * 512
    assert on_disk < 10 << 20, on_disk  # the 300 MiB file is sparse


def test_the_twins_hold_for_a_reference_decoder(corpus: Corpus) -> None:
    """The expectations can be met: decoding with Pillow the way the policy says gives each twin's pixels."""
    bad = []
    for c in made(corpus.cases):
        if c.twin is None:
            continue
        err = mean_error(reference_pixels(corpus.root / c.rel), reference_pixels(corpus.root / c.twin))
        if err > c.max_mean_error:
            bad.append(f"{c.name}: mean error {err:.2f} > {c.max_mean_error}")
    assert not bad, problems_report("whose twin a plain Pillow decoder does not reproduce", bad)


def test_the_orientation_and_profile_cases_are_real_tests(corpus: Corpus) -> None:
    """Ignoring the EXIF orientation or the ICC profile would give other pixels than the twin's."""

    def naive(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((PIXELS, PIXELS), Image.Resampling.BILINEAR))

    for c in made(corpus.cases):
        if c.name.startswith("exif_orientation_") and c.name[-1] in "2345678" or c.name == "icc_adobe_rgb":
            err = mean_error(naive(corpus.root / c.rel), reference_pixels(corpus.root / c.twin))
            assert err > 3 * c.max_mean_error, (c.name, err)


# ------------------------------------------------------------------------------------------- index
def test_index_finishes_cleanly(pixels_index: Indexed) -> None:
    assert_clean(pixels_index.run)
    assert "indexed" in pixels_index.run.stdout


def test_every_indexed_case_is_in_the_catalog(corpus: Corpus, index_state) -> None:
    entries, skipped = index_state
    bad = []
    for c in made(corpus.cases):
        if c.expect != "indexed":
            continue
        if c.lenient:
            if (c.rel in entries) == (c.rel in skipped):
                bad.append(f"{c.name} ({c.rel!r}): neither indexed nor skipped" if c.rel not in entries
                           else f"{c.name}: both indexed and skipped")  # fmt: skip
        elif c.rel not in entries:
            why = f"skipped: {skipped[c.rel]}" if c.rel in skipped else "neither indexed nor skipped"
            bad.append(f"{c.name} ({c.rel!r}): not indexed ({why})")
    assert not bad, problems_report("that should be indexed", bad)


def test_every_skipped_case_is_recorded_with_its_reason(corpus: Corpus, index_state) -> None:
    entries, skipped = index_state
    bad = []
    for c in made(corpus.cases):
        if c.expect != "skipped":
            continue
        if c.lenient:
            if c.rel in skipped or c.rel in entries:
                continue
            bad.append(f"{c.name} ({c.rel!r}): neither indexed nor skipped")
        elif c.rel in entries:
            bad.append(f"{c.name} ({c.rel!r}): indexed, expected skipped ({c.reason})")
        elif c.rel not in skipped:
            bad.append(f"{c.name} ({c.rel!r}): not in the skipped list (silently dropped)")
        elif not c.reason_matches(skipped[c.rel]):
            bad.append(f"{c.name} ({c.rel!r}): reason {skipped[c.rel]!r} does not say {c.reason!r}")
    assert not bad, problems_report("that should be skipped", bad)


def test_skipped_files_are_counted_and_listed_one_line_each(corpus: Corpus, pixels_index: Indexed, index_state) -> None:
    entries, skipped = index_state
    run = pixels_index.run
    match = re.search(r"skipped (\d+)", run.stdout)
    counted = int(match.group(1)) if match else 0
    assert counted == len(skipped), run.describe()
    expected = [c for c in made(corpus.cases) if c.expect == "skipped" and not c.lenient]
    expected += [c for c in made(corpus.cases) if c.lenient and c.rel in skipped]
    assert counted == len(expected), f"skipped {counted}, expected {len(expected)}: " + ", ".join(
        sorted(set(skipped) ^ {c.rel for c in expected})
    )
    bad = []
    for c in expected:
        lines = [line for line in lines_naming(run.output, c.rel) if "skip" in line.lower()]
        if not lines:
            bad.append(f"{c.name} ({c.rel!r}): no output line names it as skipped")
        elif not any(c.reason_matches(line) for line in lines):
            bad.append(f"{c.name}: its line does not give the reason {c.reason!r}: {lines[0]!r}")
    assert not bad, problems_report("not reported", bad)


def test_ignored_cases_appear_nowhere(corpus: Corpus, pixels_index: Indexed, index_state) -> None:
    entries, skipped = index_state
    bad = []
    for c in made(corpus.cases):
        if c.expect != "ignored":
            continue
        if any(is_under(p, c.rel) for p in entries):
            bad.append(f"{c.name} ({c.rel!r}): in the catalog")
        if any(is_under(p, c.rel) for p in skipped):
            bad.append(f"{c.name} ({c.rel!r}): in the skipped list")
        if c.rel in pixels_index.run.output:
            bad.append(f"{c.name} ({c.rel!r}): named in the output")
    assert not bad, problems_report("that should be ignored", bad)


def test_twins_decode_to_the_same_pixels(corpus: Corpus, loaded_index) -> None:
    """The stored vectors (raw pixels, (x/255 - 0.5)/0.5) of each case and its twin agree."""
    idx = loaded_index
    by_path = {e.path: e.id for e in idx.entries.values()}
    bad = []
    for c in made(corpus.cases):
        if c.twin is None:
            continue
        if c.rel not in by_path or c.twin not in by_path:
            bad.append(f"{c.name}: {'it' if c.rel not in by_path else 'its twin'} is not indexed")
            continue
        vecs = idx.vectors.reconstruct(np.array([by_path[c.rel], by_path[c.twin]]))
        err = float(np.abs(vecs[0] - vecs[1]).mean()) * 127.5
        if err > c.max_mean_error:
            bad.append(f"{c.name} ({c.rel!r}): mean error {err:.2f} against {c.twin} > {c.max_mean_error}")
    assert not bad, problems_report("whose pixels differ from their twin's", bad)


def test_twins_are_found_by_search(corpus: Corpus, loaded_index) -> None:
    from lookalike.errors import LookalikeError

    bad = []
    for c in made(corpus.cases):
        if c.twin is None:
            continue
        try:
            hits = loaded_index.search(corpus.root / c.rel, k=2)
        except LookalikeError as exc:
            bad.append(f"{c.name}: search failed: {exc}")
            continue
        found = [str(h.path.relative_to(corpus.root)) if h.path.is_relative_to(corpus.root) else str(h.path)
                 for h in hits]  # fmt: skip
        if c.twin not in found:
            bad.append(f"{c.name}: top 2 are {found}, not its twin {c.twin}")
    assert not bad, problems_report("whose twin search misses", bad)


def test_indexing_again_changes_nothing(corpus: Corpus, pixels_index: Indexed, index_state) -> None:
    run = lookalike("index", corpus.root, "-o", pixels_index.out)
    assert_clean(run)
    assert re.search(r"added 0, updated 0, moved 0, removed 0", run.stdout), run.describe()
    assert catalog_state(pixels_index.out) == index_state


def test_the_python_api_agrees_with_the_cli(corpus: Corpus, index_state, tmp_path: Path) -> None:
    """``Index.build`` from Python (in a subprocess, so a hang fails the test) indexes and skips the same files."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from lookalike import Model
        from lookalike.search import Index
        idx = Index.build(sys.argv[1], Model.pretrained("pixels"), sys.argv[2], num_workers=0)
        print(json.dumps({"count": len(idx), "summary": idx.last_update.skipped}))
        """
    )
    out = tmp_path / "api-index"
    run = run_process([sys.executable, "-c", script, str(corpus.root), str(out)], what="Index.build")
    assert_clean(run)
    assert catalog_state(out) == index_state
    entries, skipped = index_state
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"count": len(entries), "summary": len(skipped)}


def test_follow_symlinks_indexes_links_out_of_the_folder(corpus: Corpus, index_state, tmp_path: Path) -> None:
    out = tmp_path / "follow-index"
    run = lookalike("index", corpus.root, "-o", out, "-e", "pixels", "--follow-symlinks")
    assert_clean(run)
    entries, skipped = catalog_state(out)
    for name in ("symlink_outside", "symlink_outside_relative"):
        assert corpus.case(name).rel in entries, (name, skipped.get(corpus.case(name).rel))
    for name in ("symlink_dev_zero", "fifo", "symlink_dangling", "symlink_loop_self"):
        c = corpus.case(name)
        assert c.rel in skipped and c.rel not in entries, (name, skipped.get(c.rel))
    assert "not a regular file" in skipped[corpus.case("symlink_dev_zero").rel]
    assert set(entries) - set(index_state[0]) == {
        corpus.case(n).rel for n in ("symlink_outside", "symlink_outside_relative")
    }


# --------------------------------------------------------------------------------------------- add
@pytest.fixture
def small_index(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of 4 plain pictures (and one sub-folder), indexed with raw pixels: (folder, index)."""
    root = (tmp_path / "photos").resolve()
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        (root / ("sub" if i % 2 else "") / f"p{i}.png").write_bytes(encode(picture(f"small:{i}"), "PNG"))
    (tmp_path / "outside.png").write_bytes(encode(picture("small:outside"), "PNG"))
    out = tmp_path / "index"
    assert_clean(lookalike_here("index", root, "-o", out, "-e", "pixels"))
    return root, out


def _refused_or_skipped(run: Run, rel: str, reason: str) -> None:
    """``add`` of a file that must not be indexed: one error line, or exit 0 with it skipped and named."""
    assert "Traceback" not in run.output, run.describe()
    if run.code == 1:
        assert_one_error_line(run)
        assert any(r in run.output.lower() for r in reason.split("|")), run.describe()
    else:
        assert_clean(run)
        assert re.search(r"skipped 1\b", run.stdout), run.describe()
        lines = [line for line in lines_naming(run.output, rel) if "skip" in line.lower()]
        assert lines and any(r in lines[0].lower() for r in reason.split("|")), run.describe()


def test_add_odd_files_one_by_one(small_index: tuple[Path, Path], tmp_path: Path) -> None:
    root, out = small_index
    (root / NON_UTF8_NAME).write_bytes(encode(picture("add:non-utf8"), "PNG"))
    run = lookalike_here("add", out, root / NON_UTF8_NAME)
    assert_clean(run)
    assert NON_UTF8_NAME in catalog_state(out)[0], run.describe()

    (root / "-rf.png").write_bytes(encode(picture("add:dash"), "PNG"))
    run = lookalike_here("add", out, "--", "-rf.png", cwd=root)
    assert_clean(run)
    assert "-rf.png" in catalog_state(out)[0], run.describe()

    (root / "new\nline.jpg").write_bytes(encode(picture("add:newline"), "JPEG"))
    run = lookalike_here("add", out, root / "new\nline.jpg")
    assert_clean(run)
    assert "new\nline.jpg" in catalog_state(out)[0], run.describe()

    os.symlink(tmp_path / "outside.png", root / "out_link.png")
    _refused_or_skipped(lookalike_here("add", out, root / "out_link.png"), "out_link.png", "outside")
    os.symlink("nowhere.png", root / "dangling.png")
    _refused_or_skipped(lookalike_here("add", out, root / "dangling.png"), "dangling.png", "broken")
    (root / "bomb.png").write_bytes(png_bilevel_black(20000, 20000))
    _refused_or_skipped(lookalike_here("add", out, root / "bomb.png"), "bomb.png", "pixels")
    (root / "text.jpg").write_text("not a JPEG\n")
    _refused_or_skipped(lookalike_here("add", out, root / "text.jpg"), "text.jpg", "not an image")

    before = catalog_state(out)
    run = lookalike_here("add", out, root / "sub" / ".." / ".." / "outside.png")
    assert_one_error_line(run, "outside.png")
    assert catalog_state(out) == before
    entries, _ = before
    assert not {"out_link.png", "dangling.png", "bomb.png", "text.jpg"} & set(entries)


@pytest.mark.parametrize("special", ["fifo", "dev_zero"])
def test_add_a_special_file_neither_blocks_nor_reads_forever(small_index: tuple[Path, Path], special: str) -> None:
    root, out = small_index
    name = "special.jpg"
    if special == "fifo":
        os.mkfifo(root / name)
    else:
        os.symlink("/dev/zero", root / name)
    run = lookalike("add", out, root / name, timeout=QUICK_TIMEOUT)
    _refused_or_skipped(run, name, "not a regular file|outside")
    assert name not in catalog_state(out)[0]


# ------------------------------------------------------------------------------------------ search
def _top_hit(run: Run) -> dict:
    assert_clean(run)
    return json.loads(run.stdout)[0]["hits"][0]


def test_search_with_odd_file_names(corpus: Corpus, pixels_index: Indexed) -> None:
    assert_clean(pixels_index.run)
    bad = []
    for name in ("non_utf8_name", "newline_name", "escape_name", "markup_name", "html_name", "unicode_name",
                 "spaces_name", "long_name", "dash_help", "glob_name"):  # fmt: skip
        path = corpus.path(name)
        run = lookalike_here("search", pixels_index.out, path, "-k", "2", "--json")
        if run.code != 0 or "Traceback" in run.output:
            bad.append(f"{name}: exit {run.code}: {run.output.strip()[-300:]}")
            continue
        hit = json.loads(run.stdout)[0]["hits"][0]
        if not (hit["score"] > 0.999 and Path(hit["path"]) == path):
            bad.append(f"{name}: top hit {hit}")
    assert not bad, problems_report("that search mishandles as queries", bad)


def test_search_with_a_leading_dash_after_double_dash(corpus: Corpus, pixels_index: Indexed) -> None:
    run = lookalike_here("search", pixels_index.out, "-k", "1", "--json", "--", "-rf.png", cwd=corpus.root / "names")
    assert_clean(run)
    assert Path(json.loads(run.stdout)[0]["hits"][0]["path"]) == corpus.path("dash_rf")


def test_search_with_bad_query_files_is_one_error_line(corpus: Corpus, pixels_index: Indexed) -> None:
    assert_clean(pixels_index.run)
    bad = []
    for name, fragment in (("png_bomb_20000", "pixels"), ("text_as_jpg", "not an image"), ("zero_byte", ""),
                           ("jpeg2000_as_jpg", "unsupported"), ("truncated_jpeg", ""), ("symlink_dangling", ""),
                           ("symlink_loop_self", ""), ("svg_as_png", ""), ("big_sparse_300mib", "limit")):  # fmt: skip
        path = corpus.path(name)
        run = lookalike_here("search", pixels_index.out, path)
        lines = [line for line in run.output.splitlines() if line.strip()]
        if run.code != 1 or "Traceback" in run.output or len(lines) != 1 or not lines[0].startswith("error:"):
            bad.append(f"{name}: exit {run.code}: {run.output.strip()[-300:]!r}")
        elif fragment not in lines[0].lower() or path.name not in lines[0]:
            bad.append(f"{name}: {lines[0]!r} should name the file and say {fragment!r}")
    assert not bad, problems_report("that search does not refuse in one line", bad)


@pytest.mark.parametrize("name", ["fifo", "symlink_dev_zero"])
def test_search_with_a_special_file_is_one_error_line(corpus: Corpus, pixels_index: Indexed, name: str) -> None:
    path = corpus.path(name)
    line = assert_one_error_line(
        lookalike("search", pixels_index.out, path, timeout=QUICK_TIMEOUT), "not a regular file"
    )
    assert path.name in line, line


# ------------------------------------------------------------------------------ duplicates, evaluate
def test_duplicates_finds_the_copies_and_hard_links(corpus: Corpus, pixels_index: Indexed, tmp_path: Path) -> None:
    run = lookalike("duplicates", pixels_index.out, "--json", tmp_path / "dupes.json")
    assert_clean(run)
    groups = json.loads((tmp_path / "dupes.json").read_text())["groups"]
    member_sets = [{str(Path(m["path"]).relative_to(corpus.root)) for m in g["members"]} for g in groups]
    for pair in (("dups/original.png", "dups/hardlink.png"), ("dups/copy_a.jpg", "dups/copy_b.jpg"),
                 ("links/target.png", "links/inside.png")):  # fmt: skip
        assert any(set(pair) <= s for s in member_sets), (pair, member_sets)


def test_evaluate_uses_the_folders_as_labels(pixels_index: Indexed, tmp_path: Path) -> None:
    run = lookalike("evaluate", pixels_index.out, "--json", tmp_path / "eval.json")
    assert_clean(run)
    assert "mAP" in run.stdout
    assert json.loads((tmp_path / "eval.json").read_text())


# ------------------------------------------------------------------------------------------- train
def test_train_on_the_corpus(corpus: Corpus, tmp_path: Path) -> None:
    model = tmp_path / "model"
    run = lookalike("train", corpus.root, "-o", model, "-e", "autoencoder", "--epochs", "1", "--image-size", "16",
                    "--batch-size", "32", "--val-fraction", "0.1")  # fmt: skip
    assert_clean(run)
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    expected = [c for c in made(corpus.cases) if c.expect == "skipped" and not c.lenient]
    missing = [c.name for c in expected if not [ln for ln in lines_naming(run.output, c.rel) if "skip" in ln.lower()]]
    assert not missing, f"not reported as skipped by train: {missing}\n{run.describe()}"
    lenient = sum(bool([ln for ln in lines_naming(run.output, c.rel) if "skip" in ln.lower()])
                  for c in made(corpus.cases) if c.lenient)  # fmt: skip
    match = re.search(r"skipped (\d+)", run.stdout)
    assert match and int(match.group(1)) == len(expected) + lenient, f"no 'skipped N' count\n{run.describe()}"
    for c in made(corpus.cases):
        if c.expect == "ignored":
            assert c.rel not in run.output, c


# ------------------------------------------------------------------------------------------ server
def test_every_corpus_file_as_an_upload(corpus: Corpus, pixels_index: Indexed, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    assert_clean(pixels_index.run)
    bad = []
    app = create_app(pixels_index.out, cache_dir=tmp_path / "thumbs")
    with TestClient(app, raise_server_exceptions=False) as client:
        for c in made(corpus.cases):
            statuses = c.uploads()
            if not statuses:
                continue
            data = (corpus.root / c.rel).read_bytes()
            r = client.post("/api/search", files={"image": ("upload.bin", data, "application/octet-stream")},
                            data={"k": "2"})  # fmt: skip
            if r.status_code not in statuses:
                bad.append(f"{c.name}: {r.status_code} (expected {'/'.join(map(str, statuses))}) {r.text[:160]}")
            elif r.status_code != 200:
                body = r.json()
                if set(body) != {"error"} or "\n" in body["error"]:
                    bad.append(f"{c.name}: not a one-line JSON error: {r.text[:160]}")
            elif c.twin is not None:
                hits = [h["path"] for h in r.json()["hits"]]
                if c.twin not in hits and c.rel not in hits:
                    bad.append(f"{c.name}: upload found {hits}, not {c.rel} or {c.twin}")
    assert not bad, problems_report("answered wrongly", bad)


# ----------------------------------------------------------------------------- a file that changes
def test_a_file_rewritten_while_indexing(tmp_path: Path) -> None:
    """A thread rewrites a file (non-atomically) in a loop while the folder is indexed: every run finishes,
    and the file is either skipped or indexed with the hash of a version it had and that version's pixels."""
    root = (tmp_path / "photos").resolve()
    root.mkdir()
    for i in range(40):
        (root / f"p{i:02d}.png").write_bytes(encode(picture(f"changing:{i}", (64, 64)), "PNG"))
    rng = np.random.default_rng(0)
    versions = [encode(Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)), "PNG") for _ in range(2)]
    versions += [encode(Image.new("RGB", (256, 256), c), "PNG") for c in ((255, 0, 0), (0, 0, 255))]
    hashes = {hashlib.sha256(v).hexdigest(): v for v in versions}
    target = root / "changing.png"
    target.write_bytes(versions[0])
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            data = versions[n % len(versions)]
            with open(target, "wb") as fh:
                fh.write(data[: len(data) // 3])
                fh.flush()
                time.sleep(0.0005)
                fh.write(data[len(data) // 3 :])
            n += 1

    thread = threading.Thread(target=rewrite, daemon=True)
    thread.start()
    try:
        out = tmp_path / "index"
        for attempt in range(3):
            run = lookalike("index", root, "-o", out, "-e", "pixels", *(["--rebuild"] if attempt else []))
            assert_clean(run)
            entries, skipped = catalog_state(out)
            assert len(entries) + len(skipped) == 41, run.describe()
            if "changing.png" in entries:
                digest = entries["changing.png"].sha256
                assert digest in hashes, "indexed with the hash of no version the file ever had"
                from lookalike.search import Index

                idx = Index.load(out)
                stored = idx.vectors.reconstruct(np.array([idx.id_of("changing.png")]))[0]
                im = (
                    Image.open(io.BytesIO(hashes[digest]))
                    .convert("RGB")
                    .resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)
                )
                expected = (np.asarray(im, np.float32).transpose(2, 0, 1).ravel() / 255 - 0.5) / 0.5
                assert float(np.abs(stored - expected).mean()) * 127.5 < 4, "the vector is not of the hashed version"
            else:
                assert "changing.png" in skipped, run.describe()
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------ the default trained model
def test_index_with_the_default_model_trained_first(corpus: Corpus, index_state, tmp_path: Path) -> None:
    out = tmp_path / "trained-index"
    run = lookalike("index", corpus.root, "-o", out, "--epochs", "1", timeout=600)
    assert_clean(run)
    entries, skipped = catalog_state(out)
    assert set(entries) == set(index_state[0])
    assert set(skipped) == set(index_state[1])


# --------------------------------------------------------------------------------- the heavy cases
@pytest.mark.slow
def test_the_heavy_cases(tmp_path: Path) -> None:
    """``build_corpus(heavy=True)``: an image of exactly 64,000,000 pixels is indexed, an 8-bit 20000x20000
    PNG is refused, and the run stays within the memory cap and the timeout."""
    root = (tmp_path / "corpus").resolve()
    cases = {c.name: c for c in build_corpus(root, heavy=True)}
    out = tmp_path / "index"
    run = lookalike("index", root, "-o", out, "-e", "pixels")
    assert_clean(run)
    entries, skipped = catalog_state(out)
    assert cases["png_64mp_exactly"].rel in entries, skipped.get(cases["png_64mp_exactly"].rel)
    rel = cases["png_bomb_20000_8bit"].rel
    assert rel in skipped and cases["png_bomb_20000_8bit"].reason_matches(skipped[rel]), skipped.get(rel)
