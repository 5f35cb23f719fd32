"""Published weights by name, or local weight files of any supported kind.

* :func:`from_pretrained` builds a whole model: torchvision's COCO Mask R-CNNs by name
  (``"maskrcnn_resnet50_fpn_coco"``, ``"maskrcnn_resnet50_fpn_v2_coco"``), or a local file:
  our ``.safetensors``, a torchvision ``.pth`` or a detectron2 ``.pkl`` / ``.pth``.
* :func:`load_imagenet_backbone` initialises a built model's ResNet from torchvision's
  ImageNet classifiers (``"resnet50_imagenet"``, ...) or a local ``.pth``.

Downloads go through torch.hub's cache (``torch.hub.get_dir()/checkpoints``); a file already
there is used without any network access, so an offline machine can be served by copying the
file there, or by passing its path instead of the name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor

from maskrcnn.data.coco_names import COCO_81_NAMES, COCO_91_NAMES
from maskrcnn.modeling import MaskRCNN
from maskrcnn.modeling.backbone import ResNet
from maskrcnn.weights.detectron2 import from_detectron2, read_detectron2_weights
from maskrcnn.weights.native import FORMAT, load_model
from maskrcnn.weights.torchvision import (
    TorchvisionVariant,
    from_torchvision,
    load_exact,
    read_state_dict,
)
from maskrcnn.weights.torchvision_keys import load_torchvision_resnet, torchvision_resnet_key

_BASE = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class Published:
    """A downloadable checkpoint: where it is and what it holds."""

    url: str
    kind: Literal["torchvision_v1", "torchvision_v2", "imagenet"]


PUBLISHED: dict[str, Published] = {
    "maskrcnn_resnet50_fpn_coco": Published(
        _BASE + "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "torchvision_v1"
    ),
    "maskrcnn_resnet50_fpn_v2_coco": Published(
        _BASE + "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", "torchvision_v2"
    ),
    "resnet18_imagenet": Published(_BASE + "resnet18-f37072fd.pth", "imagenet"),
    "resnet50_imagenet": Published(_BASE + "resnet50-0676ba61.pth", "imagenet"),
    "resnet101_imagenet": Published(_BASE + "resnet101-63fe2227.pth", "imagenet"),
    "resnext101_32x8d_imagenet": Published(_BASE + "resnext101_32x8d-8ba56ff5.pth", "imagenet"),
}
MODEL_NAMES = tuple(n for n, p in PUBLISHED.items() if p.kind != "imagenet")
BACKBONE_NAMES = tuple(n for n, p in PUBLISHED.items() if p.kind == "imagenet")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".safetensors")


class WeightsUnavailableError(OSError):
    """Published weights could not be downloaded (typically: no internet)."""


def hub_cache_path(url: str) -> Path:
    """Where torch.hub keeps (and looks for) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def fetch_state_dict(name: str) -> dict[str, Tensor]:
    """The state dict of a published checkpoint, from torch.hub's cache or downloaded into it.

    Raises:
        WeightsUnavailableError: the download failed; the message names the URL and how to
            supply the file by hand.
    """
    url = PUBLISHED[name].url
    cached = hub_cache_path(url)
    try:
        # check_hash=True makes torch.hub verify the hash prefix in the filename (the first
        # digits of the file's SHA-256) of a file it *downloads*; a file already in the cache
        # is loaded as-is, unverified, which is what lets a user place it there by hand.
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", weights_only=True, check_hash=True
        )
    except (URLError, OSError) as err:
        raise WeightsUnavailableError(
            f"could not download {url!r} for {name!r} ({err}). Without internet, download the "
            f"file elsewhere and either pass its local path instead of the name "
            f"(e.g. '/path/to/{cached.name}'), or copy it to {cached} (torch.hub's cache, "
            "torch.hub.get_dir()/checkpoints)."
        ) from err
    except Exception as err:  # noqa: BLE001 - a corrupt cached file fails in many ways
        raise ValueError(
            f"{cached}: unreadable checkpoint ({err}); delete it to download it again"
        ) from err
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return dict(state)


def from_pretrained(name_or_path: str | Path, **kwargs: Any) -> MaskRCNN:
    """A whole model, in eval mode, from a published name or a local weights file.

    Args:
        name_or_path: one of :data:`MODEL_NAMES`, or a path to our ``.safetensors`` model
            file, a torchvision Mask R-CNN ``.pth`` (v1 or v2, told apart by its keys), or a
            detectron2 ``.pkl`` / ``.pth``.
        **kwargs: passed to :func:`~maskrcnn.weights.torchvision.from_torchvision` (builder
            arguments such as ``box_score_thresh``, ``min_size``, ``norm_eps``) or
            :func:`~maskrcnn.weights.detectron2.from_detectron2`, including
            ``category_names``. Our own model files take none.

    COCO category names are attached by default to the published models and to local
    torchvision / detectron2 files with COCO's class count (91 / 80 + 1). A published v1 model
    gets FrozenBN eps 0.0; for a local torchvision v1 file the eps is read from the state dict
    (1e-5 with ``num_batches_tracked`` buffers: plain BatchNorm; else 0.0) unless ``norm_eps``
    is given.

    Raises:
        ValueError: an unknown name (listing the known ones), an ImageNet backbone name, or a
            file of an unrecognised kind.
        FileNotFoundError: a path that does not exist.
        WeightsUnavailableError: a published model that cannot be downloaded.
    """
    name = str(name_or_path)
    if name in PUBLISHED:
        published = PUBLISHED[name]
        if published.kind == "imagenet":
            raise ValueError(
                f"{name!r} is an ImageNet backbone, not a detector: build a model and call "
                f"load_imagenet_backbone(model, {name!r})"
            )
        kwargs.setdefault("category_names", COCO_91_NAMES)
        variant: TorchvisionVariant = "v1" if published.kind == "torchvision_v1" else "v2"
        if variant == "v1":
            kwargs.setdefault("norm_eps", 0.0)  # the published weights' FrozenBN eps
        return from_torchvision(fetch_state_dict(name), variant, **kwargs)
    path = Path(name_or_path)
    if not path.is_file():
        if path.suffix in _WEIGHT_SUFFIXES or len(path.parts) > 1:
            raise FileNotFoundError(f"weights file not found: {path}")
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)} or a path")
    if path.suffix == ".safetensors" and _is_native(path):
        if kwargs:
            raise ValueError(f"{path}: our own model files take no options, got {sorted(kwargs)}")
        return load_model(path)
    if path.suffix == ".pkl":
        state: Mapping[str, Any] = read_detectron2_weights(path)
    else:
        state = read_state_dict(path)
    return _from_state_dict(state, str(path), **kwargs)


def _is_native(path: Path) -> bool:
    """Whether a ``.safetensors`` file carries our model metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - let the state-dict reader report a bad file
        return False


def _from_state_dict(state: Mapping[str, Any], source: str, **kwargs: Any) -> MaskRCNN:
    """Recognises a state dict by its key names and converts it."""
    keys = set(state)
    if "backbone.bottom_up.stem.conv1.conv.weight" in keys:
        raise ValueError(
            f"{source}: a bare state dict of this package's model, without its configuration; "
            "save models with maskrcnn.save_model(model, 'name.safetensors') and load that file"
        )
    if any(k.startswith("backbone.body.") for k in keys):
        variant: TorchvisionVariant = (
            "v2" if any(k.startswith("roi_heads.box_head.0.") for k in keys) else "v1"
        )
        rows = state.get("roi_heads.box_predictor.cls_score.weight")
        if rows is None:
            raise ValueError(
                f"{source}: not a whole torchvision Mask R-CNN checkpoint: the key "
                "'roi_heads.box_predictor.cls_score.weight' (the class scores) is missing"
            )
        if rows.shape[0] == len(COCO_91_NAMES):
            kwargs.setdefault("category_names", COCO_91_NAMES)
        return from_torchvision(dict(state), variant, **kwargs)
    if "backbone.bottom_up.stem.conv1.weight" in keys or any(
        k.startswith("proposal_generator.") for k in keys
    ):
        rows = state.get("roi_heads.box_predictor.cls_score.weight")
        if rows is not None and rows.shape[0] == len(COCO_81_NAMES):
            kwargs.setdefault("category_names", COCO_81_NAMES)
        return from_detectron2(state, **kwargs)
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        raise ValueError(
            f"{source}: an ImageNet ResNet, not a detector; build a model and call "
            "load_imagenet_backbone(model, path)"
        )
    raise ValueError(f"{source}: not a recognised Mask R-CNN checkpoint (keys {sorted(keys)[:5]})")


_DETECTOR_RESNET = "backbone.bottom_up."


def _detector_resnet(state: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The ResNet of one of our FPN detectors' state dicts, under our names; None if none."""
    if not any(key.startswith(_DETECTOR_RESNET) for key in state):
        return None
    n = len(_DETECTOR_RESNET)
    return {key[n:]: value for key, value in state.items() if key.startswith(_DETECTOR_RESNET)}


def _load_own_resnet(model: MaskRCNN, state: Mapping[str, Tensor], *, source: str) -> None:
    """Loads our own ResNet's tensors into ``model``'s (and a C4 model's res5 head).

    Stages the model's ResNet lacks (res5 of a res4-only one) are left out; everything else
    must fit, which is checked before anything is loaded.
    """
    targets: list[tuple[torch.nn.Module, dict[str, Tensor]]] = []
    if model.cfg.head == "fpn":
        bottom_up = model.backbone.bottom_up
        assert isinstance(bottom_up, torch.nn.Module)
        targets.append((bottom_up, dict(state)))
    else:
        targets.append((model.backbone, dict(state)))
        shared_head = model.roi_heads.shared_head
        if model.cfg.head == "c4" and shared_head is not None:
            res5 = {k.removeprefix("res5."): v for k, v in state.items() if k.startswith("res5.")}
            targets.append((shared_head, res5))
    checked: list[tuple[torch.nn.Module, dict[str, Tensor]]] = []
    for module, tensors in targets:
        own = module.state_dict()
        stages = {key.split(".")[0] for key in own}
        kept = {
            k: v
            for k, v in tensors.items()
            if k.split(".")[0] in stages
            and not (k.endswith("num_batches_tracked") and k not in own)
        }  # FrozenBN keeps no num_batches_tracked
        missing = [k for k in own if k not in kept]
        unexpected = [k for k in kept if k not in own]
        shapes = [k for k, v in kept.items() if k in own and v.shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(
                f"{source} does not fit the model's ResNet: missing {missing[:8]}, unexpected "
                f"{unexpected[:8]}, other shapes {shapes[:8]}"
            )
        checked.append((module, kept))
    for module, kept in checked:
        load_exact(module, kept, source=source)


def load_imagenet_backbone(model: MaskRCNN, name_or_path: str | Path) -> MaskRCNN:
    """Initialises ``model``'s ResNet from pretrained weights; returns ``model``.

    The FPN design fills ``backbone.bottom_up``; the single-level designs (``c5``, ``c4_fc``)
    fill ``backbone`` (a res4-only ResNet leaves the source's res5 out); the C4 design fills
    ``backbone`` (stem to res4) and the res5 shared head from ``layer4``. Only the backbone
    changes.

    Args:
        model: a built model whose ResNet has the checkpoint's depth and width.
        name_or_path: one of :data:`BACKBONE_NAMES`, a local torchvision ResNet state dict
            (``.pth`` or ``.safetensors``), or one of our FPN detectors' model files, whose
            ``backbone.bottom_up`` ResNet is taken (e.g. to start the ablation's single-level
            stand-ins from the demo's trained backbone).

    Raises:
        ValueError: an unknown name, or weights that do not fit (nothing is loaded then).
        FileNotFoundError: a path that does not exist.
        WeightsUnavailableError: a published backbone that cannot be downloaded.
    """
    name = str(name_or_path)
    if name in PUBLISHED and PUBLISHED[name].kind == "imagenet":
        state = fetch_state_dict(name)
    elif name in PUBLISHED:
        raise ValueError(f"{name!r} is a whole detector; use from_pretrained({name!r})")
    elif Path(name_or_path).is_file() or Path(name_or_path).suffix in _WEIGHT_SUFFIXES:
        state = read_state_dict(name_or_path)
    else:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {list(BACKBONE_NAMES)} or a path"
        )
    cfg = model.cfg
    own_names = _detector_resnet(state)
    if own_names is not None:
        _load_own_resnet(model, own_names, source=f"{name}: backbone.bottom_up")
        return model
    if cfg.backbone.stride_in_1x1 or cfg.input.channel_order != "RGB" or cfg.input.pixel_scale != 1:
        warnings.warn(
            "torchvision's ImageNet ResNets expect stride_in_1x1=False and RGB input in [0, 1] "
            "with ImageNet mean/std; this model's configuration differs",
            stacklevel=2,
        )
    if cfg.head in ("fpn", "c5", "c4_fc"):
        resnet = model.backbone.bottom_up if cfg.head == "fpn" else model.backbone
        if not isinstance(resnet, ResNet):
            raise TypeError(f"the model's backbone: expected a ResNet, got {resnet!r}")
        if cfg.head == "c4_fc":  # stem to res4 only
            state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
        load_torchvision_resnet(resnet, state)
        return model
    backbone, shared_head = model.backbone, model.roi_heads.shared_head
    if not isinstance(backbone, ResNet) or shared_head is None:
        raise TypeError("a C4 model needs a ResNet backbone and a res5 shared head")
    res5 = {k: v for k, v in state.items() if k.startswith("layer4.")}
    rest = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    mapped = {}
    for key, value in res5.items():  # layer4.{b}.x -> res5.{b}.x -> {b}.x of the shared head
        new = str(torchvision_resnet_key(key)).removeprefix("res5.")
        mapped[new] = value
    own = shared_head.state_dict()
    problems = [k for k in own if k not in mapped]  # missing
    problems += [k for k in mapped if k not in own and not k.endswith("num_batches_tracked")]
    problems += [k for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if problems:  # checked before anything is loaded
        raise ValueError(f"{name}: layer4 does not fit the res5 head: {problems[:8]}")
    load_torchvision_resnet(backbone, rest)  # validates before loading
    load_exact(shared_head, mapped, source=f"{name}: layer4")
    return model
