"""`ablate sweep`: recipes from a search space as Ray Tune trials chosen by Optuna.

- `trial`: the worker side (one trial = each seed of one recipe, reported seed by seed);
- `searcher`: Optuna behind Tune, told PRUNED / FAIL / COMPLETE truthfully;
- `callback`: the driver side, the only writer of the results database;
- `reconcile`: --resume rebuilds what is left from the database, not from Tune's state;
- `cluster`: Ray connection, resource and node-version checks;
- `driver`: run_sweep, which ties them together and says how the sweep ended.

Importing this package does not import Ray.
"""

from ablate.sweep.driver import RAY_DIR, RUNS_DIR, SPACES_DIR, SweepSummary, run_sweep
from ablate.sweep.trial import GRID_KEY, SCORES, TrialContext, summarise

__all__ = ["GRID_KEY", "RAY_DIR", "RUNS_DIR", "SCORES", "SPACES_DIR", "SweepSummary",
           "TrialContext", "run_sweep", "summarise"]
