#!/usr/bin/env bash
# The lowest open_clip_torch that pyproject.toml allows (3.0.0), checked once: a fresh venv with it, then the tests
# that touch open_clip (towers, weight formats, the model, the Detector). Usage: bash benchmarks/lowest_versions.sh
# Result goes into benchmarks/RESULTS.md by hand (it is a compatibility check, not a timing).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TMPDIR:-/tmp}/kanoclip-lowest"
rm -rf "$VENV"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.14.1 torchvision==0.29.1
python -m pip install -q -e '.[test]' 'open_clip_torch==3.0.0'
python -c "import open_clip; print('open_clip', open_clip.__version__)"
python -m pytest -q tests/test_backbone.py tests/test_model.py tests/test_clip_vv.py tests/test_detection.py "$@"
