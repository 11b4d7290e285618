"A training run as a folder: configuration, learning-rate finder, fit with checkpoints, weights, export"
import math
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib
from fastcore.basics import noop

from cifar_fastai.checkpoint import Checkpoint, SkipBatches, SkipEpochs, stop_after_batch
from cifar_fastai.collective import on_main
from cifar_fastai.config import CONFIG_FORMAT, SCHEDULES, ConfigError, RunConfig, read_config, write_record
from cifar_fastai.data import Cifar10Error, Source, read_cifar10
from cifar_fastai.ema import EMA
from cifar_fastai.expected import expectation
from cifar_fastai.io import atomic_save, ensure_writable_dir, remove_temporaries
from cifar_fastai.layout import CONFIG, EXPORT, LR_PLOT, LR_RECORD, METRICS, WEIGHTS
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls, ds_idx_of_test
from cifar_fastai.machine import versions
from cifar_fastai.rangetest import find_lr, lr_find_length, write_found
from cifar_fastai.recipe import WarmupAnneal, one_cycle_moms
from cifar_fastai.resume import Saved, restore, saved_run, set_floor
from cifar_fastai.transforms import cifar_augs

__all__ = ['SCHEDULES', 'RunConfig', 'ConfigError', 'train', 'range_test', 'find_lr', 'lr_find_length', 'run_dls',
           'run_learner', 'read_config', 'recorded_data', 'data_of_run']

def recorded_data(record: dict) -> str | None:
    "The `--data` that reads a run's data again, from its `config.json` `record`: the source it found if it searched"
    # 'data_source' names an absolute path, where 'data' may be relative to where the run started
    found = Source.from_str(record.get('data_source', ''))
    return found.data if found else record.get('data')


def data_of_run(run: Path, record: dict, data=None):
    "The `--data` that reads run `run`'s data: `data` if given, else `recorded_data`, if it is still there"
    source = data or recorded_data(record)
    if not data and source is not None and str(source) not in ('sample', 'cifar10') and not Path(source).exists():
        raise Cifar10Error(f"{source}, the data {run / CONFIG} records, does not exist: pass --data PATH to read it "
                           f"from where it is now")
    return source


def run_dls(config: RunConfig, data: str | None = None, test_only: bool = False, progress: bool = True, **kwargs):
    "The `DataLoaders` of `config`: its data (or `data`), batch size, augmentation and seed"
    # test_only: for predicting the test split, read it alone; fastai's loaders cannot be made without training
    # images, so the test images stand in for them (and nothing is held out of them)
    cifar = read_cifar10(config.data if data is None else data, skip_bad=config.skip_bad, progress=progress,
                         test_only=test_only)
    bs = config.bs
    if test_only:  # nothing trains, so a test set smaller than a batch is no reason to refuse
        cifar, bs = replace(cifar, train_x=cifar.test_x, train_y=cifar.test_y), min(bs, max(1, len(cifar.test_y)))
    augs = cifar_augs(pad=config.pad, flip=config.flip is True, cutout=config.cutout, cutout_p=config.cutout_p)
    return cifar_dls(cifar, bs=bs, augs=augs, seed=config.seed, num_workers=config.workers,
                     valid_pct=0. if test_only else config.valid_pct, alternate_flip=config.flip == 'alternate',
                     **kwargs)


def run_learner(dls, config: RunConfig, path: Path) -> Learner:
    "The `Learner` of `config`, keeping its files in `path`"
    patience = config.plateau_patience if config.schedule == 'plateau' else math.inf  # the others: never cuts
    plateau = dict(factor=config.plateau_factor, patience=patience, threshold=config.plateau_threshold,
                   cooldown=config.plateau_cooldown, stop_at_min_lr=True)  # `min_lr` once the starting rate is known
    lr = config.lr if config.lr != 'find' else 0.01  # replaced by the finder's suggestion before fitting
    ema = EMA(config.ema, config.ema_every, config.lookahead) if config.ema else 0.
    return cifar_learner(dls, lr=lr, momentum=config.momentum, nesterov=config.nesterov, wd=config.wd,
                         wd_mode=config.wd_mode, bn_bias_scale=config.bn_bias_scale, precision=config.precision,
                         channels_last=config.channels_last, plateau=plateau, label_smoothing=config.label_smoothing,
                         ema=ema, tta=config.tta,
                         cbs=[WarmupAnneal(config.warmup, config.anneal)] if config.warmup or config.anneal else None,
                         path=path, model_dir='.')


def _data_record(dls, config: RunConfig) -> dict:
    "What `config.json` records of the data of `dls`: where it was read, its classes and the images of each split"
    return {'data_source': dls.data.source, 'classes': list(dls.vocab), 'n_train': len(dls.train_ds),
            'n_valid': len(dls.valid_ds) if config.valid_pct else 0, 'n_test': len(dls[ds_idx_of_test(dls)].dataset)}


def _write_config(run: Path, config: RunConfig, learn: Learner, lr: float, dls, found: dict | None):
    record = {**asdict(config), 'found_lr': found[found['suggestion']] if found else None, 'lr_suggestions': found,
              'lr_used': lr, 'plateau_min_lr_used': learn.reduce_lr_on_plateau.min_lr,
              'precision_used': learn.precision, 'device': str(dls.device), **_data_record(dls, config),
              'processes': max(num_distrib(), 1), **versions(), 'format': CONFIG_FORMAT}
    write_record(run, record)


def _check_same_data(now: dict, config: RunConfig, saved: Saved, run: Path):
    "Refuse the `--data` a resumed run is moved to unless its `_data_record` `now` matches what the run recorded"
    what = lambda r: f"{r['n_train']} train, {r['n_valid']} held-out and {r['n_test']} test images of {r['classes']}"
    then = {k: saved.record.get(k) for k in now}
    if any(now[k] != then[k] for k in now if k != 'data_source' and then[k] is not None):  # None: not recorded then
        raise ConfigError(f"--data {config.data} holds {what(now)}, but {run} was trained on {what(then)}: pass the "
                          f"data it was trained on, or start a new run")


def _launch(config: RunConfig, out):
    "`cifar_fastai.distributed` with its process group up and rank 0's `out`, when launched as several processes"
    if num_distrib() <= 1: return None, out
    from cifar_fastai import distributed  # needs accelerate, which one process does not
    distributed.start_process_group(config.sync_bn)
    return distributed, distributed.broadcast_value(out)  # a default `out` is a time stamp: rank 0's names the run


def _find_lr_on_main(learn: Learner, run: Path, config: RunConfig, parallel) -> dict:
    "`find_lr` in one process, or on rank 0 alone with its result (or its error) sent to every process"
    find = lambda: find_lr(learn, run / LR_PLOT, config.lr_suggestion, config.lr_find_iters, config.lr_mult)
    if parallel is None: return find()
    with parallel.single_process(): return on_main(find)


def _fit(learn: Learner, config: RunConfig, lr, run: Path, start_epoch: int = 0, cbs=None, parallel=None,
         partial: dict | None = None):
    "Fit from epoch `start_epoch`, and from inside it where a checkpoint left it `partial`"
    skip = SkipBatches(partial['batch'], partial['record']) if partial else SkipBatches()
    save = Checkpoint(run, metrics=run / METRICS, every=config.save_every)
    cbs = [save, SkipEpochs(start_epoch), skip] + list(cbs or [])
    with parallel.data_parallel(learn, config.sync_bn) if parallel else nullcontext(), stop_after_batch(save):
        if config.schedule == 'one-cycle':
            learn.fit_one_cycle(config.epochs, lr_max=lr, moms=one_cycle_moms(config.momentum), cbs=cbs)
        else: learn.fit(config.epochs, lr=lr, cbs=cbs)


def _save_final(learn: Learner, run: Path):
    atomic_save({k: v.contiguous() for k, v in learn.model.state_dict().items()}, run / WEIGHTS)
    learn.export(EXPORT)  # fastai writes it under `learn.path`, which is `run`


def _plan(epochs: int, done: int, partial: dict | None) -> str:
    "What a fit has left: '20 epochs' from the start, 'epochs 16 to 20 (16 from its batch 234)' inside a resumed one"
    if not done and not partial: return f"{epochs} epochs"
    if done >= epochs: return f"no epochs (all {epochs} done)"  # a finished run resumed: its files are made again
    span = f"epoch {done + 1}" if done + 1 == epochs else f"epochs {done + 1} to {epochs}"
    return span + (f" ({done + 1} from its batch {partial['batch'] + 1})" if partial else '')


def _claim(run: Path):
    "Make `run` the folder of a new run: refuse one that holds a run, remove what a start killed before any epoch left"
    if (run / CONFIG).exists():
        raise ConfigError(f"{run} already holds a run: continue it with --resume {run}, or choose another --out")
    remove_temporaries(run)


@contextmanager
def _unmade_if_empty(run: Path, made: bool):
    "Remove `run` when this start `made` it and fails before writing anything in it (a refused --bs, Ctrl-C early)"
    try: yield
    except BaseException:
        if made and run.is_dir() and not any(run.iterdir()): run.rmdir()
        raise


def _start(learn: Learner, run: Path, config: RunConfig, parallel, log) -> tuple:
    "Find the learning rate if asked and write `config.json`: no epochs done, and the rate to train with"
    data = learn.dls.data  # the images read, held-out ones included: `expectation` compares none of those runs
    before = expectation(config, len(data.train_y), len(data.test_y))
    if before: log(before)  # what the user can expect, before the range test's minutes
    found = _find_lr_on_main(learn, run, config, parallel) if config.lr == 'find' else None
    lr = found['lr'] if found else float(config.lr)
    set_floor(learn, config, lr)
    if found: log(f"lr_find suggests {found[config.lr_suggestion]:.3g} ({config.lr_suggestion}); training at "
                  f"{config.lr_mult:g} x that = {lr:.3g}; plot in {run / LR_PLOT}")
    if not rank_distrib(): _write_config(run, config, learn, lr, learn.dls, found)
    return 0, lr


def _log_early_end(learn: Learner, config: RunConfig, log):
    "Say so when the plateau ended the run: a cut was due with the rate at its floor"
    done, plateau = len(learn.epoch_record.rows), learn.reduce_lr_on_plateau
    if not plateau.bottomed_out or done >= config.epochs: return
    log(f"Stopped after epoch {done} of {config.epochs}: the {'validation' if config.valid_pct else 'test'} loss "
        f"stopped improving with the learning rate at its floor, {plateau.min_lr:.3g} (--plateau-min-lr)")


def _quiet(learn: Learner) -> ExitStack:
    "No fastai progress bars, and no fastai print of each epoch's raw values (which it makes when the bars are off)"
    stack = ExitStack()
    for context in (learn.no_bar(), learn.no_logging()): stack.enter_context(context)
    return stack


def _learner(config: RunConfig, run: Path, saved: Saved | None, progress: bool, log) -> Learner:
    "The `Learner` of `config` in `run`, on the data a resumed run read; a `log` line per epoch unless `progress`"
    moved = saved is not None and config.data != saved.written.data  # `--resume RUN --data NEW`: the run's data, moved
    data = (config.data if moved else data_of_run(run, saved.record)) if saved else None
    dls = run_dls(config, data=data, progress=progress)
    found = _data_record(dls, config)
    if moved: _check_same_data(found, config, saved, run)
    held_out = f", {found['n_valid']} held out to validate" if config.valid_pct else ''
    log(f"Data: {found['data_source']}: {found['n_train']} train{held_out} and {found['n_test']} test images")
    learn = run_learner(dls, config, run)
    learn.epoch_record.log = None if progress else log
    return learn


def train(config: RunConfig | None, out, resume: bool = False, cbs=None, log=print, progress: bool = True) -> Learner:
    "Train as `config` says in run folder `out`, or go on with the run in `out` when `resume`; return the `Learner`"
    # resume: `config` None goes on as the run was saved, else it may differ from it in `RESUME_CHANGES` alone
    # progress=False: no fastai bars (a log file would get every update), a `log` line per epoch instead
    saved = saved_run(Path(out), config) if resume else None
    config = (saved.config if saved else config).check()
    parallel, out = _launch(config, out)
    main = not rank_distrib()  # only rank 0 of a data-parallel run writes and logs
    log = log if main else noop
    made = main and not resume and not Path(out).exists()
    run = (ensure_writable_dir(out) if main else Path(out)).absolute()  # `learn.path`: fastai joins names to it
    if not resume: on_main(lambda: _claim(run))  # every process stops if rank 0 refuses the folder
    with _unmade_if_empty(run, made), parallel.peer_failures() if parallel else nullcontext():
        learn = _learner(config, run, saved, progress, log)
        with nullcontext() if progress else _quiet(learn):
            done, lr = restore(learn, run, saved, log) if resume else _start(learn, run, config, parallel, log)
            partial = saved.partial if resume else None
            plan = _plan(config.epochs, done, partial)
            log(f"Training {plan}, precision {learn.precision}, schedule {config.schedule}")
            _fit(learn, config, lr, run, start_epoch=done, cbs=cbs, parallel=parallel, partial=partial)
        _log_early_end(learn, config, log)
        if main: _save_final(learn, run)
    return learn


def range_test(config: RunConfig, out, progress: bool = True) -> dict:
    "Only the range test of `config`: its suggestions, with `lr_find.png` and `lr_find.json` written into `out`"
    out = Path(out)
    made = not out.exists()
    run = ensure_writable_dir(out)
    if (run / CONFIG).exists():
        raise ConfigError(f"{run} holds a training run: lr-find would write its {LR_PLOT} and {LR_RECORD} there; "
                          f"choose another --out")
    with _unmade_if_empty(run, made):  # a bad --data or a Ctrl-C while reading leaves no empty folder behind
        learn = run_learner(run_dls(config.check(), progress=progress), config, run)
        with nullcontext() if progress else learn.no_bar():
            found = find_lr(learn, run / LR_PLOT, config.lr_suggestion, config.lr_find_iters, config.lr_mult)
        write_found(found, run / LR_RECORD)
    return found
