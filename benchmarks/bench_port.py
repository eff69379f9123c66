"""Speed of the RichHF port's predictor at 384 px on CPU, for a tiny config, printed as JSON (and saved to
benchmarks/results/port.json).

The port's architecture with tiny widths (ViT hidden 32 × 2 layers at 384 px / patch 16, so the real 24 × 24
token grid and 384 × 384 heatmaps; T5 d_model 64 × 2 layers; heads 16/8 channels wide) and random weights,
saved as a `.pt` state_dict with the port's key names and loaded through `load_port`. It times the whole
`predict` (decode, resize, encoder, heads, greedy decoding, word parsing, resizing maps back) at batch
sizes 1 and 8. Random weights write an arbitrary number of tokens, so the generated length is reported.
Not the published model's speed: ViT-L + T5-base are ~600 M parameters, about 200× this one.

    python benchmarks/bench_port.py [--images 16] [--max-new-tokens 100] [--threads 1]

On a shared, loaded machine pass --threads 1: two torch threads spin-waiting on each other made the same
run 20× slower here (load average 11 on 2 cores). The load average is recorded with the result.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rhf_core.rahf.port import PortConfig, RichHFPort, build_tiny_backbones, load_port  # noqa: E402

from common import save_result  # noqa: E402

PROMPTS = ["a red cat on the grass", "two blue dogs in the sky at night", "a green circle", "the dog, on a cat."]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import T5Config, ViTConfig

    with tempfile.TemporaryDirectory() as tmp:
        vit, t5 = build_tiny_backbones(tmp, image_size=384, patch_size=16,
                                       words=" ".join(PROMPTS).replace(",", "").replace(".", "").split())
        cfg = PortConfig(heatmap_conv_widths=(16, 8), heatmap_up_widths=(16, 8, 8, 8), heatmap_last_width=8,
                         score_mlp_widths=(16, 8))
        torch.manual_seed(0)
        torch.save(RichHFPort(cfg, ViTConfig.from_pretrained(vit), T5Config.from_pretrained(t5)).state_dict(),
                   Path(tmp) / "model.pt")
        port = load_port(Path(tmp) / "model.pt", vit=str(vit), t5=str(t5), device="cpu")
    port.generation.max_new_tokens = args.max_new_tokens
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)) for _ in range(args.images)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    port.predict(images[:2], prompts[:2])  # warm-up
    result = {"what": "tiny RichHF-port config, random weights, 384 px input, whole predict()",
              "parameters": int(sum(p.numel() for p in port.model.parameters())),
              "device": "cpu", "dtype": str(port.dtype), "torch_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(), "torch": torch.__version__,
              "images": args.images, "max_new_tokens": args.max_new_tokens}
    for bs in (1, 8):
        t = time.perf_counter()
        preds = port.predict(images, prompts, batch_size=bs)
        result[f"batch_{bs}_images_per_s"] = round(args.images / (time.perf_counter() - t), 2)
    tokens = [len(port.tokenizer(p.meta["generated_text"]).input_ids) for p in preds]
    result["generated_tokens_per_image_mean"] = round(float(np.mean(tokens)), 1)
    save_result("port", result)


if __name__ == "__main__":
    main()
