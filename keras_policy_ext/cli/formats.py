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


def _cell(cases: list[dict]) -> str:
    """One layer x policy x backend: kpe's result, and Keras's where it differs."""

    def text(case: dict) -> str:
        if case.get("refused") and not case["findings"]:
            return "refused"
        return ", ".join(dict.fromkeys(f["short"] for f in case["findings"])) or "ok"

    by_source = {c["source"]: text(c) for c in cases}
    kpe, keras = by_source.get("kpe"), by_source.get("keras")
    if kpe is None:
        return f"keras: {keras}"
    if keras is None or keras == kpe:
        return kpe
    return f"{kpe} (keras: {keras})"


def _counts(result: MatrixResult, source: str) -> str:
    """`N with findings, M refused (jax N, torch N)` for one policy source."""
    per_backend = []
    totals = {"findings": 0, "refused": 0}
    for backend, r in result.backends.items():
        cases = [c for c in r.get("cases", ()) if c["source"] == source]
        if not cases:
            continue
        statuses = [_status(c) for c in cases]
        found, refused = statuses.count("findings"), statuses.count("refused")
        totals["findings"] += found
        totals["refused"] += refused
        per_backend.append(f"{backend} {found}" + (f"+{refused} refused" if refused else ""))
    text = f"{totals['findings']} with findings"
    if totals["refused"]:
        text += f", {totals['refused']} refused"
    return f"{text} ({', '.join(per_backend)})"


def summary(result: MatrixResult, fail_on_keras: bool = False) -> str:
    """The verdict, then findings per source and backend, notes, skipped and failed backends.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> case = {"layer": "Dense", "policy": "float32", "source": "kpe", "findings": []}
    >>> print(summary(MatrixResult({"jax": {"cases": [case]},
    ...                             "torch": {"skipped": "torch is not installed"}}, 2.0)))
    CONFORMS: 1 cases on jax in 2.0 s
      kpe: 0 with findings (jax 0)
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


def _grid(result: MatrixResult, every_row: bool) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the layer x policy x backend grid (bad rows only unless `every_row`)."""
    backends = list(result.backends)
    grouped: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for backend, r in result.backends.items():
        for case in r.get("cases", []):
            key = (case["layer"], case["policy"])
            grouped.setdefault(key, {}).setdefault(backend, []).append(case)
    rows = []
    for (layer, policy), cells in grouped.items():
        shown = every_row or any(_status(c) != "ok" for cases in cells.values() for c in cases)
        if shown:
            rows.append(
                [layer, policy]
                + [_cell(cells[b]) if b in cells else _absent(result.backends[b]) for b in backends]
            )
    return ["layer", "policy", *backends], rows


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
    """The summary, then the rows with findings or refusals (every row with `every_row`),
    then each refusal's reason."""
    header, rows = _grid(result, every_row)
    text = summary(result, fail_on_keras)
    if not rows:
        if result.cases():
            text += "\n\nNo case has findings or was refused (--all prints every row)."
        return text
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    refused = refusals(result)
    if refused:
        lines += ["", "Refused:", *(f"- {r}" for r in refused)]
    return text + "\n\n" + "\n".join(lines)


def markdown(result: MatrixResult, every_row: bool = True, fail_on_keras: bool = False) -> str:
    """The summary as a list and the layer x policy x backend grid, for a CI summary page.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> case = {"layer": "Dense", "policy": "float32", "source": "kpe", "findings": []}
    >>> print(markdown(MatrixResult({"jax": {"cases": [case]}}, 2.0)))
    ### keras-policy-ext check: CONFORMS
    <BLANKLINE>
    - 1 cases on jax in 2.0 s
    - kpe: 0 with findings (jax 0)
    <BLANKLINE>
    | layer | policy | jax |
    |---|---|---|
    | Dense | float32 | ok |
    """
    first, *rest = summary(result, fail_on_keras).splitlines()
    verdict, _, what = first.partition(": ")
    lines = [f"### keras-policy-ext check: {verdict}", "", f"- {what}"]
    lines += [f"- {line.strip()}" for line in rest]
    header, rows = _grid(result, every_row)
    if rows:
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    refused = refusals(result)
    if refused:
        lines += ["", "Refused:", "", *(f"- {r}" for r in refused)]
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
