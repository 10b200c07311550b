"""``python -m charter.sim NAME --port P [--host H] [--hub URL] [--seed N]``."""

from __future__ import annotations

import argparse
import sys

from charter.sim._run import SIM_NAMES, run_sim


def main(argv: list[str] | None = None) -> int:
    """Serve one simulator; answer 2 with a one-line error for an unknown name."""
    parser = argparse.ArgumentParser(
        prog="python -m charter.sim", description="Serve a simulated business system."
    )
    parser.add_argument("name", help=f"which simulator: {', '.join(SIM_NAMES)}")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--hub", default=None, help="hub URL the CRM and warehouse push to")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.name not in SIM_NAMES:
        print(
            f"charter.sim: unknown simulator {args.name!r}; choose one of {', '.join(SIM_NAMES)}",
            file=sys.stderr,
        )
        return 2
    run_sim(args.name, host=args.host, port=args.port, hub_url=args.hub, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
