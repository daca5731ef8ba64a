"""`./dev.sh image`: build the worker image here and say how to run it (docs/deploying.md,
The image, built here)."""

from __future__ import annotations

import argparse
import shlex
import sys

from harness.image.build import build_image
from harness.image.run import hardened_run_argv
from harness.image.tools import containers_conf
from workers.stack.errors import StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev.sh image", description=__doc__)
    parser.add_argument(
        "--refresh-base",
        action="store_true",
        help="bootstrap the base image again (today's Debian security updates)",
    )
    parser.add_argument("--quiet", action="store_true", help="hide the tools' own output")
    arguments = parser.parse_args(argv)
    try:
        image = build_image(print, refresh_base=arguments.refresh_base, verbose=not arguments.quiet)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in image.seconds.items())
    print(f"{image.name} {image.image_id[:12]}, {image.size_bytes / 1e6:.0f} MB ({phases})")
    run = hardened_run_argv(image.name, ["workers", "run", "--list"])
    print("run it as the pods do (non-root, read-only root, /tmp a tmpfs, the host's network):")
    print(f"  CONTAINERS_CONF={containers_conf()} {shlex.join(run)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
