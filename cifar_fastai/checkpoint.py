"A complete checkpoint after every epoch and every few minutes inside one, written atomically, and its restore"
import itertools
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelEpochException
from fastai.torch_core import rank_distrib
from fastcore.basics import noop
from fastcore.foundation import L

from cifar_fastai.callbacks import in_fit, batches_done, write_metrics
from cifar_fastai.collective import gather_values, in_process_group, is_main, unwrap
from cifar_fastai.errors import RunFileError
from cifar_fastai.io import atomic_save, load_tensors
from cifar_fastai.layout import CHECKPOINT
from cifar_fastai.precision import autocast_of

__all__ = ['CHECKPOINT', 'Checkpoint', 'stop_after_batch', 'SkipEpochs', 'SkipBatches', 'rng_state', 'every_rank',
           'set_rng_state', 'load_checkpoint', 'load_weights', 'restore_checkpoint']



def _train_dl(learn):
    "The training loader, out of the `DistributedDL` that holds it during a data-parallel fit (as `.dl`)"
    return getattr(learn.dls.train, 'dl', learn.dls.train)


def _aug_transforms(learn) -> list:
    return [t for t in _train_dl(learn).after_item.fs if hasattr(t, 'generators')]


def _aug_generators(learn) -> list: return [g for t in _aug_transforms(learn) for g in t.generators()]


def _aug_states(learn) -> list:
    return [g.getstate() if isinstance(g, random.Random) else g.bit_generator.state for g in _aug_generators(learn)]


def _set_aug_states(learn, states: list):
    for g, s in zip(_aug_generators(learn), states, strict=True):
        if isinstance(g, random.Random): g.setstate(s)
        else: g.bit_generator.state = s


def rng_state(learn) -> dict:
    "Every random state the next epoch draws from: Python, numpy, torch, the shuffle, this process's augmentations"
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'python': random.getstate(), 'numpy': (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
            'torch': torch.get_rng_state(), 'shuffle': _train_dl(learn).rng.getstate(), 'augs': _aug_states(learn)}


def every_rank(rng: dict) -> dict:
    "`rng` (of `rng_state`) with the augmentation states of every process of a data-parallel run, which draw apart"
    # a collective: every process calls it, at the end of an epoch
    return {**rng, 'augs_by_rank': gather_values(rng['augs'])}


def set_rng_state(learn, state: dict):
    "Put back the random states saved by `rng_state`: the augmentations' of this process's rank when it has them"
    random.setstate(state['python'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    _train_dl(learn).rng.setstate(state['shuffle'])
    rank, by_rank = rank_distrib(), state.get('augs_by_rank') or []
    # a checkpoint from before 'augs_by_rank', or from fewer processes: rank 0's states, which `seed_by_rank` then
    # replaces on the other ranks with their own fresh streams
    own = rank < len(by_rank)
    _set_aug_states(learn, by_rank[rank] if own else state['augs'])
    for t in _aug_transforms(learn): t.restored_for(rank if own else 0)


class Checkpoint(Callback):
    "Save weights, optimizer, plateau, random states, metrics to `path`/checkpoint.pth after each epoch, and inside one"
    order = 70  # after the epoch's record (55), the plateau's decision (60) and the warm-up's rate put back (56)

    def __init__(self, path: Path, metrics: Path | None = None, every: float = 0.):
        # metrics: a csv of the rows to write after the checkpoint, so that it never holds an epoch the checkpoint lacks
        # every: seconds of training between saves inside an epoch (0: at the end of each epoch only); one process only
        self.path, self.metrics, self.every = Path(path), metrics, every
        self.epoch_rng, self.saved_at, self.stop_asked, self.fitting = None, time.time(), False, False

    def ask_stop(self, signum=None, frame=None):
        "Save and stop after the training batch in progress, or after the epoch in its last batch or test pass"
        if self.stop_asked or not self.fitting: raise KeyboardInterrupt  # asked again, or outside a fit: at once
        self.stop_asked = True

    def before_fit(self): self.stop_asked, self.fitting = False, True
    def after_fit(self): self.fitting = False

    def before_epoch(self):
        self.epoch_rng = rng_state(self.learn)  # what the epoch's shuffle and augmentations start from: a resume
        self.saved_at = time.time()             # inside it draws them again

    def after_batch(self):
        if not (self.training and in_fit(self.learn)): return
        done = batches_done(self.learn)
        inside = 0 < done < self.n_iter and not in_process_group()  # the processes' sums are each their own
        if inside and (self.stop_asked or self.every and time.time() - self.saved_at >= self.every):
            self._save(self.epoch_rng, partial={'batch': done, 'record': self.learn.epoch_record.partial_state()})
            self.saved_at = time.time()
        if self.stop_asked and done < self.n_iter: raise KeyboardInterrupt  # after the last: once the epoch is saved

    def after_epoch(self):
        rows = self.learn.epoch_record.rows
        if not rows or rows[-1]['epoch'] != self.epoch + 1: return  # an epoch skipped on resume: nothing new
        self._save(every_rank(rng_state(self.learn)))  # inside an epoch only one process saves: no ranks to gather
        if self.metrics is not None and is_main(): write_metrics(self.metrics, rows)
        if self.stop_asked: raise KeyboardInterrupt

    def _save(self, rng: dict, partial: dict | None = None):
        "Write the checkpoint: the complete epochs, and `partial`, the batches done of the next one, if any"
        if not is_main(): return  # the processes of a data-parallel run hold the same weights: rank 0 saves them
        rows = self.learn.epoch_record.rows
        atomic_save({'epoch': len(rows), 'model': unwrap(self.model).state_dict(), 'opt': _plain(self.opt.state_dict()),
                     'plateau': _plain(self.learn.reduce_lr_on_plateau.state_dict()), 'rng': rng,
                     'rows': _plain(rows), 'ema': _ema_state(self.learn), 'scaler': _scaler_state(self.learn),
                     'partial': partial}, self.path / CHECKPOINT)


SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_after_batch(checkpoint: Checkpoint):
    "Within: a Ctrl-C or SIGTERM has `checkpoint` save and stop (`Checkpoint.ask_stop`); a second: at once"
    if in_process_group() or threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; a data-parallel run stops at once, as its peers do
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS: signal.signal(s, checkpoint.ask_stop)
    try: yield
    finally:
        for s, handler in old.items(): signal.signal(s, handler)


def _scaler_state(learn) -> dict | None:
    "The fp16 loss scaler of `learn` (its `Autocast` callback's), or None when it has none"
    autocast = autocast_of(learn)
    return autocast.scaler_state() if autocast is not None else None


def _ema_state(learn) -> dict | None:
    "The weight average of `learn` (its `EMA` callback), or None when it has none"
    return learn.ema.state_dict() if hasattr(learn, 'ema') else None


class SkipEpochs(Callback):
    "Skip the first `n` epochs of a fit, silently: what fastai's `start_epoch` does, without a table line for each"
    order = 70  # after `Recorder.before_epoch` (50), as fastai's `SkipToEpoch`

    def __init__(self, n: int): self.n, self.saved = n, None

    def before_epoch(self):
        self.after_fit()
        if self.epoch >= self.n: return
        self.saved, self.learn.logger = self.learn.logger, noop  # `Recorder` would print an empty row
        raise CancelEpochException

    def after_fit(self):
        if self.saved is not None: self.learn.logger, self.saved = self.saved, None


class _Dropping:
    "A training loader whose first `n` batches are drawn and dropped: the rest of an epoch, with the draws of it all"
    def __init__(self, dl, n: int): self.dl, self.n = dl, n
    def __len__(self): return len(self.dl)  # fastai's position in the fit (`pct_train`) counts the dropped batches
    def __iter__(self): return itertools.islice(iter(self.dl), self.n, None)
    def __getattr__(self, name): return getattr(self.dl, name)


class SkipBatches(Callback):
    "Go on inside an epoch: the first trained epoch of the fit starts after batch `n`, its record as `record` left it"
    order = -5  # after `TrainEvalCallback` (-10) has set the epoch's position in the fit

    def __init__(self, n: int = 0, record: dict | None = None): self.n, self.record = n, record

    def before_train(self):
        if not (self.n and in_fit(self.learn)): return
        n_iter = len(self.dl)
        self.learn.dl = _Dropping(self.dl, self.n)
        self.learn.pct_train += self.n / (self.n_epoch * n_iter)
        self.learn.train_iter += self.n
        if self.record is not None: self.learn.epoch_record.load_partial_state(self.record)
        self.n, self.record = 0, None  # once


def _plain(o):
    "fastai's `L` and other containers as plain lists and dicts, which `torch.load(weights_only=True)` admits"
    if isinstance(o, dict): return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, L)): return [_plain(v) for v in o]
    return o.item() if isinstance(o, np.generic) else o


_FIX = ("the epochs it held cannot be recovered from it: put back a copy of the file if you have one, "
        "or start the run again in a new folder")
_KEYS = {'epoch': int, 'model': dict, 'opt': dict, 'plateau': dict, 'rng': dict, 'rows': list}


def load_checkpoint(run: Path) -> dict:
    "The last complete checkpoint of `run`, loaded onto the CPU without running code from the file, its parts checked"
    # the CPU: random states must be CPU tensors; `restore_checkpoint` puts the rest beside the model's tensors
    path = Path(run) / CHECKPOINT
    if not path.exists(): raise FileNotFoundError(f"{path} does not exist: {run} has no completed epoch to resume from")
    state = load_tensors(path, 'a checkpoint of this package', _FIX)
    wrong = [k for k, kind in _KEYS.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    if wrong: raise RunFileError(f"{path} is not a checkpoint of this package: it lacks {', '.join(wrong)}; {_FIX}")
    if state['epoch'] != len(state['rows']):
        raise RunFileError(f"{path} is inconsistent: epoch {state['epoch']} with {len(state['rows'])} rows of "
                           f"metrics; {_FIX}")
    if not _partial_ok(state.get('partial')):
        raise RunFileError(f"{path} holds a damaged record of the epoch it stopped in; {_FIX}")
    if not _scaler_ok(state.get('scaler')): raise RunFileError(f"{path} holds a damaged fp16 loss scaler; {_FIX}")
    return state


def _scaler_ok(scaler) -> bool:
    "Whether `scaler` is None (no fp16) or a state that torch's `GradScaler` loads, with a positive scale"
    if scaler is None: return True
    if not (isinstance(scaler, dict) and all(isinstance(v, (int, float)) for v in scaler.values())): return False
    try: torch.amp.GradScaler('cpu').load_state_dict(scaler)
    except (KeyError, RuntimeError): return False  # a key missing; no keys at all
    return scaler['scale'] > 0


def _partial_ok(partial) -> bool:
    "Whether `partial` is None (saved at an epoch's end) or the batches done of an epoch, as `Checkpoint` saves them"
    if partial is None: return True
    record = partial.get('record') if isinstance(partial, dict) else None
    kinds = {'train': torch.Tensor, 'lr_sum': float, 'n_batches': int, 'seconds': float}
    return (isinstance(partial.get('batch'), int) and partial['batch'] > 0 and isinstance(record, dict)
            and all(isinstance(record.get(k), kind) for k, kind in kinds.items()) and record['train'].shape == (3,))


def _onto_params(opt):
    "Each optimizer-state tensor of `opt` onto its parameter's device, floating ones in its dtype (as torch's do)"
    for p, state in opt.state.items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor): state[k] = v.to(p.device, p.dtype if v.is_floating_point() else v.dtype)


def load_weights(model: torch.nn.Module, state, path: Path, fix: str):
    "Load the state dict `state`, read from `path`, into `model`, or say in one line how it does not fit"
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise RunFileError(f"{path} does not hold a state dict of tensors but a {type(state).__name__}; {fix}")
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [f"{k} {tuple(state[k].shape)} for {tuple(own[k].shape)}" for k in own.keys() & state.keys()
              if own[k].shape != state[k].shape]
    problems = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for what, v in
                (('missing', missing), ('unexpected', unexpected), ('of another shape', shapes)) if v]
    if problems: raise RunFileError(f"{path} does not fit this run's model: tensors {'; '.join(problems)}; {fix}")
    model.load_state_dict(state)


def restore_checkpoint(learn, state: dict, path: Path | None = None) -> int:
    "Load `state` (weights, optimizer, plateau, metrics, random states, weight average) into `learn`; return its epochs"
    # path: the file `state` came from, named when it does not fit `learn`
    path = path or CHECKPOINT
    load_weights(learn.model, state['model'], path, _FIX)
    if learn.opt is None: learn.create_opt()
    try:
        learn.opt.load_state_dict({'state': state['opt']['state'], 'hypers': L(state['opt']['hypers'])})
        _onto_params(learn.opt)
        learn.reduce_lr_on_plateau.load_state_dict(state['plateau'])
        if hasattr(learn, 'ema') and state.get('ema') is not None: learn.ema.load_state_dict(state['ema'])
        autocast = autocast_of(learn)
        if autocast is not None and state.get('scaler'): autocast.resumed_scaler = state['scaler']
        set_rng_state(learn, state['rng'])
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as e:
        first = (str(e).splitlines() or [''])[0]
        raise RunFileError(f"{path} holds a damaged state ({type(e).__name__}: {first}); {_FIX}") from e
    learn.epoch_record.rows = list(state['rows'])
    return state['epoch']
