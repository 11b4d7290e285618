"The text of a run's `report.md`: what each picture shows, the numbers behind it, and how the run was made"
import math
import platform
from pathlib import Path
from statistics import mean

from cifar_fastai.callbacks import plateau_replay, read_metrics
from cifar_fastai.config import read_config
from cifar_fastai.errors import RunFileError
from cifar_fastai.evaluate import Predictions, class_accuracy
from cifar_fastai.faithfulness import BLUR_KERNEL, BLUR_SIGMA, RANDOM
from cifar_fastai.gradcam import DEFAULT_CAM, cam_class
from cifar_fastai.io import atomic_write
from cifar_fastai.layout import FAITHFULNESS, LR_PLOT, METRICS, PICTURES, REPORT
from cifar_fastai.machine import cpu_name

__all__ = ['REFERENCE_FINAL', 'REFERENCE_EPOCHS', 'accuracy_markdown', 'faithfulness_markdown', 'write_report']

# measured on final-oc20-s0 (docs/results/explanations/README.md)
_LATTICE = (' The dots on a lattice in the layer1 and layer2 maps come from the network, not from the image: the next '
            "stage's 1x1 stride-2 shortcut reads one pixel in four and sends its gradient there, so about half of a "
            "layer1 map falls on those pixels while the activations spread evenly. Read those maps for their shape.")

# Test accuracy (%) of the reference reports (a CIFAR ResNet18 trained 50 epochs)
REFERENCE_FINAL = (88.6, 90.33)
REFERENCE_EPOCHS = {1: 58.58, 2: 63.98, 3: 67.39, 4: 73.58, 5: 82.56}  # one reference report's log, epochs 1-5


def _table(header: list, rows: list) -> str:
    "A markdown table"
    lines = ['| ' + ' | '.join(map(str, header)) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows])


def _pct(x: float) -> str: return f'{100 * x:.2f} %'


def accuracy_markdown(p: Predictions) -> str:
    "The per-class test accuracy as a markdown table, with counts and the overall accuracy as the last row"
    correct = p.preds == p.targets
    rows = [(c, int((p.targets == i).sum()), int(correct[p.targets == i].sum()), _pct(a))
            for i, (c, a) in enumerate(class_accuracy(p).items())]
    return _table(['class', 'test images', 'correct', 'accuracy'],
                  rows + [('**all**', len(p.targets), int(correct.sum()), f'**{_pct(p.accuracy)}**')])


def _picture(run: Path, name: str, alt: str) -> str:
    "A markdown image link to picture `name` relative to the report, or a note that it was not drawn"
    file = PICTURES.get(name, name)
    if (run / file).is_file(): return f'![{alt}]({file})'
    return f'*({file} was not drawn: run `cifar-fastai interpret {run}`)*'


def _summary(config: dict, rows: list, p: Predictions, tta: float | None = None) -> str:
    best = {f'best {k} accuracy': max(rows, key=lambda r: r[f'{k}_accuracy']) for k in ('test', 'train')}
    table = _table(['', 'epoch', 'train accuracy', 'test accuracy', 'train loss', 'test loss'],
                   [(name, r['epoch'], _pct(r['train_accuracy']), _pct(r['test_accuracy']), f"{r['train_loss']:.4f}",
                     f"{r['test_loss']:.4f}") for name, r in {**best, 'final': rows[-1]}.items()])
    return (f"Data: {config.get('data_source', config.get('data'))}: {config.get('n_train')} training and "
            f"{config.get('n_test')} test images, {len(p.classes)} classes.\n\n{table}\n\n"
            f"Trained {rows[-1]['epoch']} of {config.get('epochs')} configured epochs. The saved weights, predicted "
            f"again for this report, classify {_pct(p.accuracy)} of the {len(p.targets)} test images"
            + (f", {_pct(tta)} with flip test-time augmentation (each image's probabilities averaged with its "
               f"mirror image's)." if tta is not None else '.') + _held_out(config))


def _held_out(config: dict) -> str:
    "Which split validated: a share of train held out, or the test split itself"
    if not config.get('valid_pct'): return ' The test split was also the validation set, as in the reference reports.'
    return (f" {config.get('n_valid')} training images ({config['valid_pct']:.0%} of each class) were held out to "
            f"validate on; the plateau watched their loss, and the test split was only measured.")


def _reference(rows: list) -> str:
    ours = {r['epoch']: _pct(r['test_accuracy']) for r in rows}
    table = _table(['epoch', 'reference log', 'this run'],
                   [(e, f'{a:.2f} %', ours.get(e, 'not run')) for e, a in REFERENCE_EPOCHS.items()]
                   + [(50, ' and '.join(f'{a} %' for a in REFERENCE_FINAL) + ' (two reports)',
                       ours.get(50, 'not run'))])
    return (f"The reference reports trained a CIFAR ResNet18 for 50 epochs and reached {REFERENCE_FINAL[0]} % and "
            f"{REFERENCE_FINAL[1]} % test accuracy; one of them logged the first five epochs. "
            f"Test accuracy:\n\n{table}\n\n"
            f"This run's last epoch ({rows[-1]['epoch']}): {_pct(rows[-1]['test_accuracy'])}.")


def _epochs(rows: list) -> str:
    tta = 'test_tta_accuracy' in rows[0]  # recorded by runs with --tta
    head = ['epoch', 'train loss', 'train accuracy', 'test loss', 'test accuracy'] + ['with flip TTA'] * tta
    return _table(head + ['learning rate', 'seconds'],
                  [(r['epoch'], f"{r['train_loss']:.4f}", _pct(r['train_accuracy']), f"{r['test_loss']:.4f}",
                    _pct(r['test_accuracy']), *([_pct(r['test_tta_accuracy'])] if tta else []), f"{r['lr']:.3g}",
                    f"{r['seconds']:.1f}") for r in rows])


def _learning_rate(config: dict, run: Path, rows: list) -> str:
    if config.get('lr') != 'find':
        return f"Fixed learning rate {config.get('lr')} (`--lr`): no range test was run." + _plateau_acts(config, rows)
    found = config.get('lr_suggestions') or {}
    others = ', '.join(f"{k} {v:.3g}" if v is not None else f"{k} found nothing"
                       for k, v in found.items() if k not in ('lr', 'suggestion', 'mult', 'num_it'))
    iters = found.get('num_it') or config.get('lr_find_iters')  # runs before `num_it` ran `lr_find_iters` batches
    batches = f" of {iters} batches" if iters else ''
    text = (f"fastai's `lr_find` (LR range test{batches}) suggested **{config.get('found_lr'):.3g}** "
            f"(rule: {found.get('suggestion', 'valley')}; all rules: {others or 'not recorded'}); "
            f"training used {config.get('lr_used'):.3g}" + (f" ({config['lr_mult']:g} x the suggestion, `--lr-mult`)."
                                                              if config.get('lr_mult', 1) != 1 else '.'))
    plot = f'\n\n![LR range test]({LR_PLOT})' if (run / LR_PLOT).is_file() else ''
    return text + _plateau_acts(config, rows) + plot


def _monitored(config: dict) -> tuple[str, str]:
    "The split whose loss the plateau watched, as `metrics.csv` and as a reader names it: held out of train, or test"
    return ('valid', 'held-out') if config.get('valid_pct') else ('test', 'test')


_PLATEAU = ('factor', 'patience', 'threshold', 'cooldown')
_FLIPS = {True: 'random horizontal flip', 'alternate': 'alternating horizontal flip', False: 'no flip'}


def _epochs_n(n: int) -> str: return f"{n} epoch{'s' * (n != 1)}"


def _plateau_acts(config: dict, rows: list) -> str:
    "When ReduceLROnPlateau cut the rate, replayed from the monitored losses, or how near it came to; '' if no plateau"
    if config.get('schedule', 'plateau') != 'plateau' or any(f'plateau_{k}' not in config for k in _PLATEAU): return ''
    (split, watched), settings = _monitored(config), {k: config[f'plateau_{k}'] for k in _PLATEAU}
    cuts, longest = plateau_replay([r[f'{split}_loss'] for r in rows], config.get('lr_used') or 1.,
                                   min_lr=config.get('plateau_min_lr_used') or 0., **settings)
    cuts = [e for e in cuts if e < config.get('epochs', math.inf)]  # a cut after the last epoch changed nothing
    average = " (the weight average's)" if config.get('ema') else ''
    loss = f"the {watched} loss{average}"
    said = ' ReduceLROnPlateau ' + _plateau_sentence(cuts, longest, loss, settings)
    if config.get('anneal') and rows[-1]['epoch'] == config.get('epochs'):  # not in a run that stopped early
        said += (f" The final decay (`--anneal {config['anneal']:g}`) took the rate down to 0 over the last "
                 f"{config['anneal']:.0%} of the steps.")
    return said


def _plateau_sentence(cuts: list, longest: int, loss: str, settings: dict) -> str:
    "What the plateau did: cut after the epochs `cuts`, or waited `longest` epochs at most for `loss` to fall"
    low, patience = f"a new low (by more than {settings['threshold']:.2%} of itself)", settings['patience']
    if cuts:
        when = 'each time' if len(cuts) > 1 else 'when'
        return (f"multiplied the rate by {settings['factor']:g} after epoch{'s' * (len(cuts) > 1)} "
                f"{', '.join(map(str, cuts))}, {when} {loss} had not set {low} for more than {_epochs_n(patience)}.")
    if not longest: return f"never cut the rate: {loss} set {low} every epoch."
    return (f"never cut the rate: {loss} went at most {_epochs_n(longest)} without {low}, and a cut waits for more "
            f"than {patience}.")


def _configuration(config: dict) -> str:
    def g(key): return config.get(key, 'n/a')
    lr = f"{g('lr')} (found {config['found_lr']:.3g})" if config.get('found_lr') else g('lr')
    used = {'min_lr': config.get('plateau_min_lr_used', g('plateau_min_lr'))}  # None asks for a floor from the rate
    plateau = (f'ReduceLROnPlateau on {_monitored(config)[1]} loss: '
               + ', '.join(f"{k} {used.get(k, g('plateau_' + k))}" for k in _PLATEAU + ('min_lr',)))
    if g('schedule') == 'linear':
        plateau = f"linear: up over the first {g('warmup'):.0%} of the steps, down to 0 over the last {g('anneal'):.0%}"
    elif g('schedule') != 'plateau': plateau = g('schedule')
    crop = f"pad {g('pad')} (reflect) + random 32x32 crop" if config.get('pad') else 'no crop'
    flip = _FLIPS.get(config.get('flip'), f"horizontal flip {g('flip')}")
    cutout = f"cutout {g('cutout')}x{g('cutout')} with p {g('cutout_p')}" if config.get('cutout') != 0 else 'no cutout'
    augs = f"{crop}, {flip}, {cutout}"
    data = f"`--data {config['data']}`" if config.get('data') else 'found by the default search'
    rows = [('data', f"{g('data_source')} ({data})"), ('epochs', g('epochs')), ('batch size', g('bs')),
            ('learning rate', lr),
            ('optimizer', f"SGD, {'Nesterov ' * bool(config.get('nesterov'))}momentum {g('momentum')}"
                          + _bias_scale(config.get('bn_bias_scale', 1))),
            ('weight decay', f"{g('wd')} ({g('wd_mode')})"), ('label smoothing', config.get('label_smoothing', 0)),
            ('weight average', _average(config)),
            ('schedule', plateau), ('augmentation', augs),
            ('precision', f"{g('precision')} -> {g('precision_used')}, channels_last {g('channels_last')}"),
            ('seed', g('seed')),
            ('versions', ', '.join(f'{k} {g(k)}' for k in ('python', 'torch', 'fastai', 'albumentations')))]
    return _table(['option', 'value'], rows)


def _bias_scale(scale: float) -> str:
    return f", batch-norm biases at {scale:g}x the rate" if scale != 1 else ''


def _average(config: dict) -> str:
    "The weight average of the run, as the configuration table names it"
    if not config.get('ema'): return 'none'
    every = config.get('ema_every', 1)
    if config.get('lookahead'):
        how = (f"lookahead, decay rising to {config['ema']} per step as the cube of the share of training done, "
               f"every {every} steps the live weights restart from the average")
    else: how = f"EMA, decay {config['ema']} per step, updated every {every} steps"
    return f"{how}: test metrics and the kept model are the average's"


def _mean_se(values) -> str:
    "'mean ± standard error of the mean' of a tensor of values"
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float('nan')
    return f'{values.mean().item():.3f} ± {se:.3f}'


def faithfulness_markdown(rows: list, steps: int, seed: int = 0) -> str:
    "What the faithfulness scores measure, then a table of `stage_faithfulness` rows averaged over their images"
    names = {r['method']: 'random maps' if r['method'] == RANDOM else cam_class(r['method']).title for r in rows}
    table = _table(['stage', 'method', 'deletion (lower is better)', 'insertion (higher is better)',
                    'insertion - deletion'],
                   [(r['layer'], names[r['method']], _mean_se(r['deletion']), _mean_se(r['insertion']),
                     _mean_se(r['insertion'] - r['deletion'])) for r in rows])
    n = len(rows[0]['deletion']) if rows else 0
    return (f"How well each map shows what the model used, on {n} test images drawn at random (seed {seed}), for the "
            f"class the model predicts. *Deletion* turns the most highlighted pixels to the mean colour, 1/{steps} of "
            f"the image at a time, and averages that class's probability along the way (the area under the curve); "
            f"*insertion* puts the most highlighted pixels first back into the image blurred ({BLUR_KERNEL} px, sigma "
            f"{BLUR_SIGMA:g}). Random maps (uniform noise on the stage's own grid, resized as the maps are) are the "
            f"baseline: a faithful map deletes lower and inserts higher than they do. Mean ± standard error over the "
            f"images; every method is scored on the same images, so differences between rows are less noisy than "
            f"the errors suggest.\n\n{table}")


def _speed_and_machine(config: dict, rows: list) -> str:
    secs = mean(r['seconds'] for r in rows)
    processor = config.get('processor') or f'{cpu_name()} (read when this report was written)'
    n_train = config.get('n_train')
    speed = f"{n_train / secs:.1f} training images per second" if n_train else 'training images per second unknown'
    total = sum(r['seconds'] for r in rows)
    return '\n'.join([f"- {secs:.1f} s per epoch on average (train and test pass; {total:.0f} s "
                      f"for {len(rows)} epochs), {speed} ({n_train} / {secs:.1f} s)",
                      f"- processor: {processor}, {config.get('machine', platform.machine())}",
                      f"- threads: {config.get('threads')}, device: {config.get('device')}, "
                      f"precision: {config.get('precision_used')}", f"- torch {config.get('torch')}"])


def _faithfulness(run: Path) -> str:
    "The faithfulness table written in `run`, or a note that it was not measured"
    file = run / FAITHFULNESS
    if not file.is_file(): return f'*({FAITHFULNESS} was not measured: run `cifar-fastai gradcam {run}`)*'
    return file.read_text().strip()


def _reports_method(run: Path, cam: str) -> str:
    "Where to get the reference reports' Grad-CAM maps, when `cam` drew others; what LayerCAM's dots are"
    if cam == 'gradcam': return ''
    return (f' The reference reports drew Grad-CAM: `cifar-fastai gradcam {run} --cam gradcam` draws it here. '
            'Read each stage against the faithfulness table below, where random maps give the baseline.'
            + (_LATTICE if cam == 'layercam' else ''))



def write_report(run, p: Predictions, mistakes: str = 'misclassified test images', cam: str = DEFAULT_CAM,
                 tta: float | None = None) -> Path:
    "Write `report.md` in run folder `run` from its config.json, metrics.csv, pictures and test predictions `p`"
    run = Path(run)
    config, rows, title = read_config(run), read_metrics(run / METRICS), cam_class(cam).title
    if not rows: raise RunFileError(f"{run / METRICS} has no epochs: train at least one epoch before the report")
    sections = [
        (f'CIFAR-10 ResNet18 run `{run.name}`', _summary(config, rows, p, tta)),
        ('Against the reference reports', _reference(rows)),
        ('Accuracy per class', accuracy_markdown(p) + '\n\n' + _picture(run, 'class_accuracy', 'accuracy per class')),
        ('Training curves', _picture(run, 'curves', 'training curves') + '\n\n' + _epochs(rows)),
        ('Learning rate', _learning_rate(config, run, rows)),
        ('Configuration', _configuration(config)),
        ('Augmentation', 'One training image per class and five augmented versions of it:\n\n'
                         + _picture(run, 'augmentations', 'augmented training images')),
        ('Misclassified test images', f'The grid shows {mistakes}, titled true/predicted (probability):\n\n'
                                      + _picture(run, 'misclassified', 'misclassified test images')),
        (title, f'The same images with {title} (`--cam {cam}`) at the end of each residual stage, for the predicted '
                'class and, beside it, for the true class: why it said one, where it saw the other.'
                + _reports_method(run, cam) + '\n\n' + _picture(run, 'gradcam', f'{title} at layer1 to layer4')),
        ('Faithfulness of the maps', _faithfulness(run)),
        ('Confusion matrix', _picture(run, 'confusion_matrix', 'confusion matrix')),
        ('Top losses', _picture(run, 'top_losses', 'test images with the largest loss')),
        ('Speed and machine', _speed_and_machine(config, rows))]
    text = '\n\n'.join(f"{'#' if i == 0 else '##'} {title}\n\n{body}" for i, (title, body) in enumerate(sections))
    with atomic_write(run / REPORT, 'w') as f: f.write(text + '\n')
    return run / REPORT
