"""Command line: ``pyro-fusion fuse`` (fuse saved client files) and ``pyro-fusion demo``."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional

from . import __version__
from .deprecation import warn
from .price import RULES


def _output_problem(output: str, clients: List[str]) -> Optional[str]:
    """Why the fused posterior cannot be written to ``output`` (checked before fusing), or None."""
    if os.path.isdir(output):
        return f"-o {output}: is a folder, expected a file name"
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        return f"-o {output}: the folder {folder} does not exist"
    for path in clients:
        same = os.path.exists(output) and os.path.exists(path) and os.path.samefile(path, output)
        if same or os.path.abspath(path) == os.path.abspath(output):
            return f"-o {output}: is the client file {path}, which would be overwritten"
    return None


def _fuse(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from .adapters.guide import fuse_posteriors
    from .io import brief
    from .posterior import GuidePosterior

    if len(args.clients) < 2:
        print(f"pyro-fusion fuse: needs at least two client files, got {len(args.clients)}", file=sys.stderr)
        return 2
    problem = _output_problem(args.output, args.clients)
    if problem is not None:
        print(f"pyro-fusion fuse: {problem}", file=sys.stderr)
        return 2
    posteriors = []
    for path in args.clients:
        try:
            posteriors.append(GuidePosterior.load(path))
        except (FileNotFoundError, ValueError) as e:
            print(f"pyro-fusion fuse: {e}", file=sys.stderr)
            return 2
    try:
        fused = fuse_posteriors(
            posteriors,
            direction=args.direction,
            num_global=args.num_global,
            price=args.price,
            combine="average",
            seed=args.seed,
        )
    except ValueError as e:
        names = ", ".join(f"client {j} = {p}" for j, p in enumerate(args.clients))
        print(brief(f"pyro-fusion fuse: {e} ({names})"), file=sys.stderr)
        return 2
    try:
        fused.posterior.save(args.output)
    except (OSError, SafetensorError) as e:
        print(f"pyro-fusion fuse: -o {args.output}: cannot write ({e})", file=sys.stderr)
        return 2
    summary = {"output": args.output, "clients": len(posteriors), "num_global": fused.num_global}
    if fused.result is not None:
        summary.update(
            support=fused.result.support.tolist(),
            objective=fused.result.objective[-1],
            converged=fused.result.converged,
        )
    print(json.dumps(summary))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .apps.mocap import FIGURE_FILE, METRICS_FILE, format_table, run_demo

    for old, new in (("steps", "num_steps"), ("em_rounds", "num_rounds")):
        if getattr(args, old) is not None:
            warn(f"pyro-fusion demo --{old.replace('_', '-')}", f"--{new.replace('_', '-')}")
            setattr(args, new, getattr(args, old))
    out = args.out or None  # --out '' writes no files
    try:
        metrics = run_demo(seed=args.seed, out=out, num_steps=args.num_steps, num_rounds=args.num_rounds)
    except ModuleNotFoundError as e:  # matplotlib, checked before any work
        print(f"pyro-fusion demo: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if out is not None:
        print(f"wrote {os.path.join(out, METRICS_FILE)} and {os.path.join(out, FIGURE_FILE)}")
    return 0


def _price(text: str):
    if text in RULES:
        return text
    try:
        price = float(text)
    except ValueError:
        price = math.nan
    if not (math.isfinite(price) and price > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number or a rule of {RULES}, got {text!r}")
    return price


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}")
        return value

    return parse


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``pyro-fusion`` console script."""
    parser = argparse.ArgumentParser(prog="pyro-fusion", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    fuse = sub.add_parser("fuse", help="fuse client files saved by GuidePosterior.save")
    fuse.add_argument("clients", nargs="+", help="client .safetensors files (at least two)")
    fuse.add_argument("-o", "--output", required=True, help="where to write the fused posterior (a new file)")
    fuse.add_argument("--direction", choices=["reverse", "forward"], default="reverse")
    fuse.add_argument("--num-global", type=_int_at_least(1), default=None, help="parametric mode: number of globals")
    fuse.add_argument(
        "--price",
        type=_price,
        default=None,
        help="price of a global component: a number or a rule, " + ", ".join(RULES) + " (default: counterpart)",
    )
    fuse.add_argument("--seed", type=_int_at_least(0), default=0)
    fuse.set_defaults(run=_fuse)

    demo = sub.add_parser("demo", help="fuse per-sequence HMMs on the CMU mocap6 data")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default=".", help="folder for metrics.json and the PNG ('': write no files)")
    demo.add_argument("--num-steps", type=int, default=None, help="SVI steps per local fit")
    demo.add_argument("--num-rounds", type=int, default=10, help="federated EM rounds after fusion")
    demo.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)  # deprecated
    demo.add_argument("--em-rounds", type=int, default=None, help=argparse.SUPPRESS)  # deprecated
    demo.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
