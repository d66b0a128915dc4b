"""The shell every command shares: the typer app, the consoles, progress bars and the error handler."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import LookalikeError, display_path

app = typer.Typer(
    name="lookalike",
    help="Learn what a folder of images looks like, index it, and find lookalikes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(help="Built-in datasets: list them, export them as class folders of images.")
app.add_typer(datasets_app, name="datasets")

# A long line is left to the terminal to wrap (soft_wrap), so paths stay whole when copied. Piped into a file
# or another program, output is not squeezed into rich's default 80 columns (COLUMNS still decides if set).
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
console = Console(soft_wrap=True, width=_PIPED_WIDTH)
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_INDEX_SUBDIR = ".lookalike"  # where `lookalike index FOLDER` puts the index without -o
DEFAULT_SPEC = "efficientnet-lite0+adapted"  # lookalike.models.spec.DEFAULT, without importing torch (tested equal)
MODEL_SUBDIR = ".lookalike-model"  # where `lookalike train FOLDER` puts the model without -o
PRESET_NAMES = ("default", "denoising", "cifar-seed", "mnist-seed", "dense-latent", "folder-seed")


def _fail(message: str) -> typer.Exit:
    # escape: messages carry file names and hints such as lookalike[serve], never rich markup
    err_console.print(f"[bold red]error:[/] {escape(display_path(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def handles_errors(fn: F) -> F:
    """Turn LookalikeError (and Ctrl-C) into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LookalikeError as exc:
            raise _fail(str(exc)) from None
        except OSError as exc:  # a file system refusal the library did not word itself: still one line
            where = exc.filename if exc.filename is not None else "lookalike"
            raise _fail(f"{display_path(where)}: {exc.strerror or exc}") from None
        except KeyboardInterrupt:
            raise _fail("interrupted; anything already saved is unchanged") from None

    return wrapper  # type: ignore[return-value]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens in detail.")] = False,
) -> None:
    _configure_logging(verbose)


# ------------------------------------------------------------------------------------- progress
@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    """Progress bars on stderr that stay on success and vanish on an error (leaving one error line)."""
    progress = _make_progress()
    with progress:
        try:
            yield progress
        except BaseException:
            progress.live.transient = True
            raise


def _make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


class ConsoleCallbacks:
    """Progress bars and skip reports for training, decoding and embedding."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.skipped: set[Path] = set()  # reported once, though training and indexing both read the files

    def _task(self, name: str, total: int | None, description: str) -> Any:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(description, total=total, info="")
        return self.tasks[name]

    def on_skip(self, path: Path, reason: str) -> None:
        if path in self.skipped:
            return
        self.skipped.add(path)
        line = escape(display_path(f"{path}: {reason}"))  # names may hold newlines, bytes or [markup]
        self.progress.console.print(f"[yellow]skipped[/] {line}", highlight=False, soft_wrap=True)

    def on_decode(self, done: int, total: int) -> None:
        self.progress.update(self._task("decode", total, "decoding"), completed=done)

    def on_embed(self, done: int, total: int) -> None:
        task = self._task("embed", total, "embedding")
        elapsed = next((t.elapsed for t in self.progress.tasks if t.id == task), None) or 0.0
        rate = f"{done / elapsed:,.0f} img/s" if elapsed > 0 else ""
        self.progress.update(task, completed=done, info=rate)

    def on_evaluate(self, done: int, total: int) -> None:
        self.progress.update(self._task("evaluate", total, "ranking queries"), completed=done)

    def on_train_start(self, model: Any, start_epoch: int, epochs: int, steps: int) -> None:
        self.steps = steps
        self.progress.console.print(f"training {model.describe()}", highlight=False)
        task = self._task("train", epochs * steps, "training")
        self.progress.update(task, completed=start_epoch * steps)

    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None:
        task = self.tasks["train"]
        info = f"epoch {epoch} loss {loss:.4f} {images_per_s:,.0f} img/s"
        self.progress.update(task, completed=(epoch - 1) * self.steps + step, info=info)

    def on_compare_row(self, name: str, i: int, n: int) -> None:
        for task in self.tasks.values():  # each extractor gets fresh bars
            self.progress.remove_task(task)
        self.tasks.clear()
        self.progress.console.print(f"[bold]{i + 1}/{n}[/] {escape(name)}", highlight=False)

    def on_note(self, text: str) -> None:
        self.progress.console.print(escape(text), highlight=False)

    def on_adapt(self, epoch: int, epochs: int, loss: float) -> None:
        task = self._task("adapt", epochs, "fitting head")
        self.progress.update(task, completed=epoch, info=f"loss {loss:.4f}")

    def on_epoch_end(self, stats: Any) -> None:
        val = f", validation {stats.val_loss:.4f}" if stats.val_loss is not None else ""
        self.progress.console.print(
            f"epoch {stats.epoch}: train loss {stats.train_loss:.4f}{val} "
            f"({stats.seconds:.1f} s, {stats.images_per_s:,.0f} img/s)",
            highlight=False,
        )


def _show_path(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


LABEL_DEPTH_HELP = (
    "Which part of a nested sub-folder is the label: for photos/DOMAIN/CLASS/x.jpg, 1 gives DOMAIN, -1 CLASS, "
    "2 DOMAIN/CLASS. Default: the whole sub-folder path."
)


def _choose_spec(folder: Path, *, model: Path | None, extractor: str | None, progress: Progress) -> Any:
    """The extractor spec `index` (and a folder given to `search`/`evaluate`) embeds with; None when neither
    option is given (an existing index's own model, else the default trained first)."""
    from ..models.spec import parse_spec

    if model is not None:
        if extractor is not None:
            raise LookalikeError(f"--model is a trained model; it cannot be combined with --extractor {extractor}")
        return parse_spec(model)
    if extractor == "auto":
        from ..comparison import recommended_extractor

        extractor, why = recommended_extractor(folder)
        progress.console.print(f"--extractor auto: using {escape(extractor)} ({escape(why)})", highlight=False)
    return None if extractor is None else parse_spec(extractor)


def _resolve_index_dir(path: Path) -> Path:
    from ..search import is_index_dir

    if not is_index_dir(path) and is_index_dir(path / DEFAULT_INDEX_SUBDIR):
        return path / DEFAULT_INDEX_SUBDIR
    return path
