#!/usr/bin/env bash
# Builds the locking library ThreadSanitizer must see: Abseil, from Debian's
# own source package of the version installed (the same patches and options,
# so the same ABI), with clang -fsanitize=thread, into a cache outside the
# repository. Prints the install prefix on stdout.
#
# Why: Debian's libabsl is not instrumented, so TSan cannot see an
# absl::Mutex being taken and reports every access made under one as a race
# (1,006 reports in transport_test alone). gRPC 1.51 takes its own locks
# through absl::Mutex too (GPR_ABSEIL_SYNC), and it links libabsl
# dynamically: with LD_LIBRARY_PATH pointing at this build, gRPC's locks are
# seen as well. The distribution's gRPC and protobuf themselves stay
# uninstrumented; tests/tsan.supp names what that leaves and why.
#
# Idempotent: returns at once when the prefix holds a finished build.
set -euo pipefail
ABSL_VERSION=$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null || true)
if [ -z "$ABSL_VERSION" ]; then
  echo "build_tsan_deps: libabsl-dev is not installed (scripts/install_deps.sh)" >&2
  exit 1
fi
CACHE=${PDSERVE_TSAN_CACHE:-$HOME/.cache/pdserve/tsan}
PREFIX="$CACHE/abseil-$ABSL_VERSION"
if [ -f "$PREFIX/.complete" ]; then
  echo "$PREFIX"
  exit 0
fi
JOBS=${JOBS:-$(nproc)}
WORK="$CACHE/src-$ABSL_VERSION"
rm -rf "$WORK" "$PREFIX"
mkdir -p "$WORK/lists/partial"

# A private deb-src list: the machine's apt configuration is left alone.
CODENAME=$(. /etc/os-release && echo "$VERSION_CODENAME")
cat >"$WORK/sources.list" <<EOF
deb-src http://deb.debian.org/debian ${CODENAME} main
deb-src http://deb.debian.org/debian ${CODENAME}-updates main
deb-src http://deb.debian.org/debian-security ${CODENAME}-security main
EOF
APT=(apt-get -q -o "Dir::Etc::SourceList=$WORK/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$WORK/lists")
(cd "$WORK" && "${APT[@]}" update >&2 && "${APT[@]}" source --download-only "abseil=$ABSL_VERSION" >&2)

# Unpack the upstream tarball and apply Debian's patches in series order
# (what dpkg-source -x does, without needing dpkg-dev).
upstream=${ABSL_VERSION%%-*}
tar -C "$WORK" -xzf "$WORK/abseil_${upstream}.orig.tar.gz"
src="$WORK/abseil-${upstream}"
tar -C "$src" -xJf "$WORK"/abseil_"${ABSL_VERSION}".debian.tar.xz
while read -r p; do
  case "$p" in '' | '#'*) continue ;; esac
  patch -d "$src" -p1 -s <"$src/debian/patches/$p" >&2
done <"$src/debian/patches/series"

export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
cmake -S "$src" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_STANDARD=17 \
  -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread" -DCMAKE_C_FLAGS="-fsanitize=thread" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" -DBUILD_SHARED_LIBS=ON \
  -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib >&2
cmake --build "$WORK/build" -j "$JOBS" >&2
cmake --install "$WORK/build" >&2
rm -rf "$WORK"
touch "$PREFIX/.complete"
echo "$PREFIX"
