"What a recipe gave before on full CIFAR-10: the measured runs, said at the start of a run of the same recipe"
import csv
import json
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path

from cifar_fastai.config import RunConfig, flag

__all__ = ['MEASURED', 'Measured', 'measured_runs', 'same_recipe', 'expectation']

# one row per finished run of BENCHMARKS.md's 'Accuracy per budget', its figures as the run's own files give them
# (tests/test_expected.py reads them again from docs/results/<run>/)
MEASURED = Path(__file__).parent / 'measured.csv'
# options that change how a run goes, not what it learns: any value of theirs is the same recipe
NOT_RECIPE = {'data', 'epochs', 'seed', 'workers', 'skip_bad', 'interpret', 'tta', 'save_every', 'precision',
              'channels_last', 'sync_bn'}
FULL_CIFAR10 = 50_000, 10_000  # training and test images


@dataclass(frozen=True)
class Measured:
    "One finished run: its recipe's schedule and budget, its last epoch's test accuracy, its minutes of training"
    run: str               # the folder under docs/results/ that holds its evidence
    schedule: str
    epochs: int
    seed: int
    test_accuracy: float   # in [0, 1]
    tta_accuracy: float    # the same, with flip test-time augmentation
    minutes: float         # its epochs times its median epoch's seconds, over 60: steady against an epoch that
                           # shared the cores with other work, which the sum of its seconds is not
    processor: str         # the CPU of its `config.json`, 2 cores
    options: str = ''      # what it set that its budget's defaults no longer give, as name=value pairs: 'cutout=16'

    @property
    def changes(self) -> dict:
        "`options` as `RunConfig`'s fields and their values"
        return {name: json.loads(value) for name, value in (pair.split('=', 1) for pair in self.options.split())}

    @property
    def flags(self) -> str:
        "`options` as a command line gives them: '--cutout 16'"
        return ' '.join(f'{flag(name)} {value}' for name, value in self.changes.items())


def measured_runs(path: Path = MEASURED) -> list[Measured]:
    "The measured runs of `path`, in its order"
    with open(path, newline='') as f: rows = list(csv.DictReader(f))
    kinds = Measured.__annotations__
    return [Measured(**{k: kinds[k](v) for k, v in row.items()}) for row in rows]


def same_recipe(config: RunConfig, changes: dict | None = None) -> bool:
    "Whether `config` trains as its schedule does by default for its epochs with `changes`, whatever its seed or data"
    default = asdict(RunConfig(epochs=config.epochs, schedule=config.schedule, **(changes or {})))
    return all(v == default[k] for k, v in asdict(config).items() if k not in NOT_RECIPE)


def _epochs(n: int) -> str: return f"{n} epoch{'s' * (n != 1)}"


def _span(values, fmt: str) -> str:
    "'88.75' for one value, '88.75-89.24' for several"
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}-{fmt.format(high)}"


def _recipe_key(m: Measured) -> tuple:
    "`m`'s options in any order as one key, fewer first: the schedule's own defaults before a change to them"
    pairs = sorted(m.options.split())
    return len(pairs), pairs


def _budget(runs: list[Measured]) -> str:
    "What the runs of one budget reached, in how long, where"
    plain = _span([100 * m.test_accuracy for m in runs], '{:.2f}')
    tta = _span([100 * m.tta_accuracy for m in runs], '{:.2f}')
    minutes = _span([int(m.minutes + .5) for m in runs], '{}')
    seeds = f"seed{'s' * (len(runs) > 1)} {', '.join(str(m.seed) for m in runs)}"
    where = ' / '.join(dict.fromkeys(m.processor for m in runs))
    flags = f" with {runs[0].flags}" if runs[0].flags else ''
    return f"{_epochs(runs[0].epochs)}{flags}: {plain} % test accuracy ({tta} % with flip TTA), {seeds}, " \
           f"about {minutes} min on 2 cores of {where}"


def expectation(config: RunConfig, n_train: int, n_test: int, runs: list[Measured] | None = None) -> str | None:
    "What the measured runs of `config`'s recipe reached at its budget, or the nearest ones; None if nothing compares"
    if (n_train, n_test) != FULL_CIFAR10 or config.valid_pct: return None
    runs = [m for m in (measured_runs() if runs is None else runs)
            if m.schedule == config.schedule and same_recipe(config, m.changes)]
    runs.sort(key=lambda m: (m.epochs, _recipe_key(m), m.seed))
    # one line per budget and options: at another budget, runs that set different options are different recipes
    # that both rescale to `config`'s (a cutout set by hand at 8 epochs and none, the 8-epoch default, for 15)
    groups = [list(group) for _, group in groupby(runs, key=lambda m: (m.epochs, _recipe_key(m)))]
    if not groups: return None
    head = f"Measured before on full CIFAR-10 (BENCHMARKS.md), {config.schedule} for "
    same = [g for g in groups if g[0].epochs == config.epochs]
    if same: return head + '; '.join(map(_budget, same))
    budgets = list(dict.fromkeys(g[0].epochs for g in groups))  # in order
    below, above = [e for e in budgets if e < config.epochs][-1:], [e for e in budgets if e > config.epochs][:1]
    nearest = '; '.join(_budget(g) for g in groups if g[0].epochs in below + above)
    return head + nearest + f" (not measured at {_epochs(config.epochs)})"
