"One call after a run: the pictures of the reference reports in the run folder, then `report.md` (`report_md`)"
from pathlib import Path

from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastprogress.fastprogress import progress_bar

from cifar_fastai.checks import whole
from cifar_fastai.config import read_config
from cifar_fastai.evaluate import Predictions, predict
from cifar_fastai.gradcam import DEFAULT_CAM, cam_class
from cifar_fastai.io import atomic_write
from cifar_fastai.interpret import (PredictionsInterpretation, measure_faithfulness, plot_class_accuracy,
                                    plot_confusion_matrix, plot_gradcam, plot_misclassified, plot_top_losses,
                                    top_mistakes)
from cifar_fastai.layout import FAITHFULNESS, PICTURES, REPORT
from cifar_fastai.plots import plot_augmentations, plot_curves
from cifar_fastai.report_md import (REFERENCE_EPOCHS, REFERENCE_FINAL, accuracy_markdown, faithfulness_markdown,
                                    write_report)

__all__ = ['REPORT', 'PICTURES', 'FAITHFULNESS', 'REFERENCE_FINAL', 'REFERENCE_EPOCHS', 'interpret_run', 'gradcam_run',
           'accuracy_markdown', 'faithfulness_markdown', 'write_faithfulness', 'write_report']

def _shows_bars(learn: Learner) -> bool:
    "Whether `learn` shows fastai's progress bars (not inside `learn.no_bar()`)"
    return any(isinstance(cb, ProgressCallback) for cb in learn.cbs)


def _draw(steps: dict, run: Path, bar: bool = True) -> list:
    "Call each `steps[name](path)` with `path` the picture's fixed file in `run`, showing progress if `bar`; the paths"
    paths = []
    for name in progress_bar(list(steps), leave=False) if bar else list(steps):
        steps[name](run / PICTURES[name])
        paths.append(run / PICTURES[name])
    return paths


def _mistake_steps(learn: Learner, p: Predictions, idxs, cam: str) -> dict:
    return dict(misclassified=lambda path: plot_misclassified(learn, p, idxs, path),
                gradcam=lambda path: plot_gradcam(learn, p, idxs, path=path, cam=cam))


def _mistakes_text(n: int, order: str, seed: int) -> str:
    "How the misclassified images were chosen, in words"
    if order == 'confident': return f'the {n} most confident mistakes (largest probability given to the wrong class)'
    if order == 'random': return f'{n} mistakes drawn at random (seed {seed})'
    return f'the first {n} mistakes in test-set order'


def write_faithfulness(learn: Learner, p: Predictions, run, n: int = 100, steps: int = 8, seed: int = 0) -> Path:
    "Score every method's maps at every stage on `n` test images and write the table to `faithfulness.md` in `run`"
    rows = measure_faithfulness(learn, p, n, steps, seed)
    with atomic_write(Path(run) / FAITHFULNESS, 'w') as f: f.write(faithfulness_markdown(rows, steps, seed) + '\n')
    return Path(run) / FAITHFULNESS


def _check_scoring(cam: str, images: int, steps: int):
    "Refuse a bad map method or faithfulness setting before the test set is predicted"
    cam_class(cam)
    whole('`faithfulness_images` (test images to score maps on; 0: none)', images, low=0)
    whole('`faithfulness_steps`', steps)


def _scored(learn: Learner, p: Predictions, run: Path, n: int, steps: int, seed: int) -> list:
    "[the path of `faithfulness.md`] after scoring the maps on `n` test images; [] when `n` is 0"
    return [write_faithfulness(learn, p, run, n, steps, seed)] if n else []


def gradcam_run(learn: Learner, run, k: int = 25, order: str = 'confident', seed: int = 0, cam: str = DEFAULT_CAM,
                faithfulness_images: int = 100, faithfulness_steps: int = 8) -> list[Path]:
    "Write `k` misclassified test images, their maps by `cam` and the maps' faithfulness into run folder `run`"
    run = Path(run)
    read_config(run)  # fail before predicting if `run` is not a run folder
    _check_scoring(cam, faithfulness_images, faithfulness_steps)
    p = predict(learn)
    idxs = top_mistakes(p, k, order, seed)
    paths = _draw(_mistake_steps(learn, p, idxs, cam), run, _shows_bars(learn))
    paths += _scored(learn, p, run, faithfulness_images, faithfulness_steps, seed)
    if not (run / REPORT).is_file(): return paths
    return paths + [_report(learn, run, p, _mistakes_text(len(idxs), order, seed), cam)]  # with the new maps


def interpret_run(learn: Learner, run, k: int = 25, order: str = 'confident', seed: int = 0, cam: str = DEFAULT_CAM,
                  faithfulness_images: int = 100, faithfulness_steps: int = 8) -> list[Path]:
    "Write every picture, the maps' faithfulness and `report.md` into run folder `run`, predicting the test set once"
    run = Path(run)
    smoothing = read_config(run).get('label_smoothing', 0.)
    _check_scoring(cam, faithfulness_images, faithfulness_steps)
    p = predict(learn)
    interp, idxs = PredictionsInterpretation(learn, p), top_mistakes(p, k, order, seed)
    steps = dict(class_accuracy=lambda path: plot_class_accuracy(p, path),
                 curves=lambda path: plot_curves(run, path, smoothing, len(learn.dls.vocab)),
                 augmentations=lambda path: plot_augmentations(learn.dls, seed=seed, path=path),
                 **_mistake_steps(learn, p, idxs, cam),
                 confusion_matrix=lambda path: plot_confusion_matrix(interp, path),
                 top_losses=lambda path: plot_top_losses(interp, path=path))
    paths = _draw(steps, run, _shows_bars(learn))
    paths += _scored(learn, p, run, faithfulness_images, faithfulness_steps, seed)
    return paths + [_report(learn, run, p, _mistakes_text(len(idxs), order, seed), cam)]


def _report(learn: Learner, run: Path, p: Predictions, mistakes: str, cam: str) -> Path:
    "`write_report`, with the flip-TTA accuracy of `learn` beside the plain one"
    return write_report(run, p, mistakes, cam, tta=predict(learn, tta=True).accuracy)


