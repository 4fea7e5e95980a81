import sys

try:  # importing torch takes a second or two: Ctrl-C then is no bug worth a traceback
    from .cli import main
except KeyboardInterrupt:
    print("python -m compress: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
