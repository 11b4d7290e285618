"A training run as a folder: configuration, learning-rate finder, fit with checkpoints, weights, export"
import json
import os
import platform
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import fastai
import torch
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib
from fastcore.basics import noop

from cifar_fastai.checkpoint import Checkpoint, SkipEpochs, load_checkpoint, restore_checkpoint
from cifar_fastai.ema import EMA
from cifar_fastai.io import atomic_save, atomic_write, ensure_writable_dir
from cifar_fastai.learner import WD_MODES, cifar_learner
from cifar_fastai.loaders import cifar_dls, ds_idx_of_test
from cifar_fastai.precision import PRECISIONS
from cifar_fastai.recipe import WarmupAnneal, budget_defaults
from cifar_fastai.transforms import cifar_augs

__all__ = ['SCHEDULES', 'RunConfig', 'ConfigError', 'train', 'find_lr', 'run_dls', 'run_learner', 'read_config']

SCHEDULES = ('plateau', 'one-cycle')
# fastai's suggestion rules; 'minimum' (a tenth of the lowest-loss rate) is the default: on full CIFAR-10 with
# SGD + momentum 0.9 'valley' picked 1e-3 where the loss kept falling to 5e-2 (lr_find.png of a 5-epoch run)
LR_SUGGESTIONS = {'valley': valley, 'slide': slide, 'minimum': minimum, 'steep': steep}
CONFIG, METRICS, WEIGHTS, EXPORT, LR_PLOT = 'config.json', 'metrics.csv', 'model.pth', 'export.pkl', 'lr_find.png'


class ConfigError(ValueError):
    "An option of a run is out of range"


@dataclass
class RunConfig:
    "Every option of a training run, as written to `config.json`"
    data: str | None = None         # path, 'sample', 'cifar10', or None: full CIFAR-10 if found, else the sample
    valid_pct: float = 0.           # share of each class of train held out to validate on (the plateau watches it);
                                    # 0: the test split validates, as the reports and fastai's CIFAR examples do
    epochs: int = 50                # as the reference reports
    bs: int = 64                    # twice the steps per epoch of 128, for 5% less throughput on a CPU
    lr: float | str = 'find'        # a number, or 'find' for the suggestion of `lr_find`
    lr_suggestion: str = 'minimum'  # which of fastai's `lr_find` suggestions 'find' uses
    lr_find_iters: int = 300        # batches of the range test: 'minimum' varied 1.2x over 4 seeds, 3x at fastai's 100
    lr_mult: float | None = None    # 'find' trains at this times the suggestion; None: by the budget (`budget_defaults`)
    momentum: float = 0.9
    wd: float = 5e-4
    wd_mode: str = 'l2'             # 'l2': added to the gradient, as the reports; or 'decoupled'
    label_smoothing: float = 0.     # torch's `CrossEntropyLoss(label_smoothing=...)`; 0: plain cross-entropy, as the reports
    ema: float = 0.998              # decay per step of the weight average that is tested and kept; 0: none, as the reports
    ema_every: int = 4              # steps between updates of the average (each one costs ~3% of a step)
    schedule: str = 'plateau'       # ReduceLROnPlateau on the validation loss, or fastai's 'one-cycle'
    warmup: float | None = None     # plateau: share of the steps the rate ramps up over; None: by the budget
    anneal: float | None = None     # plateau: share of the steps at the end it decays to 0 over; None: by the budget
    plateau_factor: float = 0.1     # torch's ReduceLROnPlateau defaults, but for the patience
    plateau_patience: int | None = None  # None: by the budget, a tenth of the epochs
    plateau_threshold: float = 1e-4  # torch's; 0.1 made the plateau cut after epoch 4 but cost 0.5 points at epoch 5 with EMA
    plateau_cooldown: int = 0
    plateau_min_lr: float = 0.
    pad: int | None = None          # reflection padding before a random 32x32 crop, 0 for none; None: by the budget
    flip: bool = True
    cutout: int = 16                # side of the square hole in pixels; 0: no cutout
    cutout_p: float = 0.5
    precision: str = 'auto'
    channels_last: bool = True
    seed: int | None = 42
    workers: int | None = None      # loader processes; None: 0 on CPU, a few beside a GPU
    skip_bad: bool = False
    interpret: bool = True          # write the pictures and report.md at the end
    sync_bn: bool = False           # nn.SyncBatchNorm across the processes of a data-parallel run (CUDA only)

    def __post_init__(self):
        "Fill the options left as None from the budget's rule"
        if not isinstance(self.epochs, int): return  # `check` names the bad value
        for name, value in budget_defaults(self.epochs, self.schedule).items():
            if getattr(self, name) is None: setattr(self, name, value)

    def check(self) -> 'RunConfig':
        "Raise `ConfigError` naming the first option out of range"
        for name in ('epochs', 'bs', 'lr_find_iters', 'ema_every'):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1: raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {v!r}")
        if self.lr != 'find' and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number or 'find', got {self.lr!r}")
        for name, allowed in (('precision', PRECISIONS), ('schedule', SCHEDULES), ('wd_mode', WD_MODES),
                              ('lr_suggestion', tuple(LR_SUGGESTIONS))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not self.lr_mult > 0: raise ConfigError(f"--lr-mult must be a positive number, got {self.lr_mult!r}")
        for name in ('momentum', 'wd', 'cutout_p', 'plateau_min_lr'):
            if getattr(self, name) < 0: raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        for name in ('label_smoothing', 'ema', 'valid_pct'):
            if not 0 <= getattr(self, name) < 1: raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)!r}")
        if not (isinstance(self.plateau_patience, int) and self.plateau_patience >= 0):
            raise ConfigError(f"--plateau-patience must be a whole number >= 0, got {self.plateau_patience!r}")
        if not 0 < self.plateau_factor < 1: raise ConfigError(f"--plateau-factor must be in (0, 1), got {self.plateau_factor!r}")
        try: WarmupAnneal(self.warmup, self.anneal)
        except ValueError as e: raise ConfigError(f"--warmup/--anneal: {e}") from None
        return self

    @classmethod
    def from_dict(cls, d: dict) -> 'RunConfig':
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_config(run) -> dict:
    "The `config.json` of run folder `run`, or an error saying it is not a run"
    path = Path(run) / CONFIG
    if not path.is_file(): raise ConfigError(f"{run} is not a run folder: it has no {CONFIG}")
    return json.loads(path.read_text())


def run_dls(config: RunConfig, **kwargs):
    "The `DataLoaders` of `config`: its data, batch size, augmentation and seed"
    augs = cifar_augs(pad=config.pad, flip=config.flip, cutout=config.cutout, cutout_p=config.cutout_p)
    return cifar_dls(config.data, bs=config.bs, augs=augs, seed=config.seed, num_workers=config.workers,
                     valid_pct=config.valid_pct, **kwargs)


def run_learner(dls, config: RunConfig, path: Path) -> Learner:
    "The `Learner` of `config`, keeping its files in `path`"
    plateau = dict(factor=config.plateau_factor, patience=config.plateau_patience, threshold=config.plateau_threshold,
                   cooldown=config.plateau_cooldown, min_lr=config.plateau_min_lr)
    lr = config.lr if config.lr != 'find' else 0.01  # replaced by the finder's suggestion before fitting
    return cifar_learner(dls, lr=lr, momentum=config.momentum, wd=config.wd, wd_mode=config.wd_mode,
                         precision=config.precision, channels_last=config.channels_last, plateau=plateau,
                         label_smoothing=config.label_smoothing, ema=EMA(config.ema, config.ema_every) if config.ema else 0.,
                         cbs=[WarmupAnneal(config.warmup, config.anneal)] if config.warmup or config.anneal else None,
                         path=path, model_dir='.')


def find_lr(learn: Learner, plot_path: Path | None = None, suggestion: str = 'minimum', num_it: int = 100,
            mult: float = 1.) -> dict:
    "fastai's LR range test (weights and optimizer restored afterwards): every suggestion, `mult` x `suggestion` under 'lr'"
    if suggestion not in LR_SUGGESTIONS: raise ConfigError(f"--lr-suggestion must be one of {', '.join(LR_SUGGESTIONS)}, got {suggestion!r}")
    learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=None)
    found = _suggestions(learn.recorder, num_it)
    if found[suggestion] is None:
        raise ConfigError(f"lr_find recorded too few points for the '{suggestion}' rule: raise --lr-find-iters "
                          f"(now {num_it}) or choose another --lr-suggestion")
    found |= {'lr': mult * found[suggestion], 'suggestion': suggestion, 'mult': mult}
    if plot_path is not None: _plot_lr_find(learn, found, plot_path)
    return found


def _plot_lr_find(learn: Learner, found: dict, plot_path: Path):
    "fastai's plot of the range test, with a line for each suggestion and one for the rate used"
    import matplotlib.pyplot as plt
    learn.recorder.plot_lr_find()  # fastai's plot (it returns no figure: take the current one)
    fig, ax = plt.gcf(), plt.gca()
    for (name, lr), color in zip(((n, found[n]) for n in LR_SUGGESTIONS), ('tab:orange', 'tab:green', 'tab:red', 'tab:purple')):
        if lr is not None: ax.axvline(lr, color=color, linestyle='-' if name == found['suggestion'] else ':', label=f"{name} {lr:.2e}")
    ax.axvline(found['lr'], color='black', label=f"used {found['lr']:.2e}" +
               (f" ({found['mult']:g} x {found['suggestion']})" if found['mult'] != 1 else ''))
    ax.set_title(f'LR range test, SGD momentum {learn.opt.hypers[0]["mom"]:g}')
    ax.legend(loc='best')
    fig.savefig(plot_path, dpi=120, bbox_inches='tight')
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


def _processor() -> str:
    "The CPU's model name (`platform.processor()` is empty on Linux)"
    try: names = [l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')]
    except OSError: names = []
    return names[0] if names else platform.processor()


def _versions() -> dict:
    import albumentations
    return {'python': platform.python_version(), 'torch': torch.__version__, 'fastai': fastai.__version__,
            'albumentations': albumentations.__version__, 'machine': platform.machine(),
            'processor': _processor(), 'cores': os.cpu_count(), 'threads': torch.get_num_threads()}


def _write_config(run: Path, config: RunConfig, learn: Learner, lr: float, dls, found: dict | None):
    record = {**asdict(config), 'found_lr': found[found['suggestion']] if found else None, 'lr_suggestions': found, 'lr_used': lr,
              'precision_used': learn.precision, 'device': str(dls.device), 'data_source': dls.data.source,
              'classes': list(dls.vocab), 'n_train': len(dls.train_ds), 'n_valid': len(dls.valid_ds) if config.valid_pct else 0,
              'n_test': len(dls[ds_idx_of_test(dls)].dataset),
              'processes': max(num_distrib(), 1), **_versions()}
    with atomic_write(run / CONFIG, 'w') as f: json.dump(record, f, indent=2)


def _launch(config: RunConfig, out):
    "`cifar_fastai.distributed` with its process group up and rank 0's `out`, when launched as several processes"
    if num_distrib() <= 1: return None, out
    from cifar_fastai import distributed  # needs accelerate, which one process does not
    distributed.start_process_group(config.sync_bn)
    return distributed, distributed.broadcast_value(out)  # a default `out` is a time stamp: rank 0's names the run


def _find_lr_on_main(learn: Learner, run: Path, config: RunConfig, parallel) -> dict:
    "`find_lr` in one process, or on rank 0 alone with its result sent to every process"
    find = lambda: find_lr(learn, run / LR_PLOT, config.lr_suggestion, config.lr_find_iters, config.lr_mult)
    if parallel is None: return find()
    with parallel.single_process(): found = None if rank_distrib() else find()
    return parallel.broadcast_value(found)


def _fit(learn: Learner, config: RunConfig, lr, run: Path, start_epoch: int = 0, cbs=None, parallel=None):
    cbs = [Checkpoint(run), SkipEpochs(start_epoch)] + list(cbs or [])
    with parallel.data_parallel(learn, config.sync_bn) if parallel else nullcontext():
        if config.schedule == 'one-cycle': learn.fit_one_cycle(config.epochs, lr_max=lr, cbs=cbs)
        else: learn.fit(config.epochs, lr=lr, cbs=cbs)


def _save_final(learn: Learner, run: Path):
    atomic_save({k: v.contiguous() for k, v in learn.model.state_dict().items()}, run / WEIGHTS)
    learn.export(EXPORT)  # fastai writes it under `learn.path`, which is `run`


def _resume(learn: Learner, run: Path, config: RunConfig, log) -> tuple:
    "Put `run`'s last checkpoint into `learn`: the epochs done and the learning rate to go on with"
    done = restore_checkpoint(learn, load_checkpoint(run))
    log(f"Resuming {run} after epoch {done} of {config.epochs}")
    return done, read_config(run)['lr_used'] if config.schedule == 'one-cycle' else [h['lr'] for h in learn.opt.hypers]


def _start(learn: Learner, run: Path, config: RunConfig, parallel, log) -> tuple:
    "Find the learning rate if asked and write `config.json`: no epochs done, and the rate to train with"
    found = _find_lr_on_main(learn, run, config, parallel) if config.lr == 'find' else None
    lr = found['lr'] if found else float(config.lr)
    if found: log(f"lr_find suggests {found[config.lr_suggestion]:.3g} ({config.lr_suggestion}); training at "
                  f"{config.lr_mult:g} x that = {lr:.3g}; plot in {run / LR_PLOT}")
    if not rank_distrib(): _write_config(run, config, learn, lr, learn.dls, found)
    return 0, lr


def _quiet(learn: Learner) -> ExitStack:
    "No fastai progress bars, and no fastai print of each epoch's raw values (which it makes when the bars are off)"
    stack = ExitStack()
    for context in (learn.no_bar(), learn.no_logging()): stack.enter_context(context)
    return stack


def train(config: RunConfig, out, resume: bool = False, cbs=None, log=print, progress: bool = True) -> Learner:
    "Train as `config` says in run folder `out` (or continue it when `resume`); return the `Learner`"
    # progress=False: no fastai bars (a log file would get every update), a `log` line per epoch instead
    config.check()
    parallel, out = _launch(config, out)
    main = not rank_distrib()  # only rank 0 of a data-parallel run writes and logs
    log = log if main else noop
    run = (ensure_writable_dir(out) if main else Path(out)).absolute()  # `learn.path`: fastai joins names to it
    if resume: config = RunConfig.from_dict(read_config(run))
    elif main and (run / CONFIG).exists():
        raise ConfigError(f"{run} already holds a run: continue it with --resume {run}, or choose another --out")
    dls = run_dls(config, progress=progress)
    held_out = f", {len(dls.valid_ds)} held out to validate" if config.valid_pct else ''
    log(f"Data: {dls.data.source}: {len(dls.train_ds)} train{held_out} and {len(dls[ds_idx_of_test(dls)].dataset)} test images")
    learn = run_learner(dls, config, run)
    learn.epoch_record.csv_path, learn.epoch_record.log = run / METRICS, None if progress else log
    with nullcontext() if progress else _quiet(learn):
        done, lr = _resume(learn, run, config, log) if resume else _start(learn, run, config, parallel, log)
        log(f"Training {config.epochs - done} epochs, precision {learn.precision}, schedule {config.schedule}")
        _fit(learn, config, lr, run, start_epoch=done, cbs=cbs, parallel=parallel)
    if main: _save_final(learn, run)
    return learn
