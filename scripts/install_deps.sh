#!/usr/bin/env bash
# Installs every build and test dependency of pdserve from Debian's packages
# and PyPI. Idempotent: packages already present are not reinstalled.
set -euo pipefail

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git unzip curl
  clang lld libclang-rt-14-dev clang-format clang-tidy
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libicu-dev libutf8proc-dev
  libboost-dev libboost-system-dev libboost-program-options-dev libssl-dev openssl
  iproute2 python3 python3-pip
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install_deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: Debian packages present"
fi

# Python packages used by tests (real clients we did not write) and by the
# benchmark tools (gguf + numpy: tools/make_dummy_gguf.py).
PY=${PYTHON:-python3}
PY_PACKAGES=(grpcio==1.* grpcio-tools==1.* grpcio-reflection==1.* grpcio-health-checking==1.*
             protobuf openai kubernetes-validate jinja2 numpy gguf)
need_py=0
for mod in grpc grpc_tools grpc_reflection grpc_health google.protobuf openai kubernetes_validate jinja2 \
           numpy gguf; do
  if ! "$PY" -c "import $mod" >/dev/null 2>&1; then need_py=1; fi
done
if [ $need_py = 1 ]; then
  echo "install_deps: installing Python packages ${PY_PACKAGES[*]}"
  "$PY" -m pip install -q "${PY_PACKAGES[@]}"
else
  echo "install_deps: Python packages present"
fi

# Structured outputs (issue 16): jsonschema validates what the server
# returns in the SDK tests.
if ! "$PY" -c "import jsonschema" >/dev/null 2>&1; then
  echo "install_deps: installing Python package jsonschema"
  "$PY" -m pip install -q jsonschema
fi

# xgrammar's C++ core (JSON schema -> grammar -> per-token bitmask), from its
# PyPI sdist, pinned by version and sha256. Only cpp/, include/ and
# 3rdparty/{picojson,dlpack} are compiled, by engine/grammar/CMakeLists.txt;
# no Python. CMake finds it at PDSERVE_XGRAMMAR_DIR (default below).
XGRAMMAR_VERSION=0.2.9
XGRAMMAR_SHA256=87b466bca2475e29bb0323abc62c6c33cbcbcff47e5fb800a3e2099ac9620b90
XGRAMMAR_URL=https://files.pythonhosted.org/packages/3a/2f/5bf8e8fa6619cff534932f79b0abc81a417d354bc5093252c1a6081d0a93/xgrammar-${XGRAMMAR_VERSION}.tar.gz
DEPS_DIR=${PDSERVE_DEPS_DIR:-$HOME/.cache/pdserve/deps}
if [ ! -f "$DEPS_DIR/xgrammar-${XGRAMMAR_VERSION}/include/xgrammar/xgrammar.h" ]; then
  echo "install_deps: fetching xgrammar ${XGRAMMAR_VERSION} into $DEPS_DIR"
  mkdir -p "$DEPS_DIR"
  tmp=$(mktemp "$DEPS_DIR/xgrammar.XXXXXX.tar.gz")
  curl -fsSL --retry 3 -o "$tmp" "$XGRAMMAR_URL"
  if ! echo "${XGRAMMAR_SHA256}  $tmp" | sha256sum -c --quiet -; then
    rm -f "$tmp"
    echo "install_deps: xgrammar sdist checksum mismatch" >&2
    exit 1
  fi
  tar -xzf "$tmp" -C "$DEPS_DIR"
  rm -f "$tmp"
else
  echo "install_deps: xgrammar ${XGRAMMAR_VERSION} present"
fi
