"""Test accuracy of whole recipes at several budgets, plain and with flip TTA, beside the reports and public anchors.

Reads finished run folders (`cifar-fastai train ... --out RUN`) and prints one markdown table: for each run, test
accuracy at epochs 5, 10, 20, 30 and 50 (what `metrics.csv` recorded: plain / flip TTA for runs trained with --tta),
at its last epoch plain and with flip test-time augmentation (recorded, or else its `model.pth` predicted again, which
needs the run's data), and its wall-clock minutes.
Runs with a held-out split (`--valid-pct`) print their validation accuracy instead: those are the ones that choose.
Run by hand; results go to BENCHMARKS.md.

    python scripts/bench_budget.py --runs runs/default-50 runs/fast-20-seed0 runs/fast-20-seed1 runs/fast-8
    python scripts/bench_budget.py --runs runs/sel-oc20-x20 runs/sel-oc20-x40 --no-tta
"""
import argparse
from pathlib import Path

from cifar_fastai.callbacks import read_metrics
from cifar_fastai.errors import UserError
from cifar_fastai.report_md import REFERENCE_FINAL
from cifar_fastai.layout import METRICS
from cifar_fastai.run import read_config

EPOCHS = (5, 10, 20, 30, 50)
# Public anchors with this network (CIFAR ResNet18, 11,173,962 parameters), test accuracy in %:
ANCHORS = [
    ('reference reports (plateau, 50 epochs)', {50: f'{REFERENCE_FINAL[0]} and {REFERENCE_FINAL[1]}'}, ''),
    # KellerJordan/cifar10-zoo, airbench/baselines/train_resnet18_94.py (its stated results)
    ('airbench ResNet18 baseline, 26 epochs', {}, '93.4-93.5 plain, 94.0 with flip TTA'),
    ('airbench ResNet18 baseline, 80 epochs', {}, '95.9'),
    # uoguelph-mlrg/Cutout, the Cutout paper's code: ResNet18 + cutout 16, 200 epochs
    ('Cutout paper ResNet18, 200 epochs', {}, '~96'),
]


def run_row(run: Path, tta: bool) -> list:
    "Name, recipe, accuracy at `EPOCHS`, last epoch plain and TTA, minutes: one table row for `run`"
    config, rows = read_config(run), read_metrics(run / METRICS)
    split = 'valid' if config.get('valid_pct') else 'test'
    at = {r['epoch']: _cell(r, split) for r in rows}
    last = rows[-1]
    final = at[last['epoch']]
    if tta and split == 'test' and 'test_tta_accuracy' not in last: final += f" / {tta_accuracy(run):.2f}"
    minutes = sum(r['seconds'] for r in rows) / 60
    recipe = (f"{config['schedule']}, {config['epochs']} epochs, lr {config['lr_used']:.3g}, seed {config['seed']}"
              + (f", {split} {config['valid_pct']:.0%}" if split == 'valid' else ''))
    return [f'`{run.name}`', recipe] + [at.get(e, '') for e in EPOCHS] + [f"{last['epoch']}: {final}", f'{minutes:.0f}']


def _cell(row: dict, split: str) -> str:
    "A row's accuracy on `split` in %, and with flip TTA after a slash when the run recorded it (`train --tta`)"
    tta = f" / {100 * row['test_tta_accuracy']:.2f}" if split == 'test' and 'test_tta_accuracy' in row else ''
    return f"{100 * row[f'{split}_accuracy']:.2f}{tta}"


def tta_accuracy(run: Path) -> float:
    "Test accuracy in % of the run's saved weights with flip test-time augmentation"
    from cifar_fastai.evaluate import load_run, predict
    learn = load_run(run)
    with learn.no_bar(): return 100 * predict(learn, tta=True).accuracy


def table(runs: list, tta: bool = True) -> str:
    "The markdown table of `runs` below the anchors"
    head = ['run', 'recipe'] + [f'epoch {e}' for e in EPOCHS] + ['last epoch: plain / TTA', 'minutes']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, at, note in ANCHORS:
        lines.append('| ' + ' | '.join([name, note] + [str(at.get(e, '')) for e in EPOCHS] + ['', '']) + ' |')
    lines += ['| ' + ' | '.join(run_row(Path(r), tta)) + ' |' for r in runs]
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', nargs='+', required=True, help='run folders')
    p.add_argument('--no-tta', dest='tta', action='store_false', help='skip predicting the saved weights again')
    args = p.parse_args()
    try: print(table(args.runs, args.tta))
    except (UserError, OSError) as e: p.error(str(e))  # a folder that is not a finished run, named


if __name__ == '__main__':
    main()
