"""``compare``: which extractor retrieves best on a labelled folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import LookalikeError
from ._shell import (
    LABEL_DEPTH_HELP,
    ConsoleCallbacks,
    _progress,
    _show_path,
    app,
    console,
    handles_errors,
)


# -------------------------------------------------------------------------------------- compare
@app.command()
@handles_errors
def compare(
    folder: Annotated[Path, typer.Argument(help="Folder of labelled images (one sub-folder per label, or --labels).")],
    labels: Annotated[
        Path | None, typer.Option(help="CSV/TSV file of path,label rows, instead of the sub-folder names.")
    ] = None,
    label_depth: Annotated[int | None, typer.Option(help=LABEL_DEPTH_HELP)] = None,
    extractors: Annotated[
        str | None,
        typer.Option(
            "--extractors",
            "-e",
            help="Comma-separated rows to compare: autoencoder, pixels, efficientnet-lite0, efficientnet-lite2, "
            "vgg16-fc1 or a registered name; NAME@SIZE picks the input size, NAME+adapted adds a head fitted on "
            "the database images (NAME+adapted without @SIZE: at the size `index` would choose). Default: "
            "autoencoder, pixels, and every installed pretrained extractor with its adapted variant.",
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Autoencoder to use; default: train one on FOLDER first.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs when training the autoencoder here.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size of pretrained extractors without @SIZE.")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Folder for report.html, compare.json, the plot and trained models (default: ./compare-FOLDERNAME).",
        ),  # fmt: skip
    ] = None,
    query_fraction: Annotated[float, typer.Option(help="Share of each label's images used as queries.")] = 0.2,
    max_queries: Annotated[int, typer.Option(help="At most this many queries in all.")] = 1000,
    map_at: Annotated[int, typer.Option("--map-at", "-k", help="The k of mAP@k, the headline metric.")] = 100,
    knn: Annotated[int, typer.Option("--knn", help="Neighbours in the k-NN majority vote.")] = 20,
    seed: Annotated[int, typer.Option(help="Seeds the query split, training and the bootstrap.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes decoding images.")] = 1,
) -> None:
    """Find out which extractor retrieves best on your own labelled images.

    Every extractor embeds the same images; a stratified share of them are queries searched against the
    rest (relevant = same label). Prints mAP@k, precision@1/10, k-NN accuracy, embedding time per image
    and vector size per extractor, and a recommendation with its margin and whether it is significant (a
    paired bootstrap over the queries). Writes an offline HTML report with the plots and, for the queries
    the extractors disagree on most, each one's top results side by side. Labels are used only to score:
    the autoencoder and the adapted heads never see them (heads are fitted on the database images only).
    The winner is remembered, so `lookalike index FOLDER --extractor auto` uses it.
    """
    from ..comparison import SCORE, remember, write_report
    from ..comparison import compare as run_compare

    names = [n.strip() for n in extractors.split(",") if n.strip()] if extractors else None
    if names is not None and not names:
        raise LookalikeError("--extractors is empty")
    out = output if output is not None else Path(f"compare-{Path(folder).expanduser().resolve().name}")
    if out.exists() and not out.is_dir():
        raise LookalikeError(f"{out}: is not a folder; --output takes one")
    t0 = time.perf_counter()
    with _progress() as progress:
        result = run_compare(
            folder, labels=labels, label_depth=label_depth, extractors=names, model=model, epochs=epochs,
            image_size=image_size, out_dir=out, query_fraction=query_fraction, max_queries=max_queries,
            map_at=map_at, knn_k=knn, seed=seed, num_workers=workers, callbacks=[ConsoleCallbacks(progress)],
        )  # fmt: skip
    k1 = result.rows[0].result
    table = Table(
        title=f"{result.n_queries:,} queries against {result.n_database:,} images (relevant = same label), "
        f"ranked by {SCORE.format(k=k1.map_k)}",
        title_justify="left",
        highlight=False,
    )
    columns = ("extractor", "px", "score", f"mAP@{k1.map_k}", "P@1", "P@10", f"{k1.knn_k}-NN", "ms/img", "dims")
    for col in columns:
        if col == "extractor":
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="right", no_wrap=True)
    for row in sorted(result.rows, key=lambda r: -r.score):
        r = row.result
        style = "bold green" if row.name == result.recommended else None
        table.add_row(
            escape(row.name), str(row.image_size), f"{row.score:.3f}", f"{r.map_at_k:.3f}",
            f"{r.precision_at_k[1]:.3f}", f"{r.precision_at_k[10]:.3f}", f"{r.knn_accuracy:.3f}",
            f"{row.encode_ms:.2f}", f"{row.dims:,}", style=style,
        )  # fmt: skip
    console.print(table)
    console.print("ms/img: the encoder alone, fastest of 3 warm passes over the same 64 images", highlight=False)
    console.print(f"[bold]recommendation:[/] {escape(result.recommendation)}", highlight=False)
    try:
        report = write_report(result, out)
        remember(result)
    except OSError as exc:
        raise LookalikeError(f"{exc.filename or out}: cannot write ({exc.strerror or exc})") from None
    console.print(f"report written to {_show_path(report)} ({time.perf_counter() - t0:.0f} s)", highlight=False)
