#!/usr/bin/env python3
"""Vendor Segment's browser library from npm into idstitch/http/static/analytics-next/.

    python3 scripts/update_analytics_js.py            # the version in VERSION again
    python3 scripts/update_analytics_js.py 1.85.0     # another version of @segment/analytics-next

Needs npm and node. Everything is installed into a temporary directory and removed; only the
files idstitch serves, their licences and a README are written. The scripts are copied
byte for byte: what idstitch changes when it serves them (the write key, where the library
loads its parts from) is done per request by idstitch/http/library.py, through the hooks the
library itself offers, and this script checks those hooks are still there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "idstitch" / "http" / "static" / "analytics-next"
PACKAGE = "@segment/analytics-next"
# The classic snippet as Segment's own generator renders it (for the README and the tests).
SNIPPET_PACKAGE = "@segment/snippet"
SNIPPET_VERSION = "5.2.1"
SNIPPET_HOST = "IDSTITCH_HOST"
SNIPPET_KEY = "YOUR_WRITE_KEY"
# What library.py relies on in the two entry scripts, which fix the chunks' URL when they run.
ENTRIES = ("standalone.js", "index.js")
HOOKS = {
    "standalone.js": [b'window.analyticsWriteKey="__WRITE_KEY__"', b'+"/analytics-next/bundles/"'],
    "index.js": [b'+"/analytics-next/bundles/"'],
}
CDN_HOOK = b"._cdn"  # getCDN() reads window.analytics._cdn before anything else

README = """# Segment's browser library, vendored

`bundles/` holds the UMD build of the npm package `{package}` version {version} (its
`dist/umd/*.js`, unchanged; source maps left out), under the MIT licence in `LICENSE`:

- `standalone.js`: what the classic snippet loads as
  `/analytics.js/v1/<writeKey>/analytics.min.js`;
- `index.js`: the same library as a global `AnalyticsNext`, for pages without a bundler;
- `*.bundle.<hash>.js`: the parts both load on demand (trackLink and trackForm, the
  `?ajs_uid=` query string, destinations, middleware).

`snippet/snippet.min.js` is the classic snippet rendered by `{snippet}` {snippet_version}
(MIT, `snippet/LICENSE`) with host `{host}` and write key `{key}`.

idstitch serves these files as they are, except that it sets the write key in
`analytics.min.js` (the `__WRITE_KEY__` placeholder Segment's CDN fills the same way) and
puts one statement before the two entry scripts: it sets `window.analytics._cdn` (the
library's own setting for where it loads its parts and settings from) to the server the
script came from, unless the page has set it. See idstitch/http/library.py.

Update with `python3 scripts/update_analytics_js.py [VERSION]` (npm and node needed).
"""


def run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def unpack(spec: str, work: Path) -> Path:
    """`npm pack` of `spec`, unpacked into `work`; the package directory."""
    name = run(["npm", "pack", "--silent", spec, "--pack-destination", str(work)], work)
    archive = work / name.strip().splitlines()[-1]
    target = work / archive.stem
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def render_snippet(work: Path) -> str:
    """The classic snippet, from @segment/snippet's own renderer."""
    spec = f"{SNIPPET_PACKAGE}@{SNIPPET_VERSION}"
    install = ["npm", "install", "--silent", "--no-save", "--no-audit", "--no-fund"]
    run([*install, "--ignore-scripts", "--prefix", str(work), spec], work)
    options = json.dumps({"host": SNIPPET_HOST, "apiKey": SNIPPET_KEY})
    code = f"process.stdout.write(require('{SNIPPET_PACKAGE}').min({options}))"
    return run(["node", "-e", code], work) + "\n"


def check(bundles: dict[str, bytes]) -> None:
    for entry in ENTRIES:
        if entry not in bundles:
            sys.exit(f"dist/umd/{entry} is missing: idstitch serves it; check the package layout.")
        for hook in HOOKS[entry]:
            count = bundles[entry].count(hook)
            if count != 1:
                sys.exit(
                    f"dist/umd/{entry} holds {hook.decode()!r} {count} times, not once: "
                    "idstitch/http/library.py relies on it; review it before vendoring."
                )
        if CDN_HOOK not in bundles[entry]:
            sys.exit(
                f"dist/umd/{entry} no longer reads {CDN_HOOK.decode()!r}: "
                "idstitch/http/library.py relies on it; review it before vendoring."
            )
    # Every part an entry script can load must be vendored.
    for entry in ENTRIES:
        for name in chunk_names(bundles[entry]):
            if name not in bundles:
                sys.exit(f"dist/umd/{entry} loads {name}, which the package does not hold.")


def chunk_names(script: bytes) -> list[str]:
    """The file names in webpack's chunk map: `({id:"name",...}[t]||t)+".bundle."+{id:"hash"}`."""
    found = re.search(
        rb'\(\{([^}]*)\}\[\w+\]\|\|\w+\)\+"\.bundle\."\+\{([^}]*)\}\[\w+\]\+"\.js"', script
    )
    if found is None:
        sys.exit("no chunk map found in an entry script; review the package before vendoring.")
    names = dict(re.findall(rb'(\d+):"([^"]+)"', found.group(1)))
    hashes = re.findall(rb'(\d+):"([0-9a-f]+)"', found.group(2))
    return [f"{names.get(i, i).decode()}.bundle.{h.decode()}.js" for i, h in hashes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="default: the version in VERSION")
    version = parser.parse_args().version or (TARGET / "VERSION").read_text().strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        sys.exit(f"{version!r} is not a release version (x.y.z); name one, e.g. 1.84.3.")
    with tempfile.TemporaryDirectory(prefix="analytics-next-") as tmp:
        work = Path(tmp)
        package = unpack(f"{PACKAGE}@{version}", work)
        umd = package / "dist" / "umd"
        bundles = {p.name: p.read_bytes() for p in sorted(umd.glob("*.js"))}
        check(bundles)
        snippet = render_snippet(work)
        licence = (package / "LICENSE.MD").read_bytes()
        snippet_licence = (work / "node_modules" / "@segment" / "snippet" / "LICENSE").read_bytes()
    shutil.rmtree(TARGET / "bundles", ignore_errors=True)
    (TARGET / "bundles").mkdir(parents=True)
    for name, content in bundles.items():
        (TARGET / "bundles" / name).write_bytes(content)
    (TARGET / "snippet").mkdir(exist_ok=True)
    (TARGET / "snippet" / "snippet.min.js").write_text(snippet)
    (TARGET / "snippet" / "LICENSE").write_bytes(snippet_licence)
    (TARGET / "LICENSE").write_bytes(licence)
    (TARGET / "VERSION").write_text(version + "\n")
    (TARGET / "README.md").write_text(
        README.format(
            package=PACKAGE,
            version=version,
            snippet=SNIPPET_PACKAGE,
            snippet_version=SNIPPET_VERSION,
            host=SNIPPET_HOST,
            key=SNIPPET_KEY,
        )
    )
    print(f"{PACKAGE} {version}: {len(bundles)} scripts in {TARGET.relative_to(ROOT)}/bundles")


if __name__ == "__main__":
    main()
