"Pictures of a model on the test set: accuracy per class, mistakes, their maps and how faithful maps are, confusion"
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import fastai.vision.learner  # noqa: F401  registers fastai's `plot_top_losses` for images
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner, NoneReduce
from fastai.torch_core import TensorImage
from matplotlib.figure import Figure

from cifar_fastai.checks import one_of, whole
from cifar_fastai.evaluate import Predictions, class_accuracy
from cifar_fastai.faithfulness import stage_faithfulness
from cifar_fastai.gradcam import CAMS, DEFAULT_CAM, cam_class, overlay
from cifar_fastai.loaders import ds_idx_of_test
from cifar_fastai.plots import blank_axes, save_figure
from cifar_fastai.precision import AutocastModule, autocast_dtype

__all__ = ['STAGES', 'MISTAKE_ORDERS', 'top_mistakes', 'raw_images', 'as_batch', 'gradcam_maps', 'measure_faithfulness',
           'plot_class_accuracy', 'plot_misclassified', 'plot_gradcam', 'PredictionsInterpretation',
           'plot_confusion_matrix', 'plot_top_losses']

STAGES = ('layer1', 'layer2', 'layer3', 'layer4')  # the four residual stages of the CIFAR ResNet18
MISTAKE_ORDERS = ('confident', 'random', 'first')


def top_mistakes(p: Predictions, k: int = 25, order: str = 'confident', seed: int | None = None) -> torch.Tensor:
    "Test indices of `k` misclassified images: most `confident` mistake first, `random` (with `seed`) or `first`"
    one_of('`order`', order, MISTAKE_ORDERS)
    whole('`k`', k, low=0)
    wrong = (p.preds != p.targets).nonzero().flatten()
    if order == 'confident':
        confidence = p.probs[wrong, p.preds[wrong]]  # probability given to the wrong class
        wrong = wrong[torch.sort(confidence, descending=True, stable=True).indices]
    elif order == 'random':
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        wrong = wrong[torch.randperm(len(wrong), generator=gen)]
    return wrong[:k]


def _index_list(idxs) -> list:
    return [int(i) for i in (idxs.tolist() if isinstance(idxs, (torch.Tensor, np.ndarray)) else idxs)]


def raw_images(learn: Learner, idxs) -> np.ndarray:
    "Raw test images `idxs` (loader order) as (B, H, W, 3) uint8, from the arrays kept in `learn.dls.data`"
    data = getattr(learn.dls, 'data', None)
    if data is None:
        raise AttributeError("`learn.dls` has no `data` arrays of CIFAR-10: "
                             "build the loaders with `cifar_dls` or `load_run`")
    return data.test_x[_index_list(idxs)]


def as_batch(dls, images: np.ndarray) -> TensorImage:
    "(B, H, W, 3) uint8 images as the model sees them: through the test loader's batch transforms (to float, normalise)"
    x = TensorImage(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(dls.device))
    return dls[ds_idx_of_test(dls)].after_batch(x)


def gradcam_maps(model, x: torch.Tensor, targets, layers=STAGES, cam: str = DEFAULT_CAM) -> list:
    "One (B, H, W) map by method `cam` (a key of `CAMS`) per layer of `layers` for `x` and classes `targets`, on CPU"
    with cam_class(cam)(model, list(layers)) as c: return [m.cpu() for m in c(x, targets)]


def measure_faithfulness(learn: Learner, p: Predictions, n: int = 100, steps: int = 8, seed: int = 0, layers=STAGES,
                         methods=tuple(CAMS)) -> list:
    "`stage_faithfulness` of the maps of the predicted class on `n` test images drawn with `seed`"
    whole('`n` (test images to score maps on)', n)
    idxs = torch.randperm(len(p.targets), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x = as_batch(learn.dls, raw_images(learn, idxs))
    dtype = autocast_dtype(learn)  # the probabilities as the run predicts them: in bf16 2.5x faster on a CPU with it
    scorer = AutocastModule(learn.model, dtype) if dtype else None
    return stage_faithfulness(learn.model, x, p.preds[idxs], layers, methods, steps, seed, scorer=scorer)


def _title(p: Predictions, i: int) -> str:
    "'true/predicted (probability of the prediction)' for test image `i`"
    t, y = int(p.targets[i]), int(p.preds[i])
    return f'{p.classes[t]}/{p.classes[y]} ({p.probs[i, y]:.2f})'


def _no_images(text: str) -> Figure:
    fig = Figure(figsize=(6, 1.5))
    fig.text(0.5, 0.5, text, ha='center', va='center', fontsize=12)
    return fig


def plot_class_accuracy(p: Predictions, path=None) -> Figure:
    "Bar chart of the test accuracy of each class, the overall accuracy in the title and as a dashed line"
    acc = {c: 100 * a for c, a in class_accuracy(p).items()}
    fig = Figure(figsize=(8, 0.42 * len(acc) + 1.4), layout='constrained')
    ax = fig.subplots()
    y = np.arange(len(acc))
    ax.barh(y, list(acc.values()), color='tab:blue')
    ax.set_yticks(y, list(acc)); ax.invert_yaxis()
    ax.axvline(100 * p.accuracy, ls='--', color='tab:orange', label=f'overall {100 * p.accuracy:.2f} %')
    for yi, a in zip(y, acc.values()):
        ax.text(0 if math.isnan(a) else a + 1, yi, 'n/a' if math.isnan(a) else f'{a:.1f} %', va='center', fontsize=9)
    ax.set_xlim(0, 112); ax.set_xticks(range(0, 101, 20)); ax.set_xlabel('test accuracy (%)')
    ax.legend(loc='lower right'); ax.grid(axis='x', alpha=0.3)
    ax.set_title(f'Test accuracy per class: overall {100 * p.accuracy:.2f} % of {len(p.targets)} images')
    return save_figure(fig, path)


def plot_misclassified(learn: Learner, p: Predictions, idxs, path=None, ncols: int = 5) -> Figure:
    "Test images `idxs` in a grid, each titled 'true/predicted (probability)' with class names"
    idxs = _index_list(idxs)
    if not idxs: return save_figure(_no_images('No misclassified test images'), path)
    ncols = min(ncols, len(idxs))
    nrows = math.ceil(len(idxs) / ncols)
    fig = Figure(figsize=(2.35 * ncols, 2.45 * nrows + 0.4), layout='constrained')
    axs = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax in axs: ax.set_axis_off()
    for ax, i, image in zip(axs, idxs, raw_images(learn, idxs)):
        ax.imshow(image); ax.set_title(_title(p, i), fontsize=9)
    fig.suptitle(f'{len(idxs)} misclassified test images: true/predicted (probability of the prediction)')
    return save_figure(fig, path)


def _class_maps(learn: Learner, p: Predictions, idxs: list, images, layers, cam: str) -> tuple:
    "Maps per layer for the predicted classes of `idxs`, and for their true classes, from one pass over both"
    x = as_batch(learn.dls, images)
    maps = gradcam_maps(learn.model, torch.cat([x, x]), torch.cat([p.preds[idxs], p.targets[idxs]]), layers, cam)
    return [m[:len(idxs)] for m in maps], [m[len(idxs):] for m in maps]


def plot_gradcam(learn: Learner, p: Predictions, idxs, layers=STAGES, path=None, alpha: float = 0.5,
                 cam: str = DEFAULT_CAM) -> Figure:
    "A row per test image `idxs`: the image, then at each of `layers` the map by `cam` of its predicted and true class"
    idxs = _index_list(idxs)
    title = cam_class(cam).title
    if not idxs: return save_figure(_no_images(f'No test images for {title}'), path)
    images = raw_images(learn, idxs)
    predicted, true = _class_maps(learn, p, idxs, images, layers, cam)
    names = [l if isinstance(l, str) else type(l).__name__ for l in layers]
    ncols = 2 * len(names) + 1
    fig = Figure(figsize=(1.6 * ncols + 0.8, 1.7 * len(idxs) + 0.8), layout='constrained')
    axs = fig.subplots(len(idxs), ncols, squeeze=False)
    for r, (i, image) in enumerate(zip(idxs, images)):
        t, y = int(p.targets[i]), int(p.preds[i])
        axs[r, 0].imshow(image)
        axs[r, 0].set_ylabel(f'true {p.classes[t]}\npred {p.classes[y]}\n({p.probs[i, y]:.2f})', fontsize=9,
                             rotation=0, ha='right', va='center')
        for c, (mp, mt) in enumerate(zip(predicted, true)):
            axs[r, 2 * c + 1].imshow(overlay(image, mp[r], alpha=alpha))
            axs[r, 2 * c + 2].imshow(overlay(image, mt[r], alpha=alpha))
        for ax in axs[r]: blank_axes(ax)
    titles = ['image'] + [f'{n}\n{kind}' for n in names for kind in ('predicted', 'true')]
    for ax, name in zip(axs[0], titles): ax.set_title(name, fontsize=10)
    fig.suptitle(f'{title} of the predicted class and, beside it, of the true class (red: most weight), '
                 'layer by layer\nrows: true and predicted class (probability of the prediction)', fontsize=11)
    return save_figure(fig, path)


class PredictionsInterpretation(ClassificationInterpretation):
    "fastai's `ClassificationInterpretation` of `Predictions` already made: the test set is not predicted again"
    def __init__(self, learn: Learner, p: Predictions, dl=None):
        # dl: the loader `p` was predicted on; by default `predict`'s, the test split (`dls[2]` beside a held-out one)
        dl = dl if dl is not None else learn.dls[ds_idx_of_test(learn.dls)].new(shuffle=False, drop_last=False)
        if len(dl.dataset) != len(p.targets):
            raise ValueError(f"`dl` has {len(dl.dataset)} images but `p` predicts {len(p.targets)}: "
                             "pass the loader that `p` was predicted on")
        # the learner's own loss, label smoothing included, from the probabilities: their logs are logits whose
        # softmax gives the probabilities back, so the loss is what it was on the network's logits
        with NoneReduce(learn.loss_func) as loss: losses = loss(p.probs.clamp_min(1e-12).log(), p.targets)
        super().__init__(learn, dl, losses)
        self.predictions = p

    def confusion_matrix(self) -> np.ndarray:
        "Counts of (actual, predicted) pairs from the stored predictions, actual classes in rows"
        n, p = len(self.vocab), self.predictions
        return torch.bincount(p.targets * n + p.preds, minlength=n * n).view(n, n).numpy()


def _current_figure(path) -> Figure:
    "The figure a fastai plot just drew, detached from pyplot (so Jupyter shows it once) and saved to `path`"
    fig = plt.gcf()
    plt.close(fig)
    return save_figure(fig, path)


def plot_confusion_matrix(interp: ClassificationInterpretation, path=None, normalize: bool = False) -> Figure:
    "fastai's confusion matrix of `interp` (actual classes in rows), as a figure"
    n = len(interp.losses)
    interp.plot_confusion_matrix(normalize=normalize, figsize=(7.5, 7.5), title=f'Confusion matrix, {n} test images')
    return _current_figure(path)


def plot_top_losses(interp: ClassificationInterpretation, k: int = 9, path=None) -> Figure:
    "fastai's top losses of `interp`: the `k` test images with the largest loss, as a figure"
    k = min(k, len(interp.losses))
    ncols = math.ceil(math.sqrt(k))
    # fastai predicts the `k` images again to show them
    with interp.learn.no_bar():
        interp.plot_top_losses(k, ncols=ncols, figsize=(3.2 * ncols, 3.3 * math.ceil(k / ncols)))
    fig = plt.gcf()
    for ax in fig.axes: ax.title.set_fontsize(9)
    fig.suptitle(f'The {k} test images with the largest loss\npredicted/actual / loss / probability of the prediction',
                 fontsize=12)
    return _current_figure(path)
