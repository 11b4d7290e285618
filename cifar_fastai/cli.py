"The `cifar-fastai` command line: it parses arguments and calls the library, nothing more"
import argparse
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

__all__ = ['main', 'parser']


def _positive_float_or_find(text: str):
    if text == 'find': return text
    try: return float(text)
    except ValueError: raise argparse.ArgumentTypeError(f"expected a number or 'find', got {text!r}") from None


def _count(low: int):
    "An argparse type: a whole number >= `low` (the rule of `checks.whole`), which argparse names the option of"
    def count(text: str) -> int:
        from cifar_fastai.checks import whole
        from cifar_fastai.errors import ConfigError
        try: value = int(text)
        except ValueError: value = text
        try: return whole('the value', value, low)
        except ConfigError as e: raise argparse.ArgumentTypeError(str(e)) from None
    return count


def _data_options(g, d):
    g.add_argument('--data', help="CIFAR-10 folder (batches or class folders), 'sample' or 'cifar10' (download); "
                                  "default: full CIFAR-10 from $CIFAR10_DIR, fastai's data folder or ./data, else the "
                                  "bundled sample")
    g.add_argument('--valid-pct', type=float, default=d.valid_pct,
                   help='share of each class of train held out to validate on, the plateau watching it; the test '
                        'split is then predicted each epoch too (default %(default)s: the test split validates, as the '
                        'reports)')
    g.add_argument('--bs', type=int, help='batch size (default 128 with --schedule linear, else 64)')
    g.add_argument('--workers', type=int, default=d.workers, help='data loader processes (default: 0 on CPU)')
    g.add_argument('--skip-bad', action='store_true', help='skip unreadable or wrongly sized images, and say how many')
    g.add_argument('--seed', type=int, default=d.seed,
                   help='random seed of weights, order and augmentation (default %(default)s)')


def _optimisation_options(g, d):
    from cifar_fastai.rangetest import LR_FIND_ITERS, LR_FIND_PASSES
    g.add_argument('--lr', type=_positive_float_or_find, default=d.lr,
                   help="learning rate, or 'find' for the range test's suggestion (default)")
    g.add_argument('--lr-suggestion', default=d.lr_suggestion,
                   help="which lr_find suggestion 'find' uses: valley, slide, minimum (default) or steep")
    g.add_argument('--lr-mult', type=float, help='with --lr find, train at this times the suggestion (default: by the '
                                                 'budget, 5 for plateau, 20 for one-cycle and linear)')
    g.add_argument('--lr-find-iters', type=int, default=d.lr_find_iters,
                   help=f'batches of the LR range test (default {LR_FIND_ITERS}, or {LR_FIND_PASSES} passes over '
                        'the training images if that is fewer)')
    g.add_argument('--momentum', type=float, default=d.momentum,
                   help='SGD momentum (default %(default)s); one-cycle cycles it 0.05 either side, as fastai')
    g.add_argument('--nesterov', action=argparse.BooleanOptionalAction, help="Nesterov's momentum, as torch's "
                   "SGD(nesterov=True) (default: but for --schedule one-cycle)")
    g.add_argument('--wd', type=float, default=d.wd, help='weight decay (default %(default)s)')
    g.add_argument('--wd-mode', default=d.wd_mode, help="'l2' (added to the gradient, default) or 'decoupled'")
    g.add_argument('--bn-bias-scale', type=float, default=d.bn_bias_scale,
                   help='batch-norm biases learn at this multiple of the rate, as airbench\'s 64 (default %(default)s)')
    g.add_argument('--label-smoothing', type=float,
                   help='label smoothing of the cross-entropy, in [0, 1) '
                        '(default 0 with --schedule one-cycle, else 0.2)')
    g.add_argument('--ema', type=float, help='decay per step of an average of the weights that is tested and kept at '
                                             'the end, in [0, 1); 0 for none (default 0.998 at batch 64, the same '
                                             'span in images at others: 0.996 at 128)')
    g.add_argument('--ema-every', type=int, default=d.ema_every,
                   help='steps between updates of that average (default %(default)s)')
    g.add_argument('--lookahead', action='store_true', help="make that average airbench's lookahead: its decay rises "
                   "to --ema as the cube of the share of training done, and the live weights restart from it")


def _schedule_options(g, d):
    from cifar_fastai.run import SCHEDULES
    g.add_argument('--epochs', type=int, default=d.epochs, help='epochs (default %(default)s, as the reports)')
    g.add_argument('--schedule', default=d.schedule, help=f"one of {', '.join(SCHEDULES)} (default %(default)s)")
    g.add_argument('--warmup', type=float, help='plateau, linear: share of the steps over which the rate ramps up '
                                                '(default 0.05 plateau, 0.2 linear)')
    g.add_argument('--anneal', type=float, help='plateau, linear: share of the steps at the end over which the rate '
                                                'decays linearly to 0 (default 0.2 plateau, 0.8 linear)')
    auto = {'patience': 'a tenth of --epochs, rounded down',  # None in `RunConfig`: worked out from other options
            'min_lr': 'a thousandth of the starting rate; a cut due there ends the run'}
    kinds = dict(factor=float, patience=int, threshold=float, cooldown=int, min_lr=float)
    for name, kind in kinds.items():
        g.add_argument(f"--plateau-{name.replace('_', '-')}", dest=f'plateau_{name}', type=kind,
                       default=getattr(d, f'plateau_{name}') if name not in auto else None,
                       help=f"ReduceLROnPlateau {name} (default {auto.get(name, '%(default)s')})")


def _augmentation_options(g, d):
    g.add_argument('--pad', type=int, help='reflect padding before a random 32x32 crop, 0 for none (default: 4 from 10 '
                                           'epochs on, else 0)')
    g.add_argument('--no-flip', dest='flip', action='store_false', help='no random horizontal flip')
    g.add_argument('--alternate-flip', dest='flip', action='store_const', const='alternate',
                   help='mirror a random half of the images in the first epoch, then each epoch the other half')
    g.add_argument('--cutout', type=int, help='side of the cutout hole in pixels, 0 for none (default: 16 from 10 '
                                              'epochs on, else 0)')
    g.add_argument('--cutout-p', type=float, default=d.cutout_p, help='probability of the cutout (default %(default)s)')


def _speed_options(g, d, train: bool):
    from cifar_fastai.precision import PRECISIONS
    g.add_argument('--precision', default=d.precision, help=f"one of {', '.join(PRECISIONS)} (default %(default)s)")
    g.add_argument('--no-channels-last', dest='channels_last', action='store_false',
                   help='keep the default memory layout')
    if train: g.add_argument('--sync-bn', action='store_true', help='synchronise batch norm across the processes of '
                                                                   'a data-parallel run (CUDA only; see '
                                                                   'docs/distributed.md)')


def _output_options(g, d, train: bool):
    g.add_argument('--out', type=Path, help='run folder (default runs/<date-time>)')
    if not train: return
    g.add_argument('--resume', type=Path, metavar='RUN', help='continue run folder RUN from its last checkpoint, '
                                                              'with more --epochs if it is a plateau run, or --data '
                                                              'where its data has moved')
    g.add_argument('--no-interpret', dest='interpret', action='store_false',
                   help='skip the pictures and report at the end')
    g.add_argument('--save-every', type=float, default=d.save_every, metavar='SECONDS',
                   help='seconds of training between checkpoints inside an epoch, so that a stop loses at most that '
                        '(default %(default)g; 0: at the end of each epoch only)')
    g.add_argument('--tta', action='store_true', help="record each epoch's test accuracy with flip test-time "
                                                      "augmentation too (one more pass over the test images)")


def _run_options(p: argparse.ArgumentParser, train: bool = True) -> argparse.ArgumentParser:
    "The options of `train`, in groups; `lr-find` (`train=False`) has no schedule, resume or interpretation"
    from cifar_fastai.run import RunConfig
    d = RunConfig()
    _data_options(p.add_argument_group('data', 'which images, how they are batched'), d)
    _optimisation_options(p.add_argument_group('optimisation', 'SGD, its learning rate and the weight average'), d)
    if train: _schedule_options(p.add_argument_group('schedule', 'epochs and how the learning rate changes'), d)
    _augmentation_options(p.add_argument_group('augmentation', 'of the training images'), d)
    _speed_options(p.add_argument_group('speed', 'precision, memory layout, processes'), d, train)
    _output_options(p.add_argument_group('output', 'the run folder'), d, train)
    return p


def parser(typed_only: bool = False) -> argparse.ArgumentParser:
    "The command line's parser; `typed_only`: `train`'s options of a run are left out unless typed, not defaulted"
    from cifar_fastai import __version__
    from cifar_fastai.run import RunConfig
    top = argparse.ArgumentParser(prog='cifar-fastai', description='Train and explain a CIFAR-10 ResNet18 with fastai',
                                  usage='%(prog)s [-h] [--version] COMMAND ...')  # one line above an error
    top.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = top.add_subparsers(dest='command', required=True)
    t = _run_options(sub.add_parser('train', help='train a ResNet18 and write a run folder'))
    for action in t._actions if typed_only else []:  # argparse's list of them; `set_defaults` would convert SUPPRESS
        if action.dest in RunConfig.__dataclass_fields__: action.default = argparse.SUPPRESS
    _run_options(sub.add_parser('lr-find', help='run only the learning-rate range test'), train=False)
    for name, text in (('evaluate', 'print test accuracy overall and per class'),
                       ('interpret', 'write the interpretation pictures and report into the run folder'),
                       ('gradcam', 'write misclassified test images, their maps for the true and predicted class, '
                                   'and the faithfulness of every method\'s maps into the run folder')):
        p = sub.add_parser(name, help=text)
        p.add_argument('run', type=Path, help='a run folder written by `cifar-fastai train`')
        p.add_argument('--data', help='read the test images from here instead of the run\'s data source')
        if name != 'evaluate': _map_options(p)
    e = sub.choices['evaluate']
    e.add_argument('--tta', action='store_const', const='flip', help='also average each test image\'s prediction '
                   'with its mirror image\'s (flip test-time augmentation)')
    e.add_argument('--tta-translate', dest='tta', action='store_const', const='translate', help='also average six '
                   'views: the image and its mirror, and both moved one pixel up-left and down-right')
    return top


def _map_options(p: argparse.ArgumentParser):
    from cifar_fastai.gradcam import CAMS, DEFAULT_CAM
    p.add_argument('--cam', default=DEFAULT_CAM, choices=list(CAMS), help='method of the maps (default %(default)s)')
    p.add_argument('--faithfulness-images', type=_count(0), default=100,
                   help='test images to score every method\'s maps on, 0 for none (default %(default)s)')
    p.add_argument('--faithfulness-steps', type=_count(1), default=8,
                   help='steps of the deletion and insertion curves (default %(default)s)')


def _config(args):
    from cifar_fastai.run import RunConfig
    names = set(RunConfig.__dataclass_fields__)
    return RunConfig.from_dict({k: v for k, v in vars(args).items() if k in names})


def _default_out() -> Path: return Path('runs') / time.strftime('%Y%m%d-%H%M%S')


def _sigterm(signum, frame): raise KeyboardInterrupt  # end like Ctrl-C (while training: saved first)


def _resumed_config(args, argv):
    "The saved options of run `args.resume` with the changes `argv` types, or the option that contradicts the run"
    from cifar_fastai.config import ConfigError, RunConfig, resume_changes, saved_config
    if args.out is not None and args.out != args.resume:
        raise ConfigError(f"--out {args.out} contradicts --resume {args.resume}: a run goes on in its own folder")
    typed = vars(parser(typed_only=True).parse_args(argv))
    typed = {k: v for k, v in typed.items() if k in RunConfig.__dataclass_fields__}
    return resume_changes(saved_config(args.resume)[0], **typed)  # before loading data: the files are checked


def _train(args, argv):
    from fastai.torch_core import rank_distrib
    from cifar_fastai.run import read_config, train
    out = args.resume or args.out or _default_out()
    config = _resumed_config(args, argv) if args.resume else _config(args)
    bars = sys.stdout.isatty()  # in a log file, a line per epoch instead of every progress update
    try: learn = train(config, out, resume=bool(args.resume), progress=bars)
    except KeyboardInterrupt: sys.exit(_interrupted(out))
    if rank_distrib(): return  # a data-parallel run reports from rank 0 alone
    print(f"Run folder: {out}")
    if not read_config(out)['interpret']: return
    try: _interpret(learn, out)
    except KeyboardInterrupt:
        sys.exit(f"\nInterrupted while drawing the pictures; the trained run is whole. Draw them with: "
                 f"cifar-fastai interpret {out}")


def _interrupted(out) -> str:
    "What a stop during `train` kept in `out`, and how to go on"
    from cifar_fastai.layout import CONFIG
    if not (Path(out) / CONFIG).is_file():
        return "\nInterrupted before training started: nothing was kept; run the same command again"
    return (f"\nInterrupted. {out} keeps what was trained up to its last checkpoint; continue with: "
            f"cifar-fastai train --resume {out}")


def _interpret(learn, run):
    from cifar_fastai.report import interpret_run
    with _alone(), _bars(learn):
        for path in interpret_run(learn, run): print(f"wrote {path}")


def _alone():
    "After a data-parallel run, rank 0 interprets it by itself"
    from fastai.torch_core import num_distrib
    if num_distrib() <= 1: return nullcontext()
    from cifar_fastai.distributed import single_process
    return single_process()


def _lr_find(args):
    from cifar_fastai.layout import LR_PLOT
    from cifar_fastai.run import range_test
    config, out = _config(args), Path(args.out or _default_out())
    found = range_test(config, out, progress=sys.stdout.isatty())
    print(f"lr_find suggests {found[config.lr_suggestion]:.3g} ({config.lr_suggestion}); `train` would use "
          f"{config.lr_mult:g} x that = {found['lr']:.3g}; all: {found}; plot in {out / LR_PLOT}")


def _bars(learn):
    "fastai's progress bars in a terminal; none when the output goes to a file"
    return nullcontext() if sys.stdout.isatty() else learn.no_bar()


def _evaluate(args):
    from cifar_fastai.evaluate import format_accuracy, load_run, predict, tta_name
    learn = load_run(args.run, args.data, progress=sys.stdout.isatty())
    with _bars(learn):
        print(format_accuracy(predict(learn)))
        if args.tta:
            accuracy = predict(learn, tta=args.tta).accuracy
            print(f"With {tta_name(args.tta)} test-time augmentation: {100 * accuracy:.2f} %")


def _run_command(args, name):
    from cifar_fastai.evaluate import load_run
    from cifar_fastai import report
    interpret = name == 'interpret'  # its augmentation picture shows training images: read them too
    learn = load_run(args.run, args.data, train=interpret, progress=sys.stdout.isatty())
    options = {k: getattr(args, k) for k in ('cam', 'faithfulness_images', 'faithfulness_steps')}
    with _bars(learn): paths = getattr(report, f'{name}_run')(learn, args.run, **options)
    for path in paths: print(f"wrote {path}")


def main(argv=None):
    "Entry point of `cifar-fastai`"
    from cifar_fastai.data import Cifar10Error
    from cifar_fastai.errors import ConfigError, UserError
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    commands = {'train': lambda a: _train(a, argv), 'lr-find': _lr_find, 'evaluate': _evaluate,
                'interpret': lambda a: _run_command(a, 'interpret'), 'gradcam': lambda a: _run_command(a, 'gradcam')}
    try:
        if args.command in ('train', 'lr-find') and not getattr(args, 'resume', None): _config(args).check()
        commands[args.command](args)
    except ConfigError as e: p.error(str(e))
    except (UserError, Cifar10Error, OSError) as e: sys.exit(f"cifar-fastai: error: {e}")
    except KeyboardInterrupt:
        sys.exit("\nInterrupted; each file written so far is whole (none is left half-written): run the command "
                 "again to finish")


if __name__ == '__main__':
    main()
