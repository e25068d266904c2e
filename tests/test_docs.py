"""README.md and docs/ stay true to the repository: every relative link and anchor resolves, and every
environment variable the code reads is in the configuration reference, under the service that reads it.

Each check returns a list of problems; the last tests run them on broken copies to show they can fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from shared.config import Declared, declared
from tests.envscan import ROOT, SERVICES, code_env, env_reads, module_constants, parse_python, settings_classes, shared_env_helpers

DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
# The configuration reference's sections: names read by every service, then one section per service.
COMMON_SECTION = "Every service"
SERVICE_SECTIONS = {"gateway": "Gateway", "session": "Session service", "query": "Query service"}
# Code outside services/ that reads variables a user may set: the shared helpers, make run, benchmarks, test fixtures.
OTHER_READERS = ("shared/*.py", "scripts/*.py", "bench/*.py", "evals/*.py", "tests/conftest.py", "tests/harness.py")
# Files whose comments point readers at docs/*.md.
DOC_REFERRERS = ("services/**/*.py", "shared/*.py", "deploy/**/*.yaml", "Dockerfile", "docker-compose.yml", "Makefile", "pyproject.toml")

LINK = re.compile(r"(?<!\!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
TABLE_NAME = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|")
TABLE_DEFAULT = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|")
DOC_MENTION = re.compile(r"\bdocs/[\w./-]+\.md\b")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code blocks, with inline code spans blanked (a link inside backticks is not a link)."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        marker = stripped[:3]
        if marker in ("```", "~~~"):
            if fence is None:
                fence = marker
            elif marker == fence:
                fence = None
            continue
        if fence is None:
            yield number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    fence: str | None = None
    for line in text.splitlines():
        marker = line.lstrip()[:3]
        if marker in ("```", "~~~"):
            fence = None if fence == marker else (fence or marker)
            continue
        if fence is not None or not (match := HEADING.match(line)):
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def check_links(path: Path, text: str) -> list[str]:
    """Relative links and images point at files that exist; #anchors at headings of the Markdown file they name."""
    problems = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for number, line in prose_lines(text):
        for target in [m.group(1) for m in LINK.finditer(line)] + [m.group(1) for m in IMAGE.finditer(line)]:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if file_part and not linked.exists():
                problems.append(f"{where}:{number}: link to {target}: {file_part} does not exist")
                continue
            if anchor and linked.suffix == ".md":
                linked_text = text if linked == path else linked.read_text()
                if anchor not in anchors(linked_text):
                    problems.append(f"{where}:{number}: link to {target}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def sections(text: str) -> dict[str, str]:
    """The text under each `## ` heading, by heading title."""
    out: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            out[title] = ""
        elif title:
            out[title] += line + "\n"
    return out


def table_names(text: str) -> set[str]:
    """Variables listed in the first column of the tables of a section."""
    return {m.group(1) for line in text.splitlines() if (m := TABLE_NAME.match(line))}


def table_defaults(text: str) -> dict[str, str]:
    """Variable -> its default column, without the backticks, in the tables of a section."""
    return {m.group(1): m.group(2).replace("`", "").strip() for line in text.splitlines() if (m := TABLE_DEFAULT.match(line))}


def check_declared_defaults(text: str, service_settings: dict[str, list[Declared]]) -> list[str]:
    """Each declared setting's default is the one configuration.md shows (in its service's section, else the common one).

    The docs may follow the value with a note in parentheses: `7776000` (90 days).
    """
    problems = []
    by_title = sections(text)
    common = table_defaults(by_title.get(COMMON_SECTION, ""))
    for service, title in SERVICE_SECTIONS.items():
        listed = table_defaults(by_title.get(title, ""))
        for item in service_settings[service]:
            shown = listed.get(item.env, common.get(item.env))
            # A name not listed at all is check_configuration's to report.
            if shown is not None and shown != item.default and not shown.startswith(f"{item.default} ("):
                problems.append(f"configuration.md shows {item.env} with default {shown!r}, but services/{service} declares {item.default!r}")
    return problems


def names_read_outside_services() -> dict[str, set[str]]:
    """Variables read by code other than the services: file -> names."""
    out = {}
    for pattern in OTHER_READERS:
        for path in sorted(ROOT.glob(pattern)):
            tree = parse_python(path)
            names, _defaults = env_reads(tree, shared_env_helpers(), module_constants(tree))
            if names:
                out[str(path.relative_to(ROOT))] = names
    return out


def check_configuration(text: str, service_env: dict[str, frozenset[str]], other_env: dict[str, set[str]]) -> list[str]:
    """Each service's variables are in its section (or the common one), nothing stale is listed, and the rest is mentioned."""
    problems = []
    by_title = sections(text)
    for title in [COMMON_SECTION, *SERVICE_SECTIONS.values()]:
        if title not in by_title:
            problems.append(f"configuration.md has no section '## {title}'")
    common = table_names(by_title.get(COMMON_SECTION, ""))
    read_by_all = frozenset.intersection(*service_env.values())
    for name in sorted(common - read_by_all):
        problems.append(f"configuration.md lists {name} under '{COMMON_SECTION}', but not every service reads it")
    for service, title in SERVICE_SECTIONS.items():
        listed = table_names(by_title.get(title, ""))
        for name in sorted(service_env[service] - listed - common):
            problems.append(f"services/{service} reads {name}, which configuration.md does not list under '{title}'")
        for name in sorted(listed - service_env[service]):
            problems.append(f"configuration.md lists {name} under '{title}', but services/{service} never reads it")
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", text))
    for where, names in other_env.items():
        for name in sorted(names - documented):
            problems.append(f"{where} reads {name}, which configuration.md does not mention")
    return problems


def check_doc_mentions(files: Iterable[Path]) -> list[str]:
    """Comments that say `see docs/x.md` name a file that exists."""
    problems = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for mention in DOC_MENTION.findall(line):
                if not (ROOT / mention).exists():
                    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                    problems.append(f"{where}:{number}: mentions {mention}, which does not exist")
    return problems


def referrers() -> list[Path]:
    return sorted({path for pattern in DOC_REFERRERS for path in ROOT.glob(pattern) if path.is_file() and ".venv" not in path.parts})


def service_env() -> dict[str, frozenset[str]]:
    return {service: code_env(service)[0] for service in SERVICES}


def service_settings() -> dict[str, list[Declared]]:
    return {service: [item for cls in settings_classes(service) for item in declared(cls)] for service in SERVICES}


# --- the tests ----------------------------------------------------------------------------------


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n" + "\n".join(problems)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert_no_problems(check_links(path, path.read_text()))


def test_the_readme_is_a_short_front_page_that_links_every_docs_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 120
    linked = {Path(m.group(1).partition("#")[0]).name for _, line in prose_lines(text) for m in LINK.finditer(line) if m.group(1).startswith("docs/")}
    unlinked = {path.name for path in DOCS.glob("*.md")} - linked
    # Pages other engineers add are linked from the pages of their topic; these are the ones the front page promises.
    assert not unlinked & {"api.md", "stream.md", "session.md", "query.md", "configuration.md", "deploy.md", "operations.md", "benchmarks.md"}


def test_every_variable_the_code_reads_is_in_the_configuration_reference() -> None:
    assert_no_problems(check_configuration(CONFIGURATION.read_text(), service_env(), names_read_outside_services()))


def test_every_declared_default_is_the_one_the_configuration_reference_shows() -> None:
    assert_no_problems(check_declared_defaults(CONFIGURATION.read_text(), service_settings()))


def test_every_service_declares_its_settings_on_one_class() -> None:
    """The declarations the checks read: each service's config class, with the settings every service shares."""
    declared_names = {service: {item.env for item in items} for service, items in service_settings().items()}
    for service in SERVICES:
        assert {"NATS_URL", "NATS_SUBJECT_PREFIX", "LOG_LEVEL", "SHUTDOWN_GRACE_S"} <= declared_names[service]
    assert {"GATEWAY_PORT", "AUTH_MODE", "LLM_BASE_URL"} <= declared_names["gateway"]
    assert {"REDIS_URL", "SESSION_KEY_PREFIX", "CONVERSATION_MAX_MESSAGES"} <= declared_names["session"]
    assert {"QUERY_DATABASE_URL", "QUERY_MAX_ROWS", "QUERY_SCHEMA_CACHE_S"} <= declared_names["query"]


def test_the_scan_finds_what_each_service_reads() -> None:
    """The check above is only as good as the scan; a few names each service certainly reads."""
    env = service_env()
    assert {"NATS_URL", "GATEWAY_PORT", "AUTH_MODE"} <= env["gateway"]
    assert {"NATS_URL", "REDIS_URL", "OPS_PORT"} <= env["session"]
    assert {"NATS_URL", "QUERY_DATABASE_URL", "OPS_PORT"} <= env["query"]
    assert {"TEST_POSTGRES_URL", "TEST_MYSQL_URL"} <= names_read_outside_services()["tests/conftest.py"]


def test_docs_files_named_in_code_and_manifests_exist() -> None:
    files = referrers()
    assert any(path.name == "config.py" for path in files)
    assert_no_problems(check_doc_mentions(files))


def test_github_anchors() -> None:
    text = "# Title\n## Benchmark: 1 versus 2 replicas (`python -m bench.scale`)\n## Configuration\n### Configuration\n```\n# not a heading\n```\n"
    assert anchors(text) == {"title", "benchmark-1-versus-2-replicas-python--m-benchscale", "configuration", "configuration-1"}


# --- the checks can fail ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "problem"),
    [
        ("See [the guide](docs/no-such-page.md).\n", "does not exist"),
        ("See [deploying](docs/deploy.md#no-such-section).\n", "no heading with anchor #no-such-section"),
        ("# Top\nSee [below](#bottom).\n", "no heading with anchor #bottom"),
        ("![diagram](docs/missing.png)\n", "does not exist"),
    ],
)
def test_link_check_catches(markdown: str, problem: str) -> None:
    problems = check_links(ROOT / "README.md", markdown)
    assert len(problems) == 1 and problem in problems[0]


def test_link_check_ignores_code_and_external_links() -> None:
    markdown = "`[x](nope.md)` and [site](https://example.org/x.md)\n```\n[y](nope.md)\n```\n"
    assert check_links(ROOT / "README.md", markdown) == []


def _drop_row(text: str, name: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(f"| `{name}`"))


CONFIGURATION_BREAKAGES: dict[str, tuple[Callable[[str], str], str]] = {
    "a query variable dropped": (lambda text: _drop_row(text, "QUERY_POOL_SIZE"), "services/query reads QUERY_POOL_SIZE"),
    "a common variable dropped": (lambda text: _drop_row(text, "NATS_URL"), "reads NATS_URL"),
    "a stale name": (lambda text: text.replace("| `QUERY_STREAM_IDLE_S` |", "| `QUERY_STREAM_IDLE` |"), "never reads it"),
    "a test variable renamed": (lambda text: text.replace("`TEST_MYSQL_URL`", "`TEST_MARIADB_URL`"), "tests/conftest.py reads TEST_MYSQL_URL"),
    "a section renamed": (lambda text: text.replace("## Session service", "## Sessions"), "no section '## Session service'"),
}


@pytest.mark.parametrize("breakage", sorted(CONFIGURATION_BREAKAGES))
def test_configuration_check_catches(breakage: str) -> None:
    breaking, problem = CONFIGURATION_BREAKAGES[breakage]
    text = CONFIGURATION.read_text()
    broken = breaking(text)
    assert broken != text
    problems = check_configuration(broken, service_env(), names_read_outside_services())
    assert any(problem in p for p in problems), problems


def test_default_check_catches_a_default_changed_on_one_side() -> None:
    text = CONFIGURATION.read_text()
    broken = text.replace("| `QUERY_POOL_SIZE` | `5` |", "| `QUERY_POOL_SIZE` | `6` |")
    assert broken != text
    assert check_declared_defaults(broken, service_settings()) == ["configuration.md shows QUERY_POOL_SIZE with default '6', but services/query declares '5'"]


def test_configuration_check_catches_a_variable_new_code_reads() -> None:
    env = service_env()
    env["gateway"] = env["gateway"] | {"GATEWAY_SETTING_NOBODY_DOCUMENTED"}
    problems = check_configuration(CONFIGURATION.read_text(), env, names_read_outside_services())
    assert problems == ["services/gateway reads GATEWAY_SETTING_NOBODY_DOCUMENTED, which configuration.md does not list under 'Gateway'"]


def test_doc_mention_check_catches_a_missing_page(tmp_path: Path) -> None:
    source = ROOT / "services" / "query" / "config.py"
    assert "docs/query.md" in source.read_text()
    broken = tmp_path / "config.py"
    broken.write_text(source.read_text().replace("docs/query.md", "docs/queries.md"))
    problems = check_doc_mentions([broken])
    assert len(problems) == 1 and "docs/queries.md, which does not exist" in problems[0]
