"""Training speed on this CPU: the reference's PyTorch loop vs a bare model step vs our `Learner.fit`

Contenders, on the same images and batch size, alternated A B C A B C ... over `--rounds`, each in its own
process so that its peak memory is its own:
  1. reference: plain PyTorch loop in fp32, default layout; a `Dataset` reading each image file with OpenCV and
     augmenting it with Albumentations (`cifar_augs` + `A.Normalize` + `ToTensorV2`); torch `DataLoader`, 2 workers
  2. bare step: forward + backward + SGD step at the best precision/layout on a fixed batch in memory (the ceiling)
  3. ours: `cifar_dls` + `cifar_learner(precision='auto', channels_last=True)` with the default weight average of
     `cifar-fastai train` (`EMA`), `Learner.fit`, train phase only
Extras: the bare step in fp32/bf16 x contiguous/channels_last, optionally compiled.
Loaders alone, no model: the reference's `DataLoader`; ours (`cifar_dls(...).train`) with each of
`--loader-workers`; the floor, the same Albumentations pipeline in a plain loop over the in-memory arrays, stacked
and normalised with torch.

Prints a line per contender and round, then a markdown section for BENCHMARKS.md: images/s (median and best of the
rounds) and peak RSS per contender, loader-only images/s, ours / reference, ours / bare step, our loader / floor.

Measured results: none yet on a quiet machine (runs on the shared development machine are niced and not timings);
the lead's numbers go here and in BENCHMARKS.md once measured.

    python scripts/bench_speed.py              # 2560 images, bs 128, 3 rounds, with torch.compile
    python scripts/bench_speed.py --quick      # 512 images, 1 round, no compile: under a minute on 2 idle cores
    python scripts/bench_speed.py --loader-only --n-images 25600   # the loaders alone (0 and 2 workers, floor)
"""
import argparse, datetime, os, platform, shlex, statistics, sys, time, traceback
import multiprocessing as mp
from pathlib import Path

import albumentations as A
import cv2
import fastai
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from fastai.callback.core import Callback, CancelFitException
from torch.utils.data import DataLoader, Dataset

from cifar_fastai.data import Cifar10
from cifar_fastai.ema import EMA
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from cifar_fastai.machine import cpu_name
from cifar_fastai.models import resnet18
from cifar_fastai.precision import DTYPES, resolve_precision
from cifar_fastai.recipe import ema_for_batch
from cifar_fastai.run import RunConfig
from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_augs

REPO = Path(__file__).resolve().parents[1]
LR, MOMENTUM, WD = 0.05, 0.9, 5e-4  # SGD as the reference trains: lr fixed (no lr_find), L2 weight decay
WARMUP_STEPS = 2                    # untimed steps per contender: oneDNN builds its kernels on the first ones


################################################################################
#                  Reference path: image files, OpenCV, Albumentations         #
################################################################################

def first_files(root: Path, split: str, n_per_class: int) -> tuple[list[Path], list[int], list[str]]:
    "The first `n_per_class` files of each class folder of `root/split`, classes and files in sorted name order"
    folder = Path(root)/split
    if not folder.is_dir(): raise FileNotFoundError(f'{folder} is not a folder: --data needs class folders '
                                                    f'{split}/<class>/*.png|jpg (the reference path reads files)')
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith('.'))
    files, labels = [], []
    for label, c in enumerate(classes):
        names = sorted(n for n in os.listdir(folder/c) if not n.startswith('.'))[:n_per_class]
        if len(names) < n_per_class: raise ValueError(f'{folder/c} holds {len(names)} files, fewer than {n_per_class}')
        files += [folder/c/n for n in names]
        labels += [label] * len(names)
    return files, labels, classes


def read_rgb(path: Path) -> np.ndarray:
    "The (H, W, 3) uint8 RGB pixels of an image file, read the reference's way (OpenCV, BGR -> RGB)"
    img = cv2.imread(str(path))
    if img is None: raise ValueError(f'{path}: OpenCV cannot read this image file')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def reference_tfms(aug: A.Compose | None) -> A.Compose:
    "`aug` then the reference's normalisation to a float CHW tensor (pixels / 255, CIFAR-10 mean and std)"
    return A.Compose(list(aug.transforms if aug is not None else []) +
                     [A.Normalize(mean=CIFAR10_MEAN, std=CIFAR10_STD, max_pixel_value=255.), ToTensorV2()])


class ReferenceDataset(Dataset):
    "Image files read with OpenCV and transformed per item with Albumentations, as the reference notebook does"
    def __init__(self, files: list[Path], labels: list[int], aug: A.Compose | None = None):
        self.files, self.labels, self.tfms = list(files), list(labels), reference_tfms(aug)

    def __len__(self): return len(self.files)
    def __getitem__(self, i): return self.tfms(image=read_rgb(self.files[i]))['image'], self.labels[i]


################################################################################
#                  Contenders: each built and run in its own process           #
################################################################################

class ReferenceLoop:
    "The reference: fp32, default layout, torch `DataLoader` over `ReferenceDataset`, SGD with L2 weight decay"
    def __init__(self, files, labels, bs: int, workers: int = 2, **_):
        self.loader = DataLoader(ReferenceDataset(files, labels, cifar_augs()), batch_size=bs, shuffle=True,
                                 num_workers=workers, drop_last=True)  # drop_last: every contender does full batches
        self.model = resnet18(n_out=10)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.train_epoch(max_steps=WARMUP_STEPS)
        self.info = dict(workers=workers, precision='fp32', layout='contiguous')

    def train_epoch(self, max_steps: int | None = None) -> tuple[int, float]:
        self.model.train()
        n, correct, total_loss, start = 0, 0, 0., time.perf_counter()
        for step, (x, y) in enumerate(self.loader):
            if step == max_steps: break
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.opt.zero_grad(); loss.backward(); self.opt.step()
            # the running loss and accuracy the reference prints each epoch
            total_loss, correct, n = total_loss + loss.item(), correct + (out.argmax(1) == y).sum().item(), n + len(y)
        return n, time.perf_counter() - start

    def load_epoch(self) -> tuple[int, float]:
        n, start = 0, time.perf_counter()
        for _, y in self.loader: n += len(y)
        return n, time.perf_counter() - start


class BareStep:
    "Forward, backward and SGD step on a fixed random batch in memory: no data loading, no fastai"
    def __init__(self, n_images: int, bs: int, precision: str = 'auto', channels_last: bool = True,
                 compile: bool = False, device: str = 'cpu', **_):
        self.device = torch.device(device)
        self.precision, self.n_steps = resolve_precision(precision, self.device), n_images // bs
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = resnet18(n_out=10).to(self.device, memory_format=layout).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        self.x = torch.randn(bs, 3, 32, 32, device=self.device).contiguous(memory_format=layout)
        self.y = torch.randint(0, 10, (bs,), device=self.device)
        self.forward = torch.compile(self.model) if compile else self.model
        start = time.perf_counter()
        self.step()  # the first step compiles, when compiling
        first = time.perf_counter() - start
        for _ in range(WARMUP_STEPS - 1): self.step()
        self.info = dict(precision=self.precision, layout='channels_last' if channels_last else 'contiguous',
                         compiled=compile, first_step_seconds=first)

    def step(self):
        dtype = DTYPES.get(self.precision, torch.float32)
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.precision in DTYPES):
            loss = F.cross_entropy(self.forward(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True); loss.backward(); self.opt.step()

    def train_epoch(self) -> tuple[int, float]:
        start = time.perf_counter()
        for _ in range(self.n_steps): self.step()
        synchronize(self.device)
        return self.n_steps * len(self.y), time.perf_counter() - start


def synchronize(device: torch.device):
    "Wait for the work queued on a CUDA `device`, so that the clock reads what it took; nothing on a CPU"
    if torch.device(device).type == 'cuda': torch.cuda.synchronize(device)


class TrainTimer(Callback):
    "Seconds and images of each epoch's training phase, from `before_train` to `after_train`"
    order = -100
    def before_train(self): self.n, self.start = 0, time.perf_counter()
    def after_batch(self): self.n += len(self.yb[0]) if self.training else 0
    def after_train(self):
        synchronize(self.dls.device)
        self.seconds = time.perf_counter() - self.start


class StopAfter(Callback):
    "End the fit after `n` training batches (a warm-up)"
    def __init__(self, n: int): self.n = n
    def after_batch(self):
        if self.training and self.iter + 1 >= self.n: raise CancelFitException()


def bench_data(files, labels, test_files, test_labels, classes) -> Cifar10:
    "The very files the reference reads, decoded the same way, as the in-memory arrays our path trains on"
    arrays = [np.stack([read_rgb(f) for f in fs]) for fs in (files, test_files)]
    ys = [np.array(y, np.int64) for y in (labels, test_labels)]
    return Cifar10(arrays[0], ys[0], arrays[1], ys[1], classes, source='benchmark files')


class OursFit:
    "Our path: `cifar_dls` over in-memory arrays + `cifar_learner(precision='auto', channels_last=True)`, `fit(1)`"
    def __init__(self, files, labels, test_files, test_labels, classes, bs: int, workers: int | None = None,
                 device: str = 'cpu', **_):
        self.dls = cifar_dls(bench_data(files, labels, test_files, test_labels, classes), bs=bs, seed=0, device=device,
                             num_workers=workers)
        self.learn = cifar_learner(self.dls, lr=LR, momentum=MOMENTUM, wd=WD, precision='auto', channels_last=True,
                                   ema=EMA(ema_for_batch(bs), RunConfig.ema_every))  # `train`'s average
        self.timer = TrainTimer()
        with self.learn.no_bar(), self.learn.no_logging(): self.learn.fit(1, cbs=StopAfter(WARMUP_STEPS))
        workers = self.dls.train.fake_l.num_workers  # fastai's own `dl.num_workers` is a placeholder 1
        self.info = dict(workers=workers, precision=self.learn.precision, layout='channels_last')

    def train_epoch(self) -> tuple[int, float]:
        with self.learn.no_bar(), self.learn.no_logging(): self.learn.fit(1, cbs=self.timer)
        if not self.learn.epoch_record.rows[-1]['train_loss'] < float('inf'): raise RuntimeError('non-finite loss')
        return self.timer.n, self.timer.seconds


class OursLoader:
    "Our training loader alone, `cifar_dls(...).train` on the CPU with `workers` processes; and the floor under it"
    def __init__(self, files, labels, test_files, test_labels, classes, bs: int, workers: int = 0, **_):
        self.data = bench_data(files, labels, test_files, test_labels, classes)
        self.dls = cifar_dls(self.data, bs=bs, seed=0, device='cpu', num_workers=workers)
        for _ in zip(range(WARMUP_STEPS), self.dls.train): pass
        self.info = dict(workers=self.dls.train.fake_l.num_workers)

    def load_epoch(self) -> tuple[int, float]:
        "An epoch of normalised batches, worker start-up included (fastai starts them anew each epoch)"
        n, start = 0, time.perf_counter()
        for _, yb in self.dls.train: n += len(yb)
        return n, time.perf_counter() - start

    def load_floor(self) -> tuple[int, float]:
        "Albumentations alone on the in-memory arrays, batched and normalised with torch: what fastai adds to it"
        x, aug, bs = self.data.train_x, cifar_augs(), self.dls.train.bs
        mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (CIFAR10_MEAN, CIFAR10_STD))
        order, n, start = np.random.permutation(len(x)), 0, time.perf_counter()
        for i in range(0, len(x) - bs + 1, bs):
            batch = np.stack([aug(image=img)['image'] for img in x[order[i:i + bs]]])
            xb = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
            n += len(xb)
        return n, time.perf_counter() - start


def peak_rss_mb() -> float:
    "Peak resident set size of this process in MB (DataLoader workers, separate processes, not included)"
    # VmHWM rather than getrusage's ru_maxrss: a spawned child's ru_maxrss starts at its parent's RSS (it survives
    # exec), and RUSAGE_CHILDREN would count the pages forked workers share with their parent (importing torch
    # alone forks a 440 MB helper).
    status = dict(line.split(':', 1) for line in Path('/proc/self/status').read_text().splitlines() if ':' in line)
    return int(status['VmHWM'].split()[0]) / 1024


def serve(conn, make, kwargs: dict, threads: int | None, start_method: str):
    "In a child process: build `make(**kwargs)`, then run the methods `conn` asks for until it sends `None`"
    # a spawned child defaults to spawning its own children: DataLoader workers would re-import torch every epoch
    mp.set_start_method(start_method, force=True)
    try:
        if threads: torch.set_num_threads(threads)
        torch.manual_seed(0)
        contender = make(**kwargs)
        conn.send(('ok', dict(contender.info, threads=torch.get_num_threads())))
        while (method := conn.recv()) is not None:
            conn.send(('ok', peak_rss_mb() if method == 'peak_rss_mb' else getattr(contender, method)()))
    except Exception: conn.send(('error', traceback.format_exc()))
    finally: conn.close()


class Remote:
    "A contender in its own process (spawned, not daemonic: the reference's `DataLoader` forks workers)"
    def __init__(self, name: str, make, threads: int | None = None, optional: bool = False, **kwargs):
        self.name, self.make, self.optional, self.info = name, make, optional, {}
        self.results, self.loads, self.floors = [], [], []  # (images, seconds) per round
        ctx = mp.get_context('spawn')
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, make, kwargs, threads, mp.get_start_method()), name=name)
        self.process.start()
        child.close()

    def receive(self):
        status, value = self.conn.recv()
        if status == 'error': raise RuntimeError(f'{self.name} failed in its process:\n{value}')
        return value

    def call(self, method: str): self.conn.send(method); return self.receive()

    def close(self):
        try: self.conn.send(None)
        except (BrokenPipeError, OSError): pass
        self.process.join(timeout=30)
        if self.process.is_alive(): self.process.terminate()


################################################################################
#                  Orchestration: rounds, summaries, the markdown table        #
################################################################################

def contenders(args, files, labels, test_files, test_labels, classes) -> tuple[list[Remote], list[Remote]]:
    "Training contenders (reference, bare, ours, extras; none with --loader-only), then the loaders alone; all started"
    n, common, on = len(files) // args.bs * args.bs, dict(bs=args.bs, threads=args.threads), dict(device=args.device)
    data = dict(files=files, labels=labels, test_files=test_files, test_labels=test_labels, classes=classes)
    loaders = [Remote(f'ours: cifar_dls(...).train, num_workers={w}', OursLoader, workers=w, **data, **common)
               for w in args.loader_workers]
    if args.loader_only: return [], loaders
    best = resolve_precision('auto', args.device)
    ref = Remote('1. reference: PyTorch loop, fp32, OpenCV files + Albumentations, DataLoader', ReferenceLoop,
                 workers=args.ref_workers, **data, **common)
    bare = Remote(f'2. bare step, {best} + channels_last (ceiling)', BareStep, n_images=n, **common, **on)
    ours = [Remote('3. ours: Learner.fit, cifar_dls + cifar_learner(auto, channels_last)' +
                   ('' if w is None else f', num_workers={w}'), OursFit, workers=w, **data, **common, **on)
            for w in args.our_workers]
    extras = [Remote(f'bare step, {p} + {"channels_last" if cl else "contiguous"}', BareStep, n_images=n,
                     precision=p, channels_last=cl, **common, **on)
              for p in ('fp32', 'bf16') for cl in (False, True) if (p, cl) != (best, True)]
    extras += [Remote(f'bare step, {best} + channels_last, bs {bs}', BareStep, n_images=len(files) // bs * bs, bs=bs,
                      threads=args.threads, **on) for bs in args.bare_bs if bs != args.bs]
    if args.compile:
        extras.append(Remote(f'bare step, {best} + channels_last, torch.compile', BareStep, n_images=n,
                             compile=True, optional=True, **common, **on))
    return [ref, bare, *ours, *extras], [ref, *loaders]


def start_all(remotes: list[Remote], log) -> list[Remote]:
    "Wait until every contender is built and warmed up; optional ones that fail are reported and dropped"
    ready = []
    for r in remotes:
        try: r.info = r.receive()
        except RuntimeError as e:
            if not r.optional: raise
            log(f'skipped {r.name}: {str(e).strip().splitlines()[-1]}; rerun with --no-compile to leave it out')
            r.close(); continue
        ready.append(r)
    return ready


def run_rounds(remotes: list[Remote], method: str, rounds: int, log, key: str = 'results'):
    "Call `method` on each contender in turn, A B C A B C ..., storing (images, seconds) per round"
    for i in range(rounds):
        for r in remotes:
            n, seconds = r.call(method)
            getattr(r, key).append((n, seconds))
            log(f'round {i + 1}/{rounds} {method:<11} {n / seconds:8.1f} img/s  {r.name}')


def speeds(results: list) -> list[float]: return [n / s for n, s in results]


def hardware() -> str:
    "CPU model, its bf16 instructions, cores and library versions, for the benchmark table"
    info = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    fields = {k.strip(): v for k, v in (l.split(':', 1) for l in info.splitlines() if ':' in l)}
    cores = fields.get('cpu cores', '?').strip()
    flags = [f for f in ('avx512_bf16', 'amx_bf16') if f in fields.get('flags', '').split()]
    return (f"{cpu_name()} ({', '.join(flags) or 'no bf16 instructions'}), {os.cpu_count()} logical CPUs, "
            f"{cores} cores; torch {torch.__version__}, fastai {fastai.__version__}, albumentations {A.__version__}, "
            f"OpenCV {cv2.__version__}, Python {platform.python_version()}")


def row(name: str, values: list[float], memory: str = '', note: str = '') -> str:
    return f'| {name} | {statistics.median(values):.1f} | {max(values):.1f} | {len(values)} | {memory} | {note} |'


def median(results: list) -> float: return statistics.median(speeds(results))


def header(args, n_images: int, threads: int, started: str) -> list[str]:
    "Title, hardware, command line and date of the markdown section"
    title = 'Loader speed' if args.loader_only else 'Training speed: CIFAR ResNet18'
    return [f'### {title}, bs {args.bs}, {n_images} training images per epoch', '',
            f'- hardware: {hardware()}',
            f'- threads: {threads} per process (OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")})',
            f'- command: `{shlex.join(["python", "scripts/bench_speed.py", *sys.argv[1:]])}`',
            f'- date: {started}', '',
            '| path | images/s (median) | best | rounds | peak RSS MB | notes |', '|---|---:|---:|---:|---:|---|']


def ours_loaders(loaders: list[Remote]) -> dict:
    "Our loaders alone by their number of workers"
    return {r.info['workers']: r for r in loaders if r.make is OursLoader}


def rows(train: list[Remote], loaders: list[Remote]) -> list[str]:
    "One line per contender, then the loader-only lines and the floor"
    lines = []
    for r in train:
        note = ', '.join(f'{k}={v}' for k, v in r.info.items() if k in ('precision', 'layout', 'workers'))
        if r.info.get('compiled'): note += f", first step {r.info['first_step_seconds']:.1f} s (compiling)"
        lines.append(row(r.name, speeds(r.results), f'{r.peak_rss_mb:.0f}', note))
    for r in loaders:
        name = r.name if r.make is OursLoader else 'reference: DataLoader over OpenCV files + Albumentations'
        lines.append(row(f'loader only: {name}', speeds(r.loads), '', f"no model, workers={r.info['workers']}"))
    floor = next(iter(ours_loaders(loaders).values()))
    return lines + [row('loader floor: Albumentations + torch on the in-memory arrays, no fastai',
                        speeds(floor.floors), '', 'no model, one process')]


def loader_ratios(loaders: list[Remote]) -> list[str]:
    "Our loader against the floor in one process, and what workers add"
    ours = {w: median(r.loads) for w, r in ours_loaders(loaders).items()}
    floor = median(next(iter(ours_loaders(loaders).values())).floors)
    if 0 not in ours: return [f'- our loader with {w} workers / floor: {v / floor:.2f}' for w, v in ours.items()]
    return ([f'- our loader / floor, one process: {ours[0] / floor:.2f} (target >= 0.7)'] +
            [f'- our loader with {w} workers / without: {v / ours[0]:.2f}x' for w, v in ours.items() if w])


def ratios(train: list[Remote], loaders: list[Remote]) -> list[str]:
    "Ours against the targets, how much of our epoch is loading, and the extras against the bare step"
    ref, bare, ours = (median(r.results) for r in train[:3])
    lines = [f'- ours / reference: {ours / ref:.2f}x (target >= 2)',
             f'- ours / bare step: {ours / bare:.2f} (target >= 0.95)']
    if (same := ours_loaders(loaders).get(train[2].info['workers'])) is not None:
        load = median(same.loads)
        lines.append(f'- loading takes {100 * ours / load:.0f}% of our epoch; loading then stepping one after the '
                     f'other would give {1 / (1 / load + 1 / bare):.1f} img/s')
    for r in train[3:]:
        if not r.name.startswith('bare'): continue
        compiled = (f" (first step {r.info['first_step_seconds']:.1f} s, uncompiled "
                    f"{train[1].info['first_step_seconds']:.1f} s)" if r.info.get('compiled') else '')
        lines.append(f'- {r.name} / bare step: {median(r.results) / bare:.2f}x{compiled}')
    return lines


def table(args, train: list[Remote], loaders: list[Remote], n_images: int, started: str) -> str:
    "The markdown section to paste into BENCHMARKS.md"
    lines = header(args, n_images, (train or loaders)[0].info['threads'], started) + rows(train, loaders) + ['']
    return '\n'.join(lines + (ratios(train, loaders) if train else []) + loader_ratios(loaders))


def parse_args(argv=None):
    default_data = os.environ.get('CIFAR10_DIR') or REPO.parent/'shared'/'data'/'cifar10'
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', type=Path, default=Path(default_data),
                   help='class folders train/<class>/*, test/<class>/*')
    p.add_argument('--n-images', type=int, default=2560, help='training images, the first n/10 files of each class')
    p.add_argument('--bs', type=int, default=128, help='batch size, every contender')
    p.add_argument('--rounds', type=int, default=3, help='timed epochs per contender, alternated')
    p.add_argument('--threads', type=int, default=None, help="torch threads per process (default: torch's)")
    p.add_argument('--ref-workers', type=int, default=2, help="the reference DataLoader's num_workers")
    p.add_argument('--our-workers', type=int, nargs='+', default=[None],
                   help="cifar_dls num_workers; several values add a contender each (default: the library's)")
    p.add_argument('--loader-workers', type=int, nargs='+', default=[0, 2],
                   help='num_workers of our loader alone, a contender each; the floor runs beside the first')
    p.add_argument('--loader-only', action='store_true', help='only the loaders alone and the floor, no training')
    p.add_argument('--no-compile', dest='compile', action='store_false', help='leave out the torch.compile extra')
    p.add_argument('--quick', action='store_true', help='512 images, 1 round, no compile')
    p.add_argument('--device', default='cpu', help="where ours and the bare steps train: 'cpu' or 'cuda' (the "
                                                   "reference's loop stays on the CPU)")
    p.add_argument('--bare-bs', type=int, nargs='+', default=[], metavar='BS',
                   help='bare steps at these batch sizes too, a contender each: images/s by batch size')
    args = p.parse_args(argv)
    if args.quick: args.n_images, args.rounds, args.compile = 512, 1, False
    if args.n_images < args.bs: p.error(f'--n-images ({args.n_images}) must be at least --bs ({args.bs})')
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault('PYTHONWARNINGS', 'ignore::FutureWarning')  # fastai's `@torch.jit.script`, in every child
    started = (f"{datetime.datetime.now():%Y-%m-%d %H:%M}; load average at start {os.getloadavg()[0]:.2f}, "
               f"niceness {os.nice(0)}")
    t0 = time.perf_counter()
    log = lambda msg: print(f'[{time.perf_counter() - t0:6.1f} s] {msg}', flush=True)
    try:
        files, labels, classes = first_files(args.data, 'train', -(-args.n_images // 10))
        test_files, test_labels, _ = first_files(args.data, 'test', 1)  # ours validates each epoch: 1 image a class
    except OSError as e: sys.exit(f'bench_speed: {e}')
    if os.nice(0) > 0 or os.getloadavg()[0] > 0.5: log(f'warning: niceness {os.nice(0)}, load average '
                                                        f'{os.getloadavg()[0]:.1f}: these timings are not meaningful')
    train, loaders = contenders(args, files, labels, test_files, test_labels, classes)
    alone = [r for r in loaders if r not in train]  # the reference's loader is its training contender's
    try:
        log(f'{len(files)} files from {args.data}; building {len(train) + len(alone)} contenders (each warms up)')
        train, alone = start_all(train, log), start_all(alone, log)
        run_rounds(train, 'train_epoch', args.rounds, log)
        run_rounds(loaders, 'load_epoch', args.rounds, log, key='loads')
        run_rounds(alone[:1], 'load_floor', args.rounds, log, key='floors')
        for r in train: r.peak_rss_mb = r.call('peak_rss_mb')
    finally:
        for r in train + alone: r.close()
    print('\n' + table(args, train, loaders, len(files) // args.bs * args.bs, started))


if __name__ == '__main__': main()
