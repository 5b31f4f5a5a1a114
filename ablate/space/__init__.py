"""Search spaces: small declarative YAML files (`search_spaces/<name>.yaml`) saying
which recipe keys a sweep varies, how it scores a trial and what it may spend.

    space = load_space("quick")          # strict parse: one-line AblateError per mistake
    notes = validate_space(space)        # seconds: keys, variants, a dry-run build of each choice
    params = space.define_by_run(trial)  # Optuna define-by-run (what Ray's OptunaSearch calls)
    cfg = compose(space.overrides(params, seed=0))

A param is `key: {choice: [...]}`, `{int: [lo, hi], step, log}` or
`{float: [lo, hi], step, log}`, optionally `when: {other_key: value(s)}` (it is only
chosen when an earlier param took one of those values).

One job per module: model (the dataclasses, format_value), reader (strict YAML),
parse (parse_space), files (find, load, derive), budget (ASHA's time
axis), and for validate_space: check (the collector), probe (composition), assets
(files on disk), dryrun (one build and forward). Import from here, not from the modules.
"""

from __future__ import annotations

from ablate.space.budget import planned_evaluations
from ablate.space.files import (
    derive_space,
    list_spaces,
    load_space,
    parse_settings,
    spaces_dirs,
)
from ablate.space.model import (
    KNOWN_METRICS,
    MODEL_KEYS,
    PARAM_FIELDS,
    SAMPLERS,
    TINY_PREFIX,
    TOP_KEYS,
    EarlyStopping,
    Objective,
    Param,
    Resources,
    SamplerSpec,
    Scalar,
    SearchSpace,
    format_value,
)
from ablate.space.parse import parse_space
from ablate.space.validate import check_sweep, validate_space

__all__ = [
    "KNOWN_METRICS",
    "MODEL_KEYS",
    "PARAM_FIELDS",
    "SAMPLERS",
    "TINY_PREFIX",
    "TOP_KEYS",
    "EarlyStopping",
    "Objective",
    "Param",
    "Resources",
    "SamplerSpec",
    "Scalar",
    "SearchSpace",
    "check_sweep",
    "derive_space",
    "format_value",
    "list_spaces",
    "load_space",
    "parse_settings",
    "parse_space",
    "planned_evaluations",
    "spaces_dirs",
    "validate_space",
]
