"""Checkpoint selection rules: which evaluated step's weights a run keeps (`train.select`) and
the set a `proxy` rule chooses on (`train.proxy`).

Why rules at all: the source domain's val split saturates early (frame AUC ~0.99 after a few
evaluations), so "the best source-val step" among later steps is close to arbitrary for the
cross-dataset numbers that matter. The rules:

- `best_val` (default): the step with the best source-val frame AUC (as before the setting);
- `last`: the final step (the final step is always evaluated);
- `proxy`: the step with the best frame AUC on the val split of `train.proxy`, a set used for
  selection only: a dataset (benchmark family, configs/data/<name> or manifest path) or
  `holdout:METHOD`, a manipulation method of `data.train` left out of training (its val
  fakes with the source's val reals are the proxy; leave-one-method-out).

Under every rule the decision threshold comes from the source val split at the kept step,
never from a test set. Torch- and framework-free: the recipe checks these at compose, the data
layer reads the proxy's spelling, training and the sweep read a rule's signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ablate.core.errors import AblateError
from ablate.core.schema import setting

RULES = ("best_val", "last", "proxy")
HOLDOUT = "holdout:"  # train.proxy=holdout:NeuralTextures
VAL_CURVE = "val/auc"  # the source val AUC at each evaluation (curve name)
PROXY_CURVE = "proxy/auc"  # the proxy's val AUC at each evaluation, when a proxy is set
PROXY_SPLIT = "proxy"  # the `split` of the metric row holding the proxy AUC at the kept step
_MANIFEST_SUFFIXES = (".csv", ".parquet")


def rule(cfg: Any) -> str:
    """The recipe's selection rule (`best_val` for a recipe saved before the setting)."""
    return str(setting(cfg, "train.select"))


def proxy_name(cfg: Any) -> str | None:
    """`train.proxy` as text, None when unset (or empty)."""
    value = setting(cfg, "train.proxy")
    return None if value is None or str(value) == "" else str(value)


def held_out_method(name: str | None) -> str | None:
    """METHOD of a `holdout:METHOD` proxy; None for a dataset proxy or none."""
    if name is None or not name.startswith(HOLDOUT):
        return None
    return name[len(HOLDOUT):]


def signal_curve(cfg: Any) -> str:
    """The curve whose values choose the step and drive ASHA: the proxy's AUC under `proxy`,
    else the source val AUC (under `last` nothing is chosen, and the source val AUC at each
    step is what ASHA compares: the kept step is the last one, evaluated on that same set)."""
    return PROXY_CURVE if rule(cfg) == "proxy" else VAL_CURVE


def signal_split(cfg: Any) -> str:
    """The `split` of the stored frame-AUC row holding that signal at the kept step: the
    proxy's row under `proxy`, else source val's."""
    return PROXY_SPLIT if rule(cfg) == "proxy" else "val"


def check_selection(cfg: Any) -> None:
    """The rule and its proxy agree with each other and with the run's sets: one line each,
    at compose, not minutes into a run. (A held-out method missing from the training set is
    checked when the set is read: only its manifest knows its methods.)"""
    chosen, name = rule(cfg), proxy_name(cfg)
    if chosen == "proxy" and name is None:
        raise AblateError("train.select=proxy needs train.proxy: a dataset whose val split "
                          "chooses the step (e.g. train.proxy=synth-warp) or holdout:METHOD (a "
                          "manipulation method of data.train, left out of training)")
    if name is None:
        return
    method = held_out_method(name)
    if method is not None:
        if not method.strip():
            raise AblateError(f"train.proxy={name} names no method; spell it "
                              f"{HOLDOUT}METHOD, e.g. {HOLDOUT}NeuralTextures")
        return
    train = str(setting(cfg, "data.train"))
    if same_dataset(name, train):
        raise AblateError(f"train.proxy={name} is the training set: its val split is what "
                          "train.select=best_val chooses on; use that, or name another set")
    tests = [str(t) for t in setting(cfg, "data.tests")]
    if any(same_dataset(name, t) for t in tests):
        raise AblateError(f"train.proxy={name} is also a test set (data.tests): the checkpoint "
                          "would be chosen on a test domain; drop it from data.tests or name "
                          "another proxy")


def unused_proxy(cfg: Any) -> str | None:
    """A one-line warning when a proxy is set but the rule does not choose on it, else None.

    A warning, not an error: a design that compares rules must keep everything else equal
    across its cells, so `best_val` and `last` cells carry the same `train.proxy` as the
    `proxy` cell (a `holdout:` method stays out of their training set too, and the proxy's
    AUC is still scored and recorded at each evaluation)."""
    chosen, name = rule(cfg), proxy_name(cfg)
    if name is None or chosen == "proxy":
        return None
    return (f"train.proxy={name} does not choose the checkpoint under train.select={chosen}: "
            "it is only scored and recorded" + (" (and its method stays out of training)"
                                                if held_out_method(name) else ""))


def same_dataset(a: str, b: str) -> bool:
    """Whether two dataset names mean the same set: equal names, or manifest paths to one
    file."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.suffix not in _MANIFEST_SUFFIXES or pb.suffix not in _MANIFEST_SUFFIXES:
        return False
    return pa.resolve() == pb.resolve()
