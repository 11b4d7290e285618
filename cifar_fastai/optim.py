"SGD with momentum as a fastai `Optimizer`: heavy-ball (fastai's own) or Nesterov, with L2 or decoupled weight decay"
from functools import partial

from fastai.optimizer import Optimizer, average_grad, l2_reg, momentum_step, weight_decay

__all__ = ['nesterov_step', 'sgd']


def nesterov_step(p, lr, mom, grad_avg, **kwargs):
    "Step `p` along its gradient plus `mom` times the momentum buffer `grad_avg`: torch's `SGD(nesterov=True)`"
    p.data.add_(p.grad.data.add(grad_avg, alpha=mom), alpha=-lr)


def sgd(params, lr, mom: float = 0.9, wd: float = 0., decouple_wd: bool = False, nesterov: bool = False) -> Optimizer:
    "SGD with momentum `mom` (undampened, as torch's), Nesterov's look-ahead if `nesterov`"
    # decouple_wd: `wd` scales the weights down each step; else L2, `wd` x weight added to the gradient first
    cbs = [weight_decay if decouple_wd else l2_reg, partial(average_grad, dampening=False)]
    return Optimizer(params, cbs + [nesterov_step if nesterov else momentum_step], lr=lr, mom=mom, wd=wd)
