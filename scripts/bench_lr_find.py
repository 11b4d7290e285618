"""How far the LR range test's suggestion moves with the seed, for range tests of several lengths, side by side.

Each (length, seed) builds the default recipe's `Learner` as `cifar-fastai train --seed S --lr-find-iters N` would
and runs its range test, writing `N-seedS.json` (every suggestion, seconds) and the plot into `--out`. Finished
pairs are kept, so an interrupted run goes on where it stopped. Run by hand; results go to BENCHMARKS.md.

    python scripts/bench_lr_find.py --data ../shared/data/cifar10 --seeds 0 1 42 3 --iters 100 300 --out runs/lr-find
    python scripts/bench_lr_find.py --runs runs/lr-find          # the table of what is there
"""
import argparse
import json
import statistics
import time
from pathlib import Path

from cifar_fastai.rangetest import LR_FIND_ITERS, find_lr
from cifar_fastai.run import RunConfig, run_dls, run_learner


def measure(data, seed: int, iters: int, out: Path, suggestion: str = 'minimum') -> dict:
    "The range test of the default recipe with `seed` and `iters` batches, recorded in `out`"
    path = out / f'{iters}-seed{seed}.json'
    if path.is_file(): return json.loads(path.read_text())
    start = time.perf_counter()
    config = RunConfig(data=data, seed=seed, lr_find_iters=iters, lr_suggestion=suggestion)
    learn = run_learner(run_dls(config, progress=False), config, out)
    with learn.no_bar(), learn.no_logging():
        found = find_lr(learn, out / f'lr_find-{iters}-seed{seed}.png', suggestion, iters)
    record = dict(seed=seed, iters=iters, suggestions=found, seconds=round(time.perf_counter() - start, 1))
    path.write_text(json.dumps(record, indent=2))
    return record


def table(records: list, mult: float = RunConfig.lr_mult, suggestion: str = 'minimum') -> str:
    "One row per range-test length: each seed's suggestion, their spread (largest / smallest) and median"
    seeds = sorted({r['seed'] for r in records})
    lines = [f"| batches | {' | '.join(f'seed {s}' for s in seeds)} | largest / smallest | median | "
             f"{mult:g} x median | seconds per test |", '|---' * (len(seeds) + 5) + '|']
    for iters in sorted({r['iters'] for r in records}):
        by_seed = {r['seed']: r for r in records if r['iters'] == iters}
        found = [by_seed[s]['suggestions'][suggestion] for s in seeds if s in by_seed]
        cells = [f"{by_seed[s]['suggestions'][suggestion]:.5f}" if s in by_seed else '' for s in seeds]
        seconds = statistics.mean(r['seconds'] for r in by_seed.values())
        median = statistics.median(found)
        lines.append(f"| {iters} | {' | '.join(cells)} | {max(found) / min(found):.2f} | {median:.5f} | "
                     f"{mult * median:.5f} | {seconds:.0f} |")
    return '\n'.join(lines)


def read_records(folder) -> list:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob('*-seed*.json'))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=None, help='as `cifar-fastai train --data`')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 42, 3])
    p.add_argument('--iters', type=int, nargs='+', default=[100, LR_FIND_ITERS], help='range-test lengths')
    p.add_argument('--suggestion', default=RunConfig.lr_suggestion)
    p.add_argument('--out', type=Path, default=Path('runs/lr-find'))
    p.add_argument('--runs', type=Path, help='print the table of this folder and stop')
    args = p.parse_args(argv)
    if args.runs is None:
        args.out.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:  # lengths alternate, so a machine that slows down later touches both
            for iters in args.iters:
                r = measure(args.data, seed, iters, args.out, args.suggestion)
                print(f"seed {seed}, {iters} batches: {args.suggestion} {r['suggestions'][args.suggestion]:.5f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    records = read_records(args.runs or args.out)
    if not records: raise SystemExit(f"{args.runs or args.out} holds no range tests (*-seed*.json)")
    print(table(records, suggestion=args.suggestion))


if __name__ == '__main__': main()
