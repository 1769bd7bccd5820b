"""ResNet18 feature extractor with named heads, and its three initialisations (paper Sec. 2.2.4).

One backbone (torchvision ``resnet18`` without its ``fc``) feeds any number of linear heads that
return logits: ``{"cluster": K}`` for PICA/LSD, ``{"multilabel": C}`` for fine-tuning and
FixMatch One-Head, ``{"combo": K, "multilabel": C}`` for FixMatch Two-Head. The state-dict keys
are ``backbone.*`` and ``heads.<name>.*``, so a checkpoint's backbone loads into a model with
other heads (deep-clustering initialisation, strategy 4).

Input is grayscale ``(B, 1, H, W)`` in [0, 1]. The default ``stem="repeat"`` normalises it with
ImageNet's per-channel mean/std and repeats it to 3 channels: cuDNN is faster with 3 input
channels than with 1 (docs/GPU.md, benchmarks/model_stem.py), and ImageNet weights load as they
are. ``stem="gray"`` is a 1-channel ``conv1`` whose ImageNet weights are the sum over RGB.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights

from uslearn.errors import UserError, is_environment_error
from uslearn.log import get_logger

log = get_logger(__name__)

FEATURE_DIM = 512
STEMS = ("repeat", "gray")
IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_NAMES = ("best.pt", "checkpoint.pt")
# Prefixes that DistributedDataParallel and torch.compile put in front of every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class Network(nn.Module):
    """ResNet18 features plus named linear heads that return logits.

    Args:
        heads: head name -> number of outputs, e.g. ``{"combo": K, "multilabel": C}``.
        stem: ``"repeat"`` (gray repeated to 3 channels) or ``"gray"`` (1-channel ``conv1``).

    Attributes:
        backbone: the torchvision ResNet18 with ``fc = Identity``; ``features`` runs it.
        heads: ``nn.ModuleDict`` of ``nn.Linear(512, n)`` per head name.
        init_report: what ``build_network`` loaded (``{"missing": [...], ...}``), empty lists
            for a random initialisation.
    """

    def __init__(self, heads: dict[str, int], stem: str = "repeat"):
        super().__init__()
        if not heads:
            raise ValueError("Network needs at least one head, e.g. {'cluster': 10}")
        for name, size in heads.items():
            if not name.isidentifier() or not isinstance(size, int) or size < 1:
                raise ValueError(
                    f"head {name!r}: expected an identifier name and a positive int size, "
                    f"got {size!r}"
                )
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.stem = stem
        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        if stem == "gray":
            self.backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, n) for name, n in heads.items()})
        channels = 3 if stem == "repeat" else 1
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        if stem == "gray":
            mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
        # Not persistent: the normalisation is a fixed part of the architecture, not a weight.
        self.register_buffer("mean", mean.view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, channels, 1, 1), persistent=False)
        self.init_report: dict[str, list[str]] = {"missing": [], "unexpected": [], "mismatched": []}

    @property
    def head_sizes(self) -> dict[str, int]:
        """Return head name -> number of outputs."""
        return {name: head.out_features for name, head in self.heads.items()}

    def features(self, x: Tensor) -> Tensor:
        """Return the (B, 512) pooled features of grayscale images x: (B, 1, H, W) in [0, 1]."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected grayscale input (B, 1, H, W), got {tuple(x.shape)}")
        x = (x - self.mean) / self.std  # (B, 3, H, W) for "repeat" by broadcasting
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            # A model moved to channels_last (faster under bf16) gets its input in that layout.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def head(self, feats: Tensor) -> dict[str, Tensor]:
        """Return head name -> (B, n) logits for features feats: (B, 512)."""
        return {name: layer(feats) for name, layer in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return head name -> (B, n) logits for grayscale images x: (B, 1, H, W) in [0, 1]."""
        return self.head(self.features(x))

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """Return the backbone's state dict (keys without the ``backbone.`` prefix)."""
        return self.backbone.state_dict()


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return state with DDP/compile key prefixes removed."""
    cleaned = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def _load_into_backbone(
    network: Network, state: dict[str, Tensor], source: str, ignore: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Load a backbone state dict (no prefix) leniently; return missing/unexpected/mismatched."""
    own = network.backbone.state_dict()
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.dim() == 4:
        # A 3-channel stem's weights into a 1-channel stem: sum over RGB (and back: spread).
        if own["conv1.weight"].shape[1] == 1 and conv1.shape[1] == 3:
            state = {**state, "conv1.weight": conv1.sum(1, keepdim=True)}
        elif own["conv1.weight"].shape[1] == 3 and conv1.shape[1] == 1:
            state = {**state, "conv1.weight": conv1.expand(-1, 3, -1, -1) / 3.0}
    usable, mismatched = {}, []
    for key, value in state.items():
        if key in own and tuple(own[key].shape) == tuple(value.shape):
            usable[key] = value
        elif key in own:
            mismatched.append(key)
    unexpected = sorted(k for k in state if k not in own and not k.startswith(ignore))
    if not usable:
        raise UserError(
            f"{source}: none of its {len(state)} entries fits a ResNet18 backbone "
            f"(first keys: {list(state)[:3]}); expected keys like 'conv1.weight'"
        )
    network.backbone.load_state_dict(usable, strict=False)
    report = {
        "missing": sorted(k for k in own if k not in usable),
        "unexpected": unexpected,
        "mismatched": sorted(mismatched),
    }
    if any(report.values()):
        log.warning(
            "%s: loaded %d backbone tensors; missing %s, unexpected %s, shape-mismatched %s",
            source,
            len(usable),
            report["missing"],
            report["unexpected"],
            report["mismatched"],
        )
    else:
        log.info("%s: loaded all %d backbone tensors", source, len(usable))
    return report


def load_file(path: str | Path) -> object:
    """Return the object stored in a torch file, loaded with ``weights_only=True``.

    Only tensors, numbers, strings and containers are loaded: a pickle of anything else can
    run code, so such a file is refused rather than loaded with ``weights_only=False`` (and
    torch's advice to do so is not passed on).

    Raises:
        UserError: one line naming the file: empty, truncated or corrupt, or holding other
            Python objects. Disk and permission errors pass as OSError.
    """
    try:
        # Arbitrary bytes can make torch warn (e.g. "Detected pickle protocol ...", advising
        # weights_only=False) before it fails: the one line below is all the user should see.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        if is_environment_error(err) or isinstance(err, FileNotFoundError):
            raise
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise UserError(f"{path}: not a torch file, or a corrupt one") from None
        raise UserError(
            f"{path}: holds a Python object ({found.group(1)}) besides tensors, numbers and "
            "containers; uslearn does not load such files (unpickling them can run code)"
        ) from None
    except UnicodeDecodeError:
        # Bytes read as a pickle's string: not a truncated torch file but not one at all.
        raise UserError(f"{path}: not a torch file, or a corrupt one") from None
    except (RuntimeError, EOFError, ValueError) as err:
        # A truncated zip archive: "PytorchStreamReader failed reading zip archive: ...".
        reason = str(err).split(". ")[0] if str(err) else "empty"
        raise UserError(f"{path}: truncated or corrupt torch file ({reason})") from None
    except Exception:  # noqa: BLE001
        # Arbitrary bytes drive torch's restricted unpickler into whatever state the bytes
        # spell: IndexError, KeyError, struct.error, UnicodeDecodeError... all mean the same.
        raise UserError(f"{path}: not a torch file, or a corrupt one") from None


def checkpoint_file(path: str | Path) -> Path:
    """Return the checkpoint file for path: the file itself, or best.pt/checkpoint.pt in a dir.

    Raises:
        UserError: nothing at path, or a directory without ``best.pt`` / ``checkpoint.pt``.
    """
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: directory holds none of {CHECKPOINT_NAMES}")
    if not path.is_file():
        raise UserError(
            f"init {str(path)!r}: expected 'random', 'imagenet' or the path of a clustering "
            "checkpoint (.pt file or a directory holding best.pt/checkpoint.pt); nothing there"
        )
    return path


def read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Tensor], dict]:
    """Return (file, model state dict without DDP/compile prefixes, training config) of a checkpoint.

    Args:
        path: a ``.pt`` file or a directory holding ``best.pt``/``checkpoint.pt``; the file is a
            dict whose ``"model"`` entry is a ``Network`` state dict (and whose ``"config"`` is
            the run's ``TrainConfig`` as a dict: ``{}`` when absent); a bare ``Network`` state
            dict is accepted too.

    Raises:
        UserError: nothing there, an unreadable file, or no state dict in it.
    """
    file = checkpoint_file(path)
    payload = load_file(file)
    config = {}
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        raise UserError(f"{file}: expected a dict with a 'model' state dict")
    return file, _strip_wrappers(payload), config


def load_backbone(network: Network, path: str | Path) -> dict[str, list[str]]:
    """Load the backbone of a clustering checkpoint into network, dropping its heads.

    Args:
        network: the model to initialise; its heads are left as they are.
        path: a checkpoint (see ``read_checkpoint``).

    Returns:
        ``{"missing": [...], "unexpected": [...], "mismatched": [...]}`` backbone keys (without
        the ``backbone.`` prefix): missing = left at their initial value (shape-mismatched ones
        included), unexpected = in the file but not in the model; logged as a warning when any
        list is non-empty.

    Raises:
        UserError: unreadable file, no ``"model"`` state dict, or no backbone tensor fits.
    """
    file, state, _ = read_checkpoint(path)
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    if not backbone:
        raise UserError(
            f"{file}: no 'backbone.*' entries in its model state dict (keys: {list(state)[:3]})"
        )
    return _load_into_backbone(network, backbone, str(file))


def load_network(path: str | Path, head: str | None = None) -> tuple[Network, dict]:
    """Return the whole network saved in a checkpoint (in eval mode) and its training config.

    Head names and sizes and the stem are read from the state dict, so any checkpoint the
    training loop wrote loads without knowing its strategy.

    Args:
        path: a checkpoint (see ``read_checkpoint``).
        head: a head the network must have (e.g. ``"cluster"``), or None.

    Raises:
        UserError: unreadable checkpoint, ``head`` missing, or a state dict that does not fit.
    """
    file, state, config = read_checkpoint(path)
    heads = {
        k.split(".")[1]: int(v.shape[0])
        for k, v in state.items()
        if k.startswith("heads.") and k.endswith(".weight")
    }
    if head is not None and head not in heads:
        raise UserError(f"{file}: its model has heads {sorted(heads)}, no '{head}' head")
    conv1 = state.get("backbone.conv1.weight")
    stem = "gray" if conv1 is not None and conv1.shape[1] == 1 else "repeat"
    try:
        network = Network(heads, stem=stem)
        network.load_state_dict(state)
    except (ValueError, RuntimeError) as err:
        raise UserError(f"{file}: not a uslearn network checkpoint ({err})") from err
    return network.eval(), config


def imagenet_weights_file() -> Path:
    """Return where torch hub caches ResNet18's ImageNet weights: $TORCH_HOME/hub/checkpoints/."""
    name = os.path.basename(IMAGENET_WEIGHTS.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def load_imagenet(network: Network, weights: str | Path | None = None) -> dict[str, list[str]]:
    """Load torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` into network's backbone; never downloads.

    Args:
        network: the model to initialise; its heads keep their random initialisation.
        weights: an explicit state-dict file; default: the torch hub cache file.

    Returns:
        The missing/unexpected/mismatched key report (``fc.*`` is expected and not reported).

    Raises:
        UserError: the file is absent (the message names the file and where to put it) or bad.
    """
    file = Path(weights) if weights is not None else imagenet_weights_file()
    if not file.is_file():
        raise UserError(
            f"ImageNet weights not found at {file}. Offline, download {IMAGENET_WEIGHTS.url} "
            f"elsewhere and put it at {imagenet_weights_file()} (the torch hub cache; set "
            "TORCH_HOME to move it) or pass the file with --weights FILE"
        )
    state = load_file(file)
    if not isinstance(state, dict):
        raise UserError(f"{file}: expected a ResNet18 state dict")
    return _load_into_backbone(network, _strip_wrappers(state), str(file), ignore=("fc.",))


def build_network(
    heads: dict[str, int],
    init: str = "random",
    weights: str | Path | None = None,
    stem: str = "repeat",
) -> Network:
    """Build a ``Network`` and initialise its backbone.

    Args:
        heads: head name -> number of outputs.
        init: ``"random"`` (torchvision's default init, seeded by the caller's torch seed),
            ``"imagenet"``, or the path of a clustering checkpoint (see ``load_backbone``).
        weights: explicit ImageNet state-dict file for ``init="imagenet"``.
        stem: ``"repeat"`` or ``"gray"`` (see the module docstring).

    Returns:
        The network; ``network.init_report`` holds the key report of what was loaded.

    Raises:
        UserError: missing ImageNet file, bad checkpoint, or ``weights`` with another init.
    """
    network = Network(heads, stem=stem)
    if weights is not None and init != "imagenet":
        raise UserError(f"--weights is only used with init 'imagenet', not {init!r}")
    if init == "random":
        return network
    if init == "imagenet":
        network.init_report = load_imagenet(network, weights)
    else:
        network.init_report = load_backbone(network, init)
    return network
