"Callbacks for a CIFAR run: ReduceLROnPlateau on the test loss, the per-epoch record, a stop on non-finite loss"
import csv
import math
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import ParamScheduler

from cifar_fastai.collective import all_reduce_sum, broadcast_value, is_main
from cifar_fastai.io import atomic_write

__all__ = ['ReduceLROnPlateau', 'EpochRecord', 'NonFiniteLossError', 'StopOnNonFinite', 'METRIC_COLUMNS', 'format_row']

METRIC_COLUMNS = ('epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'lr', 'seconds')


def _in_fit(learn) -> bool:
    "Whether `learn` is fitting, as opposed to `get_preds`/`validate`/`lr_find`, which fire epoch and batch events too"
    # fastai's `validation_context` (of `validate` and `get_preds`) holds `learn.lock`; `fit` never takes it
    return not learn.lock.locked() and not hasattr(learn, 'gather_preds') and not hasattr(learn, 'lr_finder')


def _is_scheduled(learn) -> bool:
    "Whether a fastai `ParamScheduler` (`fit_one_cycle`, `lr_find`) owns the learning rate in this fit"
    return any(isinstance(cb, ParamScheduler) for cb in learn.cbs)


class ReduceLROnPlateau(Callback):
    "Lower the learning rate when `monitor` stops improving, with the semantics of torch's `ReduceLROnPlateau`"
    order = 60  # after `Recorder` (50) has the epoch's test loss

    def __init__(self, monitor: str = 'valid_loss', mode: str = 'min', factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = 'rel', cooldown: int = 0, min_lr: float = 0.,
                 eps: float = 1e-8):
        if mode not in ('min', 'max'): raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ('rel', 'abs'): raise ValueError(f"`threshold_mode` must be 'rel' or 'abs', got {threshold_mode!r}")
        if not 0 < factor < 1: raise ValueError(f"`factor` must be in (0, 1), got {factor!r}")
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.threshold, self.threshold_mode, self.cooldown, self.min_lr, self.eps = threshold, threshold_mode, cooldown, min_lr, eps
        self.reset()

    def reset(self):
        "Forget what was seen: the next value is the new best"
        self.best = math.inf if self.mode == 'min' else -math.inf
        self.num_bad_epochs, self.cooldown_counter, self.last_epoch = 0, 0, 0

    def is_better(self, value: float) -> bool:
        if self.threshold_mode == 'rel':
            return value < self.best * (1 - self.threshold) if self.mode == 'min' else value > self.best * (1 + self.threshold)
        return value < self.best - self.threshold if self.mode == 'min' else value > self.best + self.threshold

    def step(self, value: float, lrs: list) -> list:
        "Take one epoch's monitored `value`, return the learning rates (one per group) to use next"
        self.last_epoch += 1
        if self.is_better(value): self.best, self.num_bad_epochs = value, 0
        else: self.num_bad_epochs += 1
        if self.cooldown_counter > 0: self.cooldown_counter, self.num_bad_epochs = self.cooldown_counter - 1, 0
        if self.num_bad_epochs <= self.patience: return list(lrs)
        self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        new = [max(lr * self.factor, self.min_lr) for lr in lrs]
        return [n if lr - n > self.eps else lr for lr, n in zip(lrs, new)]

    def after_epoch(self):
        if not _in_fit(self.learn) or _is_scheduled(self.learn): return
        if not (self.recorder.values and len(self.recorder.values[-1])): return  # an epoch skipped on resume
        value = float(self.recorder.values[-1][self.recorder.metric_names.index(self.monitor) - 1])
        value = broadcast_value(value)  # the same decision on every process of a data-parallel run
        lrs = self.step(value, [h['lr'] for h in self.opt.hypers])
        for h, lr in zip(self.opt.hypers, lrs): h['lr'] = lr

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ('best', 'num_bad_epochs', 'cooldown_counter', 'last_epoch')}

    def load_state_dict(self, state: dict): self.__dict__.update(state)


class NonFiniteLossError(RuntimeError):
    "The training loss became NaN or infinite"


class StopOnNonFinite(Callback):
    "Stop with a clear message when the training loss is NaN or infinite (the last good checkpoint stays)"
    order = -5

    def after_loss(self):
        if not self.training or torch.isfinite(self.loss).all(): return
        raise NonFiniteLossError(
            f"The training loss became {float(self.loss)} at epoch {self.epoch + 1}, batch {self.iter + 1}: "
            f"the learning rate ({self.opt.hypers[-1]['lr']:.3g}) is probably too high; try a lower --lr.")


class EpochRecord(Callback):
    "Per epoch: mean train loss and accuracy, test loss and accuracy, learning rate and seconds; kept in `rows`"
    order, run_valid = 55, True

    def __init__(self, csv_path: Path | None = None, rows: list | None = None, log=None):
        self.csv_path, self.rows, self.log = csv_path, list(rows or []), log  # `log`: called with each epoch's line

    def before_epoch(self):
        self.start, self.lr_sum, self.n_batches = time.time(), 0., 0
        self.sums = {k: torch.zeros(3, dtype=torch.float64) for k in ('train', 'test')}  # loss * n, correct, n

    def after_batch(self):
        if not _in_fit(self.learn): return
        y, n = self.yb[0], len(self.yb[0])
        correct = (self.pred.argmax(dim=-1) == y).sum().item()
        self.sums['train' if self.training else 'test'] += torch.tensor([self.loss.detach().item() * n, correct, n], dtype=torch.float64)
        if self.training: self.lr_sum, self.n_batches = self.lr_sum + self.opt.hypers[-1]['lr'], self.n_batches + 1

    def after_epoch(self):
        if not _in_fit(self.learn) or self.sums['train'][2] == 0: return
        sums = {k: all_reduce_sum(v) for k, v in self.sums.items()}
        (trl, trc, trn), (tel, tec, ten) = (sums[k].tolist() for k in ('train', 'test'))
        row = dict(epoch=len(self.rows) + 1, train_loss=trl / trn, train_accuracy=trc / trn,
                   test_loss=tel / max(ten, 1), test_accuracy=tec / max(ten, 1),
                   lr=self.lr_sum / self.n_batches, seconds=time.time() - self.start)
        self.rows.append(row)
        if self.csv_path is not None and is_main(): write_metrics(self.csv_path, self.rows)
        if self.log is not None: self.log(format_row(row, self.n_epoch))


def format_row(row: dict, n_epoch: int | None = None) -> str:
    "One line for a `metrics.csv` row: what the progress table shows, for logs that are not a terminal"
    of = f"/{n_epoch}" if n_epoch else ''
    return (f"epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f} accuracy {row['train_accuracy']:.2%} | "
            f"test loss {row['test_loss']:.4f} accuracy {row['test_accuracy']:.2%} | lr {row['lr']:.3g} | {row['seconds']:.0f} s")


def write_metrics(path: Path, rows: list):
    "Write the per-epoch `rows` to `path` as CSV, atomically"
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def read_metrics(path: Path) -> list:
    "Read a `metrics.csv` written by `write_metrics` back into rows of numbers"
    with open(path, newline='') as f:
        return [{k: (int(v) if k == 'epoch' else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
