"""DeepLabv3+ as paper 2 ran it, built by segmentation-models-pytorch, and its checkpoints.

Output stride 16 with ASPP rates (6, 12, 18), the DeepLabv3+ paper's setting (at output stride 8 the
rates double to (12, 24, 36), which is smp's default whatever the stride). The encoder starts from
ImageNet weights when asked (``"imagenet"``): smp downloads them from the Hugging Face hub, or reads
them from its cache. Without network the hub retries for about half a minute before failing, so the
hub is probed first (a HEAD request with a short timeout) and, when it cannot be reached, the
attempt runs in the hub's offline mode: the cache answers at once, and a miss ends in one line
naming ``--encoder-weights PATH`` and the file to fetch. A local state dict (``.pth``/``.pt`` or
``.safetensors``) can be given instead, or nothing (random initialisation).

Bottom level: imports torch, segmentation-models-pytorch (through ``lossyvision.extras``, the only
other lossyvision module it uses) and the hub library smp brings; training and evaluation both
import it, so neither imports the other for the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from .checkpoint import CheckpointError, load_torch_file  # noqa: F401 - CheckpointError is part of this API

log = logging.getLogger(__name__)

#: ASPP dilation rates of DeepLabv3+ per output stride (Chen et al. 2018, Sec. 4: doubled at OS 8).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
#: What checkpoints written before the rates were recorded were built with (smp's default).
LEGACY_ASPP_RATES = (12, 24, 36)
#: Fig. 10's shallow layer: the first residual stage (stride 4), whose output DeepLabv3+ also feeds
#: to its decoder as the low-level features. Any module name of the model can be asked for instead.
DEFAULT_FEATURE_LAYER = "encoder.layer1"
#: Seconds the hub probe waits before the hub counts as unreachable.
HUB_PROBE_TIMEOUT_S = 3.0


class EncoderWeightsUnavailable(RuntimeError):
    """ImageNet encoder weights could be neither downloaded nor found in the cache."""


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLabv3+'s ASPP rates for an output stride of 8 or 16."""
    if output_stride not in ASPP_RATES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    return ASPP_RATES[output_stride]


def _smp() -> Any:
    from lossyvision.extras import require

    return require("segmentation_models_pytorch", "segmentation", "DeepLabv3+ (train-segmentation, eval-segmentation)",
                   "segmentation-models-pytorch")


def weights_choice(value: str | None) -> str | None:
    """None for random initialisation ('none', '' or None), else 'imagenet' or a path, unchanged."""
    if value is None or str(value).strip().lower() in ("", "none", "random"):
        return None
    return "imagenet" if str(value).strip().lower() == "imagenet" else str(value)


# -- the hub -------------------------------------------------------------------------------------

def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds (any HTTP status counts);
    False at once in the hub's offline mode (HF_HUB_OFFLINE=1). Honours HF_ENDPOINT and the proxy
    variables, as the hub client does."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts, refused connections, a malformed endpoint
        return False
    return True


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """The hub client in offline mode for the duration: downloads answer from the cache or fail at once."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def imagenet_source(encoder: str) -> dict[str, str | None]:
    """Where smp gets an encoder's ImageNet weights: hub repo, revision and the file's URL."""
    from huggingface_hub import constants

    if encoder.startswith("tu-"):  # timm's own pretrained tag
        try:
            import timm

            repo = timm.models.get_pretrained_cfg(encoder[3:].split(".")[0]).hf_hub_id
        except Exception:  # an unknown name: smp names the problem when it builds
            repo = None
        url = f"{constants.ENDPOINT}/{repo}/resolve/main/model.safetensors" if repo else None
        return {"repo_id": repo, "revision": "main", "file": "model.safetensors", "url": url}
    settings = _smp().encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get("imagenet")
    if not settings:
        return {"repo_id": None, "revision": None, "file": None, "url": None}
    repo, rev = settings["repo_id"], settings["revision"]
    return {"repo_id": repo, "revision": rev, "file": "model.safetensors",
            "url": f"{constants.ENDPOINT}/{repo}/resolve/{rev}/model.safetensors"}


def imagenet_cached(encoder: str) -> bool:
    """Whether the hub cache already holds the encoder's ImageNet weights (no network used)."""
    from huggingface_hub import try_to_load_from_cache

    src = imagenet_source(encoder)
    if not src["repo_id"]:
        return False
    files = [src["file"]] if encoder.startswith("tu-") else ["config.json", src["file"]]
    return all(isinstance(try_to_load_from_cache(src["repo_id"], f, revision=src["revision"]), str) for f in files)


def _unavailable(encoder: str, why: str) -> EncoderWeightsUnavailable:
    from huggingface_hub import constants

    src = imagenet_source(encoder)
    where = f"download {src['url']}" if src["url"] else "an ImageNet state dict of this encoder"
    return EncoderWeightsUnavailable(
        f"cannot get ImageNet weights for encoder {encoder!r}: {why} (cache {constants.HF_HUB_CACHE}); "
        f"pass a local file with --encoder-weights PATH ({where}), or --encoder-weights none for random init")


def check_encoder_weights(encoder: str, encoder_weights: str | None) -> bool:
    """Fail now, before any work, when the weights :func:`build_deeplabv3plus` needs cannot be had:
    a missing local file, or ImageNet weights neither cached nor downloadable. Returns whether the hub
    answered (True when no download is involved)."""
    weights = weights_choice(encoder_weights)
    if weights is None:
        return True
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--encoder-weights {weights}: no such file (use 'imagenet', a path, or 'none' "
                                    "for random init)")
        return True
    online = hub_reachable()
    # timm's cache layout is its own: for tu- encoders the build itself answers, offline if need be
    if not online and not encoder.startswith("tu-") and not imagenet_cached(encoder):
        raise _unavailable(encoder, "the Hugging Face hub cannot be reached and the weights are not cached")
    return online


# -- building ------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike, what: str = "--encoder-weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (a plain state dict, or one
    under ``state_dict``/``model``); ``module.`` prefixes (DataParallel/DDP) are removed."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path}: no such file")
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"{what} {path} is not a safetensors file ({type(e).__name__}: "
                                  f"{(str(e).splitlines() or [''])[0][:200]})") from None
    else:
        obj = load_torch_file(path, what)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} {path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _encoder_target(model: torch.nn.Module, encoder: str) -> torch.nn.Module:
    # a timm encoder wraps the timm model whose keys timm's own weights use
    return model.encoder.model if encoder.startswith("tu-") and hasattr(model.encoder, "model") else model.encoder


def load_encoder_weights(model: torch.nn.Module, encoder: str, path: str | os.PathLike,
                         what: str = "--encoder-weights") -> None:
    """Load a local encoder state dict into ``model``'s encoder: every encoder weight must be in the
    file (a partial load would leave random weights unnoticed); extra entries (a classifier head) are
    ignored. The keys may carry an ``encoder.`` prefix (a whole segmentation model's state dict)."""
    state = read_state_dict(path, what)
    target = _encoder_target(model, encoder)
    own = target.state_dict()
    if not own.keys() & state.keys():
        stripped = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        if own.keys() & stripped.keys():
            state = stripped
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{what} {path} does not fit encoder {encoder!r}: {len(missing)} of {len(own)} "
                              f"weights missing (e.g. {', '.join(missing[:3])})")
    fitting = {k: v for k, v in state.items() if k in own}
    bad = [k for k, v in fitting.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{what} {path} does not fit encoder {encoder!r}: {bad[0]} is "
                              f"{tuple(fitting[bad[0]].shape)}, the encoder's {tuple(own[bad[0]].shape)}")
    # nn.Module's own method: smp's encoders override it (dropping fc.*) and return nothing
    torch.nn.Module.load_state_dict(target, fitting, strict=False)
    log.info("encoder weights from %s (%d tensors, %d entries ignored)", path, len(fitting), len(state) - len(fitting))


def build_deeplabv3plus(encoder: str = "resnet101", num_classes: int = 19, output_stride: int = 16,
                        encoder_weights: str | None = None,
                        atrous_rates: tuple[int, int, int] | list[int] | None = None) -> torch.nn.Module:
    """DeepLabv3+ (smp) with DeepLabv3+'s ASPP rates for ``output_stride`` unless ``atrous_rates``.

    ``encoder_weights``: None/'none' (random init), 'imagenet' (downloaded, or from the hub cache;
    offline without a cache it fails at once with :class:`EncoderWeightsUnavailable`), or the path of
    a local encoder state dict.
    """
    smp = _smp()
    rates = tuple(int(r) for r in (atrous_rates if atrous_rates is not None else aspp_rates(output_stride)))
    if len(rates) != 3:
        raise ValueError(f"ASPP needs three rates, got {rates}")
    weights = weights_choice(encoder_weights)
    online = check_encoder_weights(encoder, weights)
    named: str | bool | None = None
    if weights == "imagenet":  # smp's timm encoders take True: the pretrained tag is part of their name
        named = True if encoder.startswith("tu-") else "imagenet"

    def build() -> torch.nn.Module:
        return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=named, encoder_output_stride=output_stride,
                                 decoder_atrous_rates=rates, classes=num_classes)

    try:
        if online:
            model = build()
        else:
            with hub_offline():
                model = build()
    except (KeyError, ValueError) as exc:  # unknown encoder, or no ImageNet weights for it
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(f"segmentation-models-pytorch cannot build encoder {encoder!r}: {msg[:300]}") from exc
    except Exception as exc:  # network/cache failures surface as many exception types
        if named is None:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        why = f"{type(exc).__name__}: {first}" if online else "offline and not in the cache"
        raise _unavailable(encoder, why) from exc
    if weights is not None and named is None:
        load_encoder_weights(model, encoder, weights)
    return model


def model_aspp_rates(model: torch.nn.Module) -> tuple[int, ...]:
    """The dilations of a built DeepLabv3+'s three atrous ASPP branches, read off its modules."""
    aspp = model.decoder.aspp[0]
    rates = []
    for branch in list(aspp.convs)[1:4]:
        convs = [m for m in branch.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        rates.append(int(convs[0].dilation[0]))
    return tuple(rates)


# -- checkpoints ---------------------------------------------------------------------------------

def arch_kwargs(arch: dict) -> dict:
    """Builder arguments from a checkpoint's ``arch`` (older ones lack the rates: smp's default then)."""
    kw = {k: arch[k] for k in ("encoder", "num_classes", "output_stride") if k in arch}
    kw["atrous_rates"] = tuple(arch.get("atrous_rates") or LEGACY_ASPP_RATES)
    return kw


def load_segmentation_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A model written by train-segmentation (``model.pt`` or ``checkpoints/last.pt``), in eval mode on
    ``device``, and the checkpoint (``arch``, ``config``, ``step``). No weights are downloaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation checkpoint {path} not found (train-segmentation writes OUT/model.pt)")
    ckpt = load_torch_file(path, "--checkpoint", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"{path} is not a segmentation checkpoint (no 'model'/'arch' entries); pass the "
                              "model.pt that train-segmentation wrote")
    model = build_deeplabv3plus(**arch_kwargs(ckpt["arch"]), encoder_weights=None)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def find_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule called ``name`` (as ``named_modules`` spells it); a ValueError listing the
    shallowest candidates when there is none."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        shallow = [n for n in modules if n and n.count(".") <= 1][:12]
        raise ValueError(f"the model has no layer {name!r}; e.g. {', '.join(shallow)}")
    return modules[name]
