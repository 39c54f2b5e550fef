"""Installed size of Kanari's dependency closure: the core (what the operator image installs) against core plus
the extras the image used to carry (kfp, scikit-learn, matplotlib, pyarrow).

Measured from the installed distributions' RECORD files in this environment (no download): the closure is
followed through each distribution's Requires-Dist, markers evaluated here, extras ignored.

    python scripts/deps_size.py            # prints a summary; -o json for the numbers
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
FORMER = ["kfp>=2.7", "scikit-learn>=1.4", "matplotlib>=3.8", "pyarrow>=15"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> dict[str, int]:
    """Distribution name -> installed bytes, for the requirements and everything they require."""
    seen: dict[str, int] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            seen[name] = 0
            continue
        seen[name] = sum((f.size or 0) for f in dist.files or [])
        for dep in dist.requires or []:
            r = Requirement(dep)
            if not r.marker or r.marker.evaluate({"extra": ""}):
                todo.append(r)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", choices=("json",), default=None)
    args = parser.parse_args()
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    now, before = closure(core), closure([*core, *FORMER])
    result = {"core_mb": round(sum(now.values()) / 1e6, 1), "core_packages": len(now),
              "with_former_extras_mb": round(sum(before.values()) / 1e6, 1), "with_former_extras_packages": len(before),
              "largest_core": sorted(((k, round(v / 1e6, 1)) for k, v in now.items()), key=lambda kv: -kv[1])[:8],
              "removed": sorted(set(before) - set(now))}
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"core dependencies: {result['core_mb']} MB in {result['core_packages']} distributions")
        print(f"with kfp, scikit-learn, matplotlib, pyarrow: {result['with_former_extras_mb']} MB in "
              f"{result['with_former_extras_packages']} distributions")
        print("largest core: " + ", ".join(f"{k} {v} MB" for k, v in result["largest_core"]))
        print("no longer in the image: " + ", ".join(result["removed"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
