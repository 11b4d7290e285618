"Mixed precision and memory layout on any device: bf16 autocast on CPU, fp16/bf16 on CUDA, channels_last"
import torch
from fastai.callback import channelslast
from fastai.callback.core import Callback, CancelStepException
from fastai.torch_core import to_float

from cifar_fastai.checks import one_of

__all__ = ['PRECISIONS', 'resolve_precision', 'cpu_has_bf16', 'Autocast', 'AutocastModule', 'autocast_of',
           'autocast_dtype', 'ChannelsLast']

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def cpu_has_bf16() -> bool:
    "Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so that autocast pays"
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device) -> str:
    "The precision `auto` stands for on `device`: bf16/fp16 mixed precision where the hardware has it, else fp32"
    one_of('`precision`', precision, PRECISIONS)
    if precision != 'auto': return precision
    device = torch.device(device)
    # bf16 is native from compute capability 8 (Ampere); `torch.cuda.is_bf16_supported()` says yes to emulation too
    if device.type == 'cuda': return 'bf16' if torch.cuda.get_device_capability(device) >= (8, 0) else 'fp16'
    return 'bf16' if device.type == 'cpu' and cpu_has_bf16() else 'fp32'


class AutocastModule(torch.nn.Module):
    "`module` with its forward pass under `torch.autocast(dtype)` on its device, outputs in fp32: a run's precision"
    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, *args):
        with torch.autocast(next(self.module.parameters()).device.type, dtype=self.dtype):
            return to_float(self.module(*args))


def autocast_of(learn) -> 'Autocast | None':
    "The `Autocast` callback of `learn`, None in fp32"
    return next((cb for cb in learn.cbs if isinstance(cb, Autocast)), None)


def autocast_dtype(learn) -> torch.dtype | None:
    "The dtype `learn` computes its forward passes in (its `Autocast` callback's), None in fp32"
    autocast = autocast_of(learn)
    return None if autocast is None else autocast.dtype


class Autocast(Callback):
    "Forward pass and loss under `torch.autocast` on the model's device; loss, metrics in fp32; fp16 with a scaler"
    order = 10  # as fastai's `MixedPrecision`, which autocasts on CUDA only

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        self.dtype, self.ctx = dtype, None
        self.resumed_scaler = None  # the fp16 scaler's state in a checkpoint, for the next fit to go on from

    def before_fit(self):
        self.device_type = next(self.model.parameters()).device.type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)
        if self.resumed_scaler is not None: self.scaler.load_state_dict(self.resumed_scaler)
        self.resumed_scaler = None

    def scaler_state(self) -> dict | None:
        "The fp16 loss scaler's scale and growth count, for a checkpoint; None without one"
        return self.scaler.state_dict() if self.scaler.is_enabled() else None

    def before_batch(self):
        self.ctx = torch.autocast(self.device_type, dtype=self.dtype)
        self.ctx.__enter__()

    def after_pred(self): self.learn.pred = to_float(self.pred)
    def after_loss(self): self._exit()
    def after_cancel_batch(self): self._exit()
    def after_fit(self): self._exit()
    def after_cancel_fit(self): self._exit()  # an exception between `before_batch` and `after_loss` (a NaN stop)

    def _exit(self):
        if self.ctx is not None: self.ctx.__exit__(None, None, None)
        self.ctx = None

    def before_backward(self): self.learn.loss_grad = self.scaler.scale(self.loss_grad)

    def before_step(self):
        if not self.scaler.is_enabled(): return
        self.skipped = True
        self.scaler.step(self)  # calls `self.step` below unless the gradients overflowed
        self.scaler.update()
        if self.skipped: raise CancelStepException()

    @property
    def param_groups(self): return self.opt.param_groups  # `GradScaler` unscales these, then calls `step`
    def step(self, *args, **kwargs): self.skipped = False


class ChannelsLast(channelslast.ChannelsLast):
    "fastai's `ChannelsLast` (model in channels_last), with the input batches converted too"
    # a subclass, so that fastai's `load_learner(cpu=True)` and `Learner.to_contiguous` recognise and remove it
    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in self.xb)
