"""Crash safety: `lookalike index` is SIGKILLed at random moments; the index must always load, its catalog and
vectors must agree, every vector must be the embedding of the content its row names, and a re-run must
finish the job with the same result as a clean build.

The default run kills 10 times (about a minute); ``-m slow`` kills 60 times (about 5 minutes). Each prints its
figures (run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Index, Model
from lookalike.catalog import Catalog
from lookalike.embed import embed_files
from lookalike.store import shard_path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 8
SHARD = 16  # --shard-size of the killed runs


def _kill_at_random(
    proc: subprocess.Popen, out: Path, pick: random.Random, t_start: float, shards_to_write: int
) -> bool:
    """SIGKILL ``proc`` at a random moment of its work; False when it finished first.

    One kill in six comes at a random time around start-up (before and while the index folder is created and
    the catalog's first transaction runs); the others a random 0-30 ms after the n-th new shard file appears,
    n drawn from the shards the run still has to write (plus a few for compaction and the end of the run).
    """
    if pick.random() < 1 / 6:
        try:
            proc.wait(timeout=pick.uniform(0.6, 1.15) * t_start)
            return False
        except subprocess.TimeoutExpired:
            pass
    else:
        before = {p.name for p in out.glob("vectors-*.npy")} if out.exists() else set()
        target = pick.randint(1, shards_to_write + 3)
        while proc.poll() is None:
            now = {p.name for p in out.glob("vectors-*.npy")} if out.exists() else set()
            if len(now - before) >= target:
                time.sleep(pick.uniform(0.0, 0.03))
                break
            time.sleep(0.002)
        else:
            return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _write_images(root: Path, names: range, rng: np.random.Generator) -> None:
    for i in names:
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:04d}.png")


def _command(folder: Path, out: Path, workers: int = 0) -> list[str]:
    return [sys.executable, "-m", "lookalike.cli", "index", str(folder), "-o", str(out), "-e", "pixels",
            "--image-size", str(IMAGE_SIZE), "--workers", str(workers), "--batch-size", "4",
            "--shard-size", "16"]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("COLUMNS", None)
    return env


class Embeddings:
    """The pixels model's embedding of every content the folder ever held, by sha256."""

    def __init__(self) -> None:
        self.model = Model.pretrained("pixels", image_size=IMAGE_SIZE)
        self.by_sha: dict[str, np.ndarray] = {}

    def learn(self, folder: Path) -> None:
        paths = sorted(folder.rglob("*.png"))
        result = embed_files(self.model, paths, num_workers=0)
        assert not result.failures
        self.by_sha.update(zip(result.digests, result.vectors))


def check(out: Path, embeddings: Embeddings, known_paths: set[str]) -> tuple[str, set[str]]:
    """Everything a reader relies on, after a kill; returns a name for the state found and the indexed paths."""
    if not out.exists():
        return "absent", set()
    index = Index.load(out)  # must always work
    catalog = Catalog.open(out / "catalog.sqlite")
    state = catalog.snapshot()
    catalog.close()
    shards, rows = state.shards, list(state.entries.rows())
    ids = [e.id for e in rows]
    assert len(index) == len(rows) == len(index.vectors.ids) == index.manifest["count"]
    assert sorted(index.vectors.ids.tolist()) == ids == sorted(index.entries)  # every row has a vector, and back
    for shard, n in shards.items():  # every committed shard is a complete file
        assert np.load(shard_path(out, shard), mmap_mode="r").shape == (n, index.vectors.dim)
    for e, shard, row in zip(rows, state.shard.tolist(), state.row.tolist()):
        assert shard in shards and 0 <= row < shards[shard]
        assert e.path in known_paths
        want = embeddings.by_sha[e.sha256]  # the content the row names, embedded afresh
        np.testing.assert_allclose(index.vectors.reconstruct([e.id])[0], want, rtol=1e-6, atol=1e-6)
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or (p.name.startswith("vectors-") and
                 int(p.name[8:13]) not in shards)]  # fmt: skip
    return ("leftovers" if leftovers else ""), {e.path for e in rows}


def _relative_paths(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}


def _mutate(folder: Path, rng: np.random.Generator, cycle: int) -> None:
    """Delete a third of the files, move some, change some, add as many as were deleted: removals, moves,
    changes and compaction."""
    files = sorted(folder.rglob("*.png"))
    third = len(files) // 3
    order = rng.permutation(len(files))
    for i in order[:third]:
        files[i].unlink()
    for n, i in enumerate(order[third : third + 15]):
        files[i].rename(files[i].with_name(f"moved{cycle}_{n}.png"))
    for i in order[third + 15 : third + 25]:
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(files[i])
    _write_images(folder, range(10_000 * cycle, 10_000 * cycle + third), rng)


def run_kills(tmp_path: Path, kills: int, seed: int, workers: int = 0) -> dict[str, object]:
    """``workers``: decoding worker processes of the killed runs (alive at the kill: the next run must find
    the index unlocked, and no worker may outlive its parent)."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    folder, out = tmp_path / "photos", tmp_path / "index"
    _write_images(folder, range(480), rng)
    embeddings = Embeddings()
    embeddings.learn(folder)
    known = _relative_paths(folder)

    # How long a run takes to start writing, and to finish, from scratch.
    scratch = tmp_path / "scratch"
    t0 = time.perf_counter()
    proc = subprocess.Popen(_command(folder, scratch, workers), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    while proc.poll() is None and not (scratch / "manifest.json").exists():
        time.sleep(0.002)
    t_start = time.perf_counter() - t0
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    t_work = max(time.perf_counter() - t0 - t_start, 0.05)
    shutil.rmtree(scratch)

    states: dict[str, int] = {}
    done, completed_runs, cycle = 0, 0, 0
    todo = 1.0  # share of the folder's files still to embed: kills are aimed at the shards still to come
    while done < kills:
        proc = subprocess.Popen(_command(folder, out, workers), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        shards_to_write = math.ceil(todo * len(_relative_paths(folder)) / SHARD)
        if not _kill_at_random(proc, out, pick, t_start, shards_to_write):
            assert proc.returncode == 0, proc.stderr.read().decode()
            completed_runs += 1
            check(out, embeddings, known)
            # The job is done: give the next runs new work, alternately a changed folder and a fresh index.
            cycle += 1
            if cycle % 2:
                _mutate(folder, rng, cycle)
                embeddings.learn(folder)
                known |= _relative_paths(folder)
                todo = 0.4
            else:
                shutil.rmtree(out)
                todo = 1.0
            continue
        done += 1
        leftovers, indexed = check(out, embeddings, known)
        present = _relative_paths(folder)
        todo = len(present - indexed) / len(present)
        if leftovers == "absent":
            state = "no index yet"
        else:  # what the run had done: rows of files gone, and tenths of the files to add
            stale = "stale rows" if indexed - present else "no stale rows"
            state = f"{'fresh' if cycle % 2 == 0 else 'update'}, {stale}, {int((1 - todo) * 10) * 10}% of files in"
            state += ", uncommitted shard left" if leftovers else ""
        states[state] = states.get(state, 0) + 1

    final = subprocess.run(_command(folder, out, workers), env=_env(), capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()
    check(out, embeddings, known)
    clean_dir = tmp_path / "clean"
    clean = Index.build(folder, embeddings.model, clean_dir, num_workers=0)
    resumed = Index.load(out)
    got = {e.path: (e.sha256, resumed.vectors.reconstruct([i])[0]) for i, e in resumed.entries.items()}
    want = {e.path: (e.sha256, clean.vectors.reconstruct([i])[0]) for i, e in clean.entries.items()}
    assert got.keys() == want.keys()
    for path, (sha, vec) in want.items():
        assert got[path][0] == sha
        np.testing.assert_allclose(got[path][1], vec, rtol=1e-6, atol=1e-6)
    return {"kills": done, "completed runs": completed_runs, "cycles": cycle, "states": states,
            "start s": round(t_start, 2), "work s": round(t_work, 2), "final images": len(resumed)}  # fmt: skip


def _report(figures: dict[str, object]) -> None:
    states = figures["states"]
    print(
        f"\ncrash safety: {figures['kills']} SIGKILLs, {figures['completed runs']} runs completed between them "
        f"({figures['cycles']} folder changes or fresh starts), {len(states)} distinct states after a kill, "
        f"all consistent; start {figures['start s']} s, work {figures['work s']} s; final {figures['final images']}"
        f" images equal a clean build\n  states: {dict(sorted(states.items()))}"
    )


def test_sigkill_at_random_moments_quick(tmp_path: Path) -> None:
    figures = run_kills(tmp_path, kills=10, seed=1)
    _report(figures)
    assert figures["kills"] == 10


def test_sigkill_with_decoding_workers_alive(tmp_path: Path) -> None:
    """Killed while its decoding workers run: before, an orphaned worker kept the index's lock and the next
    run was refused ("another lookalike process is writing this index")."""
    figures = run_kills(tmp_path, kills=6, seed=3, workers=2)
    _report(figures)
    assert figures["kills"] == 6


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_at_random_moments_60_times(tmp_path: Path) -> None:
    figures = run_kills(tmp_path, kills=60, seed=2)
    _report(figures)
    assert figures["kills"] == 60 and len(figures["states"]) >= 5
