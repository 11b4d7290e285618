"Figures of a run that need no predictions: training curves from `metrics.csv` and the augmentation preview"
import copy
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checks import whole
from cifar_fastai.errors import RunFileError
from cifar_fastai.io import atomic_write
from cifar_fastai.transforms import AlbumentationsTransform, AlternatingFlip, cifar_augs

__all__ = ['save_figure', 'blank_axes', 'smoothed_loss_floor', 'plot_curves', 'train_augs', 'plot_augmentations']


def save_figure(fig: Figure, path=None, dpi: int = 120) -> Figure:
    "Write `fig` to the PNG `path` when one is given; return `fig` (it displays itself in Jupyter)"
    if path is None: return fig
    with atomic_write(path) as f:  # a stop while writing leaves the previous picture, not half of one
        fig.savefig(f, format=Path(path).suffix[1:] or 'png', dpi=dpi, bbox_inches='tight', facecolor='white')
    return fig


def blank_axes(ax):
    "Hide ticks and frame of an image axis but keep its title and y label (which `set_axis_off` would hide)"
    ax.set_xticks([]); ax.set_yticks([])
    for spine in ax.spines.values(): spine.set_visible(False)


def _metric_rows(metrics) -> list:
    "Rows of a `metrics.csv` given as rows, the file, or its run folder"
    if isinstance(metrics, (list, tuple)): rows = list(metrics)
    else:
        path = Path(metrics)
        if path.is_dir(): path = path / 'metrics.csv'
        if not path.is_file(): raise FileNotFoundError(f"{path} does not exist: pass a run folder or its metrics.csv")
        rows = read_metrics(path)
    if not rows: raise RunFileError(f"{metrics} has no epochs yet: train at least one epoch before plotting curves")
    return rows


def smoothed_loss_floor(label_smoothing: float, n_classes: int = 10) -> float:
    "The lowest loss cross-entropy with `label_smoothing` can reach: the entropy of its target distribution"
    if not label_smoothing: return 0.
    true, other = 1 - label_smoothing + label_smoothing / n_classes, label_smoothing / n_classes
    return -(true * math.log(true) + (n_classes - 1) * other * math.log(other))


def plot_curves(metrics, path=None, label_smoothing: float = 0., n_classes: int = 10) -> Figure:
    """Train and test accuracy and loss, and learning rate (log scale), per epoch from `metrics` (rows, file or run);
    with `label_smoothing` the loss panel marks the floor that smoothing puts under the loss"""
    rows = _metric_rows(metrics)
    epochs = [r['epoch'] for r in rows]
    fig = Figure(figsize=(15, 4.3), layout='constrained')
    axs = fig.subplots(1, 3)
    for ax, (name, scale) in zip(axs, (('accuracy', 100), ('loss', 1))):
        for split in ('train', 'test'):
            ax.plot(epochs, [scale * r[f'{split}_{name}'] for r in rows], marker='o', ms=3, label=split)
        ax.set_title(f'{name.capitalize()} per epoch'); ax.set_ylabel(f'{name} (%)' if scale == 100 else name)
    if label_smoothing:
        axs[1].axhline(smoothed_loss_floor(label_smoothing, n_classes), color='gray', ls=':',
                       label=f'lowest possible with label smoothing {label_smoothing:g}')
    axs[2].plot(epochs, [r['lr'] for r in rows], marker='o', ms=3, color='tab:green', label='mean lr of the epoch')
    axs[2].set_yscale('log'); axs[2].set_title('Learning rate'); axs[2].set_ylabel('learning rate (log scale)')
    for ax in axs:
        ax.set_xlabel('epoch'); ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3); ax.legend(loc='best')
    best = max(rows, key=lambda r: r['test_accuracy'])
    fig.suptitle(f"Training curves: best test accuracy {100 * best['test_accuracy']:.2f} % at epoch {best['epoch']}")
    return save_figure(fig, path)


def _train_tfm(dls) -> AlbumentationsTransform | None:
    tfms = [t for t in dls.train.after_item.fs if isinstance(t, AlbumentationsTransform)]
    return tfms[0] if tfms else None


def train_augs(dls):
    "The albumentations pipeline `dls` applies to training items, or None when it has none"
    return None if (tfm := _train_tfm(dls)) is None else tfm.train_aug


def _class_examples(labels: np.ndarray, n_classes: int, rng: np.random.Generator) -> list:
    "One training index per class, drawn with `rng`"
    picks = []
    for c in range(n_classes):
        idxs = np.flatnonzero(labels == c)
        if len(idxs) == 0: raise ValueError(f"class {c} has no training image to preview")
        picks.append(int(rng.choice(idxs)))
    return picks


def _augmented(aug, flip: AlternatingFlip | None, image: np.ndarray, i: int, epoch: int) -> np.ndarray:
    "`image`, training image `i`, through `aug`, and mirrored as `flip` (if any) mirrors it in `epoch`"
    out = aug(image=image)['image']
    if flip is None: return out
    flip.epoch = epoch
    return flip(out[None], [i])[0]


def plot_augmentations(dls, augs=None, n: int = 5, seed: int = 0, path=None) -> Figure:
    "One training image per class beside `n` augmented versions by `augs` (default: the training pipeline of `dls`)"
    whole('`n`', n)
    # with the loaders' alternating flip, version c is what epoch c shows: mirrored every other epoch
    alternate = augs is None and (tfm := _train_tfm(dls)) is not None and tfm.alternate is not None
    source = 'the loaders\' training pipeline' if augs is None else 'the given pipeline'
    augs = augs if augs is not None else train_augs(dls)
    if augs is None: augs, source = cifar_augs(flip=not alternate), 'the default cifar_augs() (the loaders have none)'
    # a seeded copy: the preview repeats with `seed` and leaves the training pipeline's random state alone
    aug = AlbumentationsTransform(copy.deepcopy(augs), seed=seed).train_aug
    flip = AlternatingFlip(seed) if alternate else None
    data = dls.data
    picks = _class_examples(np.asarray(data.train_y), len(data.classes), np.random.default_rng(seed))
    fig = Figure(figsize=(1.3 * (n + 1) + 0.6, 1.3 * len(picks) + 0.8), layout='constrained')
    axs = fig.subplots(len(picks), n + 1, squeeze=False)
    for row, (name, i) in zip(axs, zip(data.classes, picks)):
        image = data.train_x[i]
        row[0].imshow(image); row[0].set_ylabel(name, fontsize=10)
        for epoch, ax in enumerate(row[1:]): ax.imshow(_augmented(aug, flip, image, i, epoch))
        for ax in row: blank_axes(ax)
    for c, ax in enumerate(axs[0]):
        ax.set_title('original' if c == 0 else f"{'epoch' if flip else 'augmented'} {c}", fontsize=9)
    steps = ', '.join([type(t).__name__ for t in aug.transforms] + ['alternating flip'] * alternate)
    fig.suptitle(f'Training augmentation, {source}:\n{steps} (seed {seed})', fontsize=10)
    return save_figure(fig, path)
