"""``python -m ddpm_core.book.sample_sets_cli``: list the book's sample sets, or generate chosen ones.

    python -m ddpm_core.book.sample_sets_cli              each set, whether it is stored and up to date
    python -m ddpm_core.book.sample_sets_cli NAME ...     generate the named sets that are missing or out of date
    python -m ddpm_core.book.sample_sets_cli all --force  generate every set again

The sets themselves, and how a chapter reads them, are in ``ddpm_core.book.sample_sets``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddpm_core.book import sample_sets
from ddpm_core.book.sample_sets import SampleSet, sample_set, status, write_record
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import sha256_of


def main(argv: list[str] | None = None) -> int:
    """List the sample sets and their state; with names (or ``all``), generate those that are missing or out of
    date (``--force``: every one named)."""
    parser = argparse.ArgumentParser(prog="python -m ddpm_core.book.sample_sets_cli", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="sets to generate, or 'all'")
    parser.add_argument("--force", action="store_true", help="generate even the sets that are up to date")
    parser.add_argument("--settings", help=argparse.SUPPRESS)  # one set, as JSON, ...
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)  # ... from this checkpoint ...
    parser.add_argument("--into", help=argparse.SUPPRESS)  # ... stored in this file (how a bug's copy is run)
    args = parser.parse_args(argv)
    if args.settings:
        spec = SampleSet(**json.loads(args.settings))
        record = sample_sets.generate_set(spec, Path(args.checkpoint))
        write_record(Path(args.into), record, spec, sha256_of(args.checkpoint))
        return 0
    if not args.names:
        for name, spec in sample_sets.SAMPLE_SETS.items():
            print(f"{name:<30} {status(name):<18} {spec.what}")
        return 0
    names = list(sample_sets.SAMPLE_SETS) if args.names == ["all"] else args.names
    try:
        for name in names:
            sample_set(name)  # refuses an unknown name before anything is generated
        for name in names:
            if args.force or status(name) != "stored":
                _generate(name)
    except DDPMError as error:
        print(f"error: {error}")
        return 2
    return 0


def _generate(name: str) -> None:
    """Generate the set ``name`` from its checkpoint and store it in ``book/samples/``."""
    spec = sample_sets.SAMPLE_SETS[name]
    checkpoint = sample_sets.REPO / spec.checkpoint
    print(f"{name}: {spec.what}", flush=True)
    record = sample_sets.generate_set(spec, checkpoint)
    write_record(sample_sets.STORE / f"{name}.npz", record, spec, sha256_of(checkpoint))
    print(f"  {len(record.samples)} samples in {record.seconds:.0f} s, stored in book/samples/{name}.npz", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
