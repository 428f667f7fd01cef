#!/usr/bin/env bash
# Builds the libraries ThreadSanitizer must see inside of: Abseil and gRPC,
# each from Debian's own source package of the version installed (the same
# patches and options, so the same ABI), with clang -fsanitize=thread, into a
# cache outside the repository. Prints two install prefixes on one line,
# Abseil's then gRPC's: put both lib/ directories on LD_LIBRARY_PATH ahead of
# the system's when running a TSan binary (compile and link against the
# distribution's headers and libraries as usual; the sonames are the same).
#
# Why Abseil: Debian's libabsl is not instrumented, so TSan cannot see an
# absl::Mutex being taken and reports every access made under one as a race
# (1,006 reports in transport_test alone).
# Why gRPC: its callback API hands call objects (CallOpSets, ByteBuffers,
# reactors, Status payloads) between its poller threads through its
# completion queues, ordered by libgrpc's own atomics; uninstrumented, TSan
# saw none of that ordering (194 reports in inprocess_cluster_test, all in
# gRPC's header-inlined code). Only the runtime libraries that carry calls
# are built: gpr, upb, address_sorting, grpc, grpc++. Debian's
# libgrpc++_reflection stays (building it needs gRPC's protoc plugin and
# libprotoc's headers; it registers the reflection service at start-up and
# serves nothing in the tests) and resolves its gRPC symbols to these.
# protobuf stays Debian's (its code that touches our messages is inlined
# into our instrumented objects).
#
# Idempotent: returns at once when the cache holds finished builds.
set -euo pipefail
CACHE=${PDSERVE_TSAN_CACHE:-$HOME/.cache/pdserve/tsan}
JOBS=${JOBS:-$(nproc)}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
CODENAME=$(. /etc/os-release && echo "$VERSION_CODENAME")

installed_version() {
  local v
  v=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true)
  if [ -z "$v" ]; then
    echo "build_tsan_deps: $1 is not installed (scripts/install_deps.sh)" >&2
    exit 1
  fi
  echo "$v"
}

# Downloads source package $1 at version $2 into $3 and applies Debian's
# patches in series order (what dpkg-source -x does, without dpkg-dev);
# prints the unpacked source directory. A private deb-src list: the
# machine's apt configuration is left alone.
fetch_source() {
  local pkg=$1 version=$2 work=$3
  mkdir -p "$work/lists/partial"
  cat >"$work/sources.list" <<EOF
deb-src http://deb.debian.org/debian ${CODENAME} main
deb-src http://deb.debian.org/debian ${CODENAME}-updates main
deb-src http://deb.debian.org/debian-security ${CODENAME}-security main
EOF
  local apt=(apt-get -q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists")
  (cd "$work" && "${apt[@]}" update >&2 && "${apt[@]}" source --download-only "$pkg=$version" >&2)
  local upstream=${version%%-*}
  tar -C "$work" -xzf "$work/${pkg}_${upstream}.orig.tar.gz"
  local src="$work/${pkg}-${upstream}"
  tar -C "$src" -xJf "$work/${pkg}_${version}.debian.tar.xz"
  while read -r p; do
    case "$p" in '' | '#'*) continue ;; esac
    patch -d "$src" -p1 -s <"$src/debian/patches/$p" >&2
  done <"$src/debian/patches/series"
  echo "$src"
}

TSAN_CMAKE=(-G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_STANDARD=17
  -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
  -DCMAKE_CXX_FLAGS=-fsanitize=thread -DCMAKE_C_FLAGS=-fsanitize=thread
  -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread -DBUILD_SHARED_LIBS=ON)

# --- Abseil ---
ABSL_VERSION=$(installed_version libabsl-dev)
ABSL_PREFIX="$CACHE/abseil-$ABSL_VERSION"
if [ ! -f "$ABSL_PREFIX/.complete" ]; then
  work="$CACHE/src-abseil-$ABSL_VERSION"
  rm -rf "$work" "$ABSL_PREFIX"
  src=$(fetch_source abseil "$ABSL_VERSION" "$work")
  cmake -S "$src" -B "$work/build" "${TSAN_CMAKE[@]}" -DBUILD_TESTING=OFF \
    -DCMAKE_INSTALL_PREFIX="$ABSL_PREFIX" -DCMAKE_INSTALL_LIBDIR=lib >&2
  cmake --build "$work/build" -j "$JOBS" >&2
  cmake --install "$work/build" >&2
  rm -rf "$work"
  touch "$ABSL_PREFIX/.complete"
fi

# --- gRPC, against the Abseil above ---
# The binary package's version may carry a rebuild suffix (1.51.1-3+b1);
# the source package's does not.
GRPC_VERSION=$(installed_version libgrpc-dev)
GRPC_SRC_VERSION=${GRPC_VERSION%%+b*}
GRPC_PREFIX="$CACHE/grpc-$GRPC_VERSION-absl-$ABSL_VERSION"
if [ ! -f "$GRPC_PREFIX/.complete" ]; then
  work="$CACHE/src-grpc-$GRPC_VERSION"
  rm -rf "$work" "$GRPC_PREFIX"
  src=$(fetch_source grpc "$GRPC_SRC_VERSION" "$work")
  protoc_lib=$(ls /usr/lib/*-linux-gnu/libprotoc.so* 2>/dev/null | head -1)
  [ -n "$protoc_lib" ] || {
    echo "build_tsan_deps: libprotoc not found (protobuf-compiler, scripts/install_deps.sh)" >&2
    exit 1
  }
  # Debian's providers (debian/rules): every dependency from the system but
  # Abseil, which is ours. No code generators; libprotoc is named only
  # because gRPC's configure step checks it for a target not built here.
  cmake -S "$src" -B "$work/build" "${TSAN_CMAKE[@]}" -DCMAKE_PREFIX_PATH="$ABSL_PREFIX" \
    -DgRPC_ABSL_PROVIDER=package -DgRPC_CARES_PROVIDER=package -DgRPC_PROTOBUF_PROVIDER=package \
    -DgRPC_RE2_PROVIDER=package -DgRPC_SSL_PROVIDER=package -DgRPC_ZLIB_PROVIDER=package \
    -DgRPC_BACKWARDS_COMPATIBILITY_MODE=OFF -DgRPC_BUILD_TESTS=OFF -DgRPC_BUILD_CSHARP_EXT=OFF \
    -DgRPC_BUILD_CODEGEN=OFF \
    -DProtobuf_PROTOC_LIBRARY="$protoc_lib" >&2
  cmake --build "$work/build" -j "$JOBS" --target gpr upb address_sorting grpc grpc++ >&2
  mkdir -p "$GRPC_PREFIX/lib"
  for lib in gpr upb address_sorting grpc grpc++; do
    cp -P "$work/build/lib$lib.so".* "$GRPC_PREFIX/lib/"
  done
  rm -rf "$work"
  touch "$GRPC_PREFIX/.complete"
fi

echo "$ABSL_PREFIX $GRPC_PREFIX"
