"Callbacks for a CIFAR run: ReduceLROnPlateau, the per-epoch record and test pass (with flip TTA), a non-finite stop"
import csv
import math
import statistics
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.schedule import ParamScheduler

from cifar_fastai.checks import one_of, within
from cifar_fastai.collective import all_reduce_sum, broadcast_value, in_process_group, is_main
from cifar_fastai.errors import RunFileError, UserError
from cifar_fastai.io import atomic_write
from cifar_fastai.precision import autocast_dtype

__all__ = ['ReduceLROnPlateau', 'plateau_replay', 'EpochRecord', 'TestPass', 'NonFiniteLossError', 'StopOnNonFinite',
           'FlipEpoch', 'METRIC_COLUMNS', 'format_row', 'time_left', 'in_fit', 'is_scheduled']

# valid_*: the part of train held out by `valid_pct`, present only when there is one (else the test split validates)
# test_tta_accuracy: with flip test-time augmentation, present when the run asked for it (`TestPass(tta=True)`)
METRIC_COLUMNS = ('epoch', 'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'test_loss', 'test_accuracy',
                  'test_tta_accuracy', 'lr', 'seconds')


def in_fit(learn) -> bool:
    "Whether `learn` is fitting, as opposed to `get_preds`/`validate`/`lr_find`, which fire epoch and batch events too"
    # fastai's `validation_context` (of `validate` and `get_preds`) holds `learn.lock`; `fit` never takes it
    return not learn.lock.locked() and not hasattr(learn, 'gather_preds') and not hasattr(learn, 'lr_finder')


def batches_done(learn) -> int:
    "Training batches of the epoch in progress done so far, counting those a resume skipped (where `iter` restarts)"
    return round((learn.pct_train * learn.n_epoch - learn.epoch) * learn.n_iter)


def is_scheduled(learn) -> bool:
    "Whether a fastai `ParamScheduler` (`fit_one_cycle`, `lr_find`) owns the learning rate in this fit"
    return any(isinstance(cb, ParamScheduler) for cb in learn.cbs)


class ReduceLROnPlateau(Callback):
    "Lower the learning rate when `monitor` stops improving, with the semantics of torch's `ReduceLROnPlateau`"
    order = 60  # after `Recorder` (50) has the epoch's test loss

    def __init__(self, monitor: str = 'valid_loss', mode: str = 'min', factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = 'rel', cooldown: int = 0, min_lr: float = 0.,
                 eps: float = 1e-8, stop_at_min_lr: bool = False):
        # stop_at_min_lr: end the fit when a cut is due and no rate can go lower (torch keeps training at `min_lr`)
        one_of('`mode`', mode, ('min', 'max'))
        one_of('`threshold_mode`', threshold_mode, ('rel', 'abs'))
        within('`factor`', factor, low_open=True)
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.threshold, self.threshold_mode, self.cooldown, self.min_lr = threshold, threshold_mode, cooldown, min_lr
        self.eps, self.stop_at_min_lr = eps, stop_at_min_lr
        self.reset()

    def reset(self):
        "Forget what was seen: the next value is the new best"
        self.best = math.inf if self.mode == 'min' else -math.inf
        self.num_bad_epochs, self.cooldown_counter, self.last_epoch = 0, 0, 0
        self.bottomed_out = False  # a cut was due with every rate at `min_lr` already

    def is_better(self, value: float) -> bool:
        if self.threshold_mode == 'rel':
            if self.mode == 'min': return value < self.best * (1 - self.threshold)
            return value > self.best * (1 + self.threshold)
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
        new = [n if lr - n > self.eps else lr for lr, n in zip(lrs, new)]
        self.bottomed_out = new == list(lrs)
        return new

    def before_epoch(self):
        if self.stop_at_min_lr and self.bottomed_out and in_fit(self.learn) and not is_scheduled(self.learn):
            raise CancelFitException  # before the epoch: the last one is recorded and checkpointed as usual

    def after_epoch(self):
        if not in_fit(self.learn) or is_scheduled(self.learn): return
        if not (self.recorder.values and len(self.recorder.values[-1])): return  # an epoch skipped on resume
        value = float(self.recorder.values[-1][self.recorder.metric_names.index(self.monitor) - 1])
        value = broadcast_value(value)  # the same decision on every process of a data-parallel run
        lrs = self.step(value, [h['lr'] for h in self.opt.hypers])
        for h, lr in zip(self.opt.hypers, lrs): h['lr'] = lr

    def state_dict(self) -> dict:
        names = ('best', 'num_bad_epochs', 'cooldown_counter', 'last_epoch', 'bottomed_out')
        return {k: getattr(self, k) for k in names}

    def load_state_dict(self, state: dict):
        for k in ('best', 'num_bad_epochs', 'cooldown_counter', 'last_epoch'): setattr(self, k, state[k])
        self.bottomed_out = state.get('bottomed_out', False)  # older checkpoints have none


def plateau_replay(values, lr: float, **settings) -> tuple[list[int], int]:
    "Epochs (from 1) after which `ReduceLROnPlateau(**settings)` seeing `values` lowered `lr`; its longest wait"
    # the longest wait: the most epochs in a row without a new best that did not end in a cut
    plateau, cuts, longest = ReduceLROnPlateau(**settings), [], 0
    for epoch, value in enumerate(values, 1):
        new = plateau.step(float(value), [lr])[0]
        if new < lr: cuts, lr = cuts + [epoch], new
        else: longest = max(longest, plateau.num_bad_epochs)
    return cuts, longest


class NonFiniteLossError(UserError, RuntimeError):
    "The training loss became NaN or infinite"


class StopOnNonFinite(Callback):
    "Stop a fit whose training loss is NaN or infinite, saying where (the last checkpoint stays); end a range test"
    order = -5

    def after_loss(self):
        if not self.training: return
        finite = bool(torch.isfinite(self.loss).all())
        if not in_fit(self.learn):  # fastai's range test, on one process: a diverged loss is where it ends
            if finite: return
            raise CancelFitException()  # as its own stop at 4x the best loss; its `after_fit` puts the weights back
        # in a data-parallel fit every process learns of it, and all stop at this batch rather than wait for the one
        # that stops in the gradients' all-reduce (one more all-reduce of a number per step)
        n_bad = int(all_reduce_sum(torch.tensor([float(not finite)])).item())
        if not n_bad: return
        where = f" on {n_bad} of the {torch.distributed.get_world_size()} processes" if in_process_group() else ''
        value = 'non-finite' if finite else float(self.loss.detach())
        at = f"epoch {self.epoch + 1}, batch {batches_done(self.learn) + 1}"  # `iter` restarts on a resume inside one
        lr = self.opt.hypers[-1]['lr']
        raise NonFiniteLossError(f"The training loss became {value}{where} at {at}: the learning rate ({lr:.3g}) is "
                                 f"probably too high; start a new run with a lower --lr (with --lr find, a lower "
                                 f"--lr-mult).")


class FlipEpoch(Callback):
    "Tell the training loader's augmentations which epoch starts, for their `AlternatingFlip`"
    def before_epoch(self):
        dl = getattr(self.dls.train, 'dl', self.dls.train)  # a data-parallel fit wraps the loader
        for t in getattr(getattr(dl, 'after_item', None), 'fs', []):
            if hasattr(t, 'set_epoch'): t.set_epoch(self.epoch)


class EpochRecord(Callback):
    "Per epoch: mean train, validation and test loss and accuracy, learning rate and seconds; kept in `rows`"
    order, run_valid = 55, True

    def __init__(self, csv_path: Path | None = None, rows: list | None = None, log=None):
        self.csv_path, self.rows, self.log = csv_path, list(rows or []), log  # `log`: called with each epoch's line

    def before_epoch(self):
        self.start, self.lr_sum, self.n_batches = time.time(), 0., 0
        # loss * n, correct, n; 'valid' is what the loop validates on, 'test' filled by `TestPass` when that differs.
        # On the model's device, read once in `after_epoch`: a read per batch would make the host wait for each step.
        device = next(self.model.parameters()).device
        dtype = torch.float32 if device.type == 'mps' else torch.float64  # MPS has no float64
        self.sums = {k: torch.zeros(3, dtype=dtype, device=device) for k in ('train', 'valid', 'test', 'tta')}

    def partial_state(self) -> dict:
        "The epoch so far, for a checkpoint inside it: training sums, rate sum, batches and seconds"
        return {'train': self.sums['train'].cpu(), 'lr_sum': float(self.lr_sum), 'n_batches': self.n_batches,
                'seconds': time.time() - self.start}  # floats, not numpy's (one-cycle's rates), for `weights_only`

    def load_partial_state(self, state: dict):
        "Go on with the epoch that `partial_state` saved: its sums, and its seconds counted as spent"
        self.sums['train'] = state['train'].to(self.sums['train'])
        self.lr_sum, self.n_batches, self.start = state['lr_sum'], state['n_batches'], time.time() - state['seconds']

    def add(self, split: str, loss: torch.Tensor, pred: torch.Tensor, y: torch.Tensor):
        "Count a batch of `split` with mean `loss`, on the device, without reading a value"
        sums, n = self.sums[split], len(y)
        sums[:2] += torch.stack([loss.detach().to(sums.dtype) * n, (pred.argmax(dim=-1) == y).sum().to(sums.dtype)])
        sums[2] += n

    def after_batch(self):
        if not in_fit(self.learn): return
        self.add('train' if self.training else 'valid', self.loss, self.pred, self.yb[0])
        if self.training: self.lr_sum, self.n_batches = self.lr_sum + self.opt.hypers[-1]['lr'], self.n_batches + 1

    def after_epoch(self):
        if not in_fit(self.learn): return
        sums = self._read_sums()
        if not sums['train'][2]: return  # an epoch skipped on resume
        if not sums['test'][2]: sums['test'], sums['valid'] = sums['valid'], sums['test']  # the loop tested
        row = dict(epoch=len(self.rows) + 1, **_means('train', sums['train']))
        if sums['valid'][2]: row |= _means('valid', sums['valid'])
        row |= _means('test', sums['test'])
        if sums['tta'][2]: row['test_tta_accuracy'] = sums['tta'][1] / sums['tta'][2]
        row |= dict(lr=self.lr_sum / self.n_batches, seconds=time.time() - self.start)
        self.rows.append(row)
        if self.csv_path is not None and is_main(): write_metrics(self.csv_path, self.rows)
        if self.log is not None: self.log(format_row(row, self.n_epoch) + time_left(self.rows, self.n_epoch))

    def _read_sums(self) -> dict:
        "The epoch's sums as numbers, added up over the processes of a data-parallel run where they were split"
        # `TestPass` predicts the whole test split on every process: its sums are complete (and so is 'tta' then)
        local = {k: (v if k == 'test' else all_reduce_sum(v)) for k, v in self.sums.items() if k != 'tta'}
        tested = bool(local['test'][2])  # the same on every process: each predicts all of the test split or none
        local['tta'] = self.sums['tta'] if tested else all_reduce_sum(self.sums['tta'])
        return {k: v.tolist() for k, v in local.items()}  # the epoch's one read of the device


def _means(split: str, sums: list) -> dict:
    "Mean loss and accuracy of `split` from its (loss * n, correct, n) sums"
    loss, correct, n = sums
    return {f'{split}_loss': loss / max(n, 1), f'{split}_accuracy': correct / max(n, 1)}


class TestPass(Callback):
    "Each epoch of a fit, predict the test split: after validating on a held-out split; mirrored too with `tta`"
    order, run_valid = 4, True  # before `EMA` (5) puts the live weights back: the test split sees the validated model

    def __init__(self, tta: bool = False): self.tta = tta  # record flip-TTA accuracy: one more forward per test image

    def after_batch(self):
        "When the loop validates on the test split, it predicted the plain view: add the mirrored one"
        if self.tta and not self.training and in_fit(self.learn) and len(self.dls.loaders) < 3:
            self._add_tta(self.xb[0], self.pred, self.yb[0])

    def after_validate(self):
        if not in_fit(self.learn) or len(self.dls.loaders) < 3: return
        for xb, yb in self.dls[2]:
            pred = self._predict(xb)
            self.learn.epoch_record.add('test', self.learn.loss_func(pred, yb), pred, yb)
            if self.tta: self._add_tta(xb, pred, yb)

    def _add_tta(self, xb: torch.Tensor, pred: torch.Tensor, yb: torch.Tensor):
        "Count the mean of the plain (`pred`) and the mirrored view's probabilities of `xb`"
        probs = (pred.float().softmax(-1) + self._predict(xb.flip(-1)).softmax(-1)) / 2
        self.learn.epoch_record.add('tta', probs.new_zeros(()), probs, yb)

    def _predict(self, xb: torch.Tensor) -> torch.Tensor:
        "The model's fp32 logits of `xb`, in the run's precision and memory layout, without gradients"
        dtype = autocast_dtype(self.learn)
        layout = torch.channels_last if hasattr(self.learn, 'channels_last') else torch.contiguous_format
        with torch.no_grad(), torch.autocast(xb.device.type, dtype=dtype, enabled=dtype is not None):
            return self.model(xb.contiguous(memory_format=layout)).float()


def format_row(row: dict, n_epoch: int | None = None) -> str:
    "One line for a `metrics.csv` row: what the progress table shows, for logs that are not a terminal"
    of = f"/{n_epoch}" if n_epoch else ''
    splits = ' | '.join(f"{split} loss {row[f'{split}_loss']:.4f} accuracy {row[f'{split}_accuracy']:.2%}"
                        for split in ('train', 'valid', 'test') if f'{split}_loss' in row)
    if 'test_tta_accuracy' in row: splits += f" (flip TTA {row['test_tta_accuracy']:.2%})"
    return f"epoch {row['epoch']}{of}: {splits} | lr {row['lr']:.3g} | {row['seconds']:.0f} s"


def time_left(rows: list, n_epoch: int, last: int = 3) -> str:
    "' | about 1 h 5 min left': the epochs after `rows` at the median pace of the `last` ones; '' when none are left"
    left = n_epoch - rows[-1]['epoch']
    if left <= 0: return ''
    # recent epochs: a resumed run may be on another machine, and the first pays for warm-up; their median, as one
    # epoch that shared the cores with other work would move a mean for the next three
    recent = [r['seconds'] for r in rows[-last:]]
    minutes = max(1, round(left * statistics.median(recent) / 60))
    hours, minutes = divmod(minutes, 60)
    return f" | about {f'{hours} h ' if hours else ''}{minutes} min left"


def write_metrics(path: Path, rows: list):
    "Write the per-epoch `rows` to `path` as CSV, atomically"
    with atomic_write(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=[c for c in METRIC_COLUMNS if c in rows[0]] if rows else METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def read_metrics(path: Path) -> list:
    "Read a `metrics.csv` written by `write_metrics` back into rows of numbers; refuse a damaged one, naming it"
    try:
        with open(path, newline='') as f:
            return [{k: (int(v) if k == 'epoch' else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as e:
        raise RunFileError(f"{path} is damaged ({e}): put back a copy, or let `cifar-fastai train --resume "
                           f"{Path(path).parent}` write it again from the run's checkpoint") from None
