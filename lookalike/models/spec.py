"""What users call a feature extractor, parsed once, and the one resolver that turns it into a :class:`Model`.

The CLI's ``--extractor``, ``compare``'s rows, ``--extractor auto``'s pick, ``Index.build(folder, "...")``
and Python users all name extractors the same way:

- ``autoencoder``: the default convolutional autoencoder, trained on the folder's images first;
- ``NAME[@SIZE][+adapted]``: a pretrained extractor (``efficientnet-lite0``, ``efficientnet-lite2``,
  ``vgg16-fc1``, ``pixels``, or one registered with :func:`lookalike.register_extractor`) at input side
  ``SIZE`` (its default without it); ``+adapted`` fits a head on the folder's unlabelled images
  (:mod:`lookalike.adaptation`);
- the path of a saved model directory (it wins over a name when such a directory exists).

:func:`parse_spec` checks the text (unknown names fail before any work); :func:`resolve_model` makes the
model, training or fitting on ``folder`` when the spec learns from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._callbacks import emit
from ..errors import LookalikeError, display_path

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

AUTOENCODER = "autoencoder"
ADAPTED = "+adapted"
DEFAULT = AUTOENCODER  # what `lookalike index FOLDER` and `Index.build(folder)` use when no extractor is named


@dataclass(frozen=True)
class ExtractorSpec:
    """A parsed extractor spec (see the module's docstring)."""

    text: str  # as the user wrote it
    name: str | None  # AUTOENCODER or a pretrained extractor's name; None for a model directory
    image_size: int | None = None  # @SIZE
    adapted: bool = False  # +adapted
    directory: Path | None = None  # a saved model

    @property
    def is_autoencoder(self) -> bool:
        return self.name == AUTOENCODER

    @property
    def is_pretrained(self) -> bool:
        """A pretrained extractor (frozen, or with ``+adapted``)."""
        return self.directory is None and self.name != AUTOENCODER

    @property
    def learns(self) -> bool:
        """Whether resolving it learns from a folder's images (the autoencoder's training, a fitted head)."""
        return self.is_autoencoder or self.adapted

    def names(self, built: dict[str, Any]) -> bool:
        """Whether an index's manifest ``model`` record was made by this spec (its extractor, and its input
        size when the spec gives one): an existing index then keeps its own model instead of a new one
        being trained or fitted. A model directory is compared by loading it, so it never matches here."""
        if self.directory is not None:
            return False
        if self.is_autoencoder:
            return built.get("extractor") == AUTOENCODER
        size = (built.get("preprocessing") or {}).get("image_size")
        return built.get("extractor") == f"{self.name}{ADAPTED if self.adapted else ''}" and (
            self.image_size is None or self.image_size == size
        )


def parse_spec(spec: str | os.PathLike[str] | ExtractorSpec | None) -> ExtractorSpec:
    """Parse an extractor spec (None: :data:`DEFAULT`); a name must be known (built in, registered or an
    installed plug-in).

    Raises:
        LookalikeError: an unknown name that is not a model directory either, a malformed ``@SIZE``, or
            ``@SIZE`` / ``+adapted`` on the autoencoder.
    """
    if isinstance(spec, ExtractorSpec):
        return spec
    if spec is None:
        spec = DEFAULT
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if not isinstance(spec, str) or path.is_dir():
        if not path.is_dir():
            raise LookalikeError(f"{display_path(path)}: no such model directory")
        return ExtractorSpec(text, None, directory=path)
    adapted = text.endswith(ADAPTED)
    base = text[: -len(ADAPTED)] if adapted else text
    name, at, size = base.partition("@")
    if at and not (size.isdigit() and int(size) > 0):
        raise LookalikeError(f"{text}: the input size after @ must be a whole number of pixels")
    if name == AUTOENCODER:
        if at or adapted:
            raise LookalikeError(f"{text}: @SIZE and {ADAPTED} are for pretrained extractors (the autoencoder "
                                 "is trained on the folder at its preset's size)")  # fmt: skip
        return ExtractorSpec(text, AUTOENCODER)
    from .pretrained import BACKBONES, get_backbone

    try:
        get_backbone(name)
    except LookalikeError:
        known = ", ".join([AUTOENCODER, *sorted(BACKBONES)])
        raise LookalikeError(
            f"unknown extractor {text!r}: not one of {known} (each may take @SIZE and {ADAPTED}), and no "
            "model directory of that name"
        ) from None
    return ExtractorSpec(text, name, int(size) if at else None, adapted)


def resolve_model(
    spec: str | os.PathLike[str] | ExtractorSpec | None,
    folder: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    epochs: int | None = None,
    num_workers: int = 1,
    seed: int | None = None,
    callbacks: Sequence[Any] = (),
) -> Model:
    """The model a spec names, trained or fitted on ``folder`` when it learns from one.

    Args:
        spec: an extractor spec (see the module's docstring), a parsed one, or None for :data:`DEFAULT`.
        folder: the images the autoencoder is trained on / a ``+adapted`` head is fitted on (a seeded
            sample of at most :data:`lookalike.adaptation.FIT_SAMPLE`).
        image_size: input side of a pretrained extractor given without ``@SIZE``.
        weights: a weights file for a pretrained extractor (else the installed or cached ones).
        epochs: epochs of the autoencoder's training (default: its preset's).
        num_workers: processes decoding images while training or fitting.
        seed: seeds the training (default: the preset's) or the head's fit (default 0).
        callbacks: progress objects (training, embedding, ``on_adapt``, and ``on_note(text)``: one line
            saying what is being trained or fitted, and on what).

    Raises:
        LookalikeError: options that do not apply to the spec (``epochs`` for a pretrained extractor,
            ``image_size`` / ``weights`` for a trained model, two different sizes), a spec that learns
            without a ``folder``, and everything training or loading raises.
    """
    from .model import Model

    s = parse_spec(spec)
    if not s.is_pretrained:
        if image_size is not None or weights is not None:
            raise LookalikeError(f"{s.text}: an input size and weights are for pretrained extractors "
                                 "(a trained model fixes them)")  # fmt: skip
        if s.directory is not None:
            if epochs is not None:
                raise LookalikeError(f"{s.text}: epochs are for training; this model is already trained")
            return Model.load(s.directory)
        if folder is None:
            raise LookalikeError(f"{s.text} is trained on a folder of images: give one")
        from ..training import train

        emit(callbacks, "on_note", f"training the {s.text} on {display_path(folder)} first")
        return train(folder, epochs=epochs, seed=seed, num_workers=num_workers, callbacks=callbacks)
    if epochs is not None:
        raise LookalikeError(f"{s.text} is pretrained: epochs are for training the autoencoder")
    if s.image_size is not None and image_size is not None and s.image_size != image_size:
        raise LookalikeError(f"{s.text} and an input size of {image_size} px disagree")
    assert s.name is not None
    base = Model.pretrained(s.name, image_size=s.image_size or image_size, weights=weights)
    if not s.adapted:
        return base
    if folder is None:
        raise LookalikeError(f"{s.text} fits a head on a folder's images: give one")
    from ..adaptation import adapt, sample_paths
    from ..data import find_images
    from ..embed import embed_files

    sample = sample_paths(find_images(folder))
    emit(callbacks, "on_note", f"fitting {s.name}'s adapted head on {len(sample):,} images of {display_path(folder)}")
    base.set_precision("auto")
    features = embed_files(base, sample, num_workers=num_workers, callbacks=callbacks).vectors
    return adapt(base, features, seed=0 if seed is None else seed, callbacks=callbacks)
