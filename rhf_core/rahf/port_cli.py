"""`python -m rhf_core convert-port`: the authors' published RAHF weights → a checkpoint folder.

Wired into the command line by `add_convert_port_command(sub)` in rhf_core/__main__.py's build_parser."""

from __future__ import annotations

import argparse


def add_convert_port_command(subparsers) -> argparse.ArgumentParser:
    c = subparsers.add_parser("convert-port", help="convert the RichHF port's published weights (model.pt) into a "
                                                   "checkpoint folder that load_rahf and the sidebar read offline")
    c.add_argument("checkpoint", help="the port's model.pt: a plain state_dict, read with torch.load(weights_only=True)")
    c.add_argument("--vit", default="google/vit-large-patch16-384",
                   help="hub id or local folder of the ViT it was trained with (its config and processor are read)")
    c.add_argument("--t5", default="t5-base",
                   help="hub id or local folder of the T5 it was trained with (its config and tokenizer are read)")
    c.add_argument("--out", default="cache/richhf-port", help="new folder to write (must not exist or be empty)")
    c.set_defaults(func=run_convert_port)
    return c


def run_convert_port(args) -> None:
    # torch and transformers load only when this command runs, not when the parser is built
    from rhf_core.rahf.port import convert_port

    out = convert_port(args.checkpoint, vit=args.vit, t5=args.t5, out=args.out)
    print(f"converted {args.checkpoint} into {out}: pick it in the sidebar's 'RAHF checkpoint' box, or "
          f"load_rahf({str(out)!r})")
