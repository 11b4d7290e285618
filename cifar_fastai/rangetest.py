"fastai's LR range test for a run: its length by the data, every suggestion rule at once, and its plot"
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from fastai.learner import Learner

from cifar_fastai.checks import one_of
from cifar_fastai.config import LR_SUGGESTIONS, ConfigError
from cifar_fastai.io import atomic_write

__all__ = ['LR_FIND_ITERS', 'LR_FIND_PASSES', 'LR_FIND_MIN', 'lr_find_length', 'find_lr', 'write_found']

# The range test's length: 300 batches, measured on full CIFAR-10 (BENCHMARKS.md: 'minimum' varied 1.2x over 4 seeds,
# 3x at fastai's 100), is 0.4 passes there; on a small set it is capped at a few passes, as a longer test retrains
# on the same images (the 500-image sample: 38 passes, most of a 50-epoch run's time)
LR_FIND_ITERS, LR_FIND_PASSES, LR_FIND_MIN = 300, 5, 20


def lr_find_length(n_batches: int) -> int:
    "Batches of the range test on data of `n_batches` a pass: `LR_FIND_ITERS`, at most `LR_FIND_PASSES` passes"
    return max(min(LR_FIND_ITERS, LR_FIND_PASSES * n_batches), LR_FIND_MIN)  # fewer leave the rules too few points


def find_lr(learn: Learner, plot_path: Path | None = None, suggestion: str = 'minimum', num_it: int | None = None,
            mult: float = 1.) -> dict:
    "fastai's LR range test (weights and optimizer restored after it): every suggestion, `mult` x `suggestion` as 'lr'"
    # num_it: batches of the test; None: `lr_find_length` of the training data
    one_of('--lr-suggestion', suggestion, LR_SUGGESTIONS)
    num_it = num_it or lr_find_length(len(learn.dls.train))
    with _one_rate(learn): learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=None)
    found = _suggestions(learn.recorder, num_it)
    if found[suggestion] is None:
        raise ConfigError(f"lr_find recorded too few points for the '{suggestion}' rule: raise --lr-find-iters "
                          f"(now {num_it}) or choose another --lr-suggestion")
    found |= {'lr': mult * found[suggestion], 'suggestion': suggestion, 'mult': mult, 'num_it': num_it}
    if plot_path is not None: _plot_lr_find(learn, found, plot_path)
    return found


@contextmanager
def _one_rate(learn: Learner):
    "Every parameter group at the tested rate, whatever its `lr_scale`: the test finds the rate of the weights"
    # under `bn_bias_scale` 64 the loss's lowest point moved 33x on full CIFAR-10 and a run at 20x its suggestion
    # diverged (docs/results/selection/README.md): the biases' multiple applies to the rate found, not in the test
    if learn.opt is None: learn.create_opt()
    scales = [h.get('lr_scale', 1.) for h in learn.opt.hypers]
    if all(scale == 1 for scale in scales): yield; return  # one rate already (or an optimizer without scales)
    learn.opt.set_hyper('lr_scale', 1.)
    try: yield
    finally: learn.opt.set_hyper('lr_scale', scales)


def _plot_lr_find(learn: Learner, found: dict, plot_path: Path):
    "fastai's plot of the range test, with a line for each suggestion and one for the rate used"
    import matplotlib.pyplot as plt
    from cifar_fastai.plots import save_figure
    learn.recorder.plot_lr_find()  # fastai's plot (it returns no figure: take the current one)
    fig, ax = plt.gcf(), plt.gca()
    colors = ('tab:orange', 'tab:green', 'tab:red', 'tab:purple')
    for (name, lr), color in zip(((n, found[n]) for n in LR_SUGGESTIONS), colors):
        style = '-' if name == found['suggestion'] else ':'
        if lr is not None: ax.axvline(lr, color=color, linestyle=style, label=f"{name} {lr:.2e}")
    ax.axvline(found['lr'], color='black', label=f"used {found['lr']:.2e}" +
               (f" ({found['mult']:g} x {found['suggestion']})" if found['mult'] != 1 else ''))
    ax.set_title(f'LR range test, SGD momentum {learn.opt.hypers[0]["mom"]:g}')
    ax.legend(loc='best')
    save_figure(fig, plot_path)
    plt.close(fig)


def _suggestions(recorder, num_it: int) -> dict:
    "Every rule's suggestion from the recorded range test, None where too few points were recorded"
    # the same points as fastai's `Learner.lr_find`: the first tenth and the last five left out, up to a NaN
    lrs, losses = torch.tensor(recorder.lrs[num_it // 10:-5]), torch.tensor(recorder.losses[num_it // 10:-5])
    n = int(torch.isnan(losses).nonzero().min()) if torch.isnan(losses).any() else len(losses)
    found = {}
    for name, rule in LR_SUGGESTIONS.items():
        try: found[name] = float(rule(lrs[:n], losses[:n], num_it)[0])
        except (IndexError, ValueError, RuntimeError): found[name] = None
    return found


def write_found(found: dict, path: Path):
    "Write the suggestions and the rate of `find_lr` to `path` as JSON"
    with atomic_write(path, 'w') as f: json.dump(found, f, indent=2)
