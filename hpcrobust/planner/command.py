"""`hpcrobust plan`: arguments in, the plan (or a calibration) out; bad input is one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from hpcrobust.errors import UserError
from hpcrobust.planner.devices import DEFAULT_UTILISATION, GPUS, cores, pick_device

DESCRIPTION = ("What a sweep will cost, need and look like before it is submitted: nominal FLOPs per phase (as the"
               " run records them), peak memory per rank, device-hours and wall time on a GPU from the table, a"
               " stated FLOP/s rate or this CPU, the rank/group/job layout of `submit`, and warnings with fixes."
               " No model is loaded. --calibrate FILE measures the utilisation of a finished sweep and uses it.")


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("config", nargs="?", help="YAML config file (optional with --calibrate: then only the"
                   " utilisation is reported)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override a config key, as for `run`")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", metavar="NAME", help=f"time on a known device: {', '.join(GPUS)}, or cpu (this"
                     " machine, measured)")
    dev.add_argument("--device-flops", type=float, metavar="F", help="peak FLOP/s of the device instead")
    p.add_argument("--device-memory", type=float, metavar="GB", help="memory per device in GiB (with"
                   " --device-flops)")
    p.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION, metavar="U",
                   help=f"fraction of peak reached, for work no calibration covers (default {DEFAULT_UTILISATION})")
    p.add_argument("--accuracy", type=float, default=None, metavar="A", help="share of validation examples"
                   " classified correctly, which evaluation attacks attack (default: measured by --calibrate for the"
                   " sizes its file holds, else 1, an upper bound)")
    p.add_argument("--calibrate", metavar="FILE", help="results file of a finished sweep on the same device: its"
                   " FLOPs and wall times give the utilisation")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="FLOPs, memory, device-hours and layout of a sweep, before submitting",
                              description=DESCRIPTION)
    return configure(p)


def _checked(args: argparse.Namespace) -> None:
    if not 0 < args.utilisation <= 1:
        raise UserError(f"--utilisation: {args.utilisation:g} is not a fraction of peak in (0, 1]")
    if args.accuracy is not None and not 0 <= args.accuracy <= 1:
        raise UserError(f"--accuracy: {args.accuracy:g} is not a share in [0, 1]")
    if args.config is None and args.calibrate is None:
        raise UserError("plan: give a CONFIG (and optionally --calibrate FILE), or --calibrate FILE alone")


def device_for(cfg, args: argparse.Namespace):
    """The device to time on; a config without GPUs (or with parallel.device: cpu) is timed on this CPU."""
    launch, par = cfg.launch, cfg.parallel
    on_gpu = par.device == "cuda" or (launch.gpus_per_node > 0 and par.device != "cpu")
    threads = par.threads_per_rank or max(1, cores() // launch.tasks_per_node)
    return pick_device(args.gpu, args.device_flops, args.device_memory, on_gpu, threads, launch.tasks_per_node)


def plan_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from hpcrobust.config import load_config  # torch and the attack plug-ins: only once the command runs
    from hpcrobust.launch.plan import quote_times
    from hpcrobust.planner import build, render
    from hpcrobust.planner.calibrate import calibrate, stored_sweep

    out = out or sys.stdout
    _checked(args)
    cfg = load_config(args.config, quote_times(args.overrides)) if args.config else None
    device, how = device_for(cfg if cfg is not None else stored_sweep(args.calibrate), args)
    cal = calibrate(args.calibrate, device, build.run_plan_of) if args.calibrate else None
    if cfg is None:
        out.write(render.calibration_json(cal) if args.json else "\n".join(render.calibration_lines(cal)) + "\n")
        return 0
    opts = build.Options(args.accuracy, args.utilisation, cal)
    plan = build.plan_sweep(cfg, list(args.overrides), opts, device, how, args.config)
    out.write(render.as_json(plan, cal) if args.json else render.markdown(plan, cal))
    return 0
