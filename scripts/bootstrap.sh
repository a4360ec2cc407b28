#!/bin/sh
# Create .venv with the interpreter in $PYTHON (python3 by default) and install the
# core and every integration in editable mode with their test dependencies.
set -eu
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "tracevault needs Python >= 3.10")'
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$@"
