"What follows a run's budget: the options that scale with the epochs; the warm-up and final decay around the plateau"
from fastai.callback.core import Callback

from cifar_fastai.callbacks import in_fit, is_scheduled
from cifar_fastai.checks import within

__all__ = ['budget_defaults', 'ema_for_batch', 'one_cycle_moms', 'ONE_CYCLE_SWING', 'WarmupAnneal',
           'warmup_anneal_factor']

ONE_CYCLE_SWING = 0.05  # fastai's one-cycle momentum goes 0.95 -> 0.85 -> 0.95: 0.05 either side of SGD's usual 0.9


def budget_defaults(epochs: int, schedule: str = 'plateau') -> dict:
    "The options a run of `epochs` gets unless set: see BENCHMARKS.md for the runs behind each rule"
    return dict(
        plateau_patience=epochs // 10,       # a tenth of the budget: 0 at 5 epochs, 5 at 50 (torch's 10 never acts)
        bs=128 if schedule == 'linear' else 64,  # the linear recipe held its accuracy at 128, 1.07x the images a
                                                 # second (docs/results/selection: sel8-lin-bs128); else the reports'
        pad=4 if epochs >= 10 else 0,        # a 4-pixel random translation, as every anchor past 20 epochs; at 5 epochs
                                             # it cost accuracy (docs/results/sweeps.csv: oc-lr1-pad0, full-one-cycle)
        cutout=16 if epochs >= 10 else 0,    # the reports' 16x16 hole; below 10 epochs none, which led on held-out
                                             # images at 8 (docs/results/selection: sel8-lin-bs128-cut0)
        lr_mult=5. if schedule == 'plateau' else 20.,  # x lr_find's 'minimum'; one-cycle and linear peak higher
        **_RAMPS.get(schedule, dict(warmup=0., anneal=0.)),
        # chosen on held-out images: the plateau's at 20 epochs, the linear recipe's from airbench (docs/recipes.md)
        nesterov=schedule in _FAST, label_smoothing=0.2 if schedule in _FAST else 0.,
    )


def ema_for_batch(bs: int) -> float:
    "The weight average's decay per step at batch `bs`: 0.998 at 64, the same span in images at other batches"
    return round(EMA_AT_64 ** (bs / 64), 4)


EMA_AT_64 = 0.998  # tested and kept at batch 64 (docs/recipes.md)
_FAST = ('plateau', 'linear')  # the schedules with Nesterov's momentum and label smoothing 0.2
# shares of the steps the rate ramps up over and decays linearly to 0 over, at the end: the plateau's around its
# constant rate; 'linear' is a triangle, as airbench's ResNet18 (KellerJordan/cifar10-airbench: 20 % up, 80 % down)
_RAMPS = {'plateau': dict(warmup=0.05, anneal=0.2), 'linear': dict(warmup=0.2, anneal=0.8)}


def one_cycle_moms(momentum: float) -> tuple:
    "`fit_one_cycle`'s momenta around SGD's `momentum`: fastai's (0.95, 0.85, 0.95) at 0.9"
    high, low = round(momentum + ONE_CYCLE_SWING, 10), round(momentum - ONE_CYCLE_SWING, 10)  # 0.95, not 0.9500..01
    return high, low, high


def warmup_anneal_factor(step: int, total: int, warmup: float, anneal: float) -> float:
    "The rate's multiplier at `step` (0-based) of `total`: up over the first `warmup`, down to 0 over the last `anneal`"
    n_up, n_down = round(warmup * total), round(anneal * total)
    factor = (step + 1) / n_up if step < n_up else 1.
    return min(factor, (total - step) / (n_down + 1)) if step >= total - n_down else factor


class WarmupAnneal(Callback):
    "Scale the rate the plateau sets by a linear warm-up at the start of a fit and a linear decay to 0 at its end"
    order = 56  # after `EpochRecord` (55) has read the rate a batch used, the plateau's own rate goes back

    def __init__(self, warmup: float = 0., anneal: float = 0.):
        for name, value in (('warmup', warmup), ('anneal', anneal)):
            within(f'`{name}` (a share of the steps)', value, high_open=False)
        if warmup + anneal > 1: raise ValueError(f"`warmup` + `anneal` must be at most 1, got {warmup} + {anneal}")
        self.warmup, self.anneal, self.base = warmup, anneal, None

    def before_batch(self):
        if not (self.training and in_fit(self.learn)) or is_scheduled(self.learn): return
        total = self.n_iter * self.n_epoch
        step = round(self.pct_train * total)  # fastai's position in the fit, right after a resume too
        factor = warmup_anneal_factor(step, total, self.warmup, self.anneal)
        self.base = [h['lr'] for h in self.opt.hypers]
        for h, lr in zip(self.opt.hypers, self.base): h['lr'] = lr * factor

    def after_batch(self):
        if self.base is None: return
        for h, lr in zip(self.opt.hypers, self.base): h['lr'] = lr
        self.base = None

