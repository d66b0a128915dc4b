"""``duplicates``: groups of near-duplicate images of an index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import LookalikeError
from ._shell import (
    _progress,
    _resolve_index_dir,
    _show_path,
    app,
    console,
    handles_errors,
)


# ----------------------------------------------------------------------------------- duplicates
@app.command()
@handles_errors
def duplicates(
    index_dir: Annotated[Path, typer.Argument(help="Index directory (or a folder indexed without -o).")],
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help="Cosine similarity in (-1, 1] at or above which two images are duplicates (1: identical "
            "embeddings). Default: the value calibrated for the index's extractor: the default "
            "efficientnet-lite0+adapted 0.915, autoencoder 0.985, efficientnet-lite0 0.755, pixels 0.945 (what "
            "they mean: see above); other extractors need one.",
        ),
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write group,id,path,similarity rows (every group) to this file.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every group as JSON to this file.")] = None,
    limit: Annotated[int, typer.Option(help="Groups shown, largest first (files get all of them).")] = 20,
    linkage: Annotated[
        str,
        typer.Option(
            help="single: connected components (A~B and B~C group A with C, which can chain); star: every "
            "member at least --threshold alike to its group's first image."
        ),
    ] = "single",
    method: Annotated[
        str, typer.Option(help="exact range search, hnsw (approximate neighbours), or auto (exact below 100,000).")
    ] = "auto",
) -> None:
    """Group near-duplicate images of an index: resized, re-compressed, cropped, flipped or edited copies.

    Every pair of indexed images at least --threshold alike (cosine similarity of their embeddings) is
    found by a range search (memory: the vectors plus one batch of results, never an N×N matrix), and
    pairs are joined into groups. The default threshold depends on the index's extractor and was
    calibrated on CIFAR-10 copies (benchmarks/duplicates_calibration.py, 1,000 originals among 5,000
    other images): at the default, the default extractor (efficientnet-lite0+adapted) finds 71.7 % of
    resized, JPEG re-compressed and flipped copies with 79.7 % pair precision (its head embeds look-alikes
    close on purpose: pass a higher threshold for exact copies only), the autoencoder 92.9 % with 93.9 %,
    frozen efficientnet-lite0 90.2 % with 84.3 %, pixels 66.8 % with 93.6 % (raw pixels miss flipped
    copies). Each group lists its images, the first being the one with
    the most duplicates, with each one's similarity to the first, and the smallest and largest similarity
    between two members: a smallest value well below the threshold means single linkage chained
    look-alikes together.
    """
    from types import SimpleNamespace

    from ..duplicates import LINKAGES, METHODS, calibration_for, check_threshold, find_duplicates, write_csv, write_json
    from ..search import Index

    if threshold is not None:
        threshold = check_threshold(threshold)
    if limit < 0:
        raise LookalikeError(f"--limit must be 0 or more, got {limit}")
    if linkage not in LINKAGES:
        raise LookalikeError(f"--linkage must be {' or '.join(LINKAGES)}, got {linkage!r}")
    if method not in METHODS:
        raise LookalikeError(f"--method must be {', '.join(METHODS)}, got {method!r}")
    for path in (csv_path, json_path):
        if path is not None and path.is_dir():
            raise LookalikeError(f"{path}: is a folder; give a file name")
    idx = Index.load(_resolve_index_dir(index_dir))
    extractor = idx.model.extractor
    if threshold is None:
        cal = calibration_for(extractor)
        threshold = cal.threshold
        source = (
            f"calibrated default for {extractor}: on CIFAR-10 it found {cal.recall:.0%} of resized, re-compressed "
            f"and flipped copies with {cal.precision:.0%} pair precision"
        )
    else:
        source = "given"
    with _progress() as progress:
        task = progress.add_task("finding pairs", total=len(idx), info="")
        cb = SimpleNamespace(on_duplicates=lambda done, total: progress.update(task, completed=done, total=total))
        groups = find_duplicates(idx, threshold, linkage=linkage, method=method, callbacks=[cb])
    shown_members = 10
    if groups and limit:
        table = Table(
            title=f"near-duplicate groups (cosine similarity ≥ {threshold:.3f})", title_justify="left", highlight=False
        )
        for col in ("group", "size", "min-max", "id", "to first"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("path", overflow="fold")
        for n, g in enumerate(groups[:limit], start=1):
            if n > 1:
                table.add_section()
            for m, (i, p, s) in enumerate(zip(g.ids[:shown_members], g.paths, g.similarities)):
                head = [str(n), str(len(g)), f"{g.min_similarity:.3f}-{g.max_similarity:.3f}"] if m == 0 else [""] * 3
                table.add_row(*head, str(i), f"{s:.4f}", escape(_show_path(p)))
            if len(g) > shown_members:
                table.add_row("", "", "", "", "", f"… and {len(g) - shown_members} more")
        console.print(table)
        if len(groups) > limit:
            console.print(f"{len(groups) - limit:,} more groups not shown (--limit)", highlight=False)
    in_groups = sum(len(g) for g in groups)
    console.print(
        f"{len(groups):,} groups holding {in_groups:,} of {len(idx):,} images at threshold {threshold:.3f} "
        f"({escape(source)}; {linkage} linkage)",
        highlight=False,
    )
    chained = sum(g.min_similarity < threshold - 0.05 for g in groups)
    if chained and linkage == "single":
        console.print(
            f"[yellow]{chained:,} groups[/] hold two images less alike than the threshold (single linkage "
            "chained them); --linkage star or a higher --threshold splits them",
            highlight=False,
        )
    info = {
        "index": str(idx.directory), "extractor": extractor, "threshold": threshold, "threshold_source": source,
        "linkage": linkage, "method": method, "images": len(idx),
    }  # fmt: skip
    if csv_path is not None:
        console.print(f"groups written to {_show_path(write_csv(groups, csv_path))}", highlight=False)
    if json_path is not None:
        console.print(f"groups written to {_show_path(write_json(groups, json_path, **info))}", highlight=False)
