"Whether a saliency map shows what the model used: deletion and insertion curves (RISE) and the area under them"
from typing import Sequence

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from cifar_fastai.checks import whole
from cifar_fastai.gradcam import CAMS, class_targets, evaluating, upscale

__all__ = ['BLUR_KERNEL', 'BLUR_SIGMA', 'RANDOM', 'blur', 'random_maps', 'deletion_curves', 'insertion_curves', 'auc',
           'faithfulness', 'stage_faithfulness']

# Insertion starts from the image blurred as in RISE's evaluation (Petsiuk et al., 2018; github.com/eclique/RISE,
# Evaluation.ipynb: `klen = 11`, `ksig = 5`), with torchvision's reflect padding instead of zeros at the border
BLUR_KERNEL, BLUR_SIGMA = 11, 5.
RANDOM = 'random'  # the name of the baseline of random maps in `stage_faithfulness`'s rows


def blur(x: torch.Tensor) -> torch.Tensor:
    "The (B,C,H,W) batch `x` under a Gaussian blur of `BLUR_KERNEL` pixels and `BLUR_SIGMA`"
    return gaussian_blur(x, [BLUR_KERNEL] * 2, [BLUR_SIGMA] * 2)


def random_maps(n: int, grid, size, seed: int = 0) -> torch.Tensor:
    "`n` maps (n,H,W) of uniform noise drawn on a `grid` (h, w) and resized to `size` as the CAMs of that grid are"
    noise = torch.rand(n, *grid, generator=torch.Generator().manual_seed(seed))
    return upscale(noise, size)


def _ranks(maps: torch.Tensor, seed: int) -> torch.Tensor:
    "Rank (B, H*W) of each pixel of `maps` (B,H,W), 0 for the most highlighted; ties in an order drawn with `seed`"
    flat = maps.detach().float().cpu().flatten(1)
    shuffled = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed)).argsort(1)
    order = shuffled.gather(1, flat.gather(1, shuffled).argsort(dim=1, descending=True, stable=True))
    return torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))


def _probabilities(model: nn.Module, images: torch.Tensor, bs: int) -> torch.Tensor:
    "Softmax probabilities (N, classes) of `model` in eval mode, `bs` images at a time, fp32 unless `model` autocasts"
    p = next(model.parameters())
    images = images.as_subclass(torch.Tensor)  # a plain tensor out, also for fastai's `TensorImage` in
    with evaluating(model), torch.no_grad(), torch.autocast(p.device.type, enabled=False):
        return torch.cat([model(b.to(device=p.device, dtype=p.dtype)).float().softmax(1).cpu()
                          for b in images.split(bs)])


def _ends(model, x: torch.Tensor, bs: int) -> dict:
    "Probabilities of `x`, of its pixels all removed (0) and of it blurred: every curve's ends, whatever the map"
    return dict(image=_probabilities(model, x, bs), removed=_probabilities(model, torch.zeros_like(x[:1]), bs),
                blurred=_probabilities(model, blur(x), bs))


def _curves(model, start, end, maps, targets, steps: int, seed: int, bs: int, ends) -> torch.Tensor:
    "Probability (B, steps+1) of `targets` as the most highlighted pixels of `maps` go from `start` to `end`"
    whole('`steps`', steps)
    if maps.shape != start.shape[:1] + start.shape[2:]:
        raise ValueError(f"maps of shape {tuple(maps.shape)} for images of {tuple(start.shape)}; "
                         "pass one (H,W) map per image")
    (b, c, h, w), n = start.shape, start.shape[-2] * start.shape[-1]
    counts = torch.tensor([round(k * n / steps) for k in range(1, steps)], device=start.device).view(1, -1, 1, 1, 1)
    ranks = _ranks(maps, seed).to(start.device).view(b, 1, 1, h, w)
    chunk = max(1, bs // max(1, steps - 1))  # images whose inner steps make a batch of about `bs`: bounded memory
    first, last = (p.expand(b, -1) for p in ends)  # no pixel moved yet, and all of them: the same for every map
    inner = [_probabilities(model, torch.where(r < counts, e[:, None], s[:, None]).flatten(0, 1), bs)
             for s, e, r in zip(start.split(chunk), end.split(chunk), ranks.split(chunk)) if steps > 1]
    inner = torch.cat(inner).view(b, steps - 1, -1) if inner else first.new_empty(b, 0, first.shape[1])
    probs = torch.cat([first[:, None], inner, last[:, None]], 1)
    t = class_targets(targets, probs[:, 0], 'faithfulness')
    return probs.gather(2, t[:, None, None].expand(b, steps + 1, 1))[..., 0]


def deletion_curves(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, steps: int = 8,
                    seed: int = 0, bs: int = 256, ends: dict | None = None) -> torch.Tensor:
    "Probability (B, steps+1) of `targets` (None: predicted) as the most highlighted pixels turn 0 (the mean colour)"
    ends = ends or _ends(model, x, bs)
    targets = ends['image'].argmax(1) if targets is None else targets
    return _curves(model, x, torch.zeros_like(x), maps, targets, steps, seed, bs, (ends['image'], ends['removed']))


def insertion_curves(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, steps: int = 8,
                     seed: int = 0, bs: int = 256, ends: dict | None = None) -> torch.Tensor:
    "Probability (B, steps+1) of `targets` (None: predicted) as the most highlighted pixels enter the blurred image"
    ends = ends or _ends(model, x, bs)
    targets = ends['image'].argmax(1) if targets is None else targets
    return _curves(model, blur(x), x, maps, targets, steps, seed, bs, (ends['blurred'], ends['image']))


def auc(curves: torch.Tensor) -> torch.Tensor:
    "Area (B,) under curves (B, steps+1) sampled evenly on [0, 1], by the trapezoidal rule"
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))


def faithfulness(model: nn.Module, x: torch.Tensor, maps: torch.Tensor, targets=None, steps: int = 8,
                 seed: int = 0, bs: int = 256, ends: dict | None = None) -> dict:
    "Deletion (lower is better) and insertion (higher is better) areas (B,) of `maps` for normalised images `x`"
    ends = ends or _ends(model, x, bs)
    return {name: auc(curves(model, x, maps, targets, steps, seed, bs, ends))
            for name, curves in (('deletion', deletion_curves), ('insertion', insertion_curves))}


def stage_faithfulness(model: nn.Module, x: torch.Tensor, targets, layers: Sequence[str], methods=tuple(CAMS),
                       steps: int = 8, seed: int = 0, bs: int = 256, scorer: nn.Module | None = None) -> list:
    "Rows (layer, method, deletion (B,), insertion (B,)) of each of `methods` and of random maps at each of `layers`"
    # what predicts the curves, e.g. `model` in its run's precision (`AutocastModule`)
    scorer = model if scorer is None else scorer
    rows, sizes, ends = [], None, _ends(scorer, x, bs)  # the curves' ends, computed once for every map
    for method in methods:
        with CAMS[method](model, list(layers)) as cam: maps, sizes = cam(x, targets), cam.sizes
        rows += [dict(layer=l, method=method, **faithfulness(scorer, x, m, targets, steps, seed, bs, ends))
                 for l, m in zip(layers, maps)]
    for i, (l, grid) in enumerate(zip(layers, sizes or [])):  # noise on the layer's own grid, as smooth as its maps
        noise = random_maps(len(x), grid, x.shape[-2:], seed + i)
        rows.append(dict(layer=l, method=RANDOM, **faithfulness(scorer, x, noise, targets, steps, seed, bs, ends)))
    return sorted(rows, key=lambda r: list(layers).index(r['layer']))
