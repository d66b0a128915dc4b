"""What the routes share: the settings, the metrics, the search engine and the index being served.

The index and what is derived from it (the label count, the thumbnail cache) form one
:class:`Served` value, replaced in a single assignment when the index folder changes on disk (see
:meth:`ServerState.check_for_update`). A route takes the current value once, through the
:func:`get_served` dependency, and uses only that: a request that began before a reload finishes on the
index it began with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.routing import Match

from .._memory import map_large_allocations, release_free_memory
from ..errors import LookalikeError, utf8_name
from ..search import Hit, Index
from .admission import Limiter
from .engine import SearchEngine
from .responses import json_str, json_text
from .settings import ServerSettings
from .telemetry import Metrics
from .thumbs import ThumbnailCache

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

SCORE_MEANING = {"cosine": "cosine similarity (higher is closer)", "euclidean": "euclidean distance (lower is closer)"}

_frozen_lock = threading.Lock()
_frozen_servers = 0  # servers of this process that froze their start-up objects and still run


def _freeze_start_up() -> None:
    """Hide every object alive now from the garbage collector (``gc.freeze``) while a server runs.

    What a server loads at start-up (the model and the libraries: some 180,000 objects) lives as long as
    it does. Left in sight, every full collection walks all of it with the GIL held: under load one came
    about every two seconds and stopped every thread for 100-250 ms, which was the server's p99 latency.
    Frozen, a full collection takes well under a millisecond. An index reloaded later is not frozen: it
    holds some 70 objects (its rows are columns, :class:`lookalike.catalog.Entries`), and freezing again
    would also freeze whatever requests are in flight at that moment, whose reference cycles (tasks,
    upload buffers) the collector could then never free: the soak's RSS grew 8-10 MB at each reload.
    """
    global _frozen_servers
    with _frozen_lock:
        gc.collect()
        gc.freeze()
        _frozen_servers += 1


def _thaw() -> None:
    """Give the frozen objects back to the collector when the last running server stops."""
    global _frozen_servers
    with _frozen_lock:
        _frozen_servers -= 1
        if _frozen_servers == 0:
            gc.unfreeze()


def _folder_state(directory: Path | None) -> tuple[int, ...] | None:
    """The index folder's committed state on disk, as the library reports it (None: unknown; never reload)."""
    return Index.folder_state(directory) if directory is not None else None


WAIT_FOR_RUN_CHECKS = 30  # checks a reload waits for an indexing run to finish (then: a killed run, load it)


def _load_again(directory: Path, old: Index) -> Index:
    """The index folder loaded anew, with the model already in memory when it still fits."""
    try:
        return Index.load(directory, model=old.model)
    except LookalikeError:  # rebuilt with another model: load the folder's own
        return Index.load(directory)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, eq=False)
class Served:
    """One loaded index and what the routes derive from it; replaced as a whole on a reload."""

    index: Index
    label_count: int  # distinct sub-folders
    thumbs: ThumbnailCache
    loaded_at: float  # time.time() when it was loaded
    stamp: tuple[int, ...] | None  # the folder's state on disk before it was loaded (Index.folder_state)

    @property
    def loaded_at_iso(self) -> str:
        return _iso(self.loaded_at)


class ServerState:
    """Everything the routes share; filled by the lifespan (:meth:`open`)."""

    def __init__(self, index: Index | Path, settings: ServerSettings) -> None:
        self.settings = settings
        self.index_dir = index if isinstance(index, Path) else index.directory
        self._initial: Index | None = index if isinstance(index, Index) else None
        self.metrics = Metrics()
        self.engine: SearchEngine | None = None
        self.current: Served | None = None
        self.uploads: Limiter | None = None  # uploads admitted at once (the middleware)
        self.decodes: Limiter | None = None  # decodes running at once, with their memory (the upload route)
        self.app: FastAPI | None = None
        self.started = time.time()
        self.frozen = False  # objects loaded at start-up are hidden from the garbage collector (gc.freeze)
        self.reloads = 0  # reloads of a changed index folder
        self._thumbs_before = 0  # thumbnails made by the caches of indexes served before a reload
        self._seen: tuple[int, ...] | None = None  # the folder's state at the previous check
        self._failed: tuple[int, ...] | None = None  # a state whose reload failed (not tried again)
        self._busy_checks = 0  # checks in a row that found an indexing run under way
        self._watcher: asyncio.Task | None = None

    # ------------------------------------------------------------------------------ the current index
    @property
    def index(self) -> Index | None:
        return self.current.index if self.current is not None else None

    @property
    def thumbs(self) -> ThumbnailCache | None:
        return self.current.thumbs if self.current is not None else None

    @property
    def thumbs_generated(self) -> int:
        return self._thumbs_before + (self.current.thumbs.generated if self.current is not None else 0)

    def _serve(self, index: Index, stamp: tuple[int, ...] | None, cache_dir: Path | None) -> Served:
        """Derive what the routes need from a loaded index (in a worker thread: it walks every entry)."""
        return Served(
            index=index,
            label_count=len(index.entries.label_names()),
            thumbs=ThumbnailCache(index, self.settings.thumb_size, cache_dir),
            loaded_at=time.time(),
            stamp=stamp,
        )

    # ---------------------------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        self.uploads = Limiter(self.settings.max_uploads)
        self.decodes = Limiter(self.settings.max_decodes, self.settings.decode_memory_bytes)
        index = self._initial
        if index is None:
            assert self.index_dir is not None
            # the state first: a change while loading is seen at the next check
            stamp = await run_in_threadpool(_folder_state, self.index_dir)
            index = await run_in_threadpool(Index.load, self.index_dir)
        else:
            stamp = await run_in_threadpool(_folder_state, self.index_dir)
        self.current = await run_in_threadpool(self._serve, index, stamp, self.settings.cache_dir)
        self._seen = stamp
        self.engine = SearchEngine(index, max_batch=self.settings.max_batch, metrics=self.metrics)
        await self.engine.start(warm_up=self.settings.warm_up)
        # Freed pixels of large uploads go back to the system instead of staying in the heap at their peak
        # (16 uploads of 16 MiB: 1.4 GB held afterwards without it). Process-wide, like the gc freeze.
        map_large_allocations()
        _freeze_start_up()
        self.frozen = True
        if self.settings.reload_interval > 0 and self.index_dir is not None and stamp is not None:
            self._watcher = asyncio.create_task(self._watch(), name="lookalike-index-watcher")
        logger.info("serving %d images; thumbnails cached in %s", len(index), self.current.thumbs.directory)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.frozen:
            _thaw()
            self.frozen = False
        if self.engine is not None:
            await self.engine.stop()

    # ------------------------------------------------------------------------------------- reload
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                await self.check_for_update()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad check
                logger.exception("checking %s for changes failed", self.index_dir)

    async def check_for_update(self) -> bool:
        """Reload the index when its folder changed on disk and has stayed unchanged since the previous
        check (a writer that is still committing is given one more interval); True when it reloaded."""
        served = self.current
        if served is None or self.index_dir is None:
            return False
        stamp = await run_in_threadpool(_folder_state, self.index_dir)
        previous, self._seen = self._seen, stamp
        if stamp is None or stamp == served.stamp or stamp == self._failed or stamp != previous:
            return False
        if not await run_in_threadpool(Index.run_finished, self.index_dir) and self._busy_checks < WAIT_FOR_RUN_CHECKS:
            self._busy_checks += 1  # `lookalike index` is between two commits: wait for its end (or a kill)
            return False
        self._busy_checks = 0
        return await self.reload(stamp)

    async def reload(self, stamp: tuple[int, ...] | None = None) -> bool:
        """Load the index folder again in a worker thread, warm it up on the search thread, and serve it
        from the next request on (one assignment). On failure the old index stays, with a warning."""
        old = self.current
        assert old is not None and self.index_dir is not None and self.engine is not None
        try:
            if stamp is None:
                stamp = await run_in_threadpool(_folder_state, self.index_dir)
            index = await run_in_threadpool(_load_again, self.index_dir, old.index)
            served = await run_in_threadpool(self._serve, index, stamp, old.thumbs.directory)
            if self.settings.warm_up:
                await self.engine.warm_up(index)
        except Exception as exc:  # noqa: BLE001 - keep serving what was loaded
            self._failed = stamp
            logger.warning("%s changed, but loading it again failed (%s); still serving the index loaded at %s",
                           self.index_dir, exc, old.loaded_at_iso)  # fmt: skip
            return False
        self._thumbs_before += old.thumbs.generated
        self.current = served  # the swap: requests that already hold `old` finish on it
        self.engine.index = index
        self.reloads += 1
        del old
        await run_in_threadpool(release_free_memory)  # the old index's memory, back to the system
        logger.info("%s changed: now serving %d images", self.index_dir, len(index))
        return True

    # ------------------------------------------------------------------------------------ helpers
    def route_of(self, scope: dict[str, Any]) -> str:
        """The route template a request matches (bounded label set for /metrics)."""
        partial = None
        if self.app is not None:
            for route in self.app.router.routes:
                match, _ = route.matches(scope)
                if match == Match.FULL:
                    return getattr(route, "path", "other")
                if match == Match.PARTIAL and partial is None:
                    partial = getattr(route, "path", "other")
        return partial or "unmatched"

    def _or_current(self, served: Served | None) -> Served:
        served = self.current if served is None else served
        assert served is not None
        return served

    def entry_urls(self, id_: int, served: Served | None = None) -> tuple[str, str]:
        served = self._or_current(served)
        return f"/thumbs/{id_}?v={served.thumbs.version(id_)}", f"/api/images/{id_}"

    def hit_out(self, hit: Hit, served: Served | None = None) -> dict[str, Any]:
        served = self._or_current(served)
        thumb, image = self.entry_urls(hit.id, served)
        e = served.index.entries[hit.id]
        return {"rank": hit.rank, "id": hit.id, "path": utf8_name(e.path), "label": _label(e.label), "score": hit.score,
                "thumbnail": thumb, "image": image}  # fmt: skip

    def hit_json(self, hit: Hit, served: Served | None = None) -> str:
        """``json_text(self.hit_out(hit))`` written directly: a search's hits are most of the server's JSON."""
        served = self._or_current(served)
        score = hit.score
        if not math.isfinite(score):  # not JSON: let the encoder refuse it as before
            return json_text(self.hit_out(hit, served))
        e = served.index.entries[hit.id]
        label = "null" if e.label is None else json_str(utf8_name(e.label))
        thumb = json_str(f"/thumbs/{hit.id}?v={served.thumbs.version(hit.id)}")
        return (
            f'{{"rank":{int(hit.rank)},"id":{int(hit.id)},"path":{json_str(utf8_name(e.path))},"label":{label},'
            f'"score":{float.__repr__(float(score))},"thumbnail":{thumb},"image":"/api/images/{int(hit.id)}"}}'
        )

    def search_response(
        self,
        query: dict[str, Any],
        k: int,
        metric: str,
        notice: str | None,
        took_ms: float,
        hits: list[Hit],
        served: Served | None = None,
    ) -> Response:
        """The JSON of a search (shaped as :class:`~lookalike.server.schemas.SearchOut`, built directly: no
        validation pass), byte for byte what ``JSONResponse`` writes for the same content."""
        served = self._or_current(served)
        head = json_text(
            {
                "query": query,
                "k": k,
                "metric": metric,
                "score": SCORE_MEANING[metric],
                "notice": notice,
                "took_ms": round(took_ms, 2),
                "hits": [],
            }
        )
        assert head.endswith('"hits":[]}')
        body = head[:-3] + "[" + ",".join([self.hit_json(h, served) for h in hits]) + "]}"
        return Response(body.encode("utf-8"), media_type="application/json")

    def image_out(self, id_: int, served: Served | None = None) -> dict[str, Any]:
        served = self._or_current(served)
        e = served.index.entries[id_]
        thumb, image = self.entry_urls(id_, served)
        return {"id": id_, "path": utf8_name(e.path), "label": _label(e.label), "thumbnail": thumb, "image": image}

    def clamp_k(self, k: int | None, served: Served | None = None) -> tuple[int, str | None]:
        n = len(self._or_current(served).index)
        s = self.settings
        if k is None:
            return min(s.default_k, s.max_k, n), None
        limit = min(s.max_k, n)
        if k < 1:
            return 1, f"k must be at least 1; showing 1 result (asked for {k})"
        if k > limit:
            why = f"the most this server returns is {s.max_k}" if s.max_k <= n else f"the index holds {n} images"
            return limit, f"k clamped to {limit} ({why}; asked for {k})"
        return k, None


# ---------------------------------------------------------------------------------- dependencies
def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the app's :class:`ServerState`."""
    return request.app.state.lookalike


def get_served(request: Request) -> Served:
    """FastAPI dependency: the index being served when the request began (kept for the whole request)."""
    served = request.app.state.lookalike.current
    assert served is not None, "the lifespan has not run"
    return served


def _label(label: str | None) -> str | None:
    return None if label is None else utf8_name(label)
