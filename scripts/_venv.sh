# Sourced by the install scripts: use_venv FOLDER creates the virtual environment FOLDER
# when missing (with $PYTHON, default python3) and defines pip_install, a quiet pip of that
# environment that drops the warnings about absent find-links folders of this machine's pip
# configuration (pip prints one per package) and keeps everything else.
use_venv() {
    VENV_DIR="$1"
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$VENV_DIR"
    fi
    VENV_PY="$VENV_DIR/bin/python"
}

pip_install() {
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
