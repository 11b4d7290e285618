"""Fold finished run folders into one CSV: a row a run, with its options, its test accuracy after each epoch and what it
taught, so that the sweeps behind BENCHMARKS.md need no folder each.

A run folder's `config.json` gives the options, its `metrics.csv` the accuracies; each decay that `scripts/bench_ema.py`
scored beside a run (`shadow_averages.csv`) is a row of its own, named RUN@emaDECAY. Run by hand.

    cd docs/results && python ../../scripts/fold_runs.py full-plateau sweep/x2-seed42 ... --out sweeps.csv
    python scripts/fold_runs.py --markdown docs/results/sweeps.csv          # the CSV as a table for BENCHMARKS.md

The folders folded into docs/results/sweeps.csv are in the history of the repository: `git log -- docs/results/sweep`
names the last commit that has them, and `git checkout COMMIT -- docs/results/sweep` brings them back.
"""
import argparse
import csv
import json
from pathlib import Path

OPTIONS = ('schedule', 'lr', 'lr_find_iters', 'lr_mult', 'lr_used', 'bs', 'pad', 'cutout', 'label_smoothing', 'ema',
           'ema_every', 'plateau_patience', 'plateau_threshold', 'seed', 'n_train', 'threads')
# what runs older than an option did, where their config.json lacks it
BEFORE_OPTION = {'lr_find_iters': 100, 'lr_mult': 1, 'label_smoothing': 0, 'ema': 0, 'ema_every': 1}
EPOCHS = 5
# What each run taught, from the BENCHMARKS.md section that reported it; the reference log is one report's
TAUGHT = {
    'full-plateau': "first default (pad-4 crop, bs 128, patience 10): 6.29 points behind at epoch 5; torch's patience "
                    'never cuts in 5 epochs, it became a tenth of the epochs',
    'full-one-cycle': 'one-cycle at 0.1 with the pad-4 crop: 45.95 % at epoch 2, the crop slows the first epochs',
    'oc-lr1-pad0': 'one-cycle without the crop: 21 points above the crop at epoch 2 and 1.6 at epoch 5; the default '
                   "dropped the crop, as the reports",
    'p-lr05-pad0-pat0': 'a fixed 0.05 from the start: 43.55 % after epoch 1, stopped; lr_find picks the rate',
    'p-lr006-bs64-pad0-pat0': 'a fixed 0.006: ahead at epochs 1-4, 78.57 % at 5 without a cut; a higher rate is not '
                              'faster per epoch',
    'p-lr01-bs64-pad0-pat0': 'a fixed 0.01: ahead at epochs 1-3, stopped; as 0.006',
    'plain-seed42': 'lr_find minimum, patience 0, no average: the test loss rose after epoch 4, the cut that followed '
                    'gained 6.54 points (81.69 %); the rate was cut by chance',
    'plain-seed1': 'the same on seed 1: the test loss rose in epoch 5 (72.21 %, 4.52 down), the cut came after the '
                   'run; at a constant rate an epoch moves by points',
    'ema-seed42': 'a weight average (every step) on plain-seed42: +6.26 points at epoch 1, 82.30 % at 5; the average '
                  'became the default',
    'ema-seed1': 'a weight average on plain-seed1: +8.12 points at epoch 1, 82.56 % at 5, level with the reference log',
    'ema-thr01-seed42': 'plateau threshold 0.1: the cut after epoch 4 cost 0.48 points at 5; the threshold stays '
                        "torch's; an update every 4 steps is within 0.05 points of every step",
    'ema-thr01-seed1': 'plateau threshold 0.1 on seed 1: the cut cost 0.33 points at epoch 5',
    'ema-lr006-seed42': 'a fixed 0.006 with the average: ahead of the suggestion by 2 points at epoch 1, stopped after '
                        '3; the average takes a higher rate',
    'ema-lr006-seed42@ema0.995': 'decay 0.995 scored beside ema-lr006-seed42: 0.06 points ahead of 0.998 at epoch 3',
    'ema-lr006-seed42@ema0.999': 'decay 0.999 beside ema-lr006-seed42: equal to 0.998, as within 5 epochs the warm-up '
                                 'decides',
    'ema-ls01-seed42': 'label smoothing 0.1: 0.73 and 0.47 points behind ema-thr01-seed42 (without it) after epochs '
                       '1-2, stopped; it stays off',
    'ema-ls01-seed42@ema0.995': 'decay 0.995 beside ema-ls01-seed42, scored after epoch 1 only: equal to 0.998',
    'ema-ls01-seed42@ema0.999': 'decay 0.999 beside ema-ls01-seed42, scored after epoch 1 only: equal to 0.998',
    'x2-seed42': '2x the 100-batch range test: ahead of the reference log at all 5 epochs (82.77 %)',
    'x2-seed1': '2x the 100-batch range test on seed 1: ahead at all 5 epochs (83.12 %)',
    'x2-seed0': '2x on seed 0: its suggestion 0.0011 gave 81.72 % at epoch 5; a 100-batch range test varies 3x '
                'with the seed',
    'x2-seed42@ema0.995': 'decay 0.995 scored beside x2-seed42: 0.1-0.2 points ahead of 0.998, the size of the seed '
                          'spread; the default stays 0.998',
    'x2-seed42@ema0.99': 'decay 0.99 beside x2-seed42: behind 0.998 at epoch 5',
    'x2-seed1@ema0.995': 'decay 0.995 beside x2-seed1: level with 0.998',
    'x2-seed1@ema0.99': 'decay 0.99 beside x2-seed1: behind 0.998 at epoch 5',
    'x4-seed42': "4x a 300-batch range test: the rates 1.2x apart over seeds; ahead at all 5 epochs (83.10 %)",
    'x4-seed1': '4x a 300-batch range test on seed 1: ahead at all 5 epochs (83.07 %)',
    'x4-seed0': '4x on seed 0: 0.10 short of the reference log at epoch 5 (82.46 %); the multiplier went to 5',
    'x6-seed0': '6x on seed 0: ahead at every epoch, 82.75 % at 5 against 82.99 % at 5x; 5x stays',
}


def _accuracies(rows, key: str = 'test_accuracy') -> dict:
    "Test accuracy in % after each epoch, from rows of a metrics or shadow-averages CSV"
    return {f'epoch_{r["epoch"]}': f'{100 * float(r[key]):.2f}' for r in rows}


def run_rows(folder: Path) -> list:
    "The rows of run `folder`: the run itself, then one for each decay scored beside it"
    config = json.loads((folder / 'config.json').read_text())
    options = {k: config.get(k, BEFORE_OPTION.get(k)) for k in OPTIONS}
    options['lr_find_iters'] = options['lr_find_iters'] or BEFORE_OPTION['lr_find_iters']
    options['lr_used'] = float(f"{options['lr_used']:.6g}")
    if not options['ema']: options['ema_every'] = None  # no average to update
    with open(folder / 'metrics.csv', newline='') as f:
        rows = [dict(name=folder.name, **options, **_accuracies(csv.DictReader(f)))]
    shadows = folder / 'shadow_averages.csv'
    if shadows.is_file():
        with open(shadows, newline='') as f: scored = list(csv.DictReader(f))
        for decay in dict.fromkeys(r['decay'] for r in scored):
            rows.append(dict(name=f'{folder.name}@ema{float(decay):g}', **options, **_accuracies(
                r for r in scored if r['decay'] == decay)) | {'ema': float(decay)})
    missing = [r['name'] for r in rows if r['name'] not in TAUGHT]
    if missing: raise SystemExit(f"no line in TAUGHT for {', '.join(missing)}: add what each run taught first")
    return [r | {'taught': TAUGHT[r['name']]} for r in rows]


def write(folders: list, out: Path):
    "Write the rows of every run of `folders` to the CSV `out`"
    rows = [r for folder in folders for r in run_rows(Path(folder))]
    columns = ['name', *OPTIONS, *(f'epoch_{e}' for e in range(1, EPOCHS + 1)), 'taught']
    with open(out, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def markdown(path: Path) -> str:
    "The CSV as a markdown table: name, test accuracy after each epoch, what it taught"
    with open(path, newline='') as f: rows = list(csv.DictReader(f))
    epochs = [f'epoch_{e}' for e in range(1, EPOCHS + 1)]
    lines = ['| run | ' + ' | '.join(e.replace('_', ' ') for e in epochs) + ' | what it taught |', '|---' * 7 + '|']
    lines += [f"| `{r['name']}` | " + ' | '.join(r[e] for e in epochs) + f" | {r['taught']} |" for r in rows]
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('runs', nargs='*', type=Path, help='run folders to fold')
    p.add_argument('--out', type=Path, default=Path('docs/results/sweeps.csv'))
    p.add_argument('--markdown', type=Path, metavar='CSV', help='print this CSV as a markdown table and stop')
    args = p.parse_args(argv)
    if args.markdown: return print(markdown(args.markdown))
    print(f"{args.out}: {len(write(args.runs, args.out))} rows")


if __name__ == '__main__': main()
