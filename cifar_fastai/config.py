"The options of a training run (`RunConfig`), checked, and as a run folder's `config.json` keeps them"
import json
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fastai.callback.schedule import minimum, slide, steep, valley

from cifar_fastai.checks import IMAGE_SIZE, non_negative, one_of, positive, whole, within
from cifar_fastai.errors import ConfigError, RunFileError
from cifar_fastai.io import atomic_write
from cifar_fastai.layout import CONFIG
from cifar_fastai.learner import WD_MODES
from cifar_fastai.precision import PRECISIONS
from cifar_fastai.recipe import ONE_CYCLE_SWING, WarmupAnneal, budget_defaults, ema_for_batch

__all__ = ['SCHEDULES', 'LR_SUGGESTIONS', 'CONFIG', 'CONFIG_FORMAT', 'ADDED_LATER', 'RESUME_CHANGES',
           'RunConfig', 'ConfigError', 'read_config', 'write_record', 'saved_config', 'check_resume', 'resume_changes',
           'flag']

SCHEDULES = ('plateau', 'one-cycle', 'linear')
# fastai's suggestion rules; 'minimum' (a tenth of the lowest-loss rate) is the default: on full CIFAR-10 with
# SGD + momentum 0.9 'valley' picked 1e-3 where the loss kept falling to 5e-2 (lr_find.png of a 5-epoch run)
LR_SUGGESTIONS = {'valley': valley, 'slide': slide, 'minimum': minimum, 'steep': steep}
CONFIG_FORMAT = 1  # layout of config.json; a version of the package that this one would misread raises it
# options added after the first runs, with the value that gives the behaviour of the runs saved before them
ADDED_LATER = dict(lr_find_iters=100, lr_mult=1., label_smoothing=0., ema=0., ema_every=1, sync_bn=False, valid_pct=0.,
                   warmup=0., anneal=0., tta=False, save_every=300.,
                   nesterov=False, bn_bias_scale=1., lookahead=False)  # saves inside an epoch change no result
RESUME_CHANGES = ('epochs', 'interpret', 'save_every', 'data')  # what `--resume` may change; the rest is the run's
# (`data` only to where the run's data moved: the run checks its classes and counts once it is read)
_FIX = 'put back a copy of the file, or start a new run'


@dataclass
class RunConfig:
    "Every option of a training run, as written to `config.json`"
    data: str | None = None         # path, 'sample', 'cifar10', or None: full CIFAR-10 if found, else the sample
    valid_pct: float = 0.           # share of each class of train held out to validate on (the plateau watches it);
                                    # 0: the test split validates, as the reports and fastai's CIFAR examples do
    epochs: int = 50                # as the reference reports
    bs: int | None = None           # None: by the schedule, 128 for 'linear' (1.07x the images a second), else 64
    lr: float | str = 'find'        # a number, or 'find' for the suggestion of `lr_find`
    lr_suggestion: str = 'minimum'  # which of fastai's `lr_find` suggestions 'find' uses
    lr_find_iters: int | None = None  # batches of the range test; None: `lr_find_length` of the data (300 on CIFAR-10)
    lr_mult: float | None = None    # 'find' trains at this times the suggestion; None: by the budget
    momentum: float = 0.9           # SGD's; one-cycle cycles it from 0.05 above to 0.05 below and back
    nesterov: bool | None = None    # Nesterov's momentum, as torch's `SGD(nesterov=True)`, or heavy ball as fastai;
                                    # None: by the schedule, Nesterov but for 'one-cycle'
    wd: float = 5e-4
    wd_mode: str = 'l2'             # 'l2': added to the gradient, as the reports; or 'decoupled'
    bn_bias_scale: float = 1.       # batch-norm biases step at this multiple of the rate (airbench: 64); 1: as the rest
    label_smoothing: float | None = None  # of torch's `CrossEntropyLoss`; None: by the schedule, 0 for 'one-cycle'
                                          # (plain cross-entropy, as the reports), else 0.2
    ema: float | None = None        # decay per step of the weight average tested and kept; 0: none, as the reports;
                                    # None: 0.998 at batch 64, the same span in images at another batch
    ema_every: int = 4              # steps between updates of the average (each one costs ~3% of a step)
    lookahead: bool = False         # the average is airbench's lookahead: its decay rises with the share of the fit
                                    # done, cubed, and the live weights restart from it at each update
    schedule: str = 'plateau'       # ReduceLROnPlateau on the validation loss, fastai's 'one-cycle', or 'linear':
                                    # up over `warmup`, down to 0 over `anneal`, constant momentum, no plateau
    warmup: float | None = None     # plateau, linear: share of the steps the rate ramps up over; None: by the budget
    anneal: float | None = None     # plateau, linear: share of the steps at the end it decays to 0 over; None: budget
    plateau_factor: float = 0.1     # torch's ReduceLROnPlateau defaults, but for the patience
    plateau_patience: int | None = None  # None: by the budget, a tenth of the epochs
    plateau_threshold: float = 1e-4  # torch's; 0.1 cut after epoch 4 but cost 0.5 points at epoch 5 with EMA
    plateau_cooldown: int = 0
    plateau_min_lr: float | None = None  # the rate's floor: a cut due there ends the run; None: PLATEAU_FLOOR x start
    pad: int | None = None          # reflection padding before a random 32x32 crop, 0 for none; None: by the budget
    flip: bool | str = True         # True: a random half each epoch; 'alternate': `AlternatingFlip`; False: none
    cutout: int | None = None       # side of the square hole in pixels, 0 for none; None: by the budget
    cutout_p: float = 0.5
    precision: str = 'auto'
    channels_last: bool = True
    seed: int | None = 42
    workers: int | None = None      # loader processes; None: 0 on CPU, a few beside a GPU
    skip_bad: bool = False
    interpret: bool = True          # write the pictures and report.md at the end
    tta: bool = False               # record each epoch's test accuracy with flip TTA too (a test pass more)
    save_every: float = 300.        # seconds of training between checkpoints inside an epoch; 0: at its end only
    sync_bn: bool = False           # nn.SyncBatchNorm across the processes of a data-parallel run (CUDA only)

    def __post_init__(self):
        "Fill the options left as None from the budget's and the schedule's rules"
        if not isinstance(self.epochs, int): return  # `check` names the bad value
        for name, value in budget_defaults(self.epochs, self.schedule).items():
            if getattr(self, name) is None: setattr(self, name, value)
        if self.ema is None and isinstance(self.bs, int) and self.bs > 0: self.ema = ema_for_batch(self.bs)

    def check(self) -> 'RunConfig':
        "Raise `ConfigError` naming the first option out of range"
        for f in fields(self):
            if not _is_a(getattr(self, f.name), f.type):
                raise ConfigError(f"{flag(f.name)} must be {_kind_name(f.type)}, got {getattr(self, f.name)!r}")
        for name in ('epochs', 'bs', 'lr_find_iters', 'ema_every'):
            if getattr(self, name) is not None: whole(flag(name), getattr(self, name))
        if self.lr != 'find': positive("--lr (or 'find')", self.lr)
        for name, allowed in (('precision', PRECISIONS), ('schedule', SCHEDULES), ('wd_mode', WD_MODES),
                              ('lr_suggestion', tuple(LR_SUGGESTIONS))):
            one_of(flag(name), getattr(self, name), allowed)
        positive('--lr-mult', self.lr_mult)
        positive('--bn-bias-scale', self.bn_bias_scale)
        if self.cutout is not None: whole('--cutout (a side in pixels)', self.cutout, low=0, high=IMAGE_SIZE)
        for name in ('seed', 'workers'):  # None: unseeded; as many workers as the device wants
            if getattr(self, name) is not None: whole(flag(name), getattr(self, name), low=0)
        for name in ('wd', 'plateau_min_lr', 'plateau_threshold', 'plateau_cooldown', 'pad', 'save_every'):
            if getattr(self, name) is not None: non_negative(flag(name), getattr(self, name))
        for name in ('momentum', 'label_smoothing', 'ema', 'valid_pct'): within(flag(name), getattr(self, name))
        within('--cutout-p', self.cutout_p, high_open=False)
        if self.lookahead and not self.ema:
            raise ConfigError("--lookahead is a kind of weight average: give it --ema (the decay it rises to), not 0")
        if self.flip not in (True, False, 'alternate'):
            raise ConfigError(f"--flip must be true, false or 'alternate', got {self.flip!r}")
        if self.schedule == 'one-cycle' and not ONE_CYCLE_SWING <= self.momentum < 1 - ONE_CYCLE_SWING:
            raise ConfigError(f"--momentum {self.momentum!r}: one-cycle cycles it {ONE_CYCLE_SWING} either side, so it "
                              f"must be in [{ONE_CYCLE_SWING}, {1 - ONE_CYCLE_SWING})")
        whole('--plateau-patience', self.plateau_patience, low=0)
        within('--plateau-factor', self.plateau_factor, low_open=True)
        try: WarmupAnneal(self.warmup, self.anneal)
        except ValueError as e: raise ConfigError(f"--warmup/--anneal: {e}") from None
        return self

    @classmethod
    def from_dict(cls, d: dict) -> 'RunConfig':
        "The options in `d` that are options of a run; the others take their defaults"
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_record(cls, record, path) -> 'RunConfig':
        "The options of `record`, a run's `config.json` at `path`, checked: all there, of their types and in range"
        if not isinstance(record, dict):
            raise RunFileError(f"{path} holds a {type(record).__name__}, not the options of a run; {_FIX}")
        written = record.get('format', 1)  # the files written before the format was recorded are format 1
        if not (isinstance(written, int) and written >= 1):
            raise RunFileError(f"{path} has format {written!r}, which no version of cifar-fastai writes; {_FIX}")
        if written > CONFIG_FORMAT:
            raise RunFileError(f"{path} was written by a newer version of cifar-fastai (format {written}, this one "
                               f"reads up to {CONFIG_FORMAT}): upgrade cifar-fastai to use the run")
        missing = [f.name for f in fields(cls) if f.name not in record and f.name not in ADDED_LATER]
        missing += [] if _is_a(record.get('lr_used'), float) else ['lr_used']  # the rate trained at, for resuming
        if missing: raise RunFileError(f"{path} lacks {', '.join(missing)}; {_FIX}")
        try: return cls.from_dict({**ADDED_LATER, **record}).check()
        except ConfigError as e: raise RunFileError(f"{path} holds a wrong option: {e}; {_FIX}") from None


def flag(name: str) -> str:
    "The command line's name of `RunConfig`'s field `name`: 'cutout_p' -> '--cutout-p'"
    return f"--{name.replace('_', '-')}"


def _is_a(value, kind) -> bool:
    "Whether `value` is of type `kind` (`int | None`...) as JSON and argparse give it: an int is a float, a bool no int"
    kinds = typing.get_args(kind) or (kind,)
    if isinstance(value, bool): return bool in kinds
    return any(isinstance(value, k) for k in kinds) or (float in kinds and isinstance(value, int))


def _kind_name(kind) -> str:
    names = {int: 'a whole number', float: 'a number', str: 'a string', bool: 'true or false', type(None): 'None'}
    return ' or '.join(names[k] for k in typing.get_args(kind) or (kind,))


def read_config(run) -> dict:
    "The `config.json` of run folder `run`, or an error saying it is not a run"
    path = Path(run) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run} is not a run folder: it has no {CONFIG}; pass a folder that `cifar-fastai train` "
                          f"wrote (its --out; runs/DATE-TIME by default)")
    try: return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path} is not valid JSON ({e}); {_FIX}") from None


def write_record(run, record: dict):
    "Write `record`, the options of a run and what it found, as run folder `run`'s `config.json`"
    with atomic_write(Path(run) / CONFIG, 'w') as f: json.dump(record, f, indent=2)


def saved_config(run) -> tuple[RunConfig, dict]:
    "The checked `RunConfig` of run folder `run`, and all its `config.json` records (rates found and used, data...)"
    record = read_config(run)
    return RunConfig.from_record(record, Path(run) / CONFIG), record


def check_resume(saved: RunConfig, config: RunConfig) -> RunConfig:
    "`config`, if it changes nothing of `saved` that resuming cannot (`RESUME_CHANGES`); else say which option it is"
    for f in fields(saved):
        theirs, ours = getattr(saved, f.name), getattr(config, f.name)
        if ours == theirs: continue
        if f.name not in RESUME_CHANGES:
            raise ConfigError(f"{flag(f.name)} {ours} contradicts the run, which was started with {theirs}: leave "
                              f"it out to continue the run, or start a new one with --out")
        if f.name == 'epochs' and saved.schedule != 'plateau':
            raise ConfigError(f"--epochs {ours}: a {saved.schedule} run's rates follow one cycle over its {theirs} "
                              f"epochs, which a cycle of another length would not continue; start a new run with "
                              f"--epochs {ours}, or continue this one without --epochs")
    return config


def resume_changes(saved: RunConfig, **changes) -> RunConfig:
    "`saved` with `changes`, those that resuming allows (more --epochs for a plateau run, --no-interpret)"
    return check_resume(saved, replace(saved, **changes))
