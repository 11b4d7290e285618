"A fastai `Learner` for CIFAR-10: the CIFAR ResNet18, SGD with momentum, L2 or decoupled weight decay"
import warnings
from functools import partial

from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import TensorImage, rank_distrib

from cifar_fastai.callbacks import EpochRecord, FlipEpoch, ReduceLROnPlateau, StopOnNonFinite, TestPass
from cifar_fastai.checks import one_of, positive, within
from cifar_fastai.ema import EMA
from cifar_fastai.io import atomic_path
from cifar_fastai.loaders import ArrayImage
from cifar_fastai.models import resnet18
from cifar_fastai.optim import norm_bias_split, sgd
from cifar_fastai.precision import DTYPES, Autocast, ChannelsLast, resolve_precision

__all__ = ['WD_MODES', 'CifarLearner', 'cifar_learner']

WD_MODES = ('l2', 'decoupled')


class CifarLearner(Learner):
    "A fastai `Learner` that cleans up after a failed fit, restores the rates after `lr_find`, and predicts files"
    def fit(self, n_epoch, lr=None, wd=None, cbs=None, reset_opt=False, start_epoch=0):
        "fastai's `fit`; when an exception ends it, callbacks put back what they changed in `after_cancel_fit`"
        # fastai fires `after_cancel_fit` (then `after_fit`) for a `CancelFitException` alone: any other exception,
        # a NaN stop or Ctrl-C, leaves the fit with no event at all (`Learner._with_events` has no `finally`)
        with self.added_cbs(cbs):  # added here rather than by fastai's `fit`, so that they are there to clean up
            try: return super().fit(n_epoch, lr=lr, wd=wd, reset_opt=reset_opt, start_epoch=start_epoch)
            except BaseException:
                self('after_cancel_fit')
                raise

    def lr_find(self, *args, **kwargs):
        # fastai's finder restores weights and optimizer state from a saved copy, but that copy is taken after
        # `fit` has reset the learning rate to `learn.lr`, so the rate in use before the test would be lost.
        hypers = None if self.opt is None else [dict(h) for h in self.opt.hypers]
        try: return super().lr_find(*args, **kwargs)
        finally:
            for h, saved in zip(self.opt.hypers if hypers else [], hypers or []): h.update(saved)

    def export(self, fname='export.pkl', **kwargs):
        "fastai's `export`, written atomically, without the data's pixels (which loader workers, pickling too, keep)"
        if rank_distrib(): return  # as fastai's: one process of a data-parallel run writes it
        ArrayImage.exporting = True
        try:
            with atomic_path(self.path / fname) as tmp: return super().export(tmp, **kwargs)  # `path / tmp` is `tmp`
        finally: ArrayImage.exporting = False

    def predict(self, item, rm_type_tfms=None, with_input=False):
        "fastai's `predict`, for an image file, a PIL image or an (H, W, 3) uint8 array as well"
        if not isinstance(item, (int, TensorImage)): item = ArrayImage()(item)  # fastai matches the item's type
        return super().predict(item, rm_type_tfms=rm_type_tfms, with_input=with_input)


def cifar_learner(dls, model=None, lr: float = 0.05, momentum: float = 0.9, nesterov: bool = False, wd: float = 5e-4,
                  wd_mode: str = 'l2', bn_bias_scale: float = 1., precision: str = 'auto', channels_last: bool = True,
                  plateau: ReduceLROnPlateau | dict | None = None, label_smoothing: float = 0., ema: float | EMA = 0.,
                  tta: bool = False, cbs=None, **kwargs) -> Learner:
    "A `Learner` training `model` (default the CIFAR `resnet18`) with SGD + momentum and ReduceLROnPlateau on test loss"
    # ema: an `EMA` of the weights, tested and kept at the end, or its decay per step; 0 for none
    # bn_bias_scale: the biases of the norm layers step at this multiple of the rate (airbench's 64); 1: as the rest
    # tta: record each epoch's test accuracy with flip test-time augmentation too (`TestPass`)
    one_of('`wd_mode`', wd_mode, WD_MODES)
    positive('`lr`', lr)
    within('`label_smoothing`', label_smoothing)
    positive('`bn_bias_scale`', bn_bias_scale)
    if not isinstance(ema, EMA): within('`ema` (the decay of the weight average)', ema)
    model = resnet18(n_out=len(dls.vocab)) if model is None else model
    opt_func = partial(sgd, mom=momentum, decouple_wd=wd_mode == 'decoupled', nesterov=nesterov,
                       lr_scale=[1., bn_bias_scale] if bn_bias_scale != 1 else 1.)
    if bn_bias_scale != 1: kwargs['splitter'] = norm_bias_split  # else fastai's one group, as runs saved before
    plateau = ReduceLROnPlateau(**plateau) if isinstance(plateau, dict) else (plateau or ReduceLROnPlateau())
    precision = resolve_precision(precision, dls.device)
    if precision == 'fp16' and dls.device.type == 'cpu':  # measured: one ResNet18 backward 68 s in fp16, 0.1 s in bf16
        warnings.warn("fp16 on a CPU has no fast convolution kernels and trains hundreds of times slower: "
                      "use 'bf16' or 'auto'")
    autocast = [Autocast(DTYPES[precision])] if precision in DTYPES else []
    extra = [StopOnNonFinite(), EpochRecord(), TestPass(tta), plateau, FlipEpoch()] + autocast
    extra += ([ChannelsLast()] if channels_last else []) + ([ema if isinstance(ema, EMA) else EMA(ema)] if ema else [])
    loss_func = CrossEntropyLossFlat(label_smoothing=label_smoothing)
    learn = CifarLearner(dls, model.to(dls.device), loss_func=loss_func, opt_func=opt_func, lr=lr, wd=wd,
                         metrics=accuracy, cbs=extra + list(cbs or []), **kwargs)
    learn.recorder.train_metrics = True  # training accuracy per epoch, as the reference reports plotted
    learn.precision = precision
    return learn
