"""What users call a feature extractor, parsed once, and the one resolver that turns it into a :class:`Model`.

The CLI's ``--extractor``, ``compare``'s rows, ``--extractor auto``'s pick, ``Index.build(folder, "...")``
and Python users all name extractors the same way:

- ``NAME[@SIZE][+adapted]``: a pretrained extractor (``efficientnet-lite0``, ``efficientnet-lite2``,
  ``vgg16-fc1``, ``pixels``, or one registered with :func:`lookalike.register_extractor`) at input side
  ``SIZE``; ``+adapted`` learns a head on the folder's unlabelled images (:mod:`lookalike.adaptation`).
  Without ``@SIZE`` a frozen extractor runs at its own default (128 px for EfficientNet-Lite) and an
  adapted one at the size :func:`input_size_for` chooses from the folder's images (160 px, 128 for tiny ones);
- ``autoencoder``: the from-scratch convolutional autoencoder, trained on the folder's images first;
- the path of a saved model directory (it wins over a name when such a directory exists).

:data:`DEFAULT` (what ``lookalike train/index FOLDER`` and ``Index.build(folder)`` use) is
``efficientnet-lite0+adapted``: ImageNet features with a head learned on the folder. When its weights
cannot be loaded the autoencoder is trained instead, and one ``on_note`` line says so; on a folder too
small to learn from (fewer than :data:`lookalike.adaptation.MIN_IMAGES` images) the frozen backbone is used.

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
from ..errors import ImageDecodeError, LookalikeError, display_path

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

AUTOENCODER = "autoencoder"
ADAPTED = "+adapted"
DEFAULT = "efficientnet-lite0" + ADAPTED  # what `lookalike train/index FOLDER` use when no extractor is named
PHOTO_SIZE = 160  # input side of a learned head on a folder whose images are at least TINY px (upscaled if smaller)
TINY = 32  # below this median short side (MNIST's 28 px, 8 px digits) images are upscaled to SMALL_SIZE only
SMALL_SIZE = 128


@dataclass(frozen=True)
class ExtractorSpec:
    """A parsed extractor spec (see the module's docstring)."""

    text: str  # as the user wrote it
    name: str | None  # AUTOENCODER or a pretrained extractor's name; None for a model directory
    image_size: int | None = None  # @SIZE
    adapted: bool = False  # +adapted
    directory: Path | None = None  # a saved model
    default: bool = False  # parsed from None: DEFAULT, which falls back to the autoencoder without weights

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
        from dataclasses import replace

        return replace(parse_spec(DEFAULT), default=True)
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
    batch_size: int | None = None,
    num_workers: int = 1,
    seed: int | None = None,
    device: str | None = None,
    callbacks: Sequence[Any] = (),
) -> Model:
    """The model a spec names, trained or fitted on ``folder`` when it learns from one.

    Args:
        spec: an extractor spec (see the module's docstring), a parsed one, or None for :data:`DEFAULT`.
        folder: the images the autoencoder is trained on / a ``+adapted`` head is fitted on (a seeded
            sample of at most :data:`lookalike.adaptation.FIT_SAMPLE`).
        image_size: input side of a pretrained extractor given without ``@SIZE`` (default: its own when
            frozen, :func:`input_size_for` the folder when adapted).
        weights: a weights file for a pretrained extractor (else the installed or cached ones).
        epochs: epochs of the autoencoder's training or of the head's fit (default: the preset's / the
            method's).
        batch_size: images per optimiser step of that training or fit (default: the preset's / the method's).
        num_workers: processes decoding images while training or fitting.
        seed: seeds the training (default: the preset's) or the head's fit (default 0).
        device: where the network runs (``auto``, ``cpu``, ``cuda[:N]``; default: the preset's for the
            autoencoder, the CPU for a pretrained extractor).
        callbacks: progress objects (training, embedding, ``on_adapt``, and ``on_note(text)``: one line
            saying what is being trained or fitted, and on what).

    Raises:
        LookalikeError: options that do not apply to the spec (``epochs`` for a frozen extractor,
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
            if epochs is not None or batch_size is not None:
                raise LookalikeError(f"{s.text}: epochs and batch sizes are for training; this model is already "
                                     "trained")  # fmt: skip
            return Model.load(s.directory)
        if folder is None:
            raise LookalikeError(f"{s.text} is trained on a folder of images: give one")
        from ..training import train

        emit(callbacks, "on_note", f"training the {s.text} on {display_path(folder)} first")
        return train(folder, epochs=epochs, batch_size=batch_size, seed=seed, device=device, num_workers=num_workers,
                     callbacks=callbacks)  # fmt: skip
    if s.image_size is not None and image_size is not None and s.image_size != image_size:
        raise LookalikeError(f"{s.text} and an input size of {image_size} px disagree")
    assert s.name is not None
    if not s.adapted:
        if epochs is not None or batch_size is not None:
            raise LookalikeError(f"{s.text} is frozen: epochs and batch sizes are for training (the autoencoder, "
                                 "a +adapted head)")  # fmt: skip
        frozen = Model.pretrained(s.name, image_size=s.image_size or image_size, weights=weights)
        return frozen if device is None else frozen.to(device)
    if folder is None:
        raise LookalikeError(f"{s.text} learns a head on a folder's images: give one")
    from ..adaptation import MIN_IMAGES, VIEWS, adapt, sample_paths
    from ..data import find_images

    images = find_images(folder)
    size = s.image_size or image_size or input_size_for(images)
    try:
        base = Model.pretrained(s.name, image_size=size, weights=weights)
    except LookalikeError as exc:
        if not s.default:
            raise
        emit(callbacks, "on_note", f"{exc}: training the from-scratch {AUTOENCODER} instead")
        return resolve_model(AUTOENCODER, folder, epochs=epochs, batch_size=batch_size, num_workers=num_workers,
                             seed=seed, device=device, callbacks=callbacks)  # fmt: skip
    if device is not None:
        base.to(device)
    sample = sample_paths(images)
    if len(sample) < MIN_IMAGES:
        emit(callbacks, "on_note", f"{display_path(folder)} has {len(sample)} images, too few to learn from "
                                   f"(a head needs {MIN_IMAGES}): using the frozen {s.name}@{size}")  # fmt: skip
        return base
    emit(callbacks, "on_note", f"learning {s.name}@{size}'s head on {len(sample):,} images of {display_path(folder)} "
                               f"(the images and {VIEWS} augmented views of each)")  # fmt: skip
    base.set_precision("auto")
    adapted = adapt(base, paths=sample, epochs=epochs, batch_size=batch_size, seed=0 if seed is None else seed,
                    num_workers=num_workers, callbacks=callbacks)  # fmt: skip
    return adapted.to(base.device)  # the head was fitted on the CPU


def input_size_for(paths: Sequence[str | os.PathLike[str]], sample: int = 100) -> int:
    """The input side a pretrained extractor learns a folder at: :data:`PHOTO_SIZE` (160 px) when the median
    short side of (a seeded sample of at most ``sample`` of) its images is at least :data:`TINY`, else
    :data:`SMALL_SIZE` (128 px).

    Measured with Lite0 on ten real folders and CIFAR-10 (BENCHMARKS.md): 160 px gave a higher mAP@100
    than 128 on every one, photos (+0.02-0.05 frozen) and small images upscaled alike (CIFAR-10's 32 px:
    mAP@1000 0.565 vs 0.537; 100 px hand signs, 40-60 px street characters and signs: +0.006 to +0.02;
    precision@1 was lower on one, flowers), for about 2x the encoder's time; 224 px gains more on photos
    but costs about 3x, which a laptop CPU pays on every image indexed. Images under 32 px are blown up
    4-20x at either size; they keep 128."""
    from PIL import Image

    from ..adaptation import sample_paths
    from ..decoding import open_regular

    sides = []
    for path in sample_paths(list(paths), sample):
        try:  # the header only, no pixels decoded; never a FIFO or device (a file may change after the scan)
            with open_regular(path) as fh, Image.open(fh) as im:
                sides.append(min(im.size))
        except (ImageDecodeError, OSError, ValueError, Image.DecompressionBombError):
            continue  # unreadable files are reported when the folder is embedded
    if sides and sorted(sides)[len(sides) // 2] >= TINY:
        return PHOTO_SIZE
    return SMALL_SIZE
