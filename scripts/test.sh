#!/usr/bin/env bash
# Install everything the project needs into .venv, then lint, type-check, check the import layers and run the tests.
# This is the README's test command; CI (.ci/run) runs exactly this.
#
#   bash scripts/test.sh [--tier unit|integration|system|all] [pytest args...]
#
# The tiers are folders: tests/unit (library level, mirrors src/kanoclip; no subprocess, server or network),
# tests/integration (the CLI, serve, the station on SQLite) and tests/system (kills, torchrun, Ray, PostgreSQL,
# Chromium, export, and every test marked slow). The default, all, runs every tier. Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

tier=all
args=()
while (($#)); do
    case "$1" in
        --tier) tier="${2:?--tier needs unit, integration, system or all}"; shift 2 ;;
        --tier=*) tier="${1#--tier=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
case "$tier" in
    unit | integration | system) paths=("tests/$tier") ;;
    all) paths=() ;;  # pyproject's testpaths: every tier
    *) echo "scripts/test.sh: unknown tier '$tier' (unit, integration, system or all)" >&2; exit 2 ;;
esac

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[test]'
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy src
lint-imports
python -m pytest -q ${paths[@]+"${paths[@]}"} ${args[@]+"${args[@]}"}
