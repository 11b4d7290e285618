"Grad-CAM, Grad-CAM++ and LayerCAM heatmaps for several layers from one forward and one backward pass, and overlays"
from contextlib import contextmanager
from typing import List, Sequence, Union

import matplotlib
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['ActivationGradientHook', 'GradCAM', 'GradCAMPlusPlus', 'LayerCAM', 'CAMS', 'DEFAULT_CAM', 'cam_class',
           'evaluating', 'class_targets', 'upscale', 'denormalize', 'overlay']

_EPS = 1e-7  # the same guard against a flat map as pytorch-grad-cam's `scale_cam_image`
_EPS_PLUSPLUS = 1e-6  # pytorch-grad-cam's guard in the denominator of Grad-CAM++'s coefficients


class ActivationGradientHook:
    "Forward hook on `m` that keeps its output in `act` and, after backward, that output's gradient in `grad`"
    def __init__(self, m: nn.Module):
        self.act, self.grad = None, None
        self.handle = m.register_forward_hook(self.hook_fn)

    def hook_fn(self, module, inp, out):
        "Store `out` and ask autograd to hand over its gradient"
        self.act, self.grad = out, None
        # a tensor hook, not a module backward hook: see https://github.com/pytorch/pytorch/issues/61519
        if out.requires_grad: out.register_hook(self.store_grad)

    def store_grad(self, grad: torch.Tensor): self.grad = grad

    def clear(self): self.act, self.grad = None, None

    def remove(self):
        "Remove the hook from the module and drop what it stored"
        self.handle.remove()
        self.clear()


@contextmanager
def evaluating(model: nn.Module):
    "Put `model` in eval mode inside the block, then give every module back the mode it had"
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes.items(): m.train(training)  # parents first: a mixed state comes back as it was


def _resolve(model: nn.Module, layer: Union[str, nn.Module], who: str) -> nn.Module:
    "The submodule of `model` named `layer`, or `layer` itself"
    if isinstance(layer, nn.Module): return layer
    try: return model.get_submodule(layer)
    except AttributeError as e:
        raise AttributeError(f"{who}: `{layer}` is not a submodule of {type(model).__name__}; "
                             f"pass a module or a name from `model.named_modules()`, such as 'layer4'") from e


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    "Scale each map of a (B,H,W) batch to [0, 1]"
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + _EPS)


def upscale(cam: torch.Tensor, size) -> torch.Tensor:
    "(B,h,w) maps scaled to [0, 1], resized bilinearly to `size`, scaled again: pytorch-grad-cam's `scale_cam_image`"
    cam = F.interpolate(_minmax(cam)[:, None], size=size, mode='bilinear', align_corners=False)[:, 0]
    return _minmax(cam)


def class_targets(targets, logits: torch.Tensor, who: str = 'GradCAM') -> torch.Tensor:
    "Class indices (B,) from `targets`: None for the predicted class, an int, a sequence or a tensor"
    bs, n_out = logits.shape
    if targets is None: return logits.argmax(1)
    t = torch.as_tensor(targets, device=logits.device).long().flatten()
    if t.numel() == 1: t = t.expand(bs)
    if t.numel() != bs:
        raise ValueError(f"{who}: got {t.numel()} targets for a batch of {bs}; "
                         "pass one class index per image, or None for the predicted classes")
    if t.min() < 0 or t.max() >= n_out:
        raise ValueError(f"{who}: targets {t.tolist()} fall outside the model's {n_out} classes")
    return t


class GradCAM:
    "Grad-CAM maps of `layers` (modules or names) of `model`; hooks live until `release` or the end of a `with` block"
    title = 'Grad-CAM'
    def __init__(self, model: nn.Module, layers: Sequence[Union[str, nn.Module]]):
        if isinstance(layers, (str, nn.Module)): layers = [layers]
        self.model, self.layers = model, [_resolve(model, l, self.who) for l in layers]
        self.hooks = [ActivationGradientHook(m) for m in self.layers]
        self.sizes = []  # (h, w) of each layer's output in the last call

    @property
    def who(self) -> str: return type(self).__name__

    @staticmethod
    def weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        "Weight (B,C,1,1) of each channel: its gradient averaged over positions (Selvaraju et al., 2017)"
        return grad.mean(dim=(2, 3), keepdim=True)

    def __enter__(self): return self
    def __exit__(self, *args): self.release()  # returns None: exceptions propagate

    def release(self):
        "Remove every hook from the model"
        for h in self.hooks: h.remove()
        self.hooks.clear()

    def __call__(self, x: torch.Tensor, targets=None) -> List[torch.Tensor]:
        "One (B,H,W) map in [0, 1] per layer for the normalised batch `x` (B,3,H,W) and class `targets`"
        if not self.hooks: raise RuntimeError(f"{self.who}: hooks were released; create a new one to compute maps")
        try:
            with evaluating(self.model): return self._maps(x, targets)
        finally:
            for h in self.hooks: h.clear()  # let go of the graph

    def _maps(self, x: torch.Tensor, targets) -> List[torch.Tensor]:
        "Forward, backward to the hooked activations only, and the maps"
        p = next(self.model.parameters())
        # a fresh leaf that requires grad: backward reaches the layers even with every parameter frozen
        x = x.detach().to(device=p.device, dtype=p.dtype).requires_grad_()
        with torch.enable_grad(), torch.autocast(p.device.type, enabled=False):
            logits = self.model(x)
            # the raw logit of each image's target, summed as pytorch-grad-cam's `ClassifierOutputTarget`s are
            score = logits.gather(1, class_targets(targets, logits, self.who)[:, None]).sum()
            missing = [i for i, h in enumerate(self.hooks) if h.act is None or not h.act.requires_grad]
            if missing: raise RuntimeError(f"{self.who}: layers {missing} (by position) gave no differentiable output; "
                                           "pass layers that run in the model's forward pass")
            # `inputs` stops backward at the activations, so parameters' `.grad` stay as they were
            score.backward(inputs=[h.act for h in self.hooks])
        self.sizes = [tuple(h.act.shape[-2:]) for h in self.hooks]
        return [self._cam(h.act.detach().float(), h.grad.float(), x.shape[-2:]) for h in self.hooks]

    def _cam(self, act: torch.Tensor, grad: torch.Tensor, size) -> torch.Tensor:
        "The map of one layer: weighted channels summed, negative evidence cut, resized to `size`"
        return upscale((self.weights(act, grad) * act).sum(1).clamp_min(0), size)


class LayerCAM(GradCAM):
    "LayerCAM maps: each position weighted by its own positive gradient (Jiang et al., 2021), sharper at early stages"
    title = 'LayerCAM'

    @staticmethod
    def weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        "Weight (B,C,H,W) of each channel at each position: its gradient there, negative parts cut"
        return grad.clamp_min(0)


class GradCAMPlusPlus(GradCAM):
    "Grad-CAM++ maps (Chattopadhay et al., 2018), with the closed form of its eq. 19 that pytorch-grad-cam uses"
    title = 'Grad-CAM++'

    @staticmethod
    def weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        "Weight (B,C,1,1) of each channel: positive gradients summed over positions, each scaled by its alpha"
        g2 = grad ** 2
        alpha = g2 / (2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g2 * grad + _EPS_PLUSPLUS)
        alpha = torch.where(grad != 0, alpha, 0.)
        return (grad.clamp_min(0) * alpha).sum(dim=(2, 3), keepdim=True)


CAMS = {'gradcam': GradCAM, 'layercam': LayerCAM, 'gradcam++': GradCAMPlusPlus}  # the methods by command-line name
# the maps' method unless asked: on two models trained on full CIFAR-10, LayerCAM's maps were the most faithful at
# layer1-layer3 and tied at layer4, where Grad-CAM's layer1 maps were no better than random ones
# (docs/results/explanations/README.md)
DEFAULT_CAM = 'layercam'


def cam_class(name: str) -> type:
    "The class of `CAMS` called `name`"
    if name not in CAMS: raise ValueError(f"unknown map method {name!r}: pass one of {', '.join(CAMS)} (`--cam`)")
    return CAMS[name]


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    "Undo `Normalize(mean, std)` on a (B,3,H,W) batch: (B,H,W,3) floats clipped to [0, 1]"
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=x.device).view(-1, 1, 1) for v in (mean, std))
    return (x.detach().float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


def _as_rgb(image) -> np.ndarray:
    "An (H,W,3) float array in [0, 1] from uint8 or float (H,W,3), or a (3,H,W) tensor"
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3: image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"overlay: image of shape {image.shape}; pass an RGB image (H,W,3) or a tensor (3,H,W)")
    return image.astype(np.float64) / 255 if image.dtype == np.uint8 else image.astype(np.float64)


def overlay(image, heatmap, alpha: float = 0.5, cmap: str = 'jet') -> np.ndarray:
    "Blend `heatmap` (H,W) in [0, 1], coloured with `cmap`, onto `image` with weight `alpha`: (H,W,3) in [0, 1]"
    if not 0 <= alpha <= 1: raise ValueError(f"overlay: alpha={alpha}; pass a weight in [0, 1]")
    image = _as_rgb(image)
    heatmap = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    if heatmap.shape != image.shape[:2]:
        raise ValueError(f"overlay: heatmap of shape {heatmap.shape} for an image of {image.shape[:2]}; "
                         "resize one to the other")
    colours = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image + alpha * colours, 0, 1)
