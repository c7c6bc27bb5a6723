"""The documentation holds together: every relative link and `#anchor` in README.md and docs/*.md resolves, every
docs page is reachable from the README, and the README's test command is the one CI (.ci/run) runs.

Anchors follow GitHub's heading slugs: the heading's text (links and inline code reduced to their text), lowercase,
punctuation dropped (letters, digits, spaces, '-' and '_' kept), each space a '-', and a repeated slug gets '-1',
'-2', ... Headings and links inside fenced code blocks and inline code do not count.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)     # https:, mailto:, ...


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)        # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()               # inline HTML tags
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown or HTML link and image outside code."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        out += [(number, m.group(1)) for m in LINK.finditer(line)]
        out += [(number, m.group(1)) for m in HTML_LINK.finditer(line)]
    return out


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(file_part)).resolve() if file_part else page
        where = f"{page.relative_to(REPO_ROOT)}:{number}: {target}"
        if not dest.exists():
            shown = dest.relative_to(REPO_ROOT) if dest.is_relative_to(REPO_ROOT) else dest
            problems.append(f"{where}: no file {shown}")
        elif not dest.is_relative_to(REPO_ROOT):
            problems.append(f"{where}: points outside the repository")
        elif anchor and (dest.suffix != ".md" or unquote(anchor).lower() not in anchors(dest)):
            known = ", ".join(sorted(anchors(dest))) if dest.suffix == ".md" else "(not a Markdown file)"
            problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.name}; its anchors: {known}")
    return problems


def test_slugs_follow_githubs_rules():
    assert slug("The GPU evidence, in one call") == "the-gpu-evidence-in-one-call"
    assert slug("`paper` vs `leaderboard` at an equal CPU budget") == "paper-vs-leaderboard-at-an-equal-cpu-budget"
    assert slug("Colab, Kaggle, and the twins") == "colab-kaggle-and-the-twins"
    assert slug("The schedule: 400 epochs on a T4") == "the-schedule-400-epochs-on-a-t4"
    assert slug("Run on [Kaggle](https://www.kaggle.com) — fast_path") == "run-on-kaggle--fast_path"


def test_the_checker_sees_links_and_anchors_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n## Same\n## Same\n[ok](#a-title) [two](#same-1) ![img](pic.png)\n"
                    "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n# not a heading\n```\n"
                    '<img src="gone.png" width="10">\n')
    assert anchors(page) == {"a-title", "same", "same-1"}
    assert [t for _, t in links(page)] == ["#a-title", "#same-1", "pic.png", "gone.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert links(page), f"{page.name} has no links at all: is the parser broken?"
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README) if not EXTERNAL.match(t)}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def ci_commands() -> list[str]:
    """The commands .ci/run runs, in order (not its comments, `set`, `cd`, `export`, `trap` or assignment lines)."""
    lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    skip = re.compile(r"^(#|set\s|cd\s|export\s|trap\s|\w+=)")
    return [line.strip() for line in lines if line.strip() and not skip.match(line.strip())]


def test_the_readmes_test_command_is_what_ci_runs():
    text = README.read_text(encoding="utf-8")
    tests = [line for line in text.splitlines() if re.search(r"#\s*test:", line)]
    assert len(tests) == 1, "the README should have one command line commented '# test: ...'"
    readme_command = tests[0].split("#")[0].strip()
    expected = " && ".join(ci_commands())
    assert readme_command == expected, (f"README's test command:\n  {readme_command}\n.ci/run runs:\n  {expected}\n"
                                        "update the README's '# test:' line (or .ci/run) so they agree")
