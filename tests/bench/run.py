"""Run every benchmark module in this folder (``*_bench.py`` exposing ``run(out_dir, quick) -> dict``).

    python -m tests.bench.run --out bench-results [--quick] [--only model,service]

The runner writes ``<out>/<name>.json`` for each module (its result plus ``seconds``, or the error that
stopped it) and ``<out>/summary.json`` with all of them keyed by name. Exit status 1 if any module failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names of the bench modules here, e.g. ``["cli", "model", "operator", "service"]``."""
    return sorted(p.stem[: -len("_bench")] for p in HERE.glob("*_bench.py"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the yolo-v7 benchmarks")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder for JSON")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (seconds, not minutes)")
    p.add_argument("--only", default="", help="comma-separated bench names (default: all)")
    args = p.parse_args(argv)

    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            p.error(f"unknown bench {unknown}; available: {names}")
        names = [n for n in names if n in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("YOLO_ENGINE_CACHE"):  # exported CPU engines: never next to the shared fixtures
        os.environ["YOLO_ENGINE_CACHE"] = tempfile.mkdtemp(prefix="yolo-engines-")
    summary: dict[str, object] = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results: dict[str, object] = {}
    failed = False
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"tests.bench.{name}_bench")
            result = module.run(args.out, args.quick)
        except Exception as e:  # one broken bench must not hide the others
            failed = True
            result = {"error": repr(e), "traceback": traceback.format_exc()}
            print(f"[bench] {name} FAILED: {e!r}", file=sys.stderr)
        seconds = round(time.perf_counter() - t0, 1)
        if isinstance(result, dict):
            result.setdefault("seconds", seconds)
        results[name] = result
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"[bench] {name} done in {seconds}s", file=sys.stderr)
    summary["results"] = results
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[bench] wrote {args.out / 'summary.json'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
