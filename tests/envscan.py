"""Which environment variables the code reads, found by reading the code (ast), for the deploy and docs tests.

It understands the shared/config.py helpers (`env_str(env, "NAME", default)` ...), shared functions
that read names themselves, `os.environ[...]`, `environ.get(...)` and `os.getenv(...)`; and the settings
a service declares (`setting("NAME", default, doc)`, shared.config.declared), read from the classes themselves.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "session", "query")

ENV_READERS = {"env_str", "env_int", "env_float", "env_bool", "env_port"}
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def is_environ(node: ast.AST) -> bool:
    """`env`, `environ`, `os.environ` or `environ()`: the mappings config code reads from."""
    if isinstance(node, ast.Name):
        return node.id in {"env", "environ", "environment"}
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    if isinstance(node, ast.Call):
        return callee(node) == "environ"
    return False


def module_constants(tree: ast.Module) -> dict[str, Any]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant):
            out[node.targets[0].id] = node.value.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(node.value, ast.Constant):
            out[node.target.id] = node.value.value
    return out


def loop_values(tree: ast.AST) -> dict[str, set[str]]:
    """`for variable in ("A", "B")`: the names a loop variable takes, so `env.get(variable)` counts."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List, ast.Set)):
            out.setdefault(node.target.id, set()).update(s for e in node.iter.elts if (s := literal(e)))
    return out


def env_reads(tree: ast.AST, helpers: Mapping[str, set[str]], constants: Mapping[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """Env names read in `tree` (and their literal defaults): env_* helpers, shared helpers, os.environ."""
    loops = loop_values(tree)

    def names_of(node: ast.AST) -> set[str]:
        if (text := literal(node)) is not None:
            return {text}
        if isinstance(node, ast.Name):
            if isinstance(constants.get(node.id), str):
                return {constants[node.id]}
            return loops.get(node.id, set())
        return set()

    names: set[str] = set()
    defaults: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called, args = callee(node), node.args
            if called in ENV_READERS and len(args) >= 2 and (found := names_of(args[1])):
                names |= found
                if len(args) >= 3:
                    default = args[2].value if isinstance(args[2], ast.Constant) else constants.get(args[2].id) if isinstance(args[2], ast.Name) else None
                    defaults.update({name: default for name in found if default is not None})
            elif called is not None and called in helpers:
                names |= helpers[called]
            elif args and (called == "getenv" or (called in {"get", "pop"} and isinstance(node.func, ast.Attribute) and is_environ(node.func.value))):
                names |= names_of(args[0])
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            names |= names_of(node.slice)
    return {n for n in names if ENV_NAME.match(n)}, defaults


def parse_python(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@cache
def shared_env_helpers() -> dict[str, set[str]]:
    """Functions in shared/ that read env names themselves, e.g. a helper reading NATS_URL."""
    functions = []
    for path in sorted((ROOT / "shared").glob("*.py")):
        tree = parse_python(path)
        constants = module_constants(tree)
        functions += [(node, constants) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    helpers: dict[str, set[str]] = {}
    for _ in range(3):  # helpers calling helpers
        for node, constants in functions:
            names, _defaults = env_reads(node, helpers, constants)
            if names:
                helpers[node.name] = names
    return helpers


def service_modules(service: str) -> list[ast.Module]:
    directory = ROOT / "services" / service
    paths = sorted(directory.rglob("*.py"))
    assert (directory / "config.py").exists(), f"services/{service}/config.py does not exist yet"
    return [parse_python(path) for path in paths]


def settings_classes(service: str) -> list[type]:
    """The dataclasses of a service that declare settings (`setting(...)` fields, or the shared ServiceSettings)."""
    from shared.config import declared

    directory = ROOT / "services" / service
    out: list[type] = []
    for path in sorted(directory.rglob("*.py")):
        text = path.read_text()
        if "setting(" not in text and "ServiceSettings" not in text:
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        out += [value for value in vars(module).values() if isinstance(value, type) and value.__module__ == module.__name__ and dataclasses.is_dataclass(value) and declared(value)]
    return out


@cache
def code_env(service: str) -> tuple[frozenset[str], dict[str, Any]]:
    """The env names a service's code reads (declared settings and direct reads), and the defaults it gives them."""
    from shared.config import declared

    names: set[str] = set()
    defaults: dict[str, Any] = {}
    for tree in service_modules(service):
        found, found_defaults = env_reads(tree, shared_env_helpers(), module_constants(tree))
        names |= found
        defaults.update(found_defaults)
    for cls in settings_classes(service):
        for item in declared(cls):
            names.add(item.env)
            if item.value is not None:
                defaults[item.env] = str(item.value) if isinstance(item.value, Path) else item.value
    return frozenset(names), defaults
