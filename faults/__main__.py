"""`python -m faults [--quick] [--database sqlite|postgresql] [--only a,c] [--seed N]`

Runs the fault scenarios one after the other, each on a fresh stack, prints what happens and a
table of figures, and exits 1 if any scenario lost, duplicated or disagreed on a check (or
could not recover), 0 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path

from faults.scenarios import LONG, QUICK, SCENARIOS, TITLES, Figures, run_scenario
from faults.stack import _kill_leftovers

COLUMNS = [
    ("scenario", lambda f: f"{SCENARIOS[f.scenario]} {f.scenario}"),
    ("db", lambda f: f.database[:6]),
    ("devices", lambda f: f.devices),
    ("faults", lambda f: f.faults),
    ("sessions", lambda f: f.sessions),
    ("sent", lambda f: f.sent),
    ("requests", lambda f: f.requests),
    ("acked", lambda f: f.acknowledged),
    ("persisted", lambda f: f.persisted),
    ("lost", lambda f: f.lost),
    ("dup", lambda f: f.duplicated),
    ("disagree", lambda f: f.disagreements),
    ("503", lambda f: f.answers_503),
    ("timeouts", lambda f: f.timeouts + f.conn_errors),
    ("in-fault", lambda f: f.across_fault),
    ("max ack s", lambda f: f.max_ack_s),
    ("time s", lambda f: f.seconds),
    ("result", lambda f: "ok" if f.ok else "FAIL"),
]


def table(figures: list[Figures]) -> str:
    rows = [[name for name, _ in COLUMNS]]
    rows += [[str(get(f)) for _, get in COLUMNS] for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def pick(only: str | None) -> list[str]:
    if not only:
        return list(SCENARIOS)
    by_letter = {v: k for k, v in SCENARIOS.items()}
    names = []
    for item in only.split(","):
        item = item.strip()
        name = by_letter.get(item, item)
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {item!r}: use {', '.join(SCENARIOS)} "
                             f"or {', '.join(SCENARIOS.values())}")
        names.append(name)
    return names


async def main_async(args: argparse.Namespace) -> list[Figures]:
    sizes = QUICK if args.quick else LONG
    out: list[Figures] = []
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(msg, flush=True)

    for name in pick(args.only):
        cfg = dataclasses.replace(sizes[name], seed=args.seed)
        for knob in ("devices", "faults", "duration"):
            if getattr(args, knob):
                cfg = dataclasses.replace(cfg, **{knob: getattr(args, knob)})
        say(f"\n== {TITLES[name]}: {cfg.devices} devices, {cfg.faults} fault(s), "
            f"{cfg.duration:.0f} s stream, {args.database}")
        fig = await run_scenario(name, cfg, args.database, say, keep=args.keep)
        out.append(fig)
        extra = ", ".join(f"{k} {v}" for k, v in fig.extra.items())
        say(f"-- {name}: {'ok' if fig.ok else 'FAIL'} in {fig.seconds} s; {extra}")
        for n in fig.notes:
            say(f"   note: {n}")
        for why in fig.failures:
            say(f"   FAILED: {why}")
    say(f"\nFault tests ({'quick' if args.quick else 'long'}, {args.database}, seed "
        f"{args.seed}) in {time.monotonic() - t0:.0f} s:\n")
    say(table(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m faults", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the short CI version (about 2 minutes); default: the long one")
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--only", help="comma-separated scenarios (names or letters a-e)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--devices", type=int, help="override the number of devices")
    ap.add_argument("--faults", type=int, help="override the number of faults per scenario")
    ap.add_argument("--duration", type=float, help="override the stream's length (s)")
    ap.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        figures = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("interrupted: every process of the stack has been stopped", file=sys.stderr)
        return 130
    finally:
        _kill_leftovers()
    if args.json:
        with contextlib.suppress(OSError):
            args.json.write_text(json.dumps([dataclasses.asdict(f) for f in figures],
                                            indent=2, default=str))
    return 0 if figures and all(f.ok for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
