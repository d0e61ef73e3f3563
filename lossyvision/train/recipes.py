"""Training recipes of Marie et al. 2022: fine-tuning, expert training, stability training.

Each recipe says which images it streams (`inputs`), which parameters it trains, and computes
its loss from a `Batch` of *normalised* tensors. The KL term follows the paper's code
(`nn.KLDivLoss(reduction='sum')(log_softmax(f(x~)), softmax(g(x)))`):

    KL(p_t || p_s) = sum_c p_t,c (log p_t,c - log p_s,c)

`kl_reduction="batchmean"` (default) divides that sum by the batch size B, so alpha keeps its
meaning when the batch changes (and under DDP, where each process sees B / world_size);
`kl_reduction="sum"` is the paper code's form, where the KL term grows with B. The two agree when
`alpha_batchmean = alpha_sum * B`: the paper's alpha = 1e-2 at B = 320 (MnasNet) is alpha = 3.2 with
`batchmean` (the default), at B = 384 (ResNet50) 3.84.
With a temperature T both distributions are softened by T and the term is scaled by T^2
(Hinton et al. 2015), so its gradient scale does not depend on T; T = 1 is the paper.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lossyvision import accel
from lossyvision.pipelines.stream import IMAGENET_MEAN, IMAGENET_STD, to_device
from lossyvision.train.models import head_module

KL_REDUCTIONS = ("batchmean", "sum")
STABILITY_NOISES = ("uint8", "gaussian")
# the paper's alpha (1e-2, with the authors' KLDivLoss(reduction='sum')) at MnasNet's batch of 320
PAPER_ALPHA_BATCHMEAN = 1e-2 * 320


@dataclass
class Batch:
    """One step's tensors on the device. x: clean, x_tilde: compressed, teacher: g(x) logits;
    x_uint8: the clean images as the loader shipped them (uint8 Bx3xHxW), for pixel-domain noise."""

    y: torch.Tensor
    x: torch.Tensor | None = None
    x_tilde: torch.Tensor | None = None
    teacher: torch.Tensor | None = None
    x_uint8: torch.Tensor | None = None


def uint8_noise(x_uint8: torch.Tensor, sigma: float, z: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' stability noise (python/transforms.py): x + N(0, 256 sigma) on uint8 pixels, clipped
    to [0, 255] and truncated to an integer (numpy's astype(uint8)). Returns float pixel values 0..255.

    `z` is the standard normal draw (default: a fresh one). For ResNet50's sigma 5e-4 the std is 0.128
    levels, so truncation makes this x - Bernoulli(0.5) almost everywhere."""
    if z is None:
        z = torch.randn(x_uint8.shape, device=x_uint8.device)
    return (x_uint8.float() + z * (256.0 * sigma)).clamp_(0.0, 255.0).trunc_()


def kl_term(student_logits: torch.Tensor, target_logits: torch.Tensor, reduction: str = "batchmean",
            temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(target/T) || softmax(student/T)) * T^2, reduced over the batch (see module doc)."""
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; choose one of {', '.join(KL_REDUCTIONS)}")
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(target_logits.float() / t, dim=1)
    return F.kl_div(log_s, log_t, reduction=reduction, log_target=True) * (t * t)


_RECIPES: dict[str, type["Recipe"]] = {}


def register_recipe(cls: type["Recipe"]) -> type["Recipe"]:
    if cls.name in _RECIPES:
        raise ValueError(f"recipe {cls.name!r} is already registered")
    _RECIPES[cls.name] = cls
    return cls


def list_recipes(pattern: str = "*") -> list[str]:
    return sorted(n for n in _RECIPES if fnmatch.fnmatch(n, pattern))


def create_recipe(name: str, **kwargs) -> "Recipe":
    """Instantiate a registered recipe; unknown names list the valid ones."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}")
    return _RECIPES[name](**kwargs)


class Recipe:
    """Base: CE on the compressed images, every parameter trained."""

    name: ClassVar[str] = ""
    #: which stream the recipe needs: "variant" (x~ only), "pair" (x and x~), "orig" (x only)
    inputs: ClassVar[str] = "variant"
    uses_teacher: ClassVar[bool] = False

    def __init__(self, alpha: float = PAPER_ALPHA_BATCHMEAN, kl_reduction: str = "batchmean", temperature: float = 1.0,
                 sigma: float = 4e-2, std: tuple[float, ...] = IMAGENET_STD, mean: tuple[float, ...] = IMAGENET_MEAN,
                 noise: str = "uint8") -> None:
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"unknown KL reduction {kl_reduction!r}; choose one of {', '.join(KL_REDUCTIONS)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if noise not in STABILITY_NOISES:
            raise ValueError(f"unknown stability noise {noise!r}; choose one of {', '.join(STABILITY_NOISES)}")
        self.alpha, self.kl_reduction, self.temperature = alpha, kl_reduction, temperature
        self.sigma, self.std, self.mean, self.noise = sigma, std, mean, noise

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters to optimise; the others get requires_grad=False."""
        return [p for p in model.parameters() if p.requires_grad]

    def eval_input(self, batch: Batch) -> torch.Tensor:
        """The images whose predictions count as this recipe's validation accuracy."""
        return batch.x_tilde

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch.x_tilde).float()
        ce = F.cross_entropy(logits, batch.y)
        return ce, {"ce": ce.detach(), "logits": logits.detach()}


@register_recipe
class FineTune(Recipe):
    """CE(f(x~), y), all weights trained."""

    name = "finetune"


@register_recipe
class Expert(Recipe):
    """CE(f(x~), y) + alpha * KL(g(x) || f(x~)); g is the frozen initial model (or its cached logits)."""

    name = "expert"
    inputs = "pair"
    uses_teacher = True

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.teacher is None:
            raise ValueError("expert recipe needs teacher logits g(x) (online teacher or --teacher-cache)")
        logits = model(batch.x_tilde).float()
        ce = F.cross_entropy(logits, batch.y)
        kl = kl_term(logits, batch.teacher, self.kl_reduction, self.temperature)
        return ce + self.alpha * kl, {"ce": ce.detach(), "kl": kl.detach(), "logits": logits.detach()}


@register_recipe
class Stability(Recipe):
    """Zheng et al. 2016 as the paper's code ran it: CE(f(x), y) + alpha * KL(f(x) || f(x')).

    noise "uint8" (default, the authors' code): x' = trunc(clip(x + N(0, 256 sigma), 0, 255)) on the
    uint8 pixels, then normalised (`uint8_noise`); "gaussian": x' = x + N(0, sigma) in [0, 1] pixel units
    added to the normalised image, unclipped (this toolkit's earlier form; about 4x weaker for ResNet50's
    sigma 5e-4, where truncation dominates). f(x') is computed without gradient, as in the paper's code;
    only the head is trained. BatchNorm running statistics of the frozen body still update in train
    mode, as they did there.
    """

    name = "stability"
    inputs = "orig"

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        head = {id(p) for p in head_module(model).parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
        return [p for p in model.parameters() if p.requires_grad]

    def eval_input(self, batch: Batch) -> torch.Tensor:
        return batch.x

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.noise == "uint8":
            if batch.x_uint8 is None:
                raise ValueError("uint8 stability noise needs the uint8 images (Batch.x_uint8)")
            noisy = to_device(uint8_noise(batch.x_uint8, self.sigma), batch.x.device, self.mean, self.std,
                              channels_last=batch.x.is_contiguous(memory_format=torch.channels_last))
        else:
            # sigma / std from the cached per-device constants (scale = 1 / (255 std)): no copy per step
            scale, _ = accel.normalizer(self.mean, self.std, batch.x.device)
            noisy = batch.x + torch.randn_like(batch.x) * (scale * (255.0 * self.sigma)).to(batch.x.dtype)
        with torch.no_grad():
            noisy_logits = model(noisy).float()
        logits = model(batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        kl = kl_term(noisy_logits, logits, self.kl_reduction, self.temperature)
        return ce + self.alpha * kl, {"ce": ce.detach(), "kl": kl.detach(), "logits": logits.detach()}
