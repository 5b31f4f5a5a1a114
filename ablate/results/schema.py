"""The results database's tables, the schema version, and the names rows are checked against.

Tables are prefixed `ablate_` because Optuna's RDB storage lives in the same
database (`optuna_storage_url`) and owns `studies`, `trials`, ...

These are the live (newest) tables: a new database gets them from
`metadata.create_all`, an older one is brought to the same shape by the steps
in `migrations` (whose docstring says what each version added). To change
them, bump SCHEMA_VERSION and add that step.
"""

from __future__ import annotations

import sqlalchemy as sa

from ablate.core.names import METRIC_PROVENANCE

SCHEMA_VERSION = 6

SWEEP_STATUSES = ("running", "finished", "interrupted", "failed")
TRIAL_STATUSES = ("finished", "pruned", "failed", "nan", "reused", "running")
LEVELS = ("frame", "video")
METRIC_KEYS = ("dataset", "split", "level", "metric", "value", "ci_low", "ci_high", "n",
               *METRIC_PROVENANCE)
SWEEP_ROW_KEYS = ("id", "tune_trial_id", "identity", "recipe_hash", "seed", "status", "started",
                  "ended", "train_steps", "reused_from", "code_version", "run_dir")

metadata = sa.MetaData()

schema_table = sa.Table(
    "ablate_schema", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

sweeps = sa.Table(
    "ablate_sweeps", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("space", sa.Text),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("code_version", sa.Text),
    sa.Column("settings_json", sa.Text),
    # v2: where the driver runs and when it last said so, and why the sweep failed
    sa.Column("host", sa.String),
    sa.Column("pid", sa.Integer),
    sa.Column("heartbeat", sa.DateTime),
    sa.Column("error", sa.Text),
)

trials = sa.Table(
    "ablate_trials", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("ablate_sweeps.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("tune_trial_id", sa.String, nullable=False),
    sa.Column("recipe_hash", sa.String, nullable=False),
    sa.Column("recipe_json", sa.Text),
    sa.Column("seed", sa.Integer),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("started", sa.DateTime),
    sa.Column("ended", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.Column("wall_s", sa.Float),
    sa.Column("train_steps", sa.Integer),
    sa.Column("params_trainable", sa.BigInteger),
    sa.Column("params_inference", sa.BigInteger),
    sa.Column("peak_mem_mb", sa.Float),
    sa.Column("step_time_s", sa.Float),
    sa.Column("reused_from", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="SET NULL")),
    sa.Column("run_dir", sa.Text),
    # v2: the reuse key (recipe hash + data content + teacher content) and its parts
    sa.Column("identity", sa.String),
    sa.Column("data_sha", sa.String),
    sa.Column("teacher_sha", sa.String),
    sa.Column("code_version", sa.Text),
    # v4: the memory preflight's estimate of the training step (fake tensors), beside the
    # measured peak_mem_mb; NULL when the sweep ran no preflight or never estimated the recipe
    sa.Column("estimated_mem_mb", sa.Float),
    # v6: a structure search's costs (ablate/bench/cost.py): FLOPs of a training step counted
    # on fake tensors, and the classifier's measured latency at batch 1; NULL = not measured
    sa.Column("train_gflops", sa.Float),
    sa.Column("latency_ms", sa.Float),
    sa.UniqueConstraint("sweep_id", "tune_trial_id", name="uq_ablate_trials_tune_trial"),
    sa.Index("ix_ablate_trials_identity", "recipe_hash", "seed"),  # v1 name, on recipe_hash
    sa.Index("ix_ablate_trials_sweep", "sweep_id"),
    sa.Index("ix_ablate_trials_reuse", "identity", "seed"),
)

metrics_table = sa.Table(
    "ablate_metrics", metadata,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("dataset", sa.String, nullable=False),
    sa.Column("split", sa.String, nullable=False),
    sa.Column("level", sa.String, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("ci_low", sa.Float),
    sa.Column("ci_high", sa.Float),
    sa.Column("n", sa.Integer),
    # v3: how the row was computed (METRIC_PROVENANCE)
    sa.Column("aggregation", sa.String),
    sa.Column("threshold", sa.Float),
    sa.Column("threshold_from", sa.String),
    sa.Column("n_boot", sa.Integer),
    sa.Column("boot_seed", sa.Integer),
    sa.Column("boot_unit", sa.String),
    sa.Column("eer_convention", sa.String),
    sa.Column("manifest_sha", sa.String),
    # v5: the protocol behind the number (JSON; ablate/data/protocol.py); NULL = unknown
    sa.Column("protocol", sa.Text),
    sa.PrimaryKeyConstraint("trial_id", "dataset", "split", "level", "metric",
                            name="pk_ablate_metrics"),
)

curves_table = sa.Table(
    "ablate_curves", metadata,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("value", sa.Float),
    sa.PrimaryKeyConstraint("trial_id", "name", "step", name="pk_ablate_curves"),
)

checkpoints_table = sa.Table(
    "ablate_checkpoints", metadata,
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("ablate_sweeps.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("identity", sa.String, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("sweep_id", "identity", "seed", name="pk_ablate_checkpoints"),
)
