#!/usr/bin/env python3
"""Vendor cytoscape.js from npm into idstitch/http/static/, for the explorer page.

    python3 scripts/update_cytoscape.py 3.35.0     # that version of the npm package cytoscape

Needs npm. The package is fetched with `npm pack` into a temporary directory and removed;
only its minified build (`dist/cytoscape.min.js`, served as /explorer/cytoscape.min.js) and
its MIT licence are copied, byte for byte, over cytoscape.min.js and cytoscape.LICENSE.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "idstitch" / "http" / "static"
PACKAGE = "cytoscape"
# What the package holds -> where idstitch keeps it.
FILES = {
    "dist/cytoscape.min.js": STATIC / "cytoscape.min.js",
    "LICENSE": STATIC / "cytoscape.LICENSE",
}


def unpack(spec: str, work: Path) -> Path:
    """`npm pack` of `spec`, unpacked into `work`; the package directory."""
    args = ["npm", "pack", "--silent", spec, "--pack-destination", str(work)]
    done = subprocess.run(args, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr.strip()}")
    archive = work / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        tar.extractall(work / "unpacked", filter="data")
    return work / "unpacked" / "package"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="a release of the npm package cytoscape, e.g. 3.35.0")
    version = parser.parse_args().version
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        sys.exit(f"{version!r} is not a release version (x.y.z); name one, e.g. 3.35.0.")
    with tempfile.TemporaryDirectory(prefix="cytoscape-") as tmp:
        package = unpack(f"{PACKAGE}@{version}", Path(tmp))
        found = {name: package / name for name in FILES}
        missing = [name for name, path in found.items() if not path.is_file()]
        if missing:
            sys.exit(f"{PACKAGE}@{version} holds no {', '.join(missing)}; check its layout.")
        contents = {name: path.read_bytes() for name, path in found.items()}
    for name, target in FILES.items():
        target.write_bytes(contents[name])
        print(f"{PACKAGE} {version}: {name} -> {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
