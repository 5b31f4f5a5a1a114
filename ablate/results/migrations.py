"""Schema versions: creating the tables, and upgrading a database an older ablate wrote.

`ablate_schema.version` is the schema version. `MIGRATIONS[v]` upgrades a
database from version v to v+1; opening an older database applies them in
order, in one transaction. Version 1 is the first schema; version 2 adds the
reuse key (`identity`: recipe + data + teacher content) and content hashes
to trials, the driver's host / pid / heartbeat / error to sweeps, and
`ablate_checkpoints` (a sweep's latest checkpoint per recipe and seed).
Version 3 adds to every metric row what makes it comparable (METRIC_PROVENANCE:
frame -> video aggregation, threshold and its source, bootstrap resamples, seed
and unit, EER convention, hash of the scored test rows); rows from older
databases keep NULL there, never a guessed value. Version 4 adds the memory preflight's
estimate to trials (`estimated_mem_mb`, beside the measured `peak_mem_mb`). Version 5 adds
the protocol line to metric rows (`protocol`). Version 6 adds a structure search's costs to
trials (`train_gflops`, `latency_ms`); older rows keep NULL (never measured).

SCHEMA_VERSION and MIGRATIONS are read here only, at call time (a test that
pretends to be another schema version patches them on this module).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from ablate.core.errors import AblateError
from ablate.core.identity import hash_result, identity, path_free
from ablate.core.names import RUN_INFO
from ablate.results.engine import lock_schema, read_transaction, write_transaction
from ablate.results.schema import SCHEMA_VERSION, checkpoints_table, metadata, schema_table

Migration = Callable[[sa.Connection], None]
# MIGRATIONS[v] turns a version-v database into version v+1. To change the
# schema: edit the tables in schema.py (new databases get them from create_all),
# bump SCHEMA_VERSION, and add the step that brings an old database to the same
# shape. A step spells out its columns instead of reusing the live ones, so it
# keeps meaning the same thing when later versions change those columns.


def add_column(conn: sa.Connection, table: str, column: sa.Column) -> None:
    """ALTER TABLE ... ADD COLUMN, rendered for this backend (a building block for migrations)."""
    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {ddl}")


def _v1_to_v2(conn: sa.Connection) -> None:
    """Driver liveness on sweeps, the reuse key on trials, and the checkpoints table.

    Old trials get identity = recipe_hash, which is what v1 reused them by.
    (The checkpoints table is created from its live definition: a later
    version that changes it must create it from a v2 copy here instead.)
    """
    for column in (sa.Column("host", sa.String), sa.Column("pid", sa.Integer),
                   sa.Column("heartbeat", sa.DateTime), sa.Column("error", sa.Text)):
        add_column(conn, "ablate_sweeps", column)
    for column in (sa.Column("identity", sa.String), sa.Column("data_sha", sa.String),
                   sa.Column("teacher_sha", sa.String), sa.Column("code_version", sa.Text)):
        add_column(conn, "ablate_trials", column)
    conn.exec_driver_sql("UPDATE ablate_trials SET identity = recipe_hash")
    conn.exec_driver_sql("CREATE INDEX ix_ablate_trials_reuse ON ablate_trials (identity, seed)")
    checkpoints_table.create(conn)


def _v2_to_v3(conn: sa.Connection) -> None:
    """Provenance columns on metrics; old rows keep NULL (unknown), nothing is inferred."""
    for column in (sa.Column("aggregation", sa.String), sa.Column("threshold", sa.Float),
                   sa.Column("threshold_from", sa.String), sa.Column("n_boot", sa.Integer),
                   sa.Column("boot_seed", sa.Integer), sa.Column("boot_unit", sa.String),
                   sa.Column("eer_convention", sa.String), sa.Column("manifest_sha", sa.String)):
        add_column(conn, "ablate_metrics", column)


def _v3_to_v4(conn: sa.Connection) -> None:
    """The memory preflight's estimate on trials; old rows keep NULL (never estimated)."""
    add_column(conn, "ablate_trials", sa.Column("estimated_mem_mb", sa.Float))


def _v4_to_v5(conn: sa.Connection) -> None:
    """The protocol line of every metric row (old rows keep NULL: never a guessed protocol),
    and identity by content (ablate/core/identity.py): every stored trial's recipe hash and
    identity recomputed without paths and with the precision it computed in."""
    add_column(conn, "ablate_metrics", sa.Column("protocol", sa.Text))
    rehash_trials(conn)


def _v5_to_v6(conn: sa.Connection) -> None:
    """A structure search's costs on trials; old rows keep NULL (never measured)."""
    add_column(conn, "ablate_trials", sa.Column("train_gflops", sa.Float))
    add_column(conn, "ablate_trials", sa.Column("latency_ms", sa.Float))


def rehash_trials(conn: sa.Connection) -> None:
    """Recipe hash, identity and recipe of each trial with a reuse key (v2 on), as today's
    code computes them. A trial without paths that ran in fp32 keeps both. The precision of
    `train.precision: auto` is read from the run's run.json, else from the sweep's
    resources (no GPU: fp32); where neither says, and where the encoder read pretrained
    weights (whose bytes were never recorded), the identity becomes NULL: the trial stays
    in reports but is never reused, since what it computed on is not known. A sweep's
    saved checkpoints follow their trial's new identity."""
    gpus = {row.id: _sweep_gpus(row.settings_json) for row in conn.execute(sa.text(
        "SELECT id, settings_json FROM ablate_sweeps"))}
    rows = conn.execute(sa.text(
        "SELECT id, sweep_id, recipe_json, identity, data_sha, teacher_sha, run_dir "
        "FROM ablate_trials WHERE data_sha IS NOT NULL AND recipe_json IS NOT NULL")).all()
    moved: dict[tuple[int, str], str | None] = {}
    for row in rows:
        recipe = json.loads(row.recipe_json)
        new_hash = hash_result(recipe)
        precision = _stored_precision(recipe, row.run_dir, gpus.get(row.sweep_id))
        reads_weights = bool((recipe.get("backbone") or {}).get("pretrained_path"))
        new_identity = (None if precision is None or reads_weights else
                        identity(new_hash, row.data_sha, row.teacher_sha, precision))
        conn.execute(sa.text(
            "UPDATE ablate_trials SET recipe_hash = :h, identity = :i, recipe_json = :r "
            "WHERE id = :id"), {"h": new_hash, "i": new_identity, "id": row.id,
                                "r": json.dumps(path_free(recipe), sort_keys=True)})
        if row.identity != new_identity:
            moved[(row.sweep_id, row.identity)] = new_identity
    for (sweep_id, old), new in moved.items():
        if new is not None:  # a checkpoint of an unknown identity stays, unused
            conn.execute(sa.text(
                "UPDATE ablate_checkpoints SET identity = :new "
                "WHERE sweep_id = :s AND identity = :old"), {"new": new, "s": sweep_id, "old": old})


def _sweep_gpus(settings_json: str | None) -> float | None:
    """GPUs per trial of a sweep, as its settings stored them (None: not stored)."""
    try:
        gpu = (json.loads(settings_json or "{}").get("resources") or {}).get("gpu")
        return float(gpu) if gpu is not None else None
    except (ValueError, TypeError, AttributeError):
        return None  # "auto" (packed by memory) or unreadable: not known


def _stored_precision(recipe: dict, run_dir: str | None, gpus: float | None) -> str | None:
    """What a stored trial computed in: its explicit precision, else its run.json's, else
    fp32 for a sweep whose trials had no GPU; None when nothing says."""
    word = (recipe.get("train") or {}).get("precision", "auto")
    if word != "auto":
        return str(word)
    try:
        info = json.loads((Path(run_dir) / RUN_INFO).read_text()) if run_dir else {}
        return str(info["speed"]["precision"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "fp32" if gpus == 0 else None


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5,
                                 5: _v5_to_v6}


def migrate(engine: sa.Engine, where: str) -> int:
    """Create missing tables or upgrade an older schema; return the schema version.

    `where` names the database in messages. AblateError when the database was
    written by a newer ablate.
    """
    with read_transaction(engine) as conn:
        if _stored_version(conn) == SCHEMA_VERSION:
            return SCHEMA_VERSION
    with write_transaction(engine) as conn:
        lock_schema(conn)
        version = _stored_version(conn)
        if version is None:
            metadata.create_all(conn)
            conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
        elif version > SCHEMA_VERSION:
            raise AblateError(
                f"results database {where} has schema version {version} (this ablate knows "
                f"{SCHEMA_VERSION}): it was written by a newer ablate; upgrade ablate"
            )
        elif version < SCHEMA_VERSION:
            _apply_migrations(conn, version)
    return SCHEMA_VERSION


def _apply_migrations(conn: sa.Connection, version: int) -> None:
    """Upgrade `version` -> SCHEMA_VERSION step by step, inside the caller's transaction."""
    for step in range(version, SCHEMA_VERSION):
        migration = MIGRATIONS.get(step)
        if migration is None:
            raise AblateError(
                f"results database has schema version {version} and this ablate has no "
                f"migration {step}->{step + 1}; open it with the ablate that wrote it"
            )
        migration(conn)
    conn.execute(schema_table.delete())
    conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))


def _stored_version(conn: sa.Connection) -> int | None:
    """The schema version recorded in the database, or None for a database without our tables."""
    if not sa.inspect(conn).has_table(schema_table.name):
        return None
    return conn.scalar(sa.select(sa.func.max(schema_table.c.version)))
