"""Train an autoencoder on a folder of images (or a built-in dataset).

The trainer is model-agnostic: it decodes the images once into uint8 pixels, holds out a validation
split, and runs the objective of the model's recipe: reconstruction (denoising noise and flips when the
recipe asks), or, for the default model, an invariance loss between two random views of every image
(``augment.py``, ``objectives.py``) plus reconstruction of a few whole images per batch. After every
epoch it writes the model directory, a resumable checkpoint, ``loss.png`` and a reconstruction grid.
Progress goes to callbacks; the library itself never prints.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ._callbacks import emit
from ._fs import check_dir_creatable, make_dirs
from .augment import Augmentation, random_view
from .config import Preprocessing, TrainConfig
from .data import arrays_to_pixels, image_loader, normalize, normalize_unit, scan_readable
from .errors import LookalikeError
from .models import Model, resolve_device
from .models.model import cpu_supports_bf16
from .objectives import OBJECTIVES, invariance_loss
from .plots import loss_curve, reconstruction_grid
from .serialization import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

LOSS_PLOT = "loss.png"
RECON_DIR = "reconstructions"


@dataclass
class EpochStats:
    """What one epoch achieved."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float | None
    seconds: float
    images_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TrainCallback(Protocol):
    """Receives progress; the CLI draws a progress bar with it. All methods are optional."""

    def on_decode(self, done: int, total: int) -> None: ...
    def on_skip(self, path: Path, reason: str) -> None: ...
    def on_train_start(self, model: Model, start_epoch: int, epochs: int, steps_per_epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int, loss: float, images_per_s: float) -> None: ...
    def on_epoch_end(self, stats: EpochStats) -> None: ...


@dataclass
class TrainingData:
    """Decoded training images: uint8 pixels ``(n, C, S, S)`` and where each came from."""

    pixels: np.ndarray
    names: list[str]  # file paths, or "<dataset>[i]"
    skipped: list[tuple[Path, str]]  # files that could not be read, with the reason


def auto_image_size(paths: Sequence[Path], sample: int = 64) -> int:
    """32 px for small images (median shorter side <= 40 px, e.g. CIFAR), else 64 px."""
    step = max(1, len(paths) // sample)
    sides = []
    for p in list(paths)[::step][:sample]:
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
        except Exception:  # unreadable files are reported later, when decoded
            continue
    return 32 if not sides or statistics.median(sides) <= 40 else 64


def decode_folder(
    paths: Sequence[Path], prep: Preprocessing, *, num_workers: int = 0, callbacks: Sequence[Any] = ()
) -> TrainingData:
    """Decode image files into prepared pixels, reporting (not raising on) unreadable ones."""
    pixels = np.empty((len(paths), prep.channels, prep.image_size, prep.image_size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[tuple[Path, str]] = []
    done = 0
    for batch in image_loader(paths, prep, batch_size=256, num_workers=num_workers):
        if batch.indices:
            pixels[batch.indices] = batch.pixels.numpy()
            ok[batch.indices] = True
        for i, reason in batch.failures:
            skipped.append((paths[i], reason))
            emit(callbacks, "on_skip", paths[i], reason)
        done += len(batch.indices) + len(batch.failures)
        emit(callbacks, "on_decode", done, len(paths))
    keep = np.flatnonzero(ok)
    return TrainingData(pixels[keep], [str(paths[i]) for i in keep], skipped)


def use_amp(amp: str, device: torch.device) -> bool:
    """Whether to train under bfloat16 autocast: ``bf16`` and ``auto`` ask for it where it runs natively
    (CUDA, or a CPU with bfloat16 instructions); ``off`` never."""
    if amp == "off":
        return False
    if amp not in ("bf16", "auto"):
        raise LookalikeError(f"unknown amp setting {amp!r} (use off, bf16 or auto)")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(model: Model, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.network.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise LookalikeError(f"unknown optimizer {cfg.optimizer!r} (use adam or adamw)")


def _loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(recon, target)
    if kind == "bce":
        return F.binary_cross_entropy(recon.clamp(1e-6, 1 - 1e-6), target.clamp(0, 1))
    raise LookalikeError(f"unknown loss {kind!r} (use mse or bce)")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (train, validation) split; validation gets at least one image when asked for and n >= 2."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction <= 0 or n < 2 else max(1, min(n - 1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class Trainer:
    """Runs the training loop for a :class:`Model` on prepared pixels, writing outputs to ``out_dir``."""

    def __init__(self, model: Model, out_dir: str | os.PathLike[str] | None, callbacks: Sequence[Any] = ()):
        if model.is_pretrained:
            raise LookalikeError(
                f"{model.extractor} is a pretrained extractor: there is no autoencoder to train "
                "(adapt it to your images with lookalike.adapt instead)"
            )
        self.model = model
        self.cfg = model.train_config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        self.history: list[dict[str, Any]] = list(model.info.get("history", []))
        self.device = resolve_device(self.cfg.device)
        self.augmentation = Augmentation.from_dict(self.cfg.augmentation or {})

    def fit(self, data: TrainingData, *, resume_state: dict[str, Any] | None = None) -> Model:
        cfg, model = self.cfg, self.model
        if cfg.loss == "bce" and model.network.output_activation != "sigmoid":
            raise LookalikeError("bce loss needs a model with a sigmoid output (use mse)")
        if cfg.objective not in OBJECTIVES:
            raise LookalikeError(f"unknown objective {cfg.objective!r} (use one of {', '.join(OBJECTIVES)})")
        if cfg.objective != "none" and not hasattr(model.network, "project"):
            raise LookalikeError(f"the {model.architecture} network has no projector for the {cfg.objective} objective")
        if len(data.pixels) == 0:
            raise LookalikeError("no readable images to train on")
        train_idx, val_idx = split_indices(len(data.pixels), cfg.val_fraction, cfg.seed)
        pixels = torch.from_numpy(data.pixels)
        batch = min(cfg.batch_size, len(train_idx))
        steps = math.ceil(len(train_idx) / batch)
        model.to(self.device)
        net = model.network
        if self.device.type == "cpu":
            net.to(memory_format=torch.channels_last)
        optimizer = _make_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps))
        start_epoch = 0
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            start_epoch = int(resume_state["epoch"])
            # The model may have been saved after an epoch whose checkpoint was not (a kill in between):
            # its history then runs past the checkpoint, and that epoch is trained again.
            self.history = [h for h in self.history if int(h.get("epoch", 0)) <= start_epoch]
        shown = val_idx if len(val_idx) else train_idx  # evenly spread, so sorted folders show every class
        preview = data.pixels[shown[np.linspace(0, len(shown) - 1, min(10, len(shown))).round().astype(int)]]
        emit(self.callbacks, "on_train_start", model, start_epoch, cfg.epochs, steps)
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(start_epoch, cfg.epochs):
            gen.manual_seed(cfg.seed * 1000 + epoch)
            stats = self._epoch(epoch, pixels, train_idx, val_idx, batch, optimizer, scheduler, gen)
            self.history.append(stats.to_dict())
            model.info.update(
                epochs_done=epoch + 1,
                history=self.history,
                images=len(data.pixels),
                train_images=len(train_idx),
                val_images=len(val_idx),
                skipped=len(data.skipped),
            )
            model.mark_changed()
            if self.out_dir is not None:
                self._write_outputs(epoch + 1, optimizer, scheduler, preview)
            emit(self.callbacks, "on_epoch_end", stats)
        net.to(memory_format=torch.contiguous_format)
        net.eval()
        return model

    def _epoch(self, epoch, pixels, train_idx, val_idx, batch, optimizer, scheduler, gen) -> EpochStats:
        cfg, net = self.cfg, self.model.network
        cl = self.device.type == "cpu"
        net.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        for step, start in enumerate(range(0, len(order), batch)):
            idx = order[start : start + batch]
            if len(idx) < 2 and seen:  # a lone final image would break BatchNorm; it is seen next epoch
                continue
            if cfg.objective == "none":
                loss = self._reconstruction_step(pixels[idx], gen, cl)
            else:
                loss = self._invariance_step(pixels[idx], gen, cl)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise LookalikeError(f"training diverged at epoch {epoch + 1} (loss {value}); lower --lr")
            total += value * len(idx)
            seen += len(idx)
            emit(self.callbacks, "on_step", epoch + 1, step + 1, value, seen / (time.perf_counter() - t0))
        seconds = time.perf_counter() - t0
        val_loss = self.evaluate(pixels[torch.from_numpy(val_idx)]) if len(val_idx) else None
        return EpochStats(epoch + 1, total / max(seen, 1), val_loss, seconds, seen / max(seconds, 1e-9))

    def _autocast(self):
        """bfloat16 autocast when the config asks for it and the device computes it natively."""
        enabled = use_amp(self.cfg.amp, self.device)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _reconstruction_step(self, pixels: torch.Tensor, gen: torch.Generator, cl: bool) -> torch.Tensor:
        """(Denoising) reconstruction loss of one batch of uint8 pixels."""
        cfg, net = self.cfg, self.model.network
        x = normalize(pixels.to(self.device), self.model.preprocessing)
        if cfg.hflip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
        inp = x + cfg.noise_std * torch.randn(x.shape, generator=gen).to(x) if cfg.noise_std > 0 else x
        if cl:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            recon, _ = net(inp)
        return _loss(recon.float(), x, cfg.loss)

    def _invariance_step(self, pixels: torch.Tensor, gen: torch.Generator, cl: bool) -> torch.Tensor:
        """Invariance loss between the projections of two random views of each image, plus the
        (denoising) reconstruction loss of the first ``recon_batch`` images of the batch, whole and clean."""
        cfg, net, prep = self.cfg, self.model.network, self.model.preprocessing
        x = pixels.to(self.device).float().div_(255.0)
        n = len(x)
        views = torch.cat([random_view(x, self.augmentation, gen), random_view(x, self.augmentation, gen)])
        views = normalize_unit(views, prep)
        if cl:
            views = views.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            p = net.project(net.encode(views))
            loss = cfg.invariance_weight * invariance_loss(cfg.objective, p[:n], p[n:], cfg.temperature)
        if cfg.recon_weight > 0 and cfg.recon_batch > 0:
            loss = loss + cfg.recon_weight * self._reconstruction_step(pixels[: cfg.recon_batch], gen, cl)
        return loss

    @torch.inference_mode()
    def evaluate(self, pixels: torch.Tensor, batch: int = 512) -> float:
        """Mean reconstruction loss on clean images."""
        net, prep = self.model.network.eval(), self.model.preprocessing
        total = 0.0
        for start in range(0, len(pixels), batch):
            x = normalize(pixels[start : start + batch].to(self.device), prep)
            inp = x.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else x
            total += float(_loss(net(inp)[0], x, self.cfg.loss)) * len(x)
        return total / len(pixels)

    def _write_outputs(self, epochs_done: int, optimizer, scheduler, preview: np.ndarray) -> None:
        out = self.out_dir
        assert out is not None
        model = self.model
        model.save(out)
        save_checkpoint(
            out / CHECKPOINT_NAME,
            {
                "model": model.network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epochs_done,
                "config": _jsonable(model.config()),
            },
        )
        title = f"{model.preset}: train/validation loss"
        loss_curve(self.history, out / LOSS_PLOT, title=title)
        if self.cfg.recon_every_epoch or epochs_done == self.cfg.epochs:
            recon = model.reconstruct(preview)
            reconstruction_grid(
                preview, recon, out / RECON_DIR / f"epoch_{epochs_done:03d}.png",
                title=f"epoch {epochs_done}: original (top) / reconstructed (bottom)",
            )  # fmt: skip


def _jsonable(obj: Any) -> Any:
    """Keep checkpoints loadable with weights_only=True: only plain containers and scalars."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def _holds_model(out_dir: Path | None) -> bool:
    return out_dir is not None and ((out_dir / CONFIG_NAME).exists() or (out_dir / CHECKPOINT_NAME).exists())


def check_output_dir(out_dir: Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, to train over a saved model unless asked to, or into a folder that
    cannot be made (a part of the path is a file, ``/proc``, no permission): that is created now."""
    if not resume and not overwrite and _holds_model(out_dir):
        raise LookalikeError(
            f"{out_dir}: already holds a model; pass --resume to continue training it or --overwrite to replace it"
        )
    if out_dir is not None:
        check_dir_creatable(out_dir)


def _clear_old_outputs(out_dir: Path) -> None:
    """With --overwrite, once the new data has been read: drop the old run's checkpoint and pictures."""
    for name in (CHECKPOINT_NAME, LOSS_PLOT):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / RECON_DIR, ignore_errors=True)


def train(
    source: str | os.PathLike[str] | Any,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    preset: str = "default",
    epochs: int | None = None,
    image_size: int | None = None,
    latent_dim: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    val_fraction: float | None = None,
    num_workers: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
) -> Model:
    """Train an autoencoder on a folder of images (recursively) or on in-memory images.

    Args:
        source: a folder, or an object with ``images`` (uint8 ``(n, h, w, c)``) such as a built-in
            dataset from :func:`lookalike.datasets.load_dataset`, or such an array itself.
        out_dir: where to write the model directory (``config.json``, ``model.safetensors``), the
            checkpoint, ``loss.png`` and reconstruction grids; ``None`` keeps everything in memory.
        preset: ``default`` or a seed preset (``cifar-seed``, ``mnist-seed``, ``dense-latent``,
            ``folder-seed``).
        epochs, image_size, latent_dim, batch_size, lr, seed, device, val_fraction: override the
            preset's values; ``image_size=None`` with the default preset picks 32 or 64 px from the data.
        num_workers: DataLoader processes decoding images.
        resume: continue from ``out_dir/checkpoint.pt`` (``epochs`` is then the new total).
        overwrite: replace a model already in ``out_dir``.
        callbacks: objects with any of the :class:`TrainCallback` methods.

    Returns:
        The trained :class:`~lookalike.models.Model`, on the CPU in eval mode.

    Raises:
        LookalikeError: no images, nothing readable, a model already in ``out_dir``, a bad option.
    """
    out = Path(out_dir).expanduser() if out_dir is not None else None
    check_output_dir(out, resume, overwrite)
    if device is not None:
        resolve_device(device)  # an unavailable GPU fails now, not after decoding every image
    overrides = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, val_fraction=val_fraction)
    resume_state = None
    paths: list[Path] | None = None
    refused: list[tuple[Path, str]] = []
    if isinstance(source, str | os.PathLike):
        scan = scan_readable(source, callbacks=callbacks)
        paths, refused = scan.files, scan.skipped
    if resume:
        if out is None:
            raise LookalikeError("resume needs the model directory that holds checkpoint.pt")
        resume_state = load_checkpoint(out / CHECKPOINT_NAME)
        model = Model.load(out)
        model.network.load_state_dict(resume_state["model"])
        model.train_config = replace(model.train_config, **{k: v for k, v in overrides.items() if v is not None})
        done = int(resume_state["epoch"])
        if done >= model.train_config.epochs:
            raise LookalikeError(
                f"{out / CHECKPOINT_NAME}: already trained {done} epochs; pass a larger --epochs to continue"
            )
    else:
        if image_size is None and preset == "default":
            image_size = auto_image_size(paths) if paths is not None else _array_image_size(source)
        model = Model.from_preset(preset, image_size=image_size, latent_dim=latent_dim, **overrides)
    if paths is not None:
        data = decode_folder(paths, model.preprocessing, num_workers=num_workers, callbacks=callbacks)
        data.skipped[:0] = refused
        if len(data.pixels) == 0:
            raise LookalikeError(f"{source}: none of the {len(paths)} image files could be read")
    else:
        images = getattr(source, "images", source)
        pixels = arrays_to_pixels(np.asarray(images), model.preprocessing)
        data = TrainingData(pixels, [f"image[{i}]" for i in range(len(pixels))], [])
    if out is not None:
        if overwrite and not resume and _holds_model(out):
            _clear_old_outputs(out)
        make_dirs(out)
    return Trainer(model, out, callbacks).fit(data, resume_state=resume_state)


def _array_image_size(source: Any) -> int:
    images = np.asarray(getattr(source, "images", source))
    return 32 if min(images.shape[1:3]) <= 40 else 64
