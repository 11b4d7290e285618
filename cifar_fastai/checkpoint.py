"A complete checkpoint after every epoch, written atomically, and the restore that resumes a run from it"
import random
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelEpochException
from fastcore.basics import noop
from fastcore.foundation import L

from cifar_fastai.callbacks import write_metrics
from cifar_fastai.collective import is_main, unwrap
from cifar_fastai.errors import RunFileError
from cifar_fastai.io import atomic_save, load_tensors

__all__ = ['CHECKPOINT', 'Checkpoint', 'SkipEpochs', 'rng_state', 'set_rng_state', 'load_checkpoint', 'load_weights',
           'restore_checkpoint']

CHECKPOINT = 'checkpoint.pth'


def _train_dl(learn):
    "The training loader, out of the `DistributedDL` that holds it during a data-parallel fit (as `.dl`)"
    return getattr(learn.dls.train, 'dl', learn.dls.train)


def _aug_generators(learn) -> list:
    return [g for t in _train_dl(learn).after_item.fs if hasattr(t, 'generators') for g in t.generators()]


def rng_state(learn) -> dict:
    "Every random state the next epoch draws from: Python, numpy, torch, the shuffle, the augmentations"
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    gens = _aug_generators(learn)
    return {'python': random.getstate(), 'numpy': (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
            'torch': torch.get_rng_state(), 'shuffle': _train_dl(learn).rng.getstate(),
            'augs': [g.getstate() if isinstance(g, random.Random) else g.bit_generator.state for g in gens]}


def set_rng_state(learn, state: dict):
    "Put back the random states saved by `rng_state`"
    random.setstate(state['python'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    _train_dl(learn).rng.setstate(state['shuffle'])
    for g, s in zip(_aug_generators(learn), state['augs'], strict=True):
        if isinstance(g, random.Random): g.setstate(s)
        else: g.bit_generator.state = s


class Checkpoint(Callback):
    "After each epoch, save model, optimizer, plateau state, random states and metrics to `path`/checkpoint.pth"
    order = 70  # after the epoch's record (55) and the plateau decision (60)

    def __init__(self, path: Path, metrics: Path | None = None):
        # metrics: a csv of the rows to write after the checkpoint, so that it never holds an epoch the checkpoint lacks
        self.path, self.metrics = Path(path), metrics

    def after_epoch(self):
        rows = self.learn.epoch_record.rows
        if not rows or rows[-1]['epoch'] != self.epoch + 1: return  # an epoch skipped on resume: nothing new
        if not is_main(): return  # the processes of a data-parallel run hold the same weights: rank 0 saves them
        atomic_save({'epoch': len(rows), 'model': unwrap(self.model).state_dict(), 'opt': _plain(self.opt.state_dict()),
                     'plateau': _plain(self.learn.reduce_lr_on_plateau.state_dict()), 'rng': rng_state(self.learn),
                     'rows': _plain(rows), 'ema': _ema_state(self.learn)}, self.path / CHECKPOINT)
        if self.metrics is not None: write_metrics(self.metrics, rows)


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
    return state


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
        set_rng_state(learn, state['rng'])
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as e:
        first = (str(e).splitlines() or [''])[0]
        raise RunFileError(f"{path} holds a damaged state ({type(e).__name__}: {first}); {_FIX}") from e
    learn.epoch_record.rows = list(state['rows'])
    return state['epoch']
