# Sourced by the scripts: makes sure the project's environment (.venv) exists and matches uv.lock.
# Needs only python3 (3.11+) and the package registry; installs uv into .tools/ on first use.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$ROOT/.venv" UV_NO_PROGRESS=1

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "tocsin needs Python 3.11 or newer as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x "$ROOT/.tools/bin/uv" ]; then
  echo "setting up uv $UV_VERSION in .tools/ ..." >&2
  "$PYTHON" -m venv "$ROOT/.tools"
  "$ROOT/.tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
stamp="$ROOT/.venv/.synced"
if [ ! -f "$stamp" ] || [ "$ROOT/uv.lock" -nt "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "installing tocsin and its dependencies into .venv/ (from uv.lock) ..." >&2
  "$ROOT/.tools/bin/uv" sync --frozen --quiet --python "$(command -v "$PYTHON")" --project "$ROOT"
  touch "$stamp"
fi
VENV="$ROOT/.venv"
# Compiled bytecode is kept (under .cache/, out of the source tree) even where the environment turns it off
# (PYTHONDONTWRITEBYTECODE): the tests start many service processes, and each would compile every module again.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="$ROOT/.cache/pycache"
