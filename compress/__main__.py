import os
import sys

try:  # importing torch takes a second or two: Ctrl-C then is no bug worth a traceback
    from .cli import main
except KeyboardInterrupt:
    print("python -m compress: interrupted", file=sys.stderr, flush=True)
    os._exit(130)  # at once: an import torch did not finish must not run its exit handlers

sys.exit(main())
