"Grad-CAM heatmaps for several layers from one forward and one backward pass, and overlays on images"
from typing import List, Sequence, Union

import matplotlib
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['ActivationGradientHook', 'GradCAM', 'denormalize', 'overlay']

_EPS = 1e-7  # the same guard against a flat map as pytorch-grad-cam's `scale_cam_image`


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


def _resolve(model: nn.Module, layer: Union[str, nn.Module]) -> nn.Module:
    "The submodule of `model` named `layer`, or `layer` itself"
    if isinstance(layer, nn.Module): return layer
    try: return model.get_submodule(layer)
    except AttributeError as e:
        raise AttributeError(f"GradCAM: `{layer}` is not a submodule of {type(model).__name__}; "
                             f"pass a module or a name from `model.named_modules()`, such as 'layer4'") from e


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    "Scale each map of a (B,H,W) batch to [0, 1]"
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + _EPS)


def _cam(act: torch.Tensor, grad: torch.Tensor, size) -> torch.Tensor:
    "Grad-CAM of one layer, normalised, resized to `size` and normalised again, as pytorch-grad-cam does"
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = _minmax((weights * act.float()).sum(1).clamp_min(0))
    cam = F.interpolate(cam[:, None], size=size, mode='bilinear', align_corners=False)[:, 0]
    return _minmax(cam)


def _targets(targets, logits: torch.Tensor) -> torch.Tensor:
    "Class indices (B,) from `targets`: None for the predicted class, an int, a sequence or a tensor"
    bs, n_out = logits.shape
    if targets is None: return logits.argmax(1)
    t = torch.as_tensor(targets, device=logits.device).long().flatten()
    if t.numel() == 1: t = t.expand(bs)
    if t.numel() != bs:
        raise ValueError(f"GradCAM: got {t.numel()} targets for a batch of {bs}; "
                         "pass one class index per image, or None for the predicted classes")
    if t.min() < 0 or t.max() >= n_out:
        raise ValueError(f"GradCAM: targets {t.tolist()} fall outside the model's {n_out} classes")
    return t


class GradCAM:
    "Grad-CAM maps of `layers` (modules or names) of `model`; hooks live until `release` or the end of a `with` block"
    def __init__(self, model: nn.Module, layers: Sequence[Union[str, nn.Module]]):
        if isinstance(layers, (str, nn.Module)): layers = [layers]
        self.model, self.layers = model, [_resolve(model, l) for l in layers]
        self.hooks = [ActivationGradientHook(m) for m in self.layers]

    def __enter__(self): return self
    def __exit__(self, *args): self.release()  # returns None: exceptions propagate

    def release(self):
        "Remove every hook from the model"
        for h in self.hooks: h.remove()
        self.hooks.clear()

    def __call__(self, x: torch.Tensor, targets=None) -> List[torch.Tensor]:
        "One (B,H,W) map in [0, 1] per layer for the normalised batch `x` (B,3,H,W) and class `targets`"
        if not self.hooks: raise RuntimeError("GradCAM: hooks were released; create a new `GradCAM` to compute maps")
        modes = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()
            return self._maps(x, targets)
        finally:
            for m, training in modes.items(): m.train(training)
            for h in self.hooks: h.clear()  # let go of the graph

    def _maps(self, x: torch.Tensor, targets) -> List[torch.Tensor]:
        "Forward, backward to the hooked activations only, and the maps"
        p = next(self.model.parameters())
        # a fresh leaf that requires grad: backward reaches the layers even with every parameter frozen
        x = x.detach().to(device=p.device, dtype=p.dtype).requires_grad_()
        with torch.enable_grad(), torch.autocast(p.device.type, enabled=False):
            logits = self.model(x)
            # the raw logit of each image's target, summed as pytorch-grad-cam's `ClassifierOutputTarget`s are
            score = logits.gather(1, _targets(targets, logits)[:, None]).sum()
            missing = [i for i, h in enumerate(self.hooks) if h.act is None or not h.act.requires_grad]
            if missing: raise RuntimeError(f"GradCAM: layers {missing} (by position) gave no differentiable output; "
                                           "pass layers that run in the model's forward pass")
            # `inputs` stops backward at the activations, so parameters' `.grad` stay as they were
            score.backward(inputs=[h.act for h in self.hooks])
        return [_cam(h.act.detach(), h.grad, x.shape[-2:]) for h in self.hooks]


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
