#!/usr/bin/env bash
# A Python virtual environment with grpcio, for the test that drives a node's RPC from Python
# (other languages integrate through the .proto files). Created once in target/python-venv;
# prints the path of its python on stdout. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import grpc, grpc_tools" 2>/dev/null; then
  command -v python3 >/dev/null || { echo "python-env.sh: python3 is needed for the Python RPC client test" >&2; exit 1; }
  echo "python-env.sh: creating $venv with grpcio and grpcio-tools (from PyPI)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2' >&2
fi
echo "$(pwd)/$venv/bin/python"
