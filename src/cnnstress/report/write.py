"""Write the analysis: ``summary.md``, ``report.md`` and a self-contained ``report.html`` from the
section templates of ``report/templates/`` (HTML from Markdown by the markdown library, figures
embedded as data URIs), and ``summary.csv``, ``transitions.csv``, ``per_seed.csv``,
``stress.csv``."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import markdown
from jinja2 import Environment, PackageLoader, StrictUndefined
from markdown.extensions.toc import slugify

from cnnstress.analysis.compare import Analysis
from cnnstress.analysis.stress import StressSummary
from cnnstress.report import csv_files
from cnnstress.report.view import Figure, ReportView, Table

#: The sections of summary.md (no figures), with their titles there where they differ.
SUMMARY_SECTIONS = ("verdict", "warnings", "groups", "comparisons", "label_errors", "stress",
                    "background", "skipped", "methods")  # fmt: skip
SUMMARY_TITLES = {"groups": "Groups"}


def _environment(out: Path, for_html: bool) -> Environment:
    """The sections' templates; for the HTML page, text is HTML-escaped (names, paths and
    reasons come from run directories, which are untrusted) and figures are embedded."""
    env = Environment(loader=PackageLoader("cnnstress.report"), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)  # fmt: skip

    def text(value: object) -> str:
        one_line = " ".join(str(value).split()).replace("|", "\\|")
        return html.escape(one_line, quote=False) if for_html else one_line

    def table(t: Table) -> str:
        lines = [t.headers, *t.rows]
        rows = ["| " + " | ".join(text(cell) for cell in line) + " |" for line in lines]
        rows.insert(1, "|" + "---|" * len(t.headers))
        return "\n".join(rows)

    def bullets(items: Sequence[str]) -> str:
        return "\n".join(f"- {text(item)}" for item in items)

    def figure(f: Figure) -> str:
        source = f.filename
        if for_html:
            data = base64.b64encode((out / f.filename).read_bytes()).decode("ascii")
            source = f"data:image/png;base64,{data}"
        return f"![{text(f.caption)}]({source})\n\n*{text(f.caption)}*"

    env.filters.update(text=text, table=table, bullets=bullets, figure=figure)
    return env


def _document(env: Environment, title: str, intro: str, sections: list[tuple[str, str]],
              view: ReportView, contents: bool) -> str:  # fmt: skip
    """Markdown of a title, an intro paragraph, a table of contents and ``sections``."""
    macros = env.get_template("sections.md.j2").module
    text = env.filters["text"]
    parts = [f"# {title}", text(intro)]
    if contents:
        links = (f"- [{t}](#{slugify(t, '-')})" for _, t in sections)
        parts += ["## Contents", "\n".join(links)]
    parts += [str(getattr(macros, name)(view, t)) for name, t in sections]
    return re.sub(r"\n{3,}", "\n\n", "\n\n".join(p.strip() for p in parts)) + "\n"


def render(view: ReportView, out: Path) -> tuple[str, str, str]:
    """``(summary.md, report.md, report.html)`` of ``view``; figures are read from ``out``."""
    env = _environment(out, for_html=False)
    no_figures = replace(view, figures={name: [] for name in view.figures})
    summary = _document(
        env, "cnnstress summary", view.summary_intro,
        [(n, SUMMARY_TITLES.get(n, t)) for n, t in view.sections if n in SUMMARY_SECTIONS],
        no_figures, contents=False,
    )  # fmt: skip
    report = _document(env, "cnnstress analysis", view.intro, view.sections, view, True)
    body = markdown.markdown(
        _document(_environment(out, for_html=True), "cnnstress analysis", view.intro,
                  view.sections, view, True),
        extensions=["tables", "toc"],
        extension_configs={"toc": {"slugify": slugify}},
    )  # fmt: skip
    page = env.get_template("page.html.j2").render(title="cnnstress analysis", body=body)
    return summary, report, page


@dataclass
class ReportFiles:
    """Paths of the written files."""

    summary_md: Path
    summary_csv: Path
    transitions_csv: Path
    report_md: Path
    report_html: Path
    per_seed_csv: Path
    figures: dict[str, list[str]] = field(default_factory=dict)
    stress_csv: Path | None = None


def write_report(
    view: ReportView, analysis: Analysis, out_dir: str | Path, stress: StressSummary | None = None
) -> ReportFiles:
    """Write every text file of the analysis into ``out_dir`` (its figures must be there):
    ``view`` (:func:`~cnnstress.report.view.build_view`) as summary.md, report.md and
    report.html; the CSV files from ``analysis``, with ``stress`` also ``stress.csv``."""
    out = Path(out_dir)
    summary, report, page = render(view, out)
    (out / "summary.md").write_text(summary)
    (out / "report.md").write_text(report)
    (out / "report.html").write_text(page)
    return ReportFiles(
        summary_md=out / "summary.md",
        summary_csv=csv_files.write_summary(analysis, out / "summary.csv"),
        transitions_csv=csv_files.write_transitions(analysis, out / "transitions.csv"),
        report_md=out / "report.md",
        report_html=out / "report.html",
        figures={name: [f.filename for f in shown] for name, shown in view.figures.items()},
        per_seed_csv=csv_files.write_seed_table(analysis, out / "per_seed.csv"),
        stress_csv=None
        if stress is None
        else csv_files.write_stress(analysis, stress, out / "stress.csv"),
    )
