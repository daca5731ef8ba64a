"""`python -m workers.registry_cli LOADER ARGS...`: the `workers` CLI over another registry.

LOADER is `package.module:function` returning a `ConsumerRegistry`. Tests use it to run
their own consumers through exactly the production code path.
"""

import sys

from workers.cli import make_cli

if __name__ == "__main__":
    make_cli(sys.argv[1])(args=sys.argv[2:], prog_name="workers")
