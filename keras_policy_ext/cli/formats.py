"""Output formats of a `MatrixResult`: a readable table, JSON and JUnit XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from keras_policy_ext.cli.matrix import MatrixResult


def _cell(cases: list[dict]) -> str:
    """One layer x policy x backend: kpe's result, and Keras's where it differs."""
    by_source = {
        c["source"]: ", ".join(dict.fromkeys(f["short"] for f in c["findings"])) or "ok"
        for c in cases
    }
    kpe, keras = by_source.get("kpe"), by_source.get("keras")
    if kpe is None:
        return f"keras: {keras}"
    if keras is None or keras == kpe:
        return kpe
    return f"{kpe} (keras: {keras})"


def summary(result: MatrixResult) -> str:
    """One line: cases, findings per policy source, skipped backends, time.

    >>> from keras_policy_ext.cli.matrix import MatrixResult
    >>> case = {"layer": "Dense", "policy": "float32", "source": "kpe", "findings": []}
    >>> print(summary(MatrixResult({"jax": {"ok": True, "cases": [case]},
    ...                             "torch": {"skipped": "torch is not installed"}}, 2.0)))
    CONFORMS: 1 cases on jax, 0 with findings; skipped: torch (torch is not installed); 2.0 s
    >>> print(summary(MatrixResult({"jax": {"ok": True, "cases": []}}, 2.0)))
    DOES NOT CONFORM: 0 cases on jax, 0 with findings; 2.0 s
    """
    ran = {b: r for b, r in result.backends.items() if "cases" in r}
    cases = [c for r in ran.values() for c in r["cases"]]
    bad = [c for c in cases if c["findings"]]
    per_source = ", ".join(
        f"{s}: {sum(c['source'] == s for c in bad)}"
        for s in dict.fromkeys(c["source"] for c in cases)
    )
    parts = [
        f"{'CONFORMS' if result.ok else 'DOES NOT CONFORM'}: {len(cases)} cases on "
        f"{', '.join(ran) or 'no backend'}, {len(bad)} with findings"
        + (f" ({per_source})" if bad else "")
    ]
    for name, key in (("skipped", "skipped"), ("failed to run", "error")):
        hit = [f"{b} ({r[key]})" for b, r in result.backends.items() if key in r]
        if hit:
            parts.append(f"{name}: {'; '.join(hit)}")
    return "; ".join(parts) + f"; {result.seconds:.1f} s"


def table(result: MatrixResult) -> str:
    """Layer x policy rows, one column per backend, then the summary line."""
    backends = list(result.backends)
    grouped: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for backend, r in result.backends.items():
        for case in r.get("cases", []):
            grouped.setdefault((case["layer"], case["policy"]), {}).setdefault(backend, []).append(
                case
            )
    header = ["layer", "policy", *backends]
    rows = [
        [layer, policy]
        + [_cell(cells[b]) if b in cells else _absent(result.backends[b]) for b in backends]
        for (layer, policy), cells in grouped.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([*lines, "", summary(result)])


def _absent(backend_result: dict) -> str:
    if "skipped" in backend_result:
        return "skipped"
    return "error" if "error" in backend_result else "-"


def to_json(result: MatrixResult) -> str:
    """The whole result as JSON (`MatrixResult.to_dict`)."""
    return json.dumps(result.to_dict(), indent=2)


def junit(result: MatrixResult) -> str:
    """JUnit XML: a test suite per backend, a test case per layer x policy x source."""
    suites = ET.Element("testsuites", name="keras-policy-ext check")
    for backend, r in result.backends.items():
        cases: list[dict[str, Any]] = r.get("cases", [])
        suite = ET.SubElement(
            suites, "testsuite", name=backend, tests=str(len(cases)),
            failures=str(sum(bool(c["findings"]) for c in cases)),
            skipped="1" if "skipped" in r else "0",
            errors="1" if "error" in r else "0",
        )  # fmt: skip
        if "skipped" in r or "error" in r:
            case = ET.SubElement(suite, "testcase", classname=backend, name="backend")
            kind = "skipped" if "skipped" in r else "error"
            ET.SubElement(case, kind, message=r[kind])
        for c in cases:
            case = ET.SubElement(
                suite, "testcase", classname=f"{backend}.{c['layer']}",
                name=f"{c['policy']} ({c['source']} policy)",
            )  # fmt: skip
            if c["findings"]:
                failure = ET.SubElement(
                    case, "failure", message="; ".join(f["short"] for f in c["findings"])
                )
                failure.text = "\n".join(
                    f"{f['check']}: expected {f['expected']}, saw {f['seen']}"
                    for f in c["findings"]
                )
    return ET.tostring(suites, encoding="unicode")


FORMATS = {"table": table, "json": to_json, "junit": junit}
