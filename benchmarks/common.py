"""Shared by the benchmark scripts: print a result as JSON and keep it in benchmarks/results/."""

import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What a timing was measured on: CPU, cores, load, and torch's version and threads when torch is loaded."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return info


def save_result(name: str, result: dict) -> None:
    """Print `result` with the machine it was measured on, and keep it as results/NAME.json."""
    text = json.dumps({**result, "machine": machine()}, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(text + "\n")
