"""A part helper (``engine/copying/parts.py``) that says it is ready, takes its share and dies
without a result, as a helper killed by the OS would: the task must copy that share itself."""

import sys

if __name__ == "__main__":
    sys.stdin.readline()
    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    sys.stdin.readline()
    sys.exit(3)
