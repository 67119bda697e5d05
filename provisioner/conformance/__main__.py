"""`python -m provisioner.conformance`: build the conformance suite and its test images for the
default Kubernetes release when they are not cached (scripts/test.sh runs it before the tests, as it
builds the bundle), printing what it does; nothing else."""

from __future__ import annotations

import sys
import time

from provisioner.bundle import cache_root
from provisioner.conformance.suite import ensure_suite, pinned_release
from provisioner.conformance.testimages import ensure_images
from provisioner.errors import ProvisionError


def main() -> int:
    started = time.monotonic()
    last = [0.0]

    def say(text: str) -> None:
        # Go names every package it compiles: one line in 20 s is enough for a log.
        if not text.startswith("suite: ") or "compiling" not in text or time.monotonic() - last[0] > 20:
            last[0] = time.monotonic()
            print(f"    {text}", flush=True)

    try:
        suite = ensure_suite(pinned_release(), cache_root() / "logs" / "conformance-build.log", say)
        images = ensure_images(suite, say)
    except ProvisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(
        f"conformance suite {suite.dir} and {len(images.made)} test images in {images.dir} "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
