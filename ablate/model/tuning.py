"""Parameter-efficient tuning of a detector's encoder: which of its parameters train, and the
LoRA / SVD-residual modules some modes inject (the classification head trains elsewhere).

Modes and the state_dict keys they leave (`<t>` = a target Linear's module name):
    full, linear, layernorm, bias: keys and values unchanged; only requires_grad differs.
    lora: `<t>.weight`/`<t>.bias` become `<t>.base_layer.weight`/`<t>.base_layer.bias`, plus
        `<t>.lora_A.default.weight` [r, in] and `<t>.lora_B.default.weight` [out, r]
        (PEFT's layout, adapter name "default", so PEFT's own tools read them).
    svd: `<t>.weight` becomes `<t>.weight_main` [out, in], `<t>.bias` stays, plus
        `<t>.U_residual`, `<t>.S_residual`, `<t>.V_residual` (see ablate/model/svd_residual.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ablate.core.errors import AblateError, first_line
from ablate.model.svd_residual import SVDResidualLinear, block_rank, qkv_blocks

MODES = ("full", "linear", "layernorm", "bias", "lora", "svd")
LORA_ADAPTER = "default"  # PEFT's default adapter name: part of the lora state_dict keys
_LORA_WRAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)  # PEFT LoRA layers


@dataclass(frozen=True)
class Tuning:
    """What of the encoder trains (`backbone.tuning` and its knobs in a recipe)."""

    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("attn.qkv", "attn.proj")  # module-name suffixes, as PEFT matches them
    svd_rank: int | None = None  # rank of the FROZEN principal part; None = min(out, in) - 1 (Effort: 1024-1)
    svd_targets: tuple[str, ...] = ("attn.qkv", "attn.proj")


def apply_tuning(encoder: nn.Module, tuning: Tuning, name: str = "backbone") -> None:
    """In place: injects LoRA / SVD modules where the mode needs them and sets requires_grad so exactly the
    mode's parameters train. `name` is only used in error messages (e.g. 'backbone tiny-clip')."""
    if tuning.mode not in MODES:
        raise AblateError(
            f"backbone.tuning={tuning.mode!r} is not a tuning mode; use one of {', '.join(MODES)}"
        )
    if tuning.mode == "full":
        encoder.requires_grad_(True)
        return
    encoder.requires_grad_(False)
    if tuning.mode == "layernorm":
        params = [p for m in encoder.modules() if isinstance(m, nn.LayerNorm)
                  for p in m.parameters(recurse=False)]
        if not params:
            raise AblateError(
                f"backbone.tuning=layernorm: {name} has no LayerNorm with affine parameters "
                "(e.g. a CNN with BatchNorm); use backbone.tuning=bias or backbone.tuning=lora instead"
            )
        for p in params:
            p.requires_grad_(True)
    elif tuning.mode == "bias":  # BitFit
        for pname, p in encoder.named_parameters():
            if pname.endswith("bias"):
                p.requires_grad_(True)
    elif tuning.mode == "lora":
        _inject_lora(encoder, tuning, name)
    elif tuning.mode == "svd":
        _inject_svd(encoder, tuning, name)


def trainable_names(encoder: nn.Module) -> list[str]:
    """Names of the parameters that train, sorted (what an optimizer of the encoder gets)."""
    return sorted(n for n, p in encoder.named_parameters() if p.requires_grad)


def freeze_batchnorm_stats(encoder: nn.Module) -> None:
    """Puts every BatchNorm that is not fully trained into eval(), so the running stats of a frozen
    (or bias-only) encoder never move and its train and eval forwards agree; call after .train().

    A BatchNorm with a frozen affine parameter is not fully trained; one without affine parameters
    follows the encoder (frozen unless every encoder parameter trains)."""
    params = list(encoder.parameters())
    encoder_frozen = any(not p.requires_grad for p in params) or not params
    for module in encoder.modules():
        if isinstance(module, _BatchNorm):
            own = list(module.parameters(recurse=False))
            if any(not p.requires_grad for p in own) or (not own and encoder_frozen):
                module.eval()


def constraint_losses(encoder: nn.Module) -> dict[str, Tensor]:
    """Effort's {"orthogonal", "singular"} losses, each the mean over every SVD-residual weight
    block of the encoder; {} when it has none (every mode but svd)."""
    terms = [m.constraint_terms() for m in encoder.modules() if isinstance(m, SVDResidualLinear)]
    if not terms:
        return {}
    orthogonal = torch.cat([o for o, _ in terms])  # [blocks in all modules]
    singular = torch.cat([s for _, s in terms])  # [blocks in all modules]
    return {"orthogonal": orthogonal.mean(), "singular": singular.mean()}


def _matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of target_modules: the full name, or a suffix after a dot."""
    return module_name == target or module_name.endswith("." + target)


def _linear_suffixes(encoder: nn.Module) -> str:
    """Linear module names with their leading `blocks.N.` stripped (attn.qkv, mlp.fc1, ...)."""
    seen: dict[str, None] = {}
    for module_name, module in encoder.named_modules():
        if isinstance(module, nn.Linear):
            parts = module_name.split(".")
            numeric = [i for i, part in enumerate(parts) if part.isdigit()]
            seen[".".join(parts[numeric[-1] + 1:]) if numeric else module_name] = None
    return ", ".join(seen) or "none (it has no Linear layer)"


def _targets(encoder: nn.Module, targets: tuple[str, ...], setting: str,
             name: str) -> list[tuple[str, nn.Module]]:
    """The modules `targets` select; a target that selects nothing is the user's error."""
    if not targets:
        raise AblateError(f"{setting} is empty; name at least one Linear, e.g. attn.qkv")
    modules = list(encoder.named_modules())
    for target in targets:
        if not any(_matches(n, target) for n, _ in modules):
            raise AblateError(
                f"{setting}: {target!r} matches no module of {name}; its Linear layers are "
                f"{_linear_suffixes(encoder)}"
            )
    return [(n, m) for n, m in modules if any(_matches(n, t) for t in targets)]


def _inject_lora(encoder: nn.Module, tuning: Tuning, name: str) -> None:
    import peft  # lazy: PEFT imports transformers, needed only for backbone.tuning=lora

    if tuning.lora_rank < 1:
        raise AblateError(f"backbone.lora_rank={tuning.lora_rank} must be a positive integer (e.g. 8)")
    for module_name, module in _targets(encoder, tuning.lora_targets, "backbone.lora_targets", name):
        if not isinstance(module, _LORA_WRAPPABLE):
            raise AblateError(
                f"backbone.lora_targets: {module_name} of {name} is a {type(module).__name__} module, "
                f"which LoRA cannot wrap; its Linear layers are {_linear_suffixes(encoder)}"
            )
        parent = encoder.get_submodule(module_name.rpartition(".")[0])
        if (module_name.endswith("qkv") and isinstance(getattr(parent, "q_bias", None), Tensor)
                and not getattr(parent, "qkv_bias_separate", False)):
            raise AblateError(
                f"backbone.lora_targets: {name} reads {module_name}.weight directly (q/v bias, "
                "as in Eva/BEiT), so LoRA there would do nothing; target attn.proj or mlp.fc1/fc2, "
                "or use backbone.tuning=svd"
            )
    config = peft.LoraConfig(r=tuning.lora_rank, lora_alpha=tuning.lora_alpha,
                             lora_dropout=tuning.lora_dropout,
                             target_modules=list(tuning.lora_targets))
    try:
        peft.inject_adapter_in_model(config, encoder, adapter_name=LORA_ADAPTER)
    except ValueError as err:  # PEFT's own refusals, which the checks above do not foresee
        raise AblateError(f"backbone.lora_targets on {name}: {first_line(err)}") from None
    for pname, p in encoder.named_parameters():
        p.requires_grad_(".lora_A." in pname or ".lora_B." in pname)


def _inject_svd(encoder: nn.Module, tuning: Tuning, name: str) -> None:
    plan = []  # checked in full first, so a bad setting leaves the encoder untouched
    for module_name, module in _targets(encoder, tuning.svd_targets, "backbone.svd_targets", name):
        if not isinstance(module, nn.Linear):
            raise AblateError(
                f"backbone.svd_targets: {module_name} of {name} is a {type(module).__name__} module, not a "
                f"Linear; its Linear layers are {_linear_suffixes(encoder)}"
            )
        blocks = qkv_blocks(module_name, module)
        n = block_rank(module, blocks)
        rank = n - 1 if tuning.svd_rank is None else tuning.svd_rank
        if not 0 <= rank < n:
            shape = "x".join(map(str, module.weight.shape))
            split = f" ({blocks} blocks of rank {n})" if blocks > 1 else f" (rank {n})"
            raise AblateError(
                f"backbone.svd_rank={rank} does not fit {module_name} of {name}, weight "
                f"{shape}{split}; the largest allowed is {n - 1}"
            )
        plan.append((module_name, module, rank, blocks))
    for module_name, module, rank, blocks in plan:
        parent_name, _, child = module_name.rpartition(".")
        setattr(encoder.get_submodule(parent_name), child, SVDResidualLinear(module, rank, blocks))
    for pname, p in encoder.named_parameters():
        p.requires_grad_(pname.endswith(("U_residual", "S_residual", "V_residual")))
