"""``make bench``: every benchmark, each against a server of its own (turn-taking
needs none), then the summary page. About 30 minutes on 2 cores (the load run
alone takes 5).

    python -m bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench import report
from bench.harness import RESULTS
from sonicgate.engines.local.cpu import read_cpu
from sonicgate.models import Kind, names

BENCHMARKS = (
    ("local_latency", ()),
    ("local_barge_in", ()),
    ("turn_taking", ("--ask-ms", "200", "--thresholds", "0.5", "0.9", "--unsure", "0.7", "0.9")),
    ("turn_taking", ("--voice", "joe", "--unsure", "0.7", "0.9")),
    ("turn_taking", ("--voice", "espeak", "--unsure", "0.7", "0.9")),
    ("stt_window", ()),
    ("answers", ()),
    ("nova_overhead", ()),
    ("phone", ()),
    ("load", ()),
    ("capacity", ()),
)
QUICK = {
    "answers": ("--llm", names(Kind.LLM)[0], "--prompt", "default"),
    "load": ("--minutes", "1"),
    "local_latency": ("--turns", "20"),
    "phone": ("--turns", "5", "--seconds", "20"),
}


def warn_of_other_machines() -> None:
    """Figures on file from another CPU are not this machine's: say so before they
    are compared with, or replaced by, this run's."""
    here = read_cpu()
    for path in sorted(RESULTS.glob("*.json")):
        machine = json.loads(path.read_text()).get("machine", {})
        theirs = (machine.get("model"), machine.get("cores"))
        if theirs != (here.model, here.cores):
            print(
                f"warning: {path.name} came from {theirs[0] or 'an unrecorded CPU'} "
                f"({theirs[1] or '?'} cores), not this {here.model} ({here.cores} cores)",
                file=sys.stderr,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 1-minute load run instead of 5")
    args = parser.parse_args()
    warn_of_other_machines()
    for name, options in BENCHMARKS:
        chosen = QUICK.get(name, options) if args.quick else options
        print(f"==> bench.{name} {' '.join(chosen)}", file=sys.stderr, flush=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", f"bench.{name}", *chosen], check=True)
        print(f"    {time.monotonic() - started:.0f} s", file=sys.stderr)
    report.main()


if __name__ == "__main__":
    main()
