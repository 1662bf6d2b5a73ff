import sys

try:
    from edgecxr.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while still importing: no traceback
    print("edgecxr: error: interrupted; nothing was written", file=sys.stderr)
    sys.exit(130)

main()
