"""The project is self-contained: no file points outside the repository, and doc links resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {
    ".git",
    ".venv",
    ".venv-labelstudio",
    "runs",
    "data",
    "mlruns",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}

# Files that exist only outside the repository (a team's notes folder) and must never be cited.
# Spelled in pieces so that this file does not match its own patterns.
NOTE_NAMES = ("GPU" + "_NOTES", "RAY" + "_NOTES", "METH" + "ODS", "DES" + "IGN", "STY" + "LE")
OUTSIDE = re.compile(
    r"\b(?:" + "|".join(NOTE_NAMES) + r")\.md\b"  # the notes themselves
    r"|(?<![\w.-])(?:\.\./)*" + "shared" + r"/"  # their folder, relative or not
    r"|/" + "work" + r"/"  # absolute paths of the machine the project was built on
)
# [text](target) and ![alt](target), outside code spans; the target ends at a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def project_files() -> list[Path]:
    """Return the project's files: git's tracked files, or a walk of the tree without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [
            path
            for path in ROOT.rglob("*")
            if path.is_file()
            and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in path.parts)
        ]


def outside_references(text: str) -> list[tuple[int, str]]:
    """Return (line number, line) of every reference to a path outside the repository."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]


def markdown_links(text: str) -> list[tuple[int, str]]:
    """Return (line number, target) of the links of a Markdown text, code excluded."""
    links, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            continue
        prose = re.sub(r"`[^`]*`", "", line)
        links += [(number, match.group(1)) for match in LINK.finditer(prose)]
    return links


def broken_links(md_file: Path, root: Path = ROOT) -> list[str]:
    """Return the relative links of ``md_file`` whose target is not a file under ``root``."""
    broken = []
    for number, target in markdown_links(md_file.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor in the same page
        path = (md_file.parent / target.split("#")[0].split("?")[0]).resolve()
        if not path.exists() or root.resolve() not in path.parents:
            broken.append(f"{md_file.relative_to(root)}:{number}: {target}")
    return broken


def test_no_project_file_refers_to_notes_outside_the_repository():
    found = []
    for path in project_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        found += [f"{path.relative_to(ROOT)}:{n}: {line}" for n, line in outside_references(text)]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_every_relative_link_in_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [entry for page in pages for entry in broken_links(page)]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_the_checks_catch_what_they_are_meant_to(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "outside.md").write_text("# not in the repository\n", encoding="utf-8")
    note = NOTE_NAMES[0] + ".md"
    assert outside_references(f"see {note} for the figures")
    assert outside_references("read ../" + "shared" + "/paper/x.md")
    assert outside_references("cat /" + "work/main/README.md")
    assert not outside_references("mount it at /mnt/uslearn; see docs/RAY_MLFLOW.md")
    page = tmp_path / "repo" / "page.md"
    page.write_text(
        "[ok](page.md) [gone](missing.md) ![img](img/none.png) [web](https://x.org/a.md)\n"
        "`[code](nowhere.md)` [anchor](#top) [up](../outside.md)\n",
        encoding="utf-8",
    )
    targets = [target for _, target in markdown_links(page.read_text(encoding="utf-8"))]
    assert targets == [
        "page.md", "missing.md", "img/none.png", "https://x.org/a.md", "#top", "../outside.md"
    ]  # fmt: skip
    broken = [entry.split(": ", 1)[1] for entry in broken_links(page, root=tmp_path / "repo")]
    assert broken == ["missing.md", "img/none.png", "../outside.md"]
