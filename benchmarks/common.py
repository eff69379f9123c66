"""Shared by the benchmark scripts: print a result as JSON and keep it in benchmarks/results/."""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(name: str, result: dict) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
