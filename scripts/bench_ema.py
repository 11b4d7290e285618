"""Test accuracy per epoch of several weight-average decays, side by side, from one training run.

The live weights follow the recipe given (its own `--ema` decides what `metrics.csv` records); every decay of
`--shadow` keeps its own average of the same live weights, updated as the recipe's (`--ema-every`), and is scored on
the test set after each epoch. The run folder gets `shadow_averages.csv`. Run by hand; results go to BENCHMARKS.md.

    python scripts/bench_ema.py --data ../shared/data/cifar10 --epochs 5 --shadow 0.995 0.999 --out runs/ema-decays
    python scripts/bench_ema.py --runs runs/ema-decays runs/other     # the table of finished run folders
"""
import argparse
import csv
from pathlib import Path

import torch
from fastai.callback.core import Callback

from cifar_fastai.callbacks import read_metrics
from cifar_fastai.ema import EMA
from cifar_fastai.precision import DTYPES
from cifar_fastai.run import METRICS, RunConfig, read_config, train

SHADOWS = 'shadow_averages.csv'


class ShadowAverages(Callback):
    "Keep one `EMA` per decay beside the recipe's, and score each on the test set after every epoch"
    order = 60  # after the recorder has scored the recipe's own model

    def __init__(self, decays: list, every: int, path: Path):
        self.emas, self.path = [EMA(d, every) for d in decays], Path(path)

    def before_fit(self):
        for ema in self.emas: ema.learn = self.learn; ema.before_fit()

    def after_step(self):
        for ema in self.emas: ema.after_step()

    def after_epoch(self):
        if not all(ema.active for ema in self.emas): return  # lr_find
        rows = []
        for ema in self.emas:
            ema.before_validate()  # its average in, the live weights kept aside
            try: loss, accuracy = self._score()
            finally: ema.after_validate()
            rows.append(dict(epoch=self.epoch + 1, decay=ema.decay, test_loss=round(loss, 6), test_accuracy=accuracy))
            print(f"epoch {self.epoch + 1}: average of decay {ema.decay:g}: test accuracy {100 * accuracy:.2f} %",
                  flush=True)
        new = not self.path.exists()
        with self.path.open('a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new: writer.writeheader()
            writer.writerows(rows)

    @torch.no_grad()
    def _score(self) -> tuple:
        "Mean loss and accuracy of the model as it is on the test loader, under the recipe's autocast"
        model, device = self.model, next(self.model.parameters()).device
        dtype = DTYPES.get(self.learn.precision)
        was_training, total, correct, n = model.training, 0., 0, 0
        model.eval()
        for xb, yb in self.dls.valid:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(xb.contiguous(memory_format=torch.channels_last)).float()
            total += self.loss_func(out, yb).item() * len(yb)
            correct, n = correct + (out.argmax(1) == yb).sum().item(), n + len(yb)
        model.train(was_training)
        return total / n, correct / n


def table(runs: list) -> str:
    "Markdown: per run and epoch, the test accuracy (%) of the recipe's average and of each shadow decay"
    lines = []
    for run in map(Path, runs):
        own = {m['epoch']: m['test_accuracy'] for m in read_metrics(run / METRICS)}
        with (run / SHADOWS).open() as f: shadows = list(csv.DictReader(f))
        decays = sorted({float(r['decay']) for r in shadows}, reverse=True)
        by = {(int(r['epoch']), float(r['decay'])): float(r['test_accuracy']) for r in shadows}
        config = read_config(run)
        lines += [f"`{run.name}` (lr {config['lr_used']:.3g}):", '',
                  f"| epoch | recipe, decay {config['ema']:g} | " + ' | '.join(f'decay {d:g}' for d in decays) + ' |',
                  '|---|---|' + '---|' * len(decays)]
        cells = lambda e: ' | '.join(f'{100 * by[e, d]:.2f} %' if (e, d) in by else '' for d in decays)
        lines += [f"| {e} | {100 * a:.2f} % | {cells(e)} |" for e, a in sorted(own.items())] + ['']
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', nargs='+', help='print the table of these finished run folders, and train nothing')
    parser.add_argument('--shadow', type=float, nargs='+', help='decays to score beside the recipe')
    parser.add_argument('--out', help='run folder')
    for name in ('data', 'epochs', 'lr', 'seed', 'ema', 'ema_every', 'label_smoothing', 'bs'):
        default = getattr(RunConfig, name)
        kind = (lambda s: s if s == 'find' else float(s)) if name == 'lr' else type(default) if default is not None else str
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    args = vars(parser.parse_args())
    if args['runs']: return print(table(args['runs']))
    if not (args['shadow'] and args['out']): parser.error('--shadow and --out are needed to train (or --runs for a table)')
    shadow, out = args.pop('shadow'), Path(args.pop('out'))
    del args['runs']
    config = RunConfig(**args, interpret=False)
    train(config, out, cbs=[ShadowAverages(shadow, config.ema_every, out / SHADOWS)], progress=False)


if __name__ == '__main__':
    main()
