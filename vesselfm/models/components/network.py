"""Build the vesselFM network (a MONAI ``DynUNet``) from a model config and load its weights;
read a packaged model config by name without Hydra (:func:`model_config`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from vesselfm.models.components.checkpoint import (
    load_weights,
    read_state_dict,
    resolve_checkpoint,
    trust_flag,
)

log = logging.getLogger(__name__)


def build_network(net_cfg: Mapping[str, Any]) -> nn.Module:
    """Instantiate the network described by ``model.net`` (a ``_target_`` config).

    The network maps ``(B, 1, D, H, W)`` intensities to ``(B, 1, D, H, W)`` vessel logits.
    """
    # imported here: ``import vesselfm.models`` stays free of Hydra (a Python API without it)
    from hydra.utils import instantiate

    return instantiate(net_cfg, _convert_="all")


def model_config(name: str = "vesselfm_base", **overrides: Any) -> dict[str, Any]:
    """The packaged ``configs/model/<name>.yaml`` as a plain dict, for :func:`load_model` in
    Python without composing Hydra's configs.

    The file's ``defaults`` (other files of the model group, and ``_self_``, last when not
    listed) are merged in order, as Hydra composes ``model=<name>``.

    Args:
        name: the model config (``vesselfm_base``, ``tiny``).
        **overrides: top-level keys to replace, e.g. ``checkpoint="best.ckpt"``.

    Returns:
        ``{"name", "net", "checkpoint", "revision", "cache_dir", "trust_checkpoint"}``.

    Raises:
        ValueError: no such model config, or an override of a key it does not have; the message
            lists the allowed ones.

    Example:
        >>> net = load_model(model_config("tiny", checkpoint="tiny.pt"))  # doctest: +SKIP
    """
    from omegaconf import OmegaConf

    import vesselfm.configs

    folder = Path(vesselfm.configs.__file__).parent / "model"
    available = sorted(p.stem for p in folder.glob("*.yaml"))

    def load(option: str) -> Any:
        if option not in available:
            raise ValueError(f"model={option}: no such model config; choose one of {available}")
        own = OmegaConf.load(folder / f"{option}.yaml")
        defaults = list(own.pop("defaults", []))
        if "_self_" not in defaults:
            defaults.append("_self_")
        parts = [own if entry == "_self_" else load(str(entry)) for entry in defaults]
        return OmegaConf.merge(*parts)

    cfg = OmegaConf.to_container(load(name), resolve=True)
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model keys {unknown}; allowed: {sorted(cfg)}")
    return {**cfg, **overrides}


# DynUNet's output head: the 1x1x1 convolution to out_channels
HEAD_PREFIX = "output_block."


def without_head(
    net: nn.Module, state: Mapping[str, Any], name: str, source: str
) -> dict[str, Any]:
    """``state`` with the output head's tensors (:data:`HEAD_PREFIX`) replaced by ``net``'s own
    (fresh random) ones, so that a strict load takes every other layer from ``state``; logs one
    line saying so.

    Raises:
        CheckpointError: ``net`` has no output head of that name.
    """
    from vesselfm.models.components.checkpoint import CheckpointError

    own = {k: v for k, v in net.state_dict().items() if k.startswith(HEAD_PREFIX)}
    if not own:
        raise CheckpointError(
            f"model.reinit_head=true: model={name} has no output head ({HEAD_PREFIX}*); "
            "set model.reinit_head=false"
        )
    old = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    before = next((tuple(v.shape) for k, v in old.items() if k.endswith("weight")), None)
    after = next(tuple(v.shape) for k, v in own.items() if k.endswith("weight"))
    log.info(
        "model=%s: output head (%s*, %s -> %s channels) re-initialised at random; every other "
        "layer loaded from %s",
        name,
        HEAD_PREFIX,
        before[0] if before else "none",
        after[0],
        source,
    )
    kept = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    return {**kept, **own}


def set_head_vessel_prior(net: nn.Module, prior: float) -> None:
    """Bias a random multi-class output head so that every voxel starts at vessel probability
    ``1 - p(background) = prior``, spread evenly over the segment classes.

    With ``C`` classes and the other logits near 0, background bias ``log((C - 1) (1 - prior)
    / prior)`` gives that. A random head otherwise starts at ``(C - 1) / C`` vessel everywhere
    (14/15 for 15 classes): Adam moves a logit by about the learning rate per step, so walking
    that back to the vessels' ~0.2 % costs tens of steps before the vessels are learnt. 0.5 is
    where a 1-channel lumen model's sigmoid starts.

    Raises:
        ValueError: ``prior`` not in (0, 1), or ``net`` has no biased multi-class output head.
    """
    import math

    import torch

    if not 0.0 < float(prior) < 1.0:
        raise ValueError(f"model.head_vessel_prior must be in (0, 1) or null, got {prior}")
    biases = [
        p for k, p in net.named_parameters() if k.startswith(HEAD_PREFIX) and k.endswith("bias")
    ]
    if len(biases) != 1 or biases[0].numel() < 2:
        raise ValueError(
            "model.head_vessel_prior needs a multi-class output head with a bias "
            f"({HEAD_PREFIX}*, model.net.out_channels > 1); set model.head_vessel_prior=null"
        )
    bias = biases[0]
    classes = bias.numel()
    with torch.no_grad():
        bias.zero_()
        bias[0] = math.log((classes - 1) * (1.0 - float(prior)) / float(prior))


def load_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Build ``model.net`` and load ``model.checkpoint`` (if any) into it, strictly.

    Args:
        model_cfg: a ``model/*.yaml`` config: ``name``, ``net`` (``_target_``), ``checkpoint``
            (``hf://owner/repo/file``, a ``.pt``/``.ckpt`` path or ``null``), ``revision``,
            optional ``cache_dir`` and ``trust_checkpoint`` (allow a checkpoint that needs full
            unpickling, i.e. may run code; default ``false``). A ``.onnx`` or ``.xml`` checkpoint
            is an exported model (``python -m vesselfm.export``): ``net`` is not built.

    Returns:
        The network in eval mode on the CPU (an
        :class:`~vesselfm.inference.backends.ExportedNetwork` for an exported file).

    Raises:
        CheckpointError: weights missing, unreadable, needing full unpickling without
            ``trust_checkpoint``, or not matching the network.
    """
    trust = trust_flag(model_cfg.get("trust_checkpoint"))
    spec = model_cfg.get("checkpoint")
    path = resolve_checkpoint(spec, model_cfg.get("revision"), model_cfg.get("cache_dir"))
    from vesselfm.utils.outputs import file_sha256, set_run_checkpoint

    if path is not None and path.suffix.lower() in {".onnx", ".xml"}:
        # an exported model (python -m vesselfm.export): no torch network to build
        from vesselfm.inference.backends import ExportedNetwork

        exported = ExportedNetwork(path)
        log.info(
            "model.checkpoint is an exported %s model (%s, exported from %s)",
            exported.format,
            exported.record.get("precision", "fp32"),
            exported.record.get("model_name", "an unrecorded model"),
        )
        set_run_checkpoint({"source": str(spec), "sha256": file_sha256(path)})
        return exported.eval()
    net = build_network(model_cfg["net"])
    prior = model_cfg.get("head_vessel_prior")
    if prior is not None and (path is None or model_cfg.get("reinit_head")):
        # only a head that starts at random: a trained head keeps its own bias
        set_head_vessel_prior(net, float(prior))
        log.info(
            "model=%s: output head biased to vessel probability %g at the start "
            "(model.head_vessel_prior)",
            model_cfg.get("name"),
            float(prior),
        )
    if path is None:
        log.info(
            "model=%s starts from random weights (model.checkpoint is null)", model_cfg.get("name")
        )
    else:
        state = read_state_dict(path, trust_checkpoint=trust)
        if model_cfg.get("reinit_head"):
            state = without_head(net, state, str(model_cfg.get("name")), str(spec))
        load_weights(net, state, model_name=str(model_cfg.get("name")), source=str(spec))
        log.info("model=%s loaded weights from %s", model_cfg.get("name"), spec)
        checkpoint = {"source": str(spec), "sha256": file_sha256(path)}
        # the output record names the weights every output was made with
        set_run_checkpoint(checkpoint)
        # inference.backend=auto exports only weights loaded from a file (a plain attribute: it
        # is no parameter and no buffer)
        net.source_checkpoint = checkpoint
    return net.eval()


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
