"""`build_report`: read one sweep from the results DB, compute every table, write every format.

Reads the database only (never a run folder), so a report can be rebuilt at any
time, on any machine that can open the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.paths import REPORTS_DIR
from ablate.provenance import is_part
from ablate.report import EVALUATORS, FORMATS, tables
from ablate.report import ablation as abl_mod
from ablate.report import external as ext_mod
from ablate.report import guidance as guidance_mod
from ablate.report import headline as headline_mod
from ablate.report import paired as paired_mod
from ablate.report import structure as structure_mod
from ablate.report.data import SweepData, load_sweep
from ablate.report.display import Table, number
from ablate.report.explained import explain_section
from ablate.report.importance import Importance, param_importance
from ablate.report.protocols import (
    column_protocols,
    display_names,
    protocol_line,
    selection_rule,
    strict_check,
    strict_external,
)
from ablate.report.provenance import provenance_note
from ablate.report.ranks import RankComparison, rank_comparison, rank_tables
from ablate.report.reference import Reference, choose_reference
from ablate.report.render import (
    Document,
    Section,
    markdown_table,
    to_html,
    to_markdown,
    write_csvs,
    write_latex,
    write_text,
)
from ablate.report.stats import DEFAULT_EFFECT
from ablate.report.versions import version_counts, versions_line
from ablate.results import ResultsDB, default_url, require_existing_db


@dataclass
class Report:
    """What was written, and the main table as Markdown (the CLI prints it)."""

    sweep: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    main_markdown: str = ""
    notes: list[str] = field(default_factory=list)
    summary: str = ""  # the generated paragraph at the top of the report
    first_markdown: str = ""  # baseline vs + guidance and its paired difference, as Markdown


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """'md,html' or ['md', 'html'] -> ('md', 'html'); AblateError naming an unknown format."""
    if formats is None:
        return FORMATS
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in items if f.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise AblateError(f"unknown report format {', '.join(unknown) or '(none)'}; "
                          f"choose from {','.join(FORMATS)}")
    return chosen


def default_folder(sweep: str) -> Path:
    return REPORTS_DIR / re.sub(r"[^\w.\-]+", "_", sweep)


def prepare_folder(folder: Path) -> Path:
    """Create the folder and prove it is writable before any work is done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".ablate-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise AblateError(f"cannot write the report to {folder}: {reason}; choose another "
                          "--out") from None
    return folder


def build_report(sweep: str | Sequence[str] | None = None, db_url: str | None = None,
                 out: str | Path | None = None, formats: str | Iterable[str] | None = None,
                 importance: str = "fanova", effect: float | None = None,
                 external: Sequence[str] = (), strict_protocol: bool = False,
                 names: Mapping[str, str] | None = None,
                 explained: str | Path | None = None) -> Report:
    """Write the report of `sweep` (default: the newest; several names: one report of their
    runs, refused where they may not be paired) into `out` in the given formats.

    `effect`: the difference (metric units; 0.01 = 1 AUC point) whose needed seeds every
    comparison quotes (None: `stats.DEFAULT_EFFECT`). `external`: published-row files or
    shipped names, shown apart and never in a statistic. `strict_protocol`: refuse runs
    whose training and test presets mix where a published protocol fixes them. `names`:
    test set -> column header (over the data configs' `display_name`). `explained`: a folder
    `ablate explain` wrote, shown as the section "What the teacher rebuilds".
    """
    effect = DEFAULT_EFFECT if effect is None else effect
    chosen = parse_formats(formats)
    if importance not in EVALUATORS:
        raise AblateError(f"unknown importance evaluator {importance!r}; choose from "
                          f"{', '.join(EVALUATORS)}")
    require_existing_db(db_url or default_url())
    with ResultsDB(db_url) as db:
        data = load_sweep(db, sweep or _newest_search(db))
        confirmation = _confirmation(db, data) if len(data.sweeps) == 1 else None
    verdict, search = (confirmation, data) if confirmation is not None else (data, None)
    unknown = sorted(set(names or {}) - set(verdict.tests))
    if unknown:
        raise AblateError(f"--name {unknown[0]}=...: no test set {unknown[0]!r} in this report; "
                          f"its test sets: {', '.join(verdict.tests) or 'none'}")
    for d in (verdict, search):
        if d is not None:
            d.names = display_names(d.metrics, d.tests, names)
    published = ext_mod.load_external(list(external), verdict.tests, verdict.names)
    if strict_protocol:
        strict_check(verdict.metrics, verdict.counted)
        strict_external(published, verdict.metrics)
    if explained is not None and not (Path(explained) / "disagreement.csv").is_file():
        explain_section(explained, Path(out or "."))  # its one-line error, before any write
    folder = prepare_folder(Path(out) if out else default_folder(data.name))
    try:
        return _write(verdict, folder, chosen, importance, effect, search, published,
                      explained)
    except OSError as exc:
        raise AblateError(f"cannot write the report to {folder}: "
                          f"{exc.strerror or exc}; choose another --out") from None


def _newest_search(db: ResultsDB) -> str | None:
    """The newest sweep, or the search it confirms when that is a confirmation (None: no
    sweep at all, which load_sweep turns into its one-line error)."""
    import json

    sweeps = db.list_sweeps()
    if sweeps.empty:
        return None
    newest = sweeps.sort_values(["created", "id"]).iloc[-1]
    settings = json.loads(newest["settings_json"]) if newest.get("settings_json") else {}
    return str(settings.get("confirms") or newest["name"])


def _confirmation(db: ResultsDB, search: SweepData) -> SweepData | None:
    """The confirmation sweep of a search (`confirm:` in its space), once it has results;
    a sweep of that name that confirms another search is not it."""
    name = search.settings.get("confirmation")
    if not name or db.sweep_id(str(name)) is None:
        return None
    try:
        found = load_sweep(db, str(name))
    except AblateError:  # no counted result yet: the search's own numbers, labelled
        return None
    if found.settings.get("confirms") != search.name or found.counted.empty:
        return None
    return found


def _unconfirmed_note(doc: Document, search: SweepData) -> None:
    """A search whose space asked for a confirmation that has no results yet."""
    name = search.settings.get("confirmation")
    doc.meta.insert(1, ("confirmation", f"{name}: not run yet, or no finished run; every "
                        "number below is the search's own (selected-on, biased upward for "
                        "its winners). Resume the search to run it: ablate sweep --space "
                        f"{search.info.get('space')} --name {search.name} --resume"))


def _write(data: SweepData, folder: Path, formats: tuple[str, ...], evaluator: str,
           effect: float = DEFAULT_EFFECT, search: SweepData | None = None,
           published: list[ext_mod.ExternalRow] | None = None,
           explained: str | Path | None = None) -> Report:
    """`data`: the sweep whose runs give the verdicts; `search`: with a confirmation, the
    search that chose those recipes (its numbers are shown, labelled as selected-on);
    `published`: rows reported elsewhere, added to display tables only (after every
    statistic is computed)."""
    published = published or []
    summ = tables.summary(data)
    ref = choose_reference(data)
    main = tables.main_table(summ, data, ref.label)
    ext_mod.add_to_table(main, published, tables.main_columns(summ, data),
                         ext_mod.whole_sets(data.tests))
    seed_vals = tables.seed_values(data)
    pairs = abl_mod.pair_differences(data, seed_vals, ref)
    abl = abl_mod.ablation(pairs, effect)
    guided_pairs = guidance_mod.guidance_pairs(data, seed_vals)
    effects = abl_mod.ablation(guided_pairs, effect)  # mean and CI over seeds per guided recipe
    imp = param_importance(search or data, evaluator)
    pair = headline_mod.choose_pair(data, ref)
    matched = abl_mod.matched_comparisons(pairs, ref)
    scores = paired_mod.comparison_scores(data, ([("headline", *pair)] if pair else []) + matched)
    two_stage = (paired_mod.two_stage_difference(scores, *pair, data.tests) if pair else {})
    head = headline_mod.headline(data, seed_vals, ref, effect, two_stage)
    comparisons = ([("guidance: " + head.guided_label + " vs " + head.baseline_label,
                     head.guided, head.baseline)] if head else [])
    tests_table = paired_mod.paired_tests(data, comparisons + matched, scores)
    summary = headline_mod.summary_paragraph(head, abl, imp.table, imp.evaluator)
    first = ([headline_mod.first_table(head, data.tests, data.names),
              headline_mod.difference_table(head, data.tests, data.names)] if head else [])
    front = tables.pareto(data)
    ranked = _ranks(seed_vals, ref)
    counts, errs = tables.status_counts(data), tables.errors(data)
    images = _plots(data, summ, abl, imp, front, ref, folder) if {"md", "html"} & set(formats) \
        else {}
    if images and ranked is not None:
        # lazy: loads matplotlib only when called
        from ablate.report.cd_plot import cd_diagram

        images["cd_diagram"] = cd_diagram(ranked.friedman.mean_ranks, ranked.cd, folder)
    how = provenance_note(data.metrics)  # EER convention, bootstrap unit, ... of every cell
    columns = column_protocols(data.metrics, data.tests, data.names)
    selection = selection_rule(data.counted)
    line = protocol_line(columns, selection)  # frames, videos, crops, lists per test column
    for table in [main, *first[:1]]:
        table.note = f"{table.note} {how}".strip()
    for table in [main, *first]:
        table.note = f"{table.note} {line}".strip()
    doc = _document(data, main, ref, abl, effects, imp, front, counts, errs, images,
                    summary, first, tests_table, how)
    doc.meta.append(("checkpoints", selection))
    if published:
        _add_published(doc, published, data.names)
    if ranked is not None:
        _add_ranks(doc, ranked, images)
    if search is not None:
        _add_search_stage(doc, data, search)
    elif data.settings.get("confirmation"):
        _unconfirmed_note(doc, data)
    structure = _add_structure(doc, data, search, summ,
                               folder if {"md", "html"} & set(formats) else None)
    images.update(structure.images)
    if explained is not None:
        section = explain_section(explained, folder)
        doc.sections.append(section)
        images.update({f"explain {p.name}": p for p in section.images})
    report = Report(search.name if search is not None else data.name, folder, main_markdown=markdown_table(main), summary=summary,
                    first_markdown="\n\n".join(f"{t.title}\n\n{markdown_table(t)}"
                                                   for t in first))
    report.files += [p for p in images.values() if p is not None]
    if "md" in formats:
        report.files.append(write_text(folder, "report.md", to_markdown(doc)))
    if "html" in formats:
        report.files.append(write_text(folder, "report.html", to_html(doc)))
    if "tex" in formats:
        report.files += write_latex(folder, _latex_tables(doc))
    if "csv" in formats:
        report.files += write_csvs(folder, {
            "main": summ, "baseline_vs_guidance": head.numbers if head else pd.DataFrame(
                columns=headline_mod.COLUMNS),
            "guidance": effects, "guidance_pairs": guided_pairs, "paired_tests": tests_table,
            "ablation": abl, "ablation_pairs": pairs, "importance": imp.table,
            "pareto": front, "status": counts, "errors": errs, "trials": trial_table(data),
            "ranks": ranked.holm if ranked is not None else pd.DataFrame(),
            "code_versions": version_counts(data.counted), "protocols": columns,
            **structure.frames,
            **({"external": ext_mod.external_frame(published)} if published else {})})
    return report


def _add_published(doc: Document, published: list[ext_mod.ExternalRow],
                   names: dict[str, str]) -> None:
    """The published rows with every number they give, after the cross-dataset table."""
    at = next((i + 1 for i, s in enumerate(doc.sections) if s.title == "Cross-dataset results"),
              len(doc.sections))
    doc.sections.insert(at, Section("Published results (reported, not measured)", tables=[
        ext_mod.published_table(published, names)], text=[
        "Numbers as their sources report them, under their own protocols (below each table; "
        "compare with this report's protocol line before reading one against the other). "
        "They are shown apart and enter no mean, interval, bold, rank, paired test or plot."]))


def _ranks(seed_vals: pd.DataFrame, ref: Reference) -> RankComparison | None:
    """Recipes ranked within each test set by frame AUC (3+ recipes on 3+ test sets)."""
    v = seed_vals[(seed_vals["level"] == "frame") & (seed_vals["metric"] == "auc")
                  & (seed_vals["dataset"] != tables.AVG)
                  & ~seed_vals["dataset"].map(is_part).astype(bool)]  # blocks: whole sets
    return rank_comparison(v[["label", "seed", "dataset", "value"]], ref.label)


def _add_structure(doc: Document, data: SweepData, search: SweepData | None,
                   summ: pd.DataFrame, folder: Path | None) -> structure_mod.Structure:
    """The section "Structure search", after "Parameter importance": slices and parallel
    coordinates of the search's trials, and the AUC-vs-cost front of its confirmation runs
    (`data` when `search` is given; `summ`: its summary, the main table's numbers)."""
    found = structure_mod.structure_section(search or data, data if search is not None
                                            else None, folder, summ if search is not None
                                            else None)
    if found.section is not None:
        at = next((i + 1 for i, s in enumerate(doc.sections)
                   if s.title == "Parameter importance"), len(doc.sections))
        doc.sections.insert(at, found.section)
    return found


def _add_ranks(doc: Document, ranked: RankComparison, images: dict[str, Path | None]) -> None:
    """The rank comparison, after the ablation (where a reader asks "does it hold on every
    test set?")."""
    at = next((i + 1 for i, s in enumerate(doc.sections) if s.title == "Ablation by slot"),
              len(doc.sections))
    doc.sections.insert(at, Section("Ranks across test sets", tables=rank_tables(ranked),
                                    images=_images(images, "cd_diagram"), text=[
        "Does a recipe win on every test set, or on one by a lot? The recipes are ranked "
        "within each test set; the diagram joins recipes whose mean ranks are closer than "
        "the Nemenyi critical difference (CD)."]))


def _add_search_stage(doc: Document, confirmation: SweepData, search: SweepData) -> None:
    """Name the confirmation in the header, and show the search's own numbers after the
    verdicts, labelled as numbers of the runs that chose the winners."""
    seeds = sorted({int(s) for s in confirmation.counted["seed"]})
    doc.title = f"Sweep report: {search.name} (verdicts from its confirmation runs)"
    status = str(confirmation.info.get("status"))
    doc.meta.insert(1, ("confirmation", f"{confirmation.name} ({status}): the "
                        f"{confirmation.counted['config'].nunique()} best recipes of the search "
                        f"by source-val AUC, retrained on fresh seeds {', '.join(map(str, seeds))}"
                        + ("" if status == "finished" else "; not finished: resume the search "
                           "to complete it")))
    table = tables.main_table(tables.summary(search), search)
    table.note = (f"{table.note} " + protocol_line(
        column_protocols(search.metrics, search.tests, search.names),
        selection_rule(search.counted))).strip()
    table.title = "Search stage: the runs that chose the winners (selected-on, biased upward)"
    table.slug = "search_stage"
    at = next((i for i, s in enumerate(doc.sections) if s.title == "Parameter importance"),
              len(doc.sections))
    doc.sections.insert(at, Section("Search stage (selected-on numbers)", tables=[table], text=[
        f"Every table above comes from the confirmation sweep {confirmation.name}: the "
        "search's best recipes retrained on seeds the search never used. The numbers below "
        f"are the search's own ({search.name}): they chose the winners, so the winners' "
        "numbers here carry the luck that made them win (the winner's curse) and are "
        "biased upward. They are kept for the record, not for a verdict."]))


def _plots(data: SweepData, summ: pd.DataFrame, abl: pd.DataFrame, imp: Importance,
           front: pd.DataFrame | None, ref: Reference, folder: Path) -> dict[str, Path | None]:
    # lazy: loads matplotlib only when called
    from ablate.report import plots  # matplotlib only when a format shows figures

    order = tables.recipe_order(summ, data)
    out = {
        "heatmap": plots.auc_heatmap(summ, order, data.tests, folder, data.names),
        "ablation": plots.ablation_plot(abl, folder),
        "importance": plots.importance_plot(imp.table, imp.evaluator, folder),
        "curves": plots.curves_plot(data.curves, list(dict.fromkeys([*order[:3], ref.label])),
                                    folder),
    }
    if front is not None:
        out["pareto"] = plots.pareto_plot(front, [str(o["metric"]) for o in data.objectives],
                                          tables.maximized(data.objectives), folder)
    return out


def _images(images: dict[str, Path | None], *keys: str) -> list[Path]:
    return [images[k] for k in keys if images.get(k) is not None]


def _document(data: SweepData, main: Table, ref: Reference, abl: pd.DataFrame,
              effects: pd.DataFrame, imp: Importance, front: pd.DataFrame | None,
              counts: pd.DataFrame, errs: pd.DataFrame,
              images: dict[str, Path | None], summary: str, first: list[Table],
              tests_table: pd.DataFrame, how: str = "") -> Document:
    objectives = ", ".join(f"{o.get('metric')} ({o.get('mode')})" for o in data.objectives)
    meta = [("sweep", data.name), ("space", str(data.info.get("space") or "-")),
            ("status", str(data.info.get("status"))), ("created", str(data.info.get("created"))),
            ("code versions", versions_line(version_counts(data.counted))),
            ("database", data.db_url), ("objectives", objectives or "-"),
            ("sampler", imp.sampler or "unknown"),
            ("results", f"{len(data.counted)} trials (finished or reused) of "
                        f"{data.counted['config'].nunique()} recipes; test sets: "
                        f"{', '.join(data.names.get(t, t) for t in data.tests) or 'none'}"),
            ("reference", f"{ref.label} ({ref.how})"),
            ("metrics", how.removeprefix("Metric provenance: ") or "-")]
    sections = [
        Section("Summary", text=[summary, "Generated from the tables below; every number in "
                                 "it is one of their cells."]),
        *([Section("Does guidance help? Baseline vs + guidance", tables=first, text=[
            "The guided recipe against the plain detector of the same setup (guide=none: "
            "encoder + head, CE only), on the same seeds and test sets."])] if first else []),
        Section("Cross-dataset results", tables=[main], images=_images(images, "heatmap"),
                text=["Trained on the source domain, tested on each test set; checkpoints and "
                      "thresholds chosen on the source validation split, never on a test set."]),
        *_guidance_section(effects),
        _ablation_section(abl, ref, images),
        _paired_section(tests_table, data.names),
        Section("Parameter importance", text=imp.notes, tables=[_importance_table(imp)],
                images=_images(images, "importance")),
    ]
    if front is not None:
        names = [str(o["metric"]) for o in data.objectives]
        if front[names].notna().all(axis=1).any():
            sections.append(Section("Pareto front", tables=[
                tables.pareto_table(front, data.objectives)], images=_images(images, "pareto"),
                text=["The recipes no other recipe beats on both objectives; the plot shows "
                      "every recipe, the front in red."]))
        else:
            sections.append(Section("Pareto front", text=[
                f"No recipe has both objectives ({', '.join(names)}) recorded; no front."]))
    sections.append(Section("Training curves", images=_images(images, "curves"),
                            text=[] if images.get("curves") or not images
                            else ["No training curves were recorded."]))
    status, error = tables.status_table(counts, errs)
    sections.append(Section("Trial status", tables=[status, error]))
    sections.append(Section("How to read this report", text=[
        "Each cell is the mean over seeds with half the width of its 95% confidence interval "
        "(Student t over seeds; one seed: the run's own bootstrap over videos or identities, "
        "see the metrics line above). The training run is the unit: a difference is paired "
        "by seed, averaged over the test sets within each seed, and its Student-t 95% CI is "
        "over those seed means (test sets are conditions, not replicates); MDE is the "
        "difference its seeds detect with 80% power. See docs/report.md, \"How every "
        "interval is made\", for the procedures and their coverage in simulation."]))
    return Document(f"Sweep report: {data.name}", meta, sections)


def _guidance_section(effects: pd.DataFrame) -> list[Section]:
    """'Does guidance help?' when the sweep holds a matched plain baseline (guide=none)."""
    if effects.empty:
        return []
    return [Section("Every guided recipe against its baseline",
                    bullets=guidance_mod.sentences(effects),
                    tables=[guidance_mod.guidance_table(effects)],
                    text=["Each guided recipe against the plain detector of the same setup "
                          "(guide=none: encoder + head, CE only), on matched seeds and test "
                          "sets."])]


def _ablation_section(abl: pd.DataFrame, ref: Reference,
                      images: dict[str, Path | None]) -> Section:
    text = [f"Reference recipe: {ref.label} ({ref.how})."]
    if abl.empty:
        text.append("Nothing to ablate: no slot varies between the finished recipes.")
        return Section("Ablation by slot", text=text)
    return Section("Ablation by slot", text=text, bullets=abl_mod.sentences(abl),
                   tables=[abl_mod.ablation_table(abl, ref)], images=_images(images, "ablation"))


def _paired_section(t: pd.DataFrame, names: dict[str, str] | None = None) -> Section:
    title = "Paired tests on the same test frames (test-sample variance only)"
    if t.empty:
        return Section(title, text=["No matched comparison has per-frame scores readable "
                                    "here (scores.csv in the run folders), so no p-values."])
    wide = t.pivot_table(index=["comparison", "dataset"], columns="test",
                         values=["p", "p_holm"], aggfunc="first", sort=False)
    first = t.drop_duplicates(["comparison", "dataset"]).set_index(["comparison", "dataset"])
    rows, bold = [], []
    for (comparison, dataset), r in first.iterrows():
        cells = [str(comparison), (names or {}).get(str(dataset), str(dataset)),
                 str(int(r["seeds"])),
                 f"{r['diff'] * 100:+.2f}"]
        marks = [False] * 4
        for test in paired_mod.TESTS:
            p, adj = wide.loc[(comparison, dataset), ("p", test)], wide.loc[
                (comparison, dataset), ("p_holm", test)]
            cells.append("-" if pd.isna(p) else f"{p:.3g} ({adj:.3g})")
            marks.append(bool(pd.notna(adj) and adj < 0.05))
        rows.append(cells)
        bold.append(marks)
    table = Table(title, ["Comparison", "Test set", "Seeds", "ΔAUC (pts)",
                          f"{paired_mod.TESTS[0]} p (Holm)", f"{paired_mod.TESTS[1]} p (Holm)"],
                  rows, bold, align="llrrrr", slug="paired_tests",
                  note="ΔAUC: mean frame AUC over the seeds both have, A − B, on the frames both "
                       "scored. DeLong treats frames as independent (optimistic with many "
                       "frames per video); the paired video bootstrap resamples videos. Both "
                       "measure test-set sampling given the trained models, so neither is a "
                       "verdict on a recipe: training randomness is in the intervals over "
                       "seeds above. In brackets: Holm-"
                       "adjusted over every row of the column; bold: adjusted p < 0.05.")
    return Section(title, tables=[table])


def _importance_table(imp: Importance) -> Table:
    rows = [[r["objective"], r["param"], number(r["importance"])] for _, r in imp.table.iterrows()]
    return Table(f"Importance ({imp.evaluator}, {imp.n_trials} completed Optuna trials)",
                 ["Objective", "Param", "Importance"], rows, align="llr", slug="importance")


def _latex_tables(doc: Document) -> dict[str, Table]:
    out = {}
    for section in doc.sections:
        for table in section.tables:
            slug = table.slug or re.sub(r"[^a-z0-9]+", "_", table.title.lower()).strip("_")
            out[slug] = table
    return out


def trial_table(data: SweepData) -> pd.DataFrame:
    """One row per trial of the sweep (every status), with its recipe label and mean test AUC."""
    m = data.metrics
    test_auc = (m[(m["split"] == "test") & (m["level"] == "frame") & (m["metric"] == "auc")]
                .groupby("trial_id")["value"].mean())
    t = data.trials
    out = t[["id", "tune_trial_id", "label", "seed", "status", "recipe_hash", "reused_from",
             "wall_s", "train_steps", "params_trainable", "params_inference", "peak_mem_mb",
             "estimated_mem_mb", "step_time_s", "train_gflops", "latency_ms", "error",
             "run_dir"]].copy()
    out.insert(5, "test_auc_mean", out["id"].map(test_auc))
    out["counted"] = out["id"].isin(data.counted["id"])
    out["code_version"] = t["result_version"]  # the code that computed this row's numbers
    out["recipe"] = t["config"]
    return out
