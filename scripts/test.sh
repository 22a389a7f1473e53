#!/usr/bin/env bash
# Install everything the project needs into .venv, then lint, type-check and run the test suite.
# This is the README's test command; CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[test]'
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy src
python -m pytest -q "$@"
