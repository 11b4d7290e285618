"Going on with a run folder: its saved options and checkpoint, checked, then put back into a `Learner`"
from pathlib import Path
from typing import NamedTuple

from fastai.learner import Learner
from fastai.torch_core import rank_distrib

from cifar_fastai.callbacks import write_metrics
from cifar_fastai.checkpoint import load_checkpoint, restore_checkpoint
from cifar_fastai.config import RESUME_CHANGES, ConfigError, RunConfig, check_resume, saved_config, write_record
from cifar_fastai.io import remove_temporaries
from cifar_fastai.layout import CHECKPOINT, METRICS

__all__ = ['PLATEAU_FLOOR', 'Saved', 'saved_run', 'restore', 'set_floor']

PLATEAU_FLOOR = 1e-3  # the plateau's default floor, times the starting rate: three cuts by 0.1


class Saved(NamedTuple):
    "What a run folder holds to go on from: its options, all its `config.json`, its last checkpoint (None before one)"
    config: RunConfig
    record: dict
    state: dict | None
    written: RunConfig  # the options as `config.json` gives them, before this resume's changes

    @property
    def partial(self) -> dict | None:
        "Where the checkpoint stopped inside its next epoch ('batch', 'record' so far); None at an epoch's end"
        return (self.state or {}).get('partial')


def saved_run(run: Path, config: RunConfig | None) -> Saved:
    "The run in `run`, to go on with `config` (None: as saved), every file checked before anything is written"
    saved, record = saved_config(run)
    config = saved if config is None else check_resume(saved, config)
    state = load_checkpoint(run) if (run / CHECKPOINT).exists() else None
    found = Saved(config, record, state, saved)
    if state and config.epochs < state['epoch'] + bool(found.partial):  # a partial epoch is the next one under way
        trained = f"is inside epoch {state['epoch'] + 1}" if found.partial else f"has trained {state['epoch']} epochs"
        raise ConfigError(f"--epochs {config.epochs}: {run} {trained} already; leave --epochs out to finish it, "
                          f"or give more")
    return found


def restore(learn: Learner, run: Path, saved: Saved, log) -> tuple:
    "Put `saved`'s checkpoint into `learn` (none: start again as saved), and `run`'s files in agreement with it"
    config, state = saved.config, saved.state
    done = restore_checkpoint(learn, state, run / CHECKPOINT) if state else 0
    set_floor(learn, config, saved.record['lr_used'])
    if not rank_distrib(): _tidy(run, learn.epoch_record.rows, saved, learn.dls.data.source)
    longer = f" (extended from {saved.record['epochs']}" if config.epochs != saved.record['epochs'] else ''
    if longer and (config.warmup or config.anneal):  # shares of the steps: of the new length from now on
        longer += f"; its warm-up and final decay now span {config.epochs} epochs, from the plateau's rate"
    longer += ')' if longer else ''
    inside = f" and {saved.partial['batch']} batches of epoch {done + 1}" if saved.partial else ''
    log(f"Resuming {run} after epoch {done} of {config.epochs}{longer}{inside}" if state else
        f"{run} has no complete epoch: starting it again with its saved options and learning rate")
    if state is None or config.schedule == 'one-cycle': return done, saved.record['lr_used']
    return done, [h['lr'] for h in learn.opt.hypers]


def set_floor(learn: Learner, config: RunConfig, start: float):
    "The plateau's lowest rate: `--plateau-min-lr`, or `PLATEAU_FLOOR` times the starting rate `start`"
    floor = config.plateau_min_lr
    learn.reduce_lr_on_plateau.min_lr = PLATEAU_FLOOR * start if floor is None else floor


def _tidy(run: Path, rows: list, saved: Saved, source: str):
    "Make the files of `run` agree with the checkpoint it goes on from: no temporaries, its epochs' metrics and options"
    remove_temporaries(run)
    if rows: write_metrics(run / METRICS, rows)
    else: (run / METRICS).unlink(missing_ok=True)  # epochs recorded after the last checkpoint are trained again
    # an option newer than the run reads as what the run did without it (`ADDED_LATER`): unchanged, not written
    now, was = saved.config, saved.written
    changed = {k: getattr(now, k) for k in RESUME_CHANGES if getattr(was, k) != getattr(now, k)}
    if 'data' in changed: changed['data_source'] = source  # where the moved data was read: where to read it again
    if changed: write_record(run, saved.record | changed)
