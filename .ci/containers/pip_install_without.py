"""Install a requirements file with everything it needs except some named distributions.

    python pip_install_without.py REQUIREMENTS [NAME ...]

pip has no option to leave a dependency out, so: resolve the whole set as pip would
(``pip install --dry-run --report``), drop the named distributions, install the rest exactly as
resolved with ``--no-deps``, then run ``pip check`` and fail on any unmet requirement other than
the dropped ones. Without names this is plain ``pip install -r REQUIREMENTS``.

The Dockerfile uses it to keep the CUDA pieces that torch's PyPI wheel pulls in but a CPU never
loads (triton, cuSOLVER, ...) out of the image.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PIP = [sys.executable, "-m", "pip"]
UNMET = re.compile(r"^\S+ \S+ requires (\S+), which is not installed\.$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(requirements: str, leave_out: list[str]) -> int:
    if not leave_out:
        return subprocess.call([*PIP, "install", "-r", requirements])
    dropped = {canonical(name) for name in leave_out}
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.check_call(
            [*PIP, "install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report), "-r", requirements]
        )
        resolved = [item["metadata"] for item in json.loads(report.read_text())["install"]]
        names = {canonical(meta["name"]) for meta in resolved}
        unknown = sorted(dropped - names)
        if unknown:  # a typo, a dependency that went away, or a CPU-only torch from another index
            print(f"note: {requirements} does not pull in {', '.join(unknown)}: nothing to leave out", flush=True)
        keep = [f"{meta['name']}=={meta['version']}" for meta in resolved if canonical(meta["name"]) not in dropped]
        print(
            f"installing {len(keep)} of {len(resolved)} distributions, leaving out {' '.join(sorted(dropped))}",
            flush=True,
        )
        pinned = Path(scratch) / "resolved.txt"
        pinned.write_text("\n".join(keep) + "\n")
        subprocess.check_call([*PIP, "install", "--no-deps", "-r", str(pinned)])
    check = subprocess.run([*PIP, "check"], capture_output=True, text=True)
    problems = []
    if check.returncode != 0:
        for line in filter(None, map(str.strip, check.stdout.splitlines())):
            unmet = UNMET.match(line)
            if not (unmet and canonical(unmet.group(1)) in dropped):
                problems.append(line)
    sys.stderr.write(check.stderr)
    if problems:
        print("error: pip check found problems beyond the left-out distributions:", *problems, sep="\n", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
