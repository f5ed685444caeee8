"""``python -m ddpm_core.book.sample_sets_cli``: list the book's sample sets, or generate chosen ones.

    python -m ddpm_core.book.sample_sets_cli              each set, whether it is stored and up to date
    python -m ddpm_core.book.sample_sets_cli NAME ...     generate the named sets that are missing or out of date
    python -m ddpm_core.book.sample_sets_cli all --force  generate every set again

A stored file that cannot be read is listed as "unreadable" and named on stderr (exit status 2);
generating its set replaces it. Both commands need a checkout of the repository (``book/samples`` beside
the package), and say so in one line when run from an installed package. The sets themselves, and how a
chapter reads them, are in ``ddpm_core.book.sample_sets``.
"""

from __future__ import annotations

import argparse
import json

from ddpm_core.book import sample_sets
from ddpm_core.book.checkout import require_checkout
from ddpm_core.book.sample_sets import SampleSet, sample_set, status, write_record
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import sha256_of
from ddpm_core.utils.scripts import run_script

PROG = "python -m ddpm_core.book.sample_sets_cli"


def main(argv: list[str] | None = None) -> int:
    """List the sample sets and their state; with names (or ``all``), generate those that are missing or out of
    date (``--force``: every one named)."""
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("names", nargs="*", help="sets to generate, or 'all'")
    parser.add_argument("--force", action="store_true", help="generate even the sets that are up to date")
    parser.add_argument("--settings", help=argparse.SUPPRESS)  # one set, as JSON, ...
    parser.add_argument("--checkpoint", type=arguments.file_path, help=argparse.SUPPRESS)  # ... from this checkpoint
    parser.add_argument("--into", type=arguments.file_path, help=argparse.SUPPRESS)  # ... into this file (a bug's copy)
    args = parser.parse_args(argv)
    if args.settings is not None:
        return _generate_one(parser, args)
    names = list(sample_sets.SAMPLE_SETS) if args.names == ["all"] else args.names
    for name in names:
        sample_set(name)  # refuses an unknown name before anything is generated
    bugs = any(sample_sets.SAMPLE_SETS[name].bug is not None for name in names)
    require_checkout(PROG, git=bugs)  # a set with a bug is generated in a copy of the git checkout
    if not names:
        _list()
        return 0
    for name in names:
        if args.force or status(name) != "stored":
            _generate(name)
    return 0


def _list() -> None:
    """Print each set and its state; then refuse, in one line, the stored files that cannot be read."""
    unreadable = []
    for name, spec in sample_sets.SAMPLE_SETS.items():
        state = status(name)
        print(f"{name:<30} {state:<18} {spec.what}")
        unreadable += [name] if state == "unreadable" else []
    if unreadable:
        files = ", ".join(f"book/samples/{name}.npz" for name in unreadable)
        raise DDPMError(f"{files} cannot be read as sample sets (truncated or changed). Generate them again with "
                        f"`{PROG} {' '.join(unreadable)}` (which replaces them), or restore the committed ones with "
                        f"`git checkout {files.replace(',', '')}`.")


def _generate_one(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The set that ``--settings`` defines, from ``--checkpoint``, stored in ``--into``: how a scratch copy of the
    repository with a bug in it generates a set (``sample_sets._generate_with_bug``)."""
    if args.checkpoint is None or args.into is None or args.names:
        parser.error("--settings takes --checkpoint and --into, and no set names")
    try:
        spec = SampleSet(**json.loads(args.settings))
    except (ValueError, TypeError) as error:
        raise DDPMError(f"--settings is not the JSON of a sample set's settings ({error}).") from None
    record = sample_sets.generate_set(spec, args.checkpoint)
    write_record(args.into, record, spec, sha256_of(args.checkpoint))
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
