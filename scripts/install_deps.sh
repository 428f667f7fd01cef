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

# Python packages used by tests (real clients we did not write).
PY=${PYTHON:-python3}
PY_PACKAGES=(grpcio==1.* grpcio-tools==1.* grpcio-reflection==1.* grpcio-health-checking==1.*
             protobuf openai kubernetes-validate jinja2)
need_py=0
for mod in grpc grpc_tools grpc_reflection grpc_health google.protobuf openai kubernetes_validate jinja2; do
  if ! "$PY" -c "import $mod" >/dev/null 2>&1; then need_py=1; fi
done
if [ $need_py = 1 ]; then
  echo "install_deps: installing Python packages ${PY_PACKAGES[*]}"
  "$PY" -m pip install -q "${PY_PACKAGES[@]}"
else
  echo "install_deps: Python packages present"
fi
