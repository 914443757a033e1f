"""The README's commands as printed: after ``make setup``, its first CLI examples run
from a fresh folder outside the checkout, with the environment a user's shell has (no
``CIRCUITRAY_HOME``: the CLI finds the home the set-up recorded in its environment).
And the README stays a front page: the reference lives in ``docs/``, one page per topic,
each linked from the README, every relative link and anchor resolving."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from circuitray import RunStore
from circuitray.models.registry import recorded_home_file

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 400
# What the suite sets for itself and a user's shell would not have (RAY_ADDRESS: the
# suite's shared Ray).
SUITE_ONLY = (
    "CIRCUITRAY_HOME",
    "CIRCUIT_TRACER_CACHE_DIR",
    "CIRCUITRAY_FEATURES_DIR",
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",  # a new user has not chosen: Ray's default (token) applies
)


def readme_cli_commands() -> list[str]:
    """The commands of the README's first CLI block, comments dropped."""
    section = README.read_text().split("## The CLI", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_first_cli_examples_work_from_a_fresh_folder(tmp_path):
    recorded = recorded_home_file()
    assert recorded.is_file(), f"{recorded} missing: run make setup first"
    ws2, run = readme_cli_commands()[:2]
    assert ws2.startswith("circuitray ws2 --n 500 ") and run.startswith("circuitray run "), (
        ws2,
        run,
    )
    ws2 = ws2.replace("--n 500 ", "--n 4 ", 1)  # as printed, on 4 prompts
    env = {k: v for k, v in os.environ.items() if k not in SUITE_ONLY}
    env["HOME"] = str(tmp_path / "user")  # a new user: nothing in ~/.cache yet
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    folder = tmp_path / "fresh"
    folder.mkdir()
    for command in (ws2, run):
        proc = subprocess.run(
            command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        # Ray's notice about the authentication it turned on, at every start of the
        # local Ray circuitray starts itself, is not printed (nothing to act on).
        assert "Token authentication is enabled" not in proc.stderr + proc.stdout, proc.stderr
    graphs = RunStore(folder / "runs" / "tuned").read_graphs(["status"]).to_pylist()
    assert [g["status"] for g in graphs] == ["ok"] * 4
    assert not (tmp_path / "user" / ".cache" / "circuitray").exists()  # nothing rebuilt


# [text](target): the text may span lines, the target is one word.
MD_LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)\)")


def _prose(text: str) -> str:
    """A Markdown file without its fenced code blocks (links and headings there are code)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but - and _ dropped,
    spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file (repeats get -1, -2... as on GitHub)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(path: Path) -> list[str]:
    """The links of a Markdown file that point into the repository."""
    return [
        target
        for target in MD_LINK.findall(_prose(path.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # https:, mailto:
    ]


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in markdown_pages():
        for target in relative_links(page):
            name, _, anchor = target.partition("#")
            dest = (page.parent / name).resolve() if name else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and (dest.suffix != ".md" or anchor not in heading_anchors(dest)):
                broken.append(f"{where} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page_and_links_every_docs_page():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move reference to docs/"
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no page"
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.relative_to(REPO).as_posix() for p in pages if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_github_slugs():
    assert github_slug("What a graph explains: `--target top|answer|contrast`") == (
        "what-a-graph-explains---target-topanswercontrast"
    )
    assert github_slug("Tests: `make test` (CI) and `make test-long`") == (
        "tests-make-test-ci-and-make-test-long"
    )
    assert github_slug("What the organism's data say (December 2026, this machine)") == (
        "what-the-organisms-data-say-december-2026-this-machine"
    )
