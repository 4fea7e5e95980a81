import os
import sys

try:  # importing torch (inside main, once the arguments are checked) takes a second or two
    from .cli import main

    code = main()
except KeyboardInterrupt:  # before main could answer it
    code = 130
    print("python -m compress: interrupted", file=sys.stderr, flush=True)
if code == 130:  # interrupted: leave at once, as an import of torch that did not finish must not run its exit handlers
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
