"""``search`` and ``evaluate``, and the helpers that open an index or a plain folder."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import LookalikeError
from ._shell import (
    LABEL_DEPTH_HELP,
    ConsoleCallbacks,
    _choose_spec,
    _progress,
    _resolve_index_dir,
    _show_path,
    app,
    console,
    err_console,
    handles_errors,
)

# --------------------------------------------------------------------------------------- search
MODEL_CHECK_HELP = "Model directory: checked against the index's own, or used to embed a plain folder."
FOLDER_EXTRACTOR_HELP = (
    "Search a plain folder of images (not an index) with this extractor, embedded in memory: "
    "efficientnet-lite0, efficientnet-lite2, vgg16-fc1 or a registered name. With an index, checks that it "
    "was built with this extractor."
)


def _open_index(
    path: Path,
    *,
    model: Path | None,
    extractor: str | None,
    image_size: int | None,
    weights: Path | None,
    workers: int = 1,
) -> Any:
    """An index directory loaded, or a plain folder embedded in memory with --extractor / --model."""
    from ..search import Index, is_index_dir

    resolved = _resolve_index_dir(path)
    if is_index_dir(resolved):
        idx = Index.load(resolved, model=model)
        built_with = idx.model.extractor
        if extractor not in (None, "auto") and built_with.split("+")[0] != extractor:
            raise LookalikeError(
                f"{path}: index was built with {built_with}, not {extractor} "
                f"(rebuild it with lookalike index --extractor {extractor})"
            )
        if image_size is not None or weights is not None:
            raise LookalikeError(f"{path}: an index's model fixes the input size and weights")
        return idx
    if extractor is None and model is None:
        return Index.load(resolved)  # the error says it is not an index
    from ..models.spec import resolve_model

    with _progress() as progress:
        callbacks = [ConsoleCallbacks(progress)]
        spec = _choose_spec(path, model=model, extractor=extractor, progress=progress)
        chosen = resolve_model(spec, path, image_size=image_size, weights=weights, num_workers=workers,
                               callbacks=callbacks)  # fmt: skip
        return Index.build(path, chosen, None, num_workers=workers, callbacks=callbacks)


def _parse_query(text: str) -> str | int:
    if not Path(text).exists() and text.isdigit():
        return int(text)
    if not Path(text).exists():
        raise LookalikeError(f"{text}: no such file, and not an indexed id")
    return text


def _hits_table(title: str, hits: list, metric: str) -> Table:
    table = Table(title=title, title_justify="left", highlight=False)
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("similarity" if metric == "cosine" else "distance", justify="right", no_wrap=True)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("path", overflow="fold", ratio=3)  # a narrow terminal wraps a path, never cuts it
    has_labels = any(h.label for h in hits)
    if has_labels:
        table.add_column("label", overflow="fold", ratio=1)
    for h in hits:
        row = [str(h.rank), f"{h.score:.4f}", str(h.id), _show_path(h.path)]
        table.add_row(*row, *([h.label or ""] if has_labels else []))
    return table


def _plot_results(
    idx: Any,
    queries: list,
    results: list[list],
    path: Path,
    metric: str,
    *,
    labels: dict[int, str] | None = None,
    query_labels: list | None = None,
    title: str | None = None,
) -> Path:
    """A grid of each query (an id or an image file) and its hits, framed green/red when the labels agree.

    ``labels`` (id -> label) overrides the catalog's labels of the hits; ``query_labels`` gives the
    queries' labels (by default an indexed query's catalog label, none for a file).
    """
    from ..data import thumbnail
    from ..plots import result_grid

    size = 96
    if labels is None:
        labels = idx.entries.labels()
    if query_labels is None:
        query_labels = [labels.get(q) if isinstance(q, int) else None for q in queries]
    rows = []
    for q, qlabel, hits in zip(queries, query_labels, results):
        if isinstance(q, int):
            qimg, qcap = idx.thumbnail(q, size), f"query #{q}\n{qlabel or ''}".strip()
        else:
            qimg = thumbnail(q, idx.model.preprocessing.channels, size)
            qcap = f"query\n{qlabel}" if qlabel is not None else f"query\n{Path(q).name}"
        cells = [
            (
                idx.thumbnail(h.id, size),
                f"#{h.rank}  {h.score:.3f}\n{labels.get(h.id) or h.path.name}",
                None if qlabel is None or labels.get(h.id) is None else labels[h.id] == qlabel,
            )
            for h in hits
        ]
        rows.append((qimg, qcap, cells))
    if title is None:
        what = "cosine similarity" if metric == "cosine" else "euclidean distance"
        title = f"query (left, blue) and its {len(results[0])} nearest images, {what}"
        if any(lab is not None for lab in query_labels):
            title += "; green/red: same/other folder than the query"
    return result_grid(rows, path, title=title)


@app.command()
@handles_errors
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    queries: Annotated[list[str], typer.Argument(help="Image files, or ids of indexed images.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query.")] = 10,
    metric: Annotated[
        str, typer.Option(help="cosine (similarity, higher is closer) or euclidean (distance, lower is closer).")
    ] = "cosine",
    exclude_self: Annotated[bool, typer.Option("--exclude-self", help="Leave out the query's own entry.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of each query and its results.")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_CHECK_HELP)] = None,
    extractor: Annotated[str | None, typer.Option("--extractor", "-e", help=FOLDER_EXTRACTOR_HELP)] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size of a pretrained --extractor.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for a pretrained --extractor.")] = None,
) -> None:
    """Find the indexed images most like each QUERY.

    A query is prepared exactly as the model's training images were (the preprocessing is read from the
    model). Scores are cosine similarities of L2-normalised embeddings, or euclidean distances of the raw
    embeddings with --metric euclidean. INDEX_DIR may also be a plain folder of images with --extractor
    (or --model): it is then embedded in memory first, nothing is written.
    """
    if metric not in ("cosine", "euclidean"):
        raise LookalikeError(f"--metric must be cosine or euclidean, got {metric!r}")
    if k < 1:
        raise LookalikeError(f"-k must be at least 1, got {k}")
    idx = _open_index(index_dir, model=model, extractor=extractor, image_size=image_size, weights=weights)
    parsed = [_parse_query(q) for q in queries]
    results = idx.search_batch(parsed, k, metric=metric, exclude_self=exclude_self)
    if as_json:
        payload = [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in zip(queries, results)]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        for q, hits in zip(queries, results):
            console.print(_hits_table(f"query: {q}", hits, metric))
    if plot is not None:
        written = _plot_results(idx, parsed, results, plot, metric)
        (err_console if as_json else console).print(f"picture written to {_show_path(written)}", highlight=False)


# ------------------------------------------------------------------------------------- evaluate
EXAMPLE_RESULTS = 8  # results per query in examples.png


def _metrics_table(result: Any) -> Table:
    table = Table(title="retrieval quality (relevant = same label)", title_justify="left", highlight=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"mAP@{result.map_k}", f"{result.map_at_k:.4f}")
    table.add_row("mAP (whole ranking)", f"{result.mean_average_precision:.4f}")
    for k, v in result.precision_at_k.items():
        table.add_row(f"precision@{k}", f"{v:.4f}")
    for k, v in result.recall_at_k.items():
        table.add_row(f"recall@{k}", f"{v:.4f}")
    table.add_row(f"{result.knn_k}-NN accuracy", f"{result.knn_accuracy:.4f}")
    table.add_row("chance precision (random ranking)", f"{result.chance_precision:.4f}")
    return table


def _example_queries(result: Any, n: int) -> list[int]:
    """Up to ``n`` evaluated query rows, evenly spread from the worst average precision to the best."""
    import numpy as np

    ap = result.query_average_precision
    rows = np.flatnonzero(~np.isnan(ap))
    rows = rows[np.argsort(ap[rows], kind="stable")]
    if len(rows) <= n:
        return rows.tolist()
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(int)].tolist()


def _write_evaluation_plots(idx: Any, result: Any, plot_dir: Path, labels: Path | None, examples: int) -> list[Path]:
    from ..plots import precision_at_k_curve

    name = f"{result.info['model']['preset']} {result.info['model']['fingerprint'][:8]}"
    written = [precision_at_k_curve({name: result}, plot_dir / "precision_at_k.png", title=f"{result.metric} ranking")]
    picks = _example_queries(result, examples)
    if picks:
        queries = [result.query_keys[i] for i in picks]
        leave_one_out = result.info["queries"] == "leave-one-out"
        found = idx.search_batch(
            queries if leave_one_out else [str(q) for q in queries],
            EXAMPLE_RESULTS,
            metric=result.metric,
            exclude_self=leave_one_out,
        )
        title = (
            f"queries (left, blue) from worst to best average precision and their {EXAMPLE_RESULTS} nearest "
            f"images; green/red: same/other label"
        )
        written.append(
            _plot_results(
                idx,
                queries,
                found,
                plot_dir / "examples.png",
                result.metric,
                labels=idx.labels(labels),
                query_labels=[result.query_labels[i] for i in picks],
                title=title,
            )
        )
    return written


@app.command()
@handles_errors
def evaluate(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    queries: Annotated[
        Path | None,
        typer.Option(
            "--queries",
            "-q",
            help="Folder of query images (a second split), searched against the whole index. "
            "Default: leave-one-out over the index (each labelled indexed image is a query, its own entry left out).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV/TSV file of path,label rows (header optional; paths absolute or relative to the indexed "
            "folder or to --queries). Default: each image's sub-folder is its label.",
        ),
    ] = None,
    label_depth: Annotated[int | None, typer.Option(help=LABEL_DEPTH_HELP)] = None,
    map_at: Annotated[int, typer.Option("--map-at", "-k", help="The k of mAP@k.")] = 1000,
    knn: Annotated[int, typer.Option("--knn", help="Neighbours in the k-NN majority vote.")] = 20,
    metric: Annotated[
        str, typer.Option(help="cosine (similarity, higher is closer) or euclidean (distance, lower is closer).")
    ] = "cosine",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write every metric to this JSON file.")] = None,
    plot_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write precision_at_k.png and examples.png (queries from worst to best, wrong results in red) "
            "into this folder. Default: no pictures; nothing is ever written into the index."
        ),
    ] = None,
    examples: Annotated[int, typer.Option(help="Queries shown in examples.png.")] = 6,
    batch_size: Annotated[int, typer.Option(help="Query images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(help="Processes decoding query images.")] = 1,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_CHECK_HELP)] = None,
    extractor: Annotated[str | None, typer.Option("--extractor", "-e", help=FOLDER_EXTRACTOR_HELP)] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size of a pretrained --extractor.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for a pretrained --extractor.")] = None,
) -> None:
    """Measure how well the index finds images with the query's label.

    Prints mAP@k (average precision over the first k results, normalised by the relevant results among
    them), mAP over the whole ranking, precision@k and recall@k for k = 1, 5, 10, 20, 100, 1000, the
    k-NN majority-vote accuracy and the chance precision of a random ranking. Queries whose label has no
    other image in the index are skipped and counted; unlabelled images are left out and counted.
    INDEX_DIR may also be a plain folder of images with --extractor (or --model): it is embedded in memory
    first, nothing is written. To compare several extractors on the same images, use `lookalike compare`.
    """
    from ..metrics import DEFAULT_KS, check_options

    t0 = time.perf_counter()
    check_options(DEFAULT_KS, map_at, knn, metric)
    if json_out is not None and json_out.is_dir():
        raise LookalikeError(f"{json_out}: is a folder; --json takes a file name")
    if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
        raise LookalikeError(f"{plot_dir}: is not a folder; --plot-dir takes one")
    idx = _open_index(
        index_dir, model=model, extractor=extractor, image_size=image_size, weights=weights, workers=workers
    )
    with _progress() as progress:
        result = idx.evaluate(
            queries, labels=labels, label_depth=label_depth, map_at=map_at, knn_k=knn, metric=metric,
            batch_size=batch_size,
            num_workers=workers, callbacks=[ConsoleCallbacks(progress)],
        )  # fmt: skip
    console.print(_metrics_table(result))
    source = (
        f"leave-one-out over {result.n_database:,} labelled indexed images"
        if queries is None
        else f"query images from {_show_path(queries)} against {result.n_database:,} labelled indexed images"
    )
    console.print(
        f"{result.n_evaluated:,} queries, {source}, {metric} ranking ({time.perf_counter() - t0:.1f} s)",
        highlight=False,
    )
    info = result.info
    notes = (
        (result.n_no_relevant, "skipped {}: no other indexed image has the same label", "query", "queries"),
        (info.get("n_database_unlabelled", 0), "left out {} without a label", "indexed image", "indexed images"),
        (info.get("n_queries_unlabelled", 0), "left out {} without a label", "query image", "query images"),
        (info.get("n_queries_unreadable", 0), "skipped {}", "unreadable query image", "unreadable query images"),
    )
    for n, text, one, many in notes:
        if n:
            console.print(text.format(f"{n:,} {one if n == 1 else many}"), highlight=False)
    try:
        if json_out is not None:
            from ..serialization import atomic_write_json

            atomic_write_json(json_out, result.to_dict())
            console.print(f"metrics written to {_show_path(json_out)}", highlight=False)
        if plot_dir is not None:
            for written in _write_evaluation_plots(idx, result, plot_dir, labels, examples):
                console.print(f"picture written to {_show_path(written)}", highlight=False)
    except OSError as exc:
        raise LookalikeError(f"{exc.filename or json_out or plot_dir}: cannot write ({exc.strerror or exc})") from None
