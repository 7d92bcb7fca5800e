"""docs/operations.md documents every setting there is, the README opens with the two
commands, and every relative link in the docs resolves."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from batchd.core.config import Settings
from batchd.worker.handlers import builtin_handlers

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def test_every_setting_is_in_the_settings_reference() -> None:
    declared = [f.name for command in ("batchd-service",) for f in Settings.fields_for(command)]
    for handler in builtin_handlers():
        if handler.settings is not None:
            declared += [f.name for f in fields(handler.settings)]
    table = OPERATIONS.split("\n## Settings\n", 1)[1]
    missing = [name for name in declared if f"| `BATCHD_{name.upper()}` |" not in table]
    assert missing == []
    assert "smtp_url" in declared  # the handlers' settings are among them


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["./scripts/run", "./scripts/test"]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text without fenced code blocks or inline code, where links are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The #anchors GitHub gives the file's headings (duplicates numbered -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(prose(doc.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            missing = not file.exists() or (
                bool(anchor) and file.suffix == ".md" and anchor not in anchors(file)
            )
            if missing:
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []
    assert "docs/performance.md" in prose(README)  # the README's Performance points there
    assert "docs/operations.md" in prose(README)  # and its Operations to the settings


# Every ```sh block of the README and docs/, by page and section, and what runs it: a
# block added anywhere fails this test until a test runs it (a synopsis or other text
# that is not commands goes in a ```text block).
RUN_BY = {
    ("README.md", "# batchd"): "not run: ./scripts/run and ./scripts/test (test_readme_commands)",
    ("README.md", "## Using it"): "tests/e2e/test_readme.py",
    ("README.md", "### Results as one file"): "tests/e2e/test_readme.py",
    ("README.md", "### Schedules"): "tests/e2e/test_readme.py",
    ("README.md", "### Callbacks"): "tests/e2e/test_readme.py",
    ("README.md", "### Blocks for bulk APIs"): "tests/e2e/test_readme.py",
    ("README.md", "### Batch events"): "tests/e2e/test_readme.py",
    ("README.md", "## Development"): "tests/e2e/test_readme_commands.py",
    ("docs/api.md", "## With grpcurl"): "tests/e2e/test_readme_grpcurl.py",
    ("docs/handlers.md", "## 3. Registering it: the entry point"): (
        "tests/e2e/test_handler_guide_commands.py"
    ),
    ("docs/handlers.md", "## 4. The params schema, checked at submit time"): (
        "tests/e2e/test_handler_guide_commands.py"
    ),
    ("docs/handlers.md", "## 9. Testing it"): "tests/e2e/test_handler_guide_commands.py",
    ("docs/handlers/email.md", "## Example"): "tests/e2e/test_readme_commands.py",
    ("docs/handlers/email.md", "## Rate limiting"): "tests/e2e/test_readme_commands.py",
    ("docs/handlers/image.md", "## Example"): "tests/e2e/test_readme_commands.py",
    ("docs/handlers/migrate.md", "## Example"): "tests/e2e/test_readme_commands.py",
    ("docs/handlers/migrate.md", "## Databases, engines and settings"): (
        "tests/e2e/test_migrate_commands.py"
    ),
    ("docs/handlers/migrate.md", "## With databases of your own"): (
        "tests/e2e/test_migrate_commands.py"
    ),
    ("docs/handlers/migrate.md", "## Redrive"): "tests/e2e/test_migrate_commands.py",
    ("docs/operations.md", "## Deploying"): (
        "tests/test_deploy_files.py: read, not run (no Docker engine or cluster here): "
        "their files, flags, secret and deployment names checked"
    ),
    ("docs/operations.md", "## Running server and workers separately"): (
        "tests/e2e/test_readme_commands.py"
    ),
    ("docs/performance.md", "## Running the benchmarks"): (
        "tests/test_bench.py (one scenario's commands; every scenario, minutes, each run small)"
    ),
    ("docs/security.md", "## Authentication and roles"): "tests/e2e/test_security_commands.py",
    ("docs/security.md", "## JWT"): "tests/e2e/test_security_commands.py",
    ("docs/security.md", "## Redis"): "tests/e2e/test_security_commands.py",
    ("docs/security.md", "## Transport (TLS, mTLS)"): (
        "tests/e2e/test_security_commands.py (server, CLI), tests/e2e/test_readme_grpcurl.py"
    ),
}


def sh_block_sections() -> set[tuple[str, str]]:
    """(page, the heading above it) of every ```sh block in the README and docs/."""
    found = set()
    for doc in DOCS:
        heading, fenced = "", False
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                if not fenced and line.strip() == "```sh":
                    found.add((str(doc.relative_to(ROOT)), heading))
                fenced = not fenced
            elif not fenced and re.match(r"#{1,6} ", line):
                heading = line
    return found


def test_every_shell_block_is_run_or_listed() -> None:
    assert sh_block_sections() == set(RUN_BY)
