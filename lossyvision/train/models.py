"""Classifier construction: torchvision models by name, a small registry of extra models, checkpoints.

Model references accepted everywhere (`--model`):
- `mnasnet1_0`, `torchvision:resnet50`, `torchvision:mnasnet1_0:IMAGENET1K_V1` (a weights enum
  member, or `DEFAULT`): any torchvision classification model;
- a name registered here with `@register_model` (e.g. `small_cnn`, used by the CPU reproduction);
- a checkpoint written by `train-classifier` (`.../last.pt`, `best.pt`): architecture and weights;
- a TorchScript file (`torch.jit.save`), evaluated as it is.
`--weights PATH` loads a state dict (or a lossyvision checkpoint) into the named architecture.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lossyvision.pipelines.stream import OptionError, first_line

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be fetched (no network and nothing in TORCH_HOME)."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `fn(num_classes=...) -> nn.Module` under its function name; duplicates are errors."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names plus torchvision classification models matching a wildcard."""
    import torchvision
    names = set(_REGISTRY) | set(torchvision.models.list_models(module=torchvision.models))
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


class SmallCNN(nn.Module):
    """Four conv blocks + linear head; enough for 28..64 px grey-as-RGB images on a CPU."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def small_cnn(num_classes: int = 10, **kwargs) -> nn.Module:
    return SmallCNN(num_classes=num_classes, **kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild an architecture: name, optional torchvision weights enum member, classes."""

    name: str
    weights: str | None = None
    num_classes: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": self.weights, "num_classes": self.num_classes}


def parse_model_ref(ref: str) -> ModelSpec:
    """`torchvision:NAME[:WEIGHTS]` or `NAME[:WEIGHTS]` -> ModelSpec."""
    parts = ref.split(":")
    if parts[0] == "torchvision":
        parts = parts[1:]
    if not parts or not parts[0] or len(parts) > 2:
        raise ValueError(f"bad model reference {ref!r}; expected torchvision:NAME[:WEIGHTS], a registered "
                         "name, a checkpoint or a TorchScript file")
    return ModelSpec(parts[0], parts[1] if len(parts) == 2 else None)


def _torchvision_weights(name: str, weights: str):
    import torchvision
    try:
        enum = torchvision.models.get_model_weights(name)
    except (KeyError, ValueError) as e:
        raise ValueError(f"torchvision model {name!r} has no weights enum ({e})") from e
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        raise ValueError(f"unknown weights {weights!r} for {name}; choose one of "
                         f"{', '.join(['DEFAULT'] + [w.name for w in enum])}") from None


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate `spec`; downloading torchvision weights needs network (or a filled TORCH_HOME)."""
    if spec.name in _REGISTRY:
        if spec.weights:
            raise ValueError(f"registered model {spec.name!r} has no weights enum; use --weights PATH")
        kwargs = {"num_classes": spec.num_classes} if spec.num_classes else {}
        return _REGISTRY[spec.name](**kwargs)
    import torchvision
    if spec.name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown model {spec.name!r}; choose a torchvision classifier "
                         f"(mnasnet1_0, resnet50, ...) or one of {', '.join(sorted(_REGISTRY))}")
    if spec.weights is None:
        kwargs = {"num_classes": spec.num_classes} if spec.num_classes else {}
        return torchvision.models.get_model(spec.name, weights=None, **kwargs)
    w = _torchvision_weights(spec.name, spec.weights)
    try:
        model = torchvision.models.get_model(spec.name, weights=w)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise WeightsUnavailable(
            f"cannot load weights {spec.name}:{w.name} ({type(e).__name__}: {e}). Offline? Download "
            f"{w.url} on a machine with network into $TORCH_HOME/hub/checkpoints/, or pass --weights PATH") from e
    n = len(w.meta.get("categories") or [])
    if spec.num_classes and n and spec.num_classes != n:
        _replace_head(model, spec.num_classes)
    return model


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head ('fully connected layers' in the paper): fc / classifier / heads / head."""
    for attr in ("fc", "classifier", "heads", "head"):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module):
            return m
    raise ValueError(f"cannot find the classifier head of {type(model).__name__}; "
                     "expected an attribute fc, classifier, heads or head")


def _replace_head(model: nn.Module, num_classes: int) -> None:
    head = head_module(model)
    if isinstance(head, nn.Linear):
        for attr in ("fc", "classifier", "heads", "head"):
            if getattr(model, attr, None) is head:
                setattr(model, attr, nn.Linear(head.in_features, num_classes))
                return
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot resize the head of {type(model).__name__} to {num_classes} classes")
    name, last = linears[-1]
    parent = head.get_submodule(name.rsplit(".", 1)[0]) if "." in name else head
    setattr(parent, name.rsplit(".", 1)[-1], nn.Linear(last.in_features, num_classes))


def is_torchscript(path: str) -> bool:
    """TorchScript archives hold `constants.pkl`; plain torch.save archives do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint", weights_only: bool = True):
    """`torch.load` on the CPU; a file that is not a PyTorch checkpoint (a text file, an empty or
    truncated one) raises OptionError naming the option (`what`) instead of an unpickling error."""
    from lossyvision.nets.checkpoint import CheckpointError, load_torch_file

    try:
        return load_torch_file(path, what, weights_only)
    except CheckpointError as e:
        raise OptionError(str(e)) from None


def load_state(path: str, what: str = "--weights") -> tuple[dict, dict | None]:
    """(state_dict, lossyvision checkpoint dict or None) from a .pt/.pth file."""
    obj = load_checkpoint(path, what)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], obj
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OptionError(f"{what} {path}: not a state dict or lossyvision checkpoint")
    # weights saved from nn.DataParallel / DDP carry a 'module.' prefix (the paper's do)
    return {k.removeprefix("module."): v for k, v in obj.items()}, None


def _load_into(model: nn.Module, state: dict, what: str, strict: bool):
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # shape mismatches, even with strict=False
        raise OptionError(f"{what} does not fit {type(model).__name__} ({first_line(e, 200)})") from None


def create_model(ref: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Build a trainable model from a reference (see module docstring), optionally loading `weights`."""
    if os.path.isfile(ref):
        if is_torchscript(ref):
            raise ValueError(f"{ref} is TorchScript; it can be evaluated but not trained here")
        state, ckpt = load_state(ref, "--model")
        if ckpt is None or "model_spec" not in ckpt:
            raise ValueError(f"{ref} is a plain state dict; pass the architecture with --model NAME --weights {ref}")
        s = ckpt["model_spec"]
        model = build_model(ModelSpec(s["name"], None, s.get("num_classes")))
        _load_into(model, state, f"--model {ref}", strict=True)
        return model
    spec = parse_model_ref(ref)
    if weights and spec.weights:
        raise ValueError(f"give either a weights enum ({ref}) or --weights {weights}, not both")
    if weights and not os.path.isfile(weights):
        if os.sep in weights or weights.endswith((".pt", ".pth")):
            raise FileNotFoundError(f"--weights {weights}: no such file")
        spec = ModelSpec(spec.name, weights, num_classes)  # an enum name given through --weights
        weights = None
    spec = ModelSpec(spec.name, spec.weights, num_classes)
    model = build_model(spec)
    if weights:
        state, _ = load_state(weights)
        missing, unexpected = _load_into(model, state, f"--weights {weights}", strict=False)
        if missing or unexpected:
            raise ValueError(f"--weights {weights} does not fit {spec.name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model


def model_spec_of(ref: str, num_classes: int | None) -> dict:
    """The spec to store in checkpoints, so `create_model(checkpoint)` can rebuild the architecture."""
    if os.path.isfile(ref):
        _, ckpt = load_state(ref, "--model")
        return dict(ckpt["model_spec"])
    spec = parse_model_ref(ref)
    return ModelSpec(spec.name, None, num_classes).to_dict()


def load_for_eval(ref: str, weights: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Like `create_model`, plus TorchScript files; returns the model in eval mode."""
    if os.path.isfile(ref) and is_torchscript(ref):
        try:
            model = torch.jit.load(ref, map_location="cpu")
        except RuntimeError as e:
                raise OptionError(f"--model {ref} is not a loadable TorchScript file ({first_line(e, 200)})") from None
    else:
        model = create_model(ref, weights=weights, num_classes=num_classes)
    return model.eval()
