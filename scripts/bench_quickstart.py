"""The Quickstart's first command as a new user meets it, for two commits side by side on this machine.

Each commit is cloned into a fresh folder with a fresh venv; its command (install, then `cifar-fastai train`, which
trains on the bundled sample when no CIFAR-10 is found) runs there under a clock, one commit after the other, and the
phases are read from the times of the files the run writes. Prints one markdown table and the ratio of the totals.
Run by hand on an otherwise idle machine; results go to BENCHMARKS.md.

    python scripts/bench_quickstart.py --before 95716dc --after HEAD \\
        --before-cmd 'python -m pip install -q . && NO_ALBUMENTATIONS_UPDATE=1 cifar-fastai train'
"""
import argparse
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

COMMAND = 'python -m pip install -q . && cifar-fastai train'
# (phase, the file whose last write ends it); a phase whose file the run does not write is left out
PHASES = [('range test', 'lr_find.png'), ('training', 'metrics.csv'), ('pictures', 'top_losses.png'),
          ('faithfulness table', 'faithfulness.md'), ('report', 'report.md')]


def phases(start: float, run: Path, end: float) -> list:
    "(phase, seconds) from `start`: install until run folder `run` was named, then each until its file's last write"
    t = datetime.strptime(run.name, '%Y%m%d-%H%M%S').timestamp()  # a default run folder is named after its start
    out = [('install', t - start)]
    for name, file in PHASES:
        if (run / file).is_file():
            out.append((name, (run / file).stat().st_mtime - t))
            t = (run / file).stat().st_mtime
    return out + [('after the last file', end - t)]


def timed_quickstart(repo: Path, commit: str, command: str, work: Path) -> dict:
    "Clone `commit` of `repo` into `work`, make a venv beside it, run `command` in the clone; times and the log"
    clone, venv = work / 'clone', work / 'venv'
    subprocess.run(['git', 'clone', '-q', str(repo), str(clone)], check=True)
    subprocess.run(['git', '-C', str(clone), 'checkout', '-q', commit], check=True)
    subprocess.run(['python', '-m', 'venv', str(venv)], check=True)
    start = time.time()
    done = subprocess.run(['bash', '-c', f'source {venv}/bin/activate && {command}'], cwd=clone,
                          capture_output=True, text=True)
    end = time.time()
    if done.returncode: raise SystemExit(f"{commit}: `{command}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    runs = sorted((clone / 'runs').iterdir())
    epochs = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.startswith('epoch ')]
    return dict(total=end - start, phases=phases(start, runs[-1], end), last_epoch=epochs[-1] if epochs else '')


def minutes(seconds: float) -> str:
    "`seconds` as m:ss, rounded to the second"
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repo', default='.', help='the git repository to clone (default: this one)')
    p.add_argument('--before', required=True, help='commit of the first contender')
    p.add_argument('--after', default='HEAD', help='commit of the second contender (default HEAD)')
    p.add_argument('--before-cmd', default=COMMAND, help=f"its Quickstart command (default: {COMMAND!r})")
    p.add_argument('--after-cmd', default=COMMAND)
    a = p.parse_args()
    repo = Path(a.repo).resolve()
    results = {}
    for name, commit, command in (('before', a.before, a.before_cmd), ('after', a.after, a.after_cmd)):
        with tempfile.TemporaryDirectory(prefix=f'quickstart-{name}-') as work:
            results[name] = timed_quickstart(repo, commit, command, Path(work))
        print(f"{name} ({commit}): {minutes(results[name]['total'])}; {results[name]['last_epoch']}", flush=True)
    names = list(dict.fromkeys(n for r in results.values() for n, _ in r['phases']))
    print(f"\n| phase | before ({a.before}) | after ({a.after}) |\n|---|---|---|")
    for n in names:
        cells = [next((minutes(s) for m, s in r['phases'] if m == n), '') for r in results.values()]
        print(f"| {n} | {cells[0]} | {cells[1]} |")
    print(f"| **total** | **{minutes(results['before']['total'])}** | **{minutes(results['after']['total'])}** |")
    print(f"\nafter / before: {results['after']['total'] / results['before']['total']:.2f}")


if __name__ == '__main__':
    main()
