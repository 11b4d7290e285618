"SGD with momentum as a fastai `Optimizer`: heavy-ball (fastai's own) or Nesterov, with L2 or decoupled weight decay"
from functools import partial

from fastai.optimizer import Optimizer, average_grad, l2_reg, weight_decay
from torch import nn

__all__ = ['momentum_step', 'nesterov_step', 'sgd', 'norm_bias_split']

# batch norm (SyncBatchNorm too, which fastai's `norm_types` leaves out), instance, group and layer norm
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def momentum_step(p, lr, grad_avg, lr_scale=1., **kwargs):
    "Step `p` along the momentum buffer `grad_avg` at `lr` times its group's `lr_scale`: fastai's heavy ball"
    p.data.add_(grad_avg, alpha=-lr * lr_scale)


def nesterov_step(p, lr, mom, grad_avg, lr_scale=1., **kwargs):
    "Step `p` along its gradient plus `mom` times the momentum buffer `grad_avg`: torch's `SGD(nesterov=True)`"
    p.data.add_(p.grad.data.add(grad_avg, alpha=mom), alpha=-lr * lr_scale)


def sgd(params, lr, mom: float = 0.9, wd: float = 0., decouple_wd: bool = False, nesterov: bool = False,
        lr_scale: float | list = 1.) -> Optimizer:
    "SGD with momentum `mom` (undampened, as torch's), Nesterov's look-ahead if `nesterov`"
    # decouple_wd: `wd` scales the weights down each step; else L2, `wd` x weight added to the gradient first
    # lr_scale: a factor on the step of each parameter group (one number for all), not on the decay; schedules set
    # `lr` alone, so a group's rate stays that multiple of the others'
    cbs = [weight_decay if decouple_wd else l2_reg, partial(average_grad, dampening=False)]
    return Optimizer(params, cbs + [nesterov_step if nesterov else momentum_step], lr=lr, mom=mom, wd=wd,
                     lr_scale=lr_scale)


def norm_bias_split(model: nn.Module) -> list:
    "Two parameter groups of `model`: every trainable parameter but the biases of its norm layers, then those biases"
    biases = [m.bias for m in model.modules() if isinstance(m, NORMS) and m.bias is not None and m.bias.requires_grad]
    ids = {id(b) for b in biases}
    return [[p for p in model.parameters() if p.requires_grad and id(p) not in ids], biases]
