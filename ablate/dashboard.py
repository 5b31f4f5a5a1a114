"""`ablate dashboard`: optuna-dashboard on the results database.

Every sweep's Optuna study lives in the results DB (`ResultsDB.optuna_storage_url`),
so the dashboard shows each sweep's trials, importances and Pareto fronts live.
"""

from __future__ import annotations

import importlib.util

from ablate.core.errors import AblateError
from ablate.results import ResultsDB, default_url, require_existing_db


def serve(db_url: str | None, host: str = "127.0.0.1", port: int = 8080,
          announce=print) -> None:  # noqa: ANN001
    """Serve until interrupted (Ctrl-C); `announce(line)` once the DB checks passed."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise AblateError("ablate dashboard needs optuna-dashboard, which is not installed; "
                          "pip install 'ablate[dashboard]'")
    require_existing_db(db_url or default_url())
    import optuna_dashboard

    with ResultsDB(db_url) as db:
        storage = db.optuna_storage_url
    announce(f"optuna-dashboard on http://{host}:{port}  (Ctrl-C stops)")
    try:
        optuna_dashboard.run_server(storage, host=host, port=port)
    except OSError as err:
        raise AblateError(f"cannot serve on {host}:{port} ({err.strerror or err}); "
                          "choose another --port") from None
