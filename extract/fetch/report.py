"""The link-rot report of a fetched dataset, in the terms of paper 000 (Sec. III-A).

Paper 000 reports what it could still obtain per modality ("35 268 images (88.2%), 7876 videos
(78.8%), and 8 280 audio files (82.8%)") and relies on per-class over-sampling to live with it.
This report gives the same figures for any manifest, plus what the paper could not show: the
failure kinds, availability per class and modality, and the classes that lost every item of a
modality (over-sampling cannot repair those). Written as ``fetch/report.json`` and
``fetch/report.md``; items never reached (a killed run) count as ``pending``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmx.cache.atomic import atomic_write_bytes
from mmx.extract.fetch.status import FAILURE_KINDS, OK

_PLURAL = {"image": "images", "video": "videos", "audio": "audio files", "text": "texts"}


def _count(n: int) -> str:
    """Thousands separated by a space, as the paper prints them ('35 268')."""
    return f"{n:,}".replace(",", " ")


def _pct(ok: int, total: int) -> float:
    return round(100.0 * ok / total, 1) if total else 0.0


class ReportCounter:
    """Running counts for the report, fed one item at a time: memory grows with the number of
    classes and modalities, never with the number of items."""

    def __init__(self):
        self.modalities: dict[str, dict] = {}
        self.classes: dict[str, dict[str, dict]] = {}

    def add(self, modality: str, label: str, status: str) -> None:
        m = self.modalities.setdefault(modality, {"items": 0, "ok": 0, "failures": {}})
        m["items"] += 1
        if status == OK:
            m["ok"] += 1
        else:
            m["failures"][status] = m["failures"].get(status, 0) + 1
        if label:
            c = self.classes.setdefault(label, {}).setdefault(modality, {"items": 0, "ok": 0})
            c["items"] += 1
            c["ok"] += status == OK

    def report(self) -> dict:
        """Availability per modality, per class and per failure kind; JSON-ready."""
        modalities = {name: dict(m) for name, m in self.modalities.items()}
        for m in modalities.values():
            m["percent"] = _pct(m["ok"], m["items"])
            m["failures"] = dict(sorted(m["failures"].items(), key=lambda kv: -kv[1]))
        failures: dict[str, int] = {}
        for m in modalities.values():
            for kind, n in m["failures"].items():
                failures[kind] = failures.get(kind, 0) + n
        lost = [{"label": label, "modality": modality, "items": c["items"]}
                for label, per in sorted(self.classes.items()) for modality, c in sorted(per.items())
                if c["items"] and not c["ok"]]
        total = sum(m["items"] for m in modalities.values())
        ok = sum(m["ok"] for m in modalities.values())
        return {
            "items": total, "ok": ok, "percent": _pct(ok, total),
            "modalities": dict(sorted(modalities.items())),
            "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
            "classes": self.classes,
            "lost_classes": lost,
        }


def build_report(items) -> dict:
    """The report of ``(modality, label, status)`` triples (see :class:`ReportCounter`)."""
    counter = ReportCounter()
    for modality, label, status in items:
        counter.add(modality, label, status)
    return counter.report()


def summary_lines(report: dict) -> list[str]:
    """One line per modality in the paper's words, e.g. '35 268 of 40 000 images (88.2%)'."""
    return [f"{_count(m['ok'])} of {_count(m['items'])} {_PLURAL.get(name, name)} ({m['percent']}%)"
            for name, m in report["modalities"].items()]


def render_markdown(report: dict, worst_classes: int = 20) -> str:
    lines = ["# Link-rot report", "", "Obtained: " + "; ".join(summary_lines(report)) + ".", "",
             "| modality | items | ok | available |", "|---|---:|---:|---:|"]
    for name, m in report["modalities"].items():
        lines.append(f"| {name} | {m['items']} | {m['ok']} | {m['percent']}% |")
    if report["failures"]:
        lines += ["", "## Failure kinds", "", "| kind | items | meaning |", "|---|---:|---|"]
        for kind, n in report["failures"].items():
            lines.append(f"| {kind} | {n} | {FAILURE_KINDS.get(kind, 'not reached yet (run again)')} |")
    if report["lost_classes"]:
        lines += ["", "## Classes that lost every item of a modality", ""]
        lines += [f"- {c['label']}: all {c['items']} {c['modality']} item(s)" for c in report["lost_classes"]]
    rows = [(label, name, c) for label, per in report["classes"].items() for name, c in per.items() if c["ok"] < c["items"]]
    if rows:
        rows.sort(key=lambda r: (r[2]["ok"] / r[2]["items"], r[0], r[1]))
        lines += ["", f"## Least available classes (worst {min(worst_classes, len(rows))} of {len(rows)} "
                      "class/modality pairs with losses; all in report.json)", "",
                  "| class | modality | items | ok | available |", "|---|---|---:|---:|---:|"]
        for label, name, c in rows[:worst_classes]:
            lines.append(f"| {label} | {name} | {c['items']} | {c['ok']} | {_pct(c['ok'], c['items'])}% |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` atomically into ``folder``."""
    folder = Path(folder)
    paths = []
    for name, text in (("report.json", json.dumps(report, indent=2, ensure_ascii=False)),
                       ("report.md", render_markdown(report))):
        atomic_write_bytes(folder / name, text.encode("utf-8"))
        paths.append(folder / name)
    return paths[0], paths[1]
