"""Writers: one `Document` (sections of text, tables and images) -> Markdown, HTML, LaTeX, CSV.

The HTML page embeds its images as base64 data URIs, so it still works when
moved or mailed; the Markdown file links the PNGs next to it (for a README or
a paper's supplement); LaTeX gets one booktabs `table` per file, for `\\input`.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ablate.report.display import Table


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs
    bullets: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


@dataclass
class Document:
    title: str
    meta: list[tuple[str, str]]
    sections: list[Section]


# ---------------------------------------------------------------- Markdown


def _md_cell(text: str, bold: bool, apart: bool = False) -> str:
    """A cell; a row apart (reported, not measured) is in italics, never bold."""
    text = text.replace("|", "\\|")
    if apart:
        return f"*{text}*" if text not in ("", "-") else text
    return f"**{text}**" if bold and text not in ("", "-") else text


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table (bold = best), with its note below."""
    rule = ["---" if a == "l" else "--:" for a in table.align]
    lines = ["| " + " | ".join(_md_cell(c, False) for c in table.columns) + " |",
             "| " + " | ".join(rule) + " |"]
    for row, marks, apart in zip(table.rows, table.bold, table.apart, strict=True):
        lines.append("| " + " | ".join(_md_cell(c, b, apart)
                                       for c, b in zip(row, marks, strict=True)) + " |")
    if table.note:
        lines += ["", f"*{table.note}*"]
    return "\n".join(lines)


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    out += [f"- **{k}**: {v}" for k, v in doc.meta] + [""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        if s.bullets:
            out += [f"- {b}" for b in s.bullets] + [""]
        for t in s.tables:
            if t.empty:
                continue
            out += [f"**{t.title}**", "", markdown_table(t), ""]
        for img in s.images:
            out += [f"![{img.stem}]({img.name})", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 .3em;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em}th{background:#f4f4f4;text-align:left}
td.r,th.r{text-align:right}td.r{white-space:nowrap}td.b{font-weight:700}
p.note{font-size:.85em;color:#555;margin-top:0}img{max-width:100%;margin:.5em 0}
tr.apart td{color:#888;font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{font-weight:600}
"""


def html_table(table: Table) -> str:
    head = "".join(f'<th class="{a}">{html.escape(c)}</th>'
                   for c, a in zip(table.columns, table.align, strict=True))
    body = []
    for row, marks, apart in zip(table.rows, table.bold, table.apart, strict=True):
        cells = "".join(
            f'<td class="{a}{" b" if b and not apart else ""}">{html.escape(c)}</td>'
            for c, b, a in zip(row, marks, table.align, strict=True))
        body.append(f'<tr class="apart">{cells}</tr>' if apart else f"<tr>{cells}</tr>")
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{note}")


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(doc: Document) -> str:
    """One self-contained page: CSS inline, images as data URIs, nothing fetched."""
    meta = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in doc.meta)
    parts = [f"<h1>{html.escape(doc.title)}</h1><dl>{meta}</dl>"]
    for s in doc.sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.text]
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in s.bullets)
                         + "</ul>")
        parts += [html_table(t) for t in s.tables if not t.empty]
        parts += [f'<img alt="{html.escape(img.stem)}" src="{data_uri(img)}">'
                  for img in s.images]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------- LaTeX

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$", "×": r"$\times$",
                "≥": r"$\geq$", "†": r"\textsuperscript{\dag}"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))


def tex_escape(text: str) -> str:
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group()], text)


def latex_table(table: Table, label: str) -> str:
    """A booktabs `table` (needs \\usepackage{booktabs}); best cells in \\textbf; rows
    apart (reported, not measured) in \\textcolor{gray} (needs \\usepackage{xcolor})."""
    def cell(text: str, bold: bool, apart: bool = False) -> str:
        t = tex_escape(text)
        if apart:
            return rf"\textcolor{{gray}}{{{t}}}" if text else t
        return rf"\textbf{{{t}}}" if bold and text not in ("", "-") else t

    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(table.title)}. {tex_escape(table.note)}}}",
             rf"\label{{tab:{label}}}", rf"\begin{{tabular}}{{{table.align}}}", r"\toprule",
             " & ".join(cell(c, False) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c, b, apart) for c, b in zip(row, marks, strict=True)) + r" \\"
              for row, marks, apart in zip(table.rows, table.bold, table.apart, strict=True)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files


def write_text(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def write_csvs(folder: Path, frames: dict[str, pd.DataFrame]) -> list[Path]:
    paths = []
    for name, frame in frames.items():
        if frame is None:
            continue
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def write_latex(folder: Path, tables: dict[str, Table]) -> list[Path]:
    return [write_text(folder, f"{slug}.tex", latex_table(t, slug))
            for slug, t in tables.items() if not t.empty]
