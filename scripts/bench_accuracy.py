"""Test accuracy per epoch of our recipes on full CIFAR-10, beside the reference log.

Trains (or reads finished run folders) and prints a markdown table: epoch, reference test accuracy,
ours for each run, and the difference. Run by hand; results go to BENCHMARKS.md.

    python scripts/bench_accuracy.py --data ../shared/data/cifar10 --epochs 5 --schedule plateau --out runs/acc-plateau
    python scripts/bench_accuracy.py --runs runs/acc-plateau runs/acc-one-cycle      # tables from finished runs
"""
import argparse
from pathlib import Path

from cifar_fastai.callbacks import read_metrics
from cifar_fastai.data import Cifar10Error
from cifar_fastai.errors import UserError
from cifar_fastai.report_md import REFERENCE_EPOCHS, REFERENCE_FINAL
from cifar_fastai.layout import METRICS
from cifar_fastai.machine import cpu_name
from cifar_fastai.run import RunConfig, read_config, train


def table(runs: list) -> str:
    "Markdown: one row per epoch, the reference log and each run's test accuracy (%) and its lead"
    metrics = {Path(r).name: {m['epoch']: 100 * m['test_accuracy'] for m in read_metrics(Path(r) / METRICS)}
               for r in runs}
    n = max([max(m, default=0) for m in metrics.values()] + [max(REFERENCE_EPOCHS)])
    head = '| epoch | reference log | ' + ' | '.join(f'{name} | lead' for name in metrics) + ' |'
    lines = [head, '|' + '---|' * (2 + 2 * len(metrics))]
    for e in range(1, n + 1):
        ref = REFERENCE_EPOCHS.get(e)
        cells = []
        for m in metrics.values():
            ours = m.get(e)
            if ours is None: cells += ['', '']
            else: cells += [f'{ours:.2f} %', f'{ours - ref:+.2f}' if ref else '']
        lines.append(f"| {e} | {f'{ref:.2f} %' if ref else ''} | " + ' | '.join(cells) + ' |')
    final = f'{REFERENCE_FINAL[0]} % and {REFERENCE_FINAL[1]} % (two reports)'
    lines.append(f'| 50 | {final} |' + ' |' * (2 * len(metrics)))
    return '\n'.join(lines)


def describe(run) -> str:
    c = read_config(run)
    mult = f" x {c['lr_mult']:g}" if c.get('lr_mult', 1) != 1 else ''  # runs before `lr_mult` trained at the suggestion
    iters = (c.get('lr_suggestions') or {}).get('num_it') or c.get('lr_find_iters')  # `num_it`: the length used
    batches = f" of {iters} batches" if iters else ''
    source = 'lr_find' + batches + ' ' + c['lr_suggestion'] + mult if c['lr'] == 'find' else 'fixed'
    lr = f"lr {c['lr_used']:.3g} ({source})"
    schedule = c['schedule']
    if schedule == 'plateau': schedule += f" (patience {c['plateau_patience']}, threshold {c['plateau_threshold']:g})"
    augs = (f"pad {c['pad']} + crop, " if c['pad'] else '') + f"flip, cutout {c['cutout']} p {c['cutout_p']}"
    smoothing = f", label smoothing {c['label_smoothing']}" if c.get('label_smoothing') else ''
    if c.get('ema'):
        smoothing += f", tested on an EMA of the weights (decay {c['ema']}, every {c.get('ema_every', 1)} steps)"
    return (f"- `{Path(run).name}`: {schedule}, {lr}, bs {c['bs']}, {augs}{smoothing}, SGD momentum {c['momentum']}, "
            f"wd {c['wd']} ({c['wd_mode']}), precision {c['precision_used']}, seed {c['seed']}, "
            f"{c['n_train']} train / {c['n_test']} test images, {c.get('processor') or cpu_name()}; {leads(run)}")


def leads(run) -> str:
    "Whether `run` is ahead of the reference log at each of its epochs that the log has"
    ours = {m['epoch']: 100 * m['test_accuracy'] for m in read_metrics(Path(run) / METRICS)}
    ahead = [e for e in REFERENCE_EPOCHS if e in ours and ours[e] > REFERENCE_EPOCHS[e]]
    compared = [e for e in REFERENCE_EPOCHS if e in ours]
    stopped = f" (it stopped after epoch {max(ours)})" if len(compared) < len(REFERENCE_EPOCHS) else ''
    every = ': every one' if ahead == compared else ''
    return f"ahead of the reference log at {len(ahead)} of {len(compared)} epochs{stopped}{every}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', nargs='*', default=[], help='finished run folders to tabulate')
    p.add_argument('--data', help='CIFAR-10 folder to train on (omit with --runs)')
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--schedule', default='plateau')
    p.add_argument('--seed', type=int, default=RunConfig.seed)
    p.add_argument('--out', type=Path, help='run folder of the training')
    args = p.parse_args()
    if args.data and not args.out: p.error('--data trains a run: give it a folder with --out RUN')
    runs = list(args.runs)
    try:
        if args.data:
            config = RunConfig(data=args.data, epochs=args.epochs, schedule=args.schedule, seed=args.seed,
                               interpret=False)
            train(config, args.out)
            runs.append(args.out)
        print('\n'.join(describe(r) for r in runs) + '\n\n' + table(runs))
    except (UserError, Cifar10Error, OSError) as e: p.error(str(e))


if __name__ == '__main__':
    main()
