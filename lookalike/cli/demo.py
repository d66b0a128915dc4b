"""``datasets list/export`` and ``demo``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import LookalikeError
from ._shell import (
    ConsoleCallbacks,
    _progress,
    _show_path,
    app,
    console,
    datasets_app,
    handles_errors,
)
from .query import (
    _hits_table,
    _plot_results,
)


# ------------------------------------------------------------------------------------- datasets
@datasets_app.command("list")
def datasets_list() -> None:
    """List the built-in datasets."""
    from ..datasets import DATASETS

    table = Table(highlight=False)
    for col in ("name", "images", "description"):
        table.add_column(col)
    for name, info in DATASETS.items():
        table.add_row(
            name, f"{info.split_sizes['train']:,} train / {info.split_sizes['test']:,} test", info.description
        )
    console.print(table)


@datasets_app.command("export")
@handles_errors
def datasets_export(
    name: Annotated[str, typer.Argument(help="cifar10, mnist or digits.")],
    directory: Annotated[Path, typer.Argument(help="New folder to write class folders of PNG images into.")],
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    limit: Annotated[int | None, typer.Option(help="At most this many images per class.")] = None,
    no_download: Annotated[bool, typer.Option("--no-download", help="Use the cache only.")] = False,
) -> None:
    """Write a built-in dataset as DIRECTORY/<class>/<split>_NNNNN.png."""
    from ..datasets import export_dataset

    with _progress() as progress:
        task = progress.add_task("exporting", total=None, info="")
        n = export_dataset(
            name, directory, split=split, limit=limit, download=not no_download,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    console.print(f"wrote {n:,} images to {_show_path(directory)}", highlight=False)


# ----------------------------------------------------------------------------------------- demo
DEMO_MARKER = ".lookalike-demo"


@app.command()
@handles_errors
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the demo's images, model and index.")
    ] = Path("lookalike-demo"),
    epochs: Annotated[int | None, typer.Option(help="Epochs of the model learned (default: its own).")] = None,
    per_class: Annotated[int, typer.Option(help="Images per class taken from the dataset.")] = 300,
    queries: Annotated[int, typer.Option(help="How many example queries to run.")] = 4,
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 5,
    no_download: Annotated[bool, typer.Option("--no-download", help="Do not try to download CIFAR-10/MNIST.")] = False,
) -> None:
    """Learn the default model on a built-in dataset, index it, and show a few searches.

    The default model is what `lookalike index FOLDER` learns: ImageNet features (efficientnet-lite0)
    with a head learned on the images. Uses CIFAR-10 (then MNIST) from the cache or a download when
    possible, otherwise scikit-learn's bundled digits, and says which. Writes OUTPUT/results.png with each
    query and its lookalikes.
    """
    import numpy as np

    from ..datasets import export_dataset, load_demo_dataset
    from ..models.spec import resolve_model
    from ..search import Index

    t0 = time.perf_counter()
    if output.exists() and any(output.iterdir()) and not (output / DEMO_MARKER).exists():
        raise LookalikeError(f"{output}: exists and was not made by `lookalike demo`; pick another --output")
    data, line = load_demo_dataset(download=not no_download)
    console.print(line, highlight=False)
    for sub in ("images", "model", "index"):
        shutil.rmtree(output / sub, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / DEMO_MARKER).write_text("made by `lookalike demo`; safe to delete\n")
    images_dir = output / "images"
    n = export_dataset(data.name, images_dir, split=data.split, limit=per_class, download=False)
    console.print(f"wrote {n:,} {data.name} images to {_show_path(images_dir)} (one folder per class)", highlight=False)
    with _progress() as progress:
        callbacks = [ConsoleCallbacks(progress)]
        model = resolve_model(None, images_dir, epochs=epochs, num_workers=1, callbacks=callbacks)
        model.save(output / "model")
        idx = Index.build(images_dir, model, output / "index", num_workers=1, callbacks=callbacks)
    # One query per class (the first image of each of the first `queries` classes), self excluded.
    first_of_label: dict[str, int] = {}
    for e in idx.entries.rows():
        first_of_label.setdefault(e.label or "", e.id)
    picks = list(first_of_label.values())[:queries]
    results = idx.search_batch(picks, k, exclude_self=True)
    same = []
    for q, hits in zip(picks, results):
        label = idx.entries[q].label
        same.extend(h.label == label for h in hits)
        console.print(_hits_table(f"query #{q}: {_show_path(idx.path_of(q))}", hits, "cosine"))
    picture = _plot_results(idx, picks, results, output / "results.png", "cosine")
    console.print(
        f"{np.mean(same):.0%} of the results share their query's class. "
        f"Picture: [bold]{_show_path(picture)}[/]. Done in {time.perf_counter() - t0:.0f} s.",
        highlight=False,
    )
    console.print(
        f"Try: lookalike search {_show_path(output / 'index')} {_show_path(idx.path_of(picks[0]))} -k 10",
        highlight=False,
    )
