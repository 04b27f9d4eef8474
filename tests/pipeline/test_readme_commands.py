"""Every command of the README and the docs pages runs, in a user's order, offline, in one folder.

The table (page line -> placeholder values, smaller settings, expected output) is ``STEPS``
in readme_steps.py, with ``OWN_MEDIA`` (run by test_own_data_walkthrough.py), ``SKIPPED``
(reason each) and ``NOT_MMX``; a line of a page in none of them fails here, and so does an
entry that matches no line.
"""

import contextlib
import re
import shlex

import click
import pytest
from readme_steps import (DEMO, NOT_MMX, OWN_MEDIA, PAGES, SKIPPED, STEPS, Step, Workspace, readme_lines, run_step,
                          serve_media, users_folder, write_lists)

from mmx.pipeline.cli import main


@pytest.fixture(scope="module")
def outcomes(readme_demo) -> dict:
    """Every step, in order, in one folder (the demo's, run first); a failed step does not stop the rest."""
    root, demo, _ = readme_demo
    done = {DEMO.line: demo}
    with users_folder(root), contextlib.ExitStack() as stack:
        server = stack.enter_context(serve_media())
        write_lists(server.url)
        w = Workspace(root, stack)
        for step in STEPS[1:]:
            server.healed |= step.heals
            done[step.line] = run_step(step, w)
    return done


def coverage_problems(lines: list[str]) -> list[str]:
    """What is wrong between the pages' lines and the tables: a line in none, an entry matching no line."""
    steps = [s.line for s in (*STEPS, *OWN_MEDIA)]
    covered = set(steps) | set(SKIPPED) | set(NOT_MMX)
    problems = [f"listed twice in STEPS: {line}" for line in set(steps) if steps.count(line) > 1]
    problems += [f"no test runs this line of the README or docs (add it to STEPS, or SKIPPED with a reason): {line}"
                 for line in dict.fromkeys(lines) if line not in covered]
    problems += [f"matches no line of the README or docs any more: {line}" for line in sorted(covered - set(lines))]
    return problems


def test_every_readme_line_is_covered():
    assert not coverage_problems(readme_lines())
    assert len(SKIPPED) <= 2 and all(line.startswith("mmx ") for line in [*SKIPPED, *(s.line for s in (*STEPS, *OWN_MEDIA))])
    assert not any(line.startswith("mmx ") for line in NOT_MMX)


def test_a_new_or_removed_readme_line_is_caught():
    lines = readme_lines()
    assert coverage_problems(lines + ["mmx train --dataset new"]) == [
        "no test runs this line of the README or docs (add it to STEPS, or SKIPPED with a reason): mmx train --dataset new"]
    assert coverage_problems([line for line in lines if line != "mmx eval RUN"]) == [
        "matches no line of the README or docs any more: mmx eval RUN"]


def test_a_failing_command_is_recorded_as_failed(tmp_path):
    """A nonzero exit, a traceback and a file not written all reach test_readme_command_runs."""
    w = Workspace(tmp_path)
    with users_folder(tmp_path):
        refused = run_step(Step("mmx cache info STORE", {"STORE": "absent.zarr"}), w)
        broken = run_step(Step("mmx eval RUN", {"RUN": "{w.runs[never-trained]}"}), w)
        silent = run_step(Step("mmx cache import --help", creates=("imported.zarr",)), w)
    assert refused.exit_code != 0 and "absent.zarr" in refused.output
    assert broken.exit_code == -1 and "KeyError: 'never-trained'" in broken.error
    assert silent.exit_code == 0 and silent.missing == ["imported.zarr"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_mmx_command_hides_in_an_untagged_block(page):
    untagged = re.findall(r"^\s*```\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    hidden = [line for block in untagged for line in block.splitlines() if line.strip().startswith("mmx ")]
    assert not hidden, f"{page.name}: mmx commands in a block without 'bash' (not run by this test): {hidden}"


def test_each_substitution_names_a_word_of_its_line():
    """A placeholder that left its line (renamed, removed) fails instead of silently not applying."""
    stale = [(step.line, old) for step in STEPS for old in step.subs if old not in step.line]
    assert not stale, stale


def test_the_readme_has_the_commands_of_the_whole_path():
    names = {shlex.split(s.line)[1] for s in (*STEPS, *OWN_MEDIA)}
    assert {"demo", "fetch", "extract", "cache", "train", "eval", "compare", "embed", "search"} <= names


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.line)
def test_readme_command_runs(step, outcomes):
    got = outcomes[step.line]
    shown = f"page: {step.line}\nran: mmx {shlex.join(got.argv)}\n{got.output[-3000:]}\n{got.error}"
    assert not got.error and got.exit_code == 0, shown
    for text in step.expect:
        assert text in got.output, f"{text!r} not in the output\n{shown}"
    assert not got.missing, f"not written: {got.missing}\n{shown}"


@pytest.mark.parametrize("line", list(dict.fromkeys(line for line in readme_lines() if line.startswith("mmx "))))
def test_each_readme_command_parses(line):
    """The parser alone, for every line (SKIPPED ones included): options and choices the CLI knows."""
    args = shlex.split(line)[1:]
    ctx = main.make_context("mmx", list(args), resilient_parsing=True)
    name, cmd, rest = main.resolve_command(ctx, ctx.protected_args + ctx.args)
    while isinstance(cmd, click.Group):  # mmx cache ls ...
        sub = cmd.make_context(name, list(rest), parent=ctx, resilient_parsing=True)
        name, cmd, rest = cmd.resolve_command(sub, sub.protected_args + sub.args)
    if "--help" in rest:
        return
    try:
        cmd.make_context(name, list(rest), parent=ctx)
    except click.BadParameter as exc:
        if isinstance(getattr(exc.param, "type", None), (click.Path, click.File)) and "does not exist" in exc.format_message():
            return  # a placeholder path ($RUN, gallery.npz): the page names a file the user will have
        pytest.fail(f"page: {line!r}: {exc.format_message()}")
    except click.UsageError as exc:  # unknown option, bad choice, missing argument
        pytest.fail(f"page: {line!r}: {exc.format_message()}")
