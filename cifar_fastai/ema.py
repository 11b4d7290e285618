"An exponential moving average (EMA) of the weights, or a lookahead: the model the test set sees, and the one kept"
import torch
from fastai.callback.core import Callback

from cifar_fastai.callbacks import in_fit
from cifar_fastai.checks import whole, within
from cifar_fastai.collective import broadcast_tensors, unwrap
from cifar_fastai.recipe import EMA_AT_64

__all__ = ['EMA']


def _tensors(model) -> list:
    "Parameters then buffers of `model` (unwrapped from `DistributedDataParallel`), in a fixed order"
    model = unwrap(model)
    return [*model.parameters(), *model.buffers()]


class EMA(Callback):
    "Average the weights and batch-norm statistics every `every` steps; validate on the average, end the fit with it"
    # The decay ramps up as min(decay, (1 + n) / (10 + n)) after n steps, as timm's `ModelEmaV3` warm-up, so that the
    # random start is forgotten in the first epoch. Training metrics are the live weights', test metrics the average's.
    # lookahead: as airbench's (hlb-cifar10's) scheme, the decay of an update rises instead as decay ** every times
    # the share of the fit's steps done, cubed, and the live weights restart from the average after each update
    order = 5  # swaps in before any other callback validates

    def __init__(self, decay: float = EMA_AT_64, every: int = 4, lookahead: bool = False):
        # every: steps between updates, each weighing the live weights as `every` steps would (decay ** every); one
        # update of the ResNet18 (a memory-bound lerp of 11.2M floats) takes ~12 ms, 3-4% of a 2-core bf16 step of bs 64
        within('`decay` of the weight average', decay, low_open=True)
        whole('`every`', every)
        self.decay, self.every, self.lookahead, self.avg, self.n = decay, every, lookahead, None, 0
        self.live, self.active = None, False
        self.floats = self.counts = None  # (averages, live tensors) pairs of one fit, split by dtype in `before_fit`

    def before_fit(self):
        self.active = in_fit(self.learn)  # not during `lr_find`
        if not self.active: return
        if self.avg is None: self.avg, self.n = [t.detach().clone() for t in _tensors(self.model)], 0
        pairs = list(zip(self.avg, _tensors(self.model)))
        self.floats = [[a for a, t in pairs if a.is_floating_point()], [t for a, t in pairs if a.is_floating_point()]]
        self.counts = [(a, t) for a, t in pairs if not a.is_floating_point()]  # the batch count of batch norm

    @torch.no_grad()
    def after_step(self):
        if not self.active: return
        self.n += 1
        if self.n % self.every: return
        torch._foreach_lerp_(*self.floats, 1 - self._update_decay())
        for a, t in self.counts: a.copy_(t)
        if self.lookahead: torch._foreach_copy_(self.floats[1], self.floats[0])

    def _update_decay(self) -> float:
        "How much of the average an update at step `n` keeps"
        if self.lookahead:  # the share of the whole fit's steps done, a resumed fit's too
            return self.decay ** self.every * min(self.n / (self.n_epoch * len(self.dls.train)), 1.) ** 3
        return min(self.decay, (1 + self.n) / (10 + self.n)) ** self.every

    @torch.no_grad()
    def before_validate(self):
        if not self.active: return
        # data-parallel: the weights agree on every process, batch-norm statistics are each process's own; rank 0's
        # average is the one, as DistributedDataParallel takes rank 0's buffers
        broadcast_tensors(self.avg)
        self.live = [t.detach().clone() for t in _tensors(self.model)]
        for t, a in zip(_tensors(self.model), self.avg): t.copy_(a)

    @torch.no_grad()
    def after_validate(self):
        if self.live is None: return
        for t, s in zip(_tensors(self.model), self.live): t.copy_(s)
        self.live = None

    def after_cancel_fit(self):
        "A fit stopped by an exception: the live weights go back into the model, the average stays for a later fit"
        self.after_validate()  # no collective here: the other processes of a data-parallel run may be gone

    @torch.no_grad()
    def after_fit(self):
        "The model keeps the average; a later fit starts a new one from it"
        if self.active and self.avg is not None:
            broadcast_tensors(self.avg)
            for t, a in zip(_tensors(self.model), self.avg): t.copy_(a)
        self.avg, self.n, self.active, self.floats, self.counts = None, 0, False, None, None

    def state_dict(self) -> dict:
        return {'decay': self.decay, 'every': self.every, 'lookahead': self.lookahead, 'n': self.n, 'avg': self.avg}

    def load_state_dict(self, state: dict):
        "Put back `state`, its average onto the device and in the dtype of the model's tensors"
        own = _tensors(self.model) if self.learn is not None else None
        if own is not None and [a.shape for a in state['avg']] != [t.shape for t in own]:
            raise ValueError("the saved weight average does not fit the model")
        self.decay, self.every, self.n = state['decay'], state.get('every', 1), state['n']
        self.lookahead = state.get('lookahead', False)
        self.avg = [a.to(t, copy=True) for a, t in zip(state['avg'], _tensors(self.model), strict=True)]
