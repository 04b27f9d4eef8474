"""``mmx fetch`` and ``mmx manifest-from-lists``: see :mod:`mmx.extract.fetch`."""

from __future__ import annotations

import re

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.options import allow_root_option, json_option, progress_option, quiet_option

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30}


def parse_size(text: str) -> int:
    """'512MB', '2G', '1000' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", str(text).upper())
    if not match:
        raise click.BadParameter(f"{text!r} is not a size; use e.g. 500MB, 2GB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@click.command("fetch")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset folder: media/, fetch/ (journal, status, report) and manifest.fetched.csv.")
@click.option("--modality", "modalities", default="", show_default="every modality",
              help="Only these modalities, comma-separated, e.g. image,video.")
@click.option("--workers", default=32, show_default=True, type=click.IntRange(1, 1024), help="Concurrent downloads.")
@click.option("--per-host", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Concurrent downloads per host.")
@click.option("--connect-timeout", default=10.0, type=click.FloatRange(0.01), help="Seconds to connect to a host.")
@click.option("--read-timeout", default=30.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds without a byte before a download times out.")
@click.option("--item-timeout", default=300.0, show_default=True, type=click.FloatRange(0.01),
              help="Total seconds for one attempt at one item.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 20),
              help="Extra attempts for transient failures (timeouts, resets, 5xx, 429); never for 404/410.")
@click.option("--backoff-base", default=0.5, show_default=True, type=click.FloatRange(0.0),
              help="First backoff delay in seconds; doubles per attempt, with jitter.")
@click.option("--max-retry-after", default=120.0, show_default=True, type=click.FloatRange(0.0),
              help="Longest Retry-After (429/503) honoured, in seconds.")
@click.option("--max-size", default="512MB", show_default=True, help="Size cap per item.")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(1),
              help="Images with more pixels are refused as decompression bombs.")
@click.option("--max-redirects", default=5, type=click.IntRange(0, 50), help="Most HTTP redirects followed per item.")
@allow_root_option()
@click.option("--retry-failed", is_flag=True, help="Also retry items that failed with a transient kind.")
@click.option("--all-failures", "retry_all", is_flag=True, help="With --retry-failed: retry every failed item.")
@progress_option()
@quiet_option()
@json_option("the fetch's totals and report")
@click.pass_context
def fetch_command(ctx, manifest, out_dir, modalities, workers, per_host, connect_timeout, read_timeout, item_timeout,
                  retries, backoff_base, max_retry_after, max_size, max_pixels, max_redirects, allowed_roots,
                  retry_failed, retry_all, progress):
    """Download (or link) the media of MANIFEST into a dataset folder, with a link-rot report.

    \b
    Every item ends with one status in fetch/status.csv (ok, not_found, gone, timeout,
    wrong_type, truncated, ...). Rerun at any time: ok items are skipped and a killed run
    resumes; --retry-failed retries transient failures (all with --all-failures); items refused
    as outside --allow-root are checked again by a run with other --allow-root folders. Exit
    status 1 when items were refused by this run's own options (forbidden_path), 0 otherwise
    (link rot included).
    """
    con = console(ctx)
    progress = progress and not con.quiet
    from mmx.extract.fetch import FetchConfig, fetch_manifest
    from mmx.cache.modality import Modality

    if retry_all and not retry_failed:
        raise click.UsageError("--all-failures only makes sense with --retry-failed")
    cfg = FetchConfig(
        workers=workers, per_host=per_host, connect_timeout=connect_timeout, read_timeout=read_timeout,
        item_timeout=item_timeout, retries=retries, backoff_base=backoff_base, max_retry_after=max_retry_after,
        max_bytes=parse_size(max_size), max_pixels=max_pixels, max_redirects=max_redirects,
        allowed_roots=tuple(allowed_roots), retry_failed=retry_failed, retry_all=retry_all,
        modalities=tuple(m.value for m in Modality.parse_list(modalities)), progress=progress)
    from mmx.extract.fetch.status import RECHECKED_KINDS

    summary = fetch_manifest(manifest, out_dir, cfg)
    con.summary(summary_line(summary))
    for line in detail_lines(summary):
        con.line(line)
    con.result({"fetched": summary.fetched, "skipped": summary.skipped, "this_run": summary.this_run,
                "totals": summary.totals, "report": summary.report, "status": summary.layout.status,
                "manifest": summary.layout.manifest})
    if any(kind in RECHECKED_KINDS for kind in summary.totals):
        raise click.exceptions.Exit(1)  # the user's own options refused items: not link rot, so not a success
    failed = sum(n for kind, n in summary.totals.items() if kind not in ("ok", "pending"))
    if failed and not summary.totals.get("ok"):
        con.warn(f"every one of the manifest's {failed} item(s) failed: nothing was obtained (see the failures above)")
        raise click.exceptions.Exit(1)


def print_summary(summary, echo) -> None:
    """What a fetch run did and obtained, its failures and where its files are (also used by ``mmx demo``)."""
    echo(summary_line(summary))
    for line in detail_lines(summary):
        echo(line)


def summary_line(summary) -> str:
    ran = ", ".join(f"{k} {v}" for k, v in sorted(summary.this_run.items(), key=lambda kv: -kv[1])) or "nothing"
    return f"fetched {summary.fetched} item(s) this run ({ran}); {summary.skipped} already done"


def detail_lines(summary) -> list[str]:
    """What was obtained, the failures, where the files are and what would fix the failures."""
    from mmx.extract.fetch.report import summary_lines

    lines = []
    echo = lines.append
    echo("obtained: " + "; ".join(summary_lines(summary.report)))
    if summary.report["failures"]:
        echo("failures: " + ", ".join(f"{k} {v}" for k, v in summary.report["failures"].items()))
    if summary.report["lost_classes"]:
        lost = summary.report["lost_classes"]
        shown = ", ".join(f"{c['label']} ({c['modality']})" for c in lost[:10])
        echo(f"classes with no {'item' if len(lost) == 1 else 'items'} left in a modality: {shown}"
             + (f" and {len(lost) - 10} more" if len(lost) > 10 else ""))
    layout = summary.layout
    echo(f"status: {layout.status}\nreport: {layout.meta / 'report.md'}\nmanifest: {layout.manifest}")
    return lines + failure_advice(summary.totals)


def failure_advice(totals: dict) -> list[str]:
    """How many items failed, grouped by what would fix them, each naming the option.

    Link rot (not_found, gone, ...) is expected of URL manifests (paper 000 lost 12% of its
    images), so it is reported but leaves the exit status 0; items refused by this run's own
    limits (``forbidden_path``) make it 1, since an option fixes them.
    """
    from mmx.extract.fetch.status import OK, RECHECKED_KINDS, TRANSIENT_KINDS

    failed = {k: v for k, v in totals.items() if k not in (OK, "pending")}
    if not failed:
        return []

    def part(kinds) -> tuple[int, str]:
        hit = {k: v for k, v in failed.items() if k in kinds}
        return sum(hit.values()), ", ".join(f"{k} {v}" for k, v in sorted(hit.items()))

    lines = [f"{sum(failed.values())} item(s) failed; see fetch/status.csv for each item's error"]
    n, kinds = part(RECHECKED_KINDS)
    if n:
        lines.append(f"  {n} local path(s) outside the allowed folders ({kinds}): rerun with --allow-root FOLDER "
                     "(once per folder); they are retried then")
    n, kinds = part(TRANSIENT_KINDS)
    if n:
        lines.append(f"  {n} transient ({kinds}): rerun with --retry-failed")
    n, kinds = part(set(failed) - RECHECKED_KINDS - TRANSIENT_KINDS)
    if n:
        lines.append(f"  {n} permanent ({kinds}): fix the source or the manifest, then rerun with "
                     "--retry-failed --all-failures")
    return lines


@click.command("manifest-from-lists")
@click.option("--list", "lists", multiple=True, metavar="MODALITY=FILE",
              help="A URL list of one modality, e.g. image=xmedianet_image.txt (repeatable).")
@click.option("--texts", type=click.Path(dir_okay=False), help="A list of inline texts (one per line).")
@click.option("--columns", default="id,label,uri", show_default=True,
              help="Fields of a URL-list line in order: id, label, uri, group, split or - (ignored).")
@click.option("--text-columns", default="id,label,text", show_default=True,
              help="Fields of a text line in order; the last field takes the rest of the line.")
@click.option("--sep", default="whitespace", show_default=True,
              type=click.Choice(["whitespace", "tab", "comma", "space", "semicolon", "pipe"]),
              help="What separates the fields of a line.")
@click.option("--id-prefix/--no-id-prefix", default=True, show_default=True,
              help="Prefix ids with their modality (lists usually number each modality from 1).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Manifest to write (.csv, .jsonl or .parquet).")
def manifest_from_lists_command(lists, texts, columns, text_columns, sep, id_prefix, output):
    """Build a manifest from per-modality URL lists with class labels (as XMediaNet ships them).

    \b
    mmx manifest-from-lists --list image=images.txt --list video=videos.txt \\
        --texts texts.txt --columns id,label,uri -o manifest.csv
    """
    from mmx.extract.fetch.lists import manifest_from_lists
    from mmx.extract.manifest import write_manifest

    by_modality = {}
    for spec in lists:
        modality, sep_found, path = spec.partition("=")
        if not sep_found or not path:
            raise click.BadParameter(f"{spec!r}: use MODALITY=FILE, e.g. image=images.txt", param_hint="--list")
        if modality in by_modality:
            raise click.BadParameter(f"modality {modality!r} given twice", param_hint="--list")
        by_modality[modality] = path
    frame = manifest_from_lists(by_modality, texts, columns=columns, text_columns=text_columns, sep=sep,
                                id_prefix=id_prefix)
    write_manifest(frame, output)
    counts = frame["modality"].value_counts()
    click.echo(f"wrote {output}: {len(frame)} items (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")


COMMANDS: list = [fetch_command, manifest_from_lists_command]
