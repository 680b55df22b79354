"""Output formats of a `MatrixResult`: a table, Markdown, JSON and JUnit XML.

Every format starts from the same verdict: `CONFORMS` (exit status 0),
`DOES NOT CONFORM` (1) or `INCOMPLETE` (2: a backend failed to run, or no
case ran). kpe's cases decide it; Keras's own policies are the comparison
and decide it only with `fail_on_keras`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from keras_policy_ext.cli.matrix import MatrixResult

VERDICTS = {0: "CONFORMS", 1: "DOES NOT CONFORM", 2: "INCOMPLETE"}
SOURCES = ("kpe", "keras")


def _status(case: dict) -> str:
    """`findings`, `refused` or `ok`."""
    if case["findings"]:
        return "findings"
    return "refused" if case.get("refused") else "ok"


def _cell(case: dict) -> str:
    """One layer x policy x backend x source: its findings in a few words, or its state."""
    if case.get("refused") and not case["findings"]:
        return "refused"
    return ", ".join(dict.fromkeys(f["short"] for f in case["findings"])) or "ok"


def _counts(result: MatrixResult, source: str) -> str:
    """`N with findings, M refused (jax: N with findings, M refused; ...)` for one source."""
    per_backend = []
    totals = {"findings": 0, "refused": 0}
    for backend, r in result.backends.items():
        cases = [c for c in r.get("cases", ()) if c["source"] == source]
        if not cases:
            continue
        statuses = [_status(c) for c in cases]
        counts = {"findings": statuses.count("findings"), "refused": statuses.count("refused")}
        totals["findings"] += counts["findings"]
        totals["refused"] += counts["refused"]
        per_backend.append(f"{backend}: {_in_words(counts)}")
    return f"{_in_words(totals)} ({'; '.join(per_backend)})"


def _in_words(counts: dict[str, int]) -> str:
    text = f"{counts['findings']} with findings"
    return text + (f", {counts['refused']} refused" if counts["refused"] else "")


def summary(result: MatrixResult, fail_on_keras: bool = False) -> str:
    """The verdict, then findings per source and backend, notes, skipped and failed backends.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> case = {"layer": "Dense", "policy": "float32", "source": "kpe", "findings": []}
    >>> print(summary(MatrixResult({"jax": {"cases": [case]},
    ...                             "torch": {"skipped": "torch is not installed"}}, 2.0)))
    CONFORMS: 1 cases on jax in 2.0 s
      kpe: 0 with findings (jax: 0 with findings)
      skipped: torch (torch is not installed)
    >>> print(summary(MatrixResult({"jax": {"cases": []}}, 2.0)))
    INCOMPLETE: 0 cases on jax in 2.0 s
      incomplete: no case ran
    """
    cases = result.cases()
    ran = [b for b, r in result.backends.items() if "cases" in r]
    lines = [
        f"{VERDICTS[result.status(fail_on_keras)]}: {len(cases)} cases on "
        f"{', '.join(ran) or 'no backend'} in {result.seconds:.1f} s"
    ]
    for source in SOURCES:
        if any(c["source"] == source for c in cases):
            line = f"  {source}: {_counts(result, source)}"
            if source == "keras":
                line += ": Keras's own policies, the comparison" + (
                    "" if fail_on_keras else " (--fail-on-keras fails the run on them)"
                )
            lines.append(line)
    notes = dict.fromkeys(n for r in result.backends.values() for n in r.get("notes", ()))
    lines += [f"  note: {n}" for n in notes]
    for name, key in (("skipped", "skipped"), ("failed to run", "error")):
        hit = [f"{b} ({r[key]})" for b, r in result.backends.items() if key in r]
        if hit:
            lines.append(f"  {name}: {'; '.join(hit)}")
    if not cases:
        lines.append("  incomplete: no case ran")
    return "\n".join(lines)


# Each policy source's table: its heading, and what its rows hold without --all.
SECTIONS = {
    "kpe": "kpe's policies (they decide the verdict)",
    "keras": "Keras's own policies (the comparison)",
}


def _grid(result: MatrixResult, every_row: bool, source: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one source's layer x policy x backend grid (rows with findings
    or refusals only, unless `every_row`)."""
    backends = list(result.backends)
    grouped: dict[tuple[str, str], dict[str, dict]] = {}
    for backend, r in result.backends.items():
        for case in r.get("cases", []):
            if case["source"] == source:
                grouped.setdefault((case["layer"], case["policy"]), {})[backend] = case
    rows = []
    for (layer, policy), cells in grouped.items():
        if every_row or any(_status(c) != "ok" for c in cells.values()):
            rows.append(
                [layer, policy]
                + [_cell(cells[b]) if b in cells else _absent(result.backends[b]) for b in backends]
            )
    return ["layer", "policy", *backends], rows


def _sections(result: MatrixResult, every_row: bool) -> list[tuple[str, list[str], list[list]]]:
    """`(heading, header, rows)` per policy source that ran; empty `rows` when none is shown."""
    ran = {c["source"] for c in result.cases()}
    return [(SECTIONS[s], *_grid(result, every_row, s)) for s in SOURCES if s in ran]


def details(result: MatrixResult) -> list[str]:
    """Every finding in full, kpe's first: what was expected and seen, by whom, where.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> finding = {"layer": "Conv3D", "policy": "bfloat16", "source": "keras",
    ...            "backend": "torch", "check": "train", "short": "wrong update",
    ...            "expected": "an update within 0.08 of float32's",
    ...            "seen": "conv3d/kernel: relative error 0.88"}
    >>> case = {"layer": "Conv3D", "policy": "bfloat16", "source": "keras",
    ...         "findings": [finding]}
    >>> print(*details(MatrixResult({"torch": {"cases": [case]}}, 2.0)))
    Conv3D under keras 'bfloat16' on torch: train: expected an update within 0.08 of float32's,
    saw conv3d/kernel: relative error 0.88
    """
    found = [
        f
        for source in SOURCES
        for r in result.backends.values()
        for c in r.get("cases", ())
        if c["source"] == source
        for f in c["findings"]
    ]
    return [
        f"{f['layer']} under {f['source']} {f['policy']!r} on {f['backend']}: {f['check']}: "
        f"expected {f['expected']}, saw {f['seen']}"
        for f in found
    ]


def refusals(result: MatrixResult) -> list[str]:
    """`layer under policy on backend: reason` for every refused case.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> case = {"layer": "Dense", "policy": "float64", "source": "kpe", "findings": [],
    ...         "refused": "keras_policy_ext refuses Dense ...: set JAX_ENABLE_X64=1"}
    >>> refusals(MatrixResult({"jax": {"cases": [case]}}, 2.0))
    ["Dense under 'float64' on jax: keras_policy_ext refuses Dense ...: set JAX_ENABLE_X64=1"]
    """
    return [
        f"{c['layer']} under {c['policy']!r} on {backend}: {c['refused']}"
        for backend, r in result.backends.items()
        for c in r.get("cases", [])
        if c.get("refused")
    ]


def table(result: MatrixResult, every_row: bool = False, fail_on_keras: bool = False) -> str:
    """The summary; a grid per policy source (kpe's, then Keras's comparison) of the rows
    with findings or refusals (every row with `every_row`); each finding in full; each
    refusal's reason."""
    parts = [summary(result, fail_on_keras)]
    sections = _sections(result, every_row)
    if not any(rows for _, _, rows in sections):
        if result.cases():
            parts.append("No case has findings or was refused (--all prints every row).")
        return "\n\n".join(parts)
    for heading, header, rows in sections:
        if not rows:
            parts.append(f"{heading}: no finding, no refusal.")
            continue
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [f"{heading}:", "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        parts.append("\n".join(lines))
    for heading, items in (("Findings", details(result)), ("Refused", refusals(result))):
        if items:
            parts.append("\n".join([f"{heading}:", *(f"- {item}" for item in items)]))
    return "\n\n".join(parts)


def markdown(result: MatrixResult, every_row: bool = True, fail_on_keras: bool = False) -> str:
    """The summary as a list and a grid per policy source, for a CI summary page.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> case = {"layer": "Dense", "policy": "float32", "source": "kpe", "findings": []}
    >>> print(markdown(MatrixResult({"jax": {"cases": [case]}}, 2.0)))
    ### keras-policy-ext check: CONFORMS
    <BLANKLINE>
    - 1 cases on jax in 2.0 s
    - kpe: 0 with findings (jax: 0 with findings)
    <BLANKLINE>
    #### kpe's policies (they decide the verdict)
    <BLANKLINE>
    | layer | policy | jax |
    |---|---|---|
    | Dense | float32 | ok |
    """
    first, *rest = summary(result, fail_on_keras).splitlines()
    verdict, _, what = first.partition(": ")
    lines = [f"### keras-policy-ext check: {verdict}", "", f"- {what}"]
    lines += [f"- {line.strip()}" for line in rest]
    for heading, header, rows in _sections(result, every_row):
        if rows:
            lines += ["", f"#### {heading}", ""]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    for heading, items in (("Findings", details(result)), ("Refused", refusals(result))):
        if items:
            lines += ["", f"{heading}:", "", *(f"- {item}" for item in items)]
    return "\n".join(lines)


def _absent(backend_result: dict) -> str:
    if "skipped" in backend_result:
        return "skipped"
    return "error" if "error" in backend_result else "-"


def to_json(result: MatrixResult, every_row: bool = True, fail_on_keras: bool = False) -> str:
    """The whole result as JSON (`MatrixResult.to_dict`, with the verdict)."""
    data = result.to_dict(fail_on_keras)
    data["verdict"] = VERDICTS[data["status"]]
    return json.dumps(data, indent=2)


def junit(result: MatrixResult, every_row: bool = True, fail_on_keras: bool = False) -> str:
    """JUnit XML: a test suite per backend, a test case per layer x policy x source.

    Each suite's properties hold the run's `seed`.

    Keras's cases with findings are failures only with `fail_on_keras`; else
    they are skipped tests whose message carries the findings. Refused cases
    are skipped tests with the reason; a backend that failed to run is an error.
    """
    suites = ET.Element("testsuites", name="keras-policy-ext check")
    for backend, r in result.backends.items():
        cases: list[dict[str, Any]] = r.get("cases", [])
        failing = [c for c in cases if c["findings"] and (fail_on_keras or c["source"] == "kpe")]
        skipped = [c for c in cases if c not in failing and _status(c) != "ok"]
        suite = ET.SubElement(
            suites, "testsuite", name=backend, tests=str(len(cases)),
            failures=str(len(failing)),
            skipped=str(len(skipped) + ("skipped" in r)),
            errors="1" if "error" in r else "0",
        )  # fmt: skip
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="seed", value=str(result.seed))
        if "skipped" in r or "error" in r:
            case = ET.SubElement(suite, "testcase", classname=backend, name="backend")
            kind = "skipped" if "skipped" in r else "error"
            ET.SubElement(case, kind, message=r[kind])
        elif not cases:  # no case ran here: never a clean suite
            suite.set("errors", "1")
            case = ET.SubElement(suite, "testcase", classname=backend, name="backend")
            ET.SubElement(case, "error", message=f"no case ran on {backend}")
        if r.get("notes"):
            ET.SubElement(suite, "system-out").text = "\n".join(r["notes"])
        for c in cases:
            case = ET.SubElement(
                suite, "testcase", classname=f"{backend}.{c['layer']}",
                name=f"{c['policy']} ({c['source']} policy)",
            )  # fmt: skip
            details = "\n".join(
                f"{f['check']}: expected {f['expected']}, saw {f['seen']}" for f in c["findings"]
            )
            if c in failing:
                failure = ET.SubElement(
                    case, "failure", message="; ".join(f["short"] for f in c["findings"])
                )
                failure.text = details
            elif c in skipped:
                reason = c.get("refused") or "Keras's own policy (comparison): " + "; ".join(
                    f["short"] for f in c["findings"]
                )
                ET.SubElement(case, "skipped", message=reason).text = details or None
    return ET.tostring(suites, encoding="unicode")


FORMATS = {"table": table, "markdown": markdown, "json": to_json, "junit": junit}
