"""CPU per warm manifest pull in process, with the group's signature policy off and on.

A warm pull by tag (cached, within the tag check interval) through the cache's core
(:class:`..cache.pull_through.PullThroughCache` on SQLite with the suite's fake upstream)
and the signature gate, as the registry route runs them: ``get_manifest`` then
``SignatureGate.check``. Measured as process CPU time per pull, so other processes on a
busy machine do not count. The signed image is the cosign vector
``tests/data/cosign/cimage-key-valid`` with its ``.sig`` tag; ``enforce`` trusts its key.

    python benchmarks/signature_gate.py [--pulls 20000] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import typing as t
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_dependency_proxy.cache.signing import SignatureGate  # noqa: E402
from flask_dependency_proxy.models.signatures import SignatureRecords  # noqa: E402
from tests.support.core import build_core, migrated_database  # noqa: E402
from tests.unit.test_signature_gate import ACCEPT, GROUP, KEY, PATH, _push_signed  # noqa: E402


def _per_pull(pull: t.Callable[[], None], pulls: int) -> float:
    """Microseconds of CPU per pull."""
    started = time.process_time()
    for _ in range(pulls):
        pull()
    return (time.process_time() - started) / pulls * 1e6


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pulls", type=int, default=20_000)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        template = migrated_database(directory / "template.sqlite")
        core = build_core(directory, template, tag_check_interval=3600)
        with core.app.app_context():
            gate = SignatureGate(
                records=SignatureRecords(lambda: core.metadata.session),
                database=core.metadata.database,
                roots=None,
                recheck_seconds=300,
                refresh_seconds=5,
            )
            _push_signed(core)

            def pull() -> None:
                result = core.cache.get_manifest(GROUP, PATH, "v1", ACCEPT)
                gate.check(core.cache, GROUP, PATH, "v1", result)
                core.cache.finish_request()
                core.metadata.release()

            def core_only() -> None:
                core.cache.get_manifest(GROUP, PATH, "v1", ACCEPT)
                core.cache.finish_request()
                core.metadata.release()

            result = core.cache.get_manifest(GROUP, PATH, "v1", ACCEPT)
            core.metadata.release()

            def check() -> None:
                gate.check(core.cache, GROUP, PATH, "v1", result)

            results: dict[str, list[float]] = {
                "pull, no gate": [],
                "pull, policy off": [],
                "pull, policy enforce (verified)": [],
                "gate check alone, policy off": [],
                "gate check alone, policy enforce (verified)": [],
                "one read of the policy row (each pull's cost before)": [],
            }

            def read_row() -> None:
                gate.records.policy(GROUP)
                core.metadata.release()

            for _ in range(args.repetitions):
                results["pull, no gate"].append(_per_pull(core_only, args.pulls))
                gate.use_default(GROUP)
                core.metadata.release()
                pull()
                results["pull, policy off"].append(_per_pull(pull, args.pulls))
                results["gate check alone, policy off"].append(_per_pull(check, args.pulls))
                gate.save_policy(GROUP, {"mode": "enforce", "keys": [{"pem": KEY}]})
                core.metadata.release()
                pull()  # verifies once; the rest are warm
                results["pull, policy enforce (verified)"].append(_per_pull(pull, args.pulls))
                results["gate check alone, policy enforce (verified)"].append(
                    _per_pull(check, args.pulls)
                )
                results["one read of the policy row (each pull's cost before)"].append(
                    _per_pull(read_row, args.pulls)
                )
            core.close()
    print(f"| measured | CPU µs each, median (min-max) of {args.repetitions} x {args.pulls} |")
    print("| --- | --- |")
    for name, values in results.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"| {name} | {statistics.median(values):.1f} ({spread}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
