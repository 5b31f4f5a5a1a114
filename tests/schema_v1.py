"""Schema version 1 of the results database, frozen as it shipped (tests build v1 files with it).

Never edit this to follow ablate/results/schema.py: it is the old shape that
MIGRATIONS must keep upgrading.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_table = sa.Table("ablate_schema", metadata, sa.Column("version", sa.Integer, nullable=False))

sweeps = sa.Table(
    "ablate_sweeps", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("space", sa.Text),
    sa.Column("created", sa.DateTime, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("code_version", sa.Text),
    sa.Column("settings_json", sa.Text),
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
    sa.UniqueConstraint("sweep_id", "tune_trial_id", name="uq_ablate_trials_tune_trial"),
    sa.Index("ix_ablate_trials_identity", "recipe_hash", "seed"),
    sa.Index("ix_ablate_trials_sweep", "sweep_id"),
)

metrics = sa.Table(
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
    sa.PrimaryKeyConstraint("trial_id", "dataset", "split", "level", "metric",
                            name="pk_ablate_metrics"),
)

curves = sa.Table(
    "ablate_curves", metadata,
    sa.Column("trial_id", sa.Integer, sa.ForeignKey("ablate_trials.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("value", sa.Float),
    sa.PrimaryKeyConstraint("trial_id", "name", "step", name="pk_ablate_curves"),
)
