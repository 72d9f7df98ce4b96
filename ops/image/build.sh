#!/usr/bin/env bash
# Builds the OCI image of at-rund without a Docker daemon and without pulling a base image: a root
# file system is assembled from this machine's pieces (the at-rund binary, the pinned Deno from
# tools/deno, bubblewrap, and the shared libraries `ldd` lists for them, as the container
# backend's own root is made: crates/sandbox/src/rootfs.rs) and imported with `podman import`.
#
#   ops/image/build.sh [--binary PATH] [--deno PATH] [--tag TAG] [--archive FILE]
#
#   --binary PATH   the at-rund binary to put in (default: `cargo build --release`, then
#                   target/release/at-rund; the tests pass the debug binary they were built with)
#   --deno PATH     the Deno binary (default: tools/deno/node_modules/deno/deno, scripts/setup.sh)
#   --tag TAG       the local image name (default: localhost/at-rund:<workspace version>)
#   --archive FILE  also write the image as an oci-archive an operator can copy and
#                   `podman load -i FILE`
#
# Prints the tag on stdout. Needs podman, bwrap and ldd (Debian: podman, bubblewrap, libc-bin).
# How to run the image, and which privileges each isolation needs: docs/operating.md
# "Container image".
set -euo pipefail
# Paths given relative to where the script was started from, not to the repository.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

binary="" deno="" tag="" archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$(abs "${2:?--binary needs a path}"); shift 2 ;;
    --deno) deno=$(abs "${2:?--deno needs a path}"); shift 2 ;;
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --archive) archive=$(abs "${2:?--archive needs a file name}"); shift 2 ;;
    *) echo "build.sh: unknown argument '$1' (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
[ -n "$deno" ] || deno="$PWD/tools/deno/node_modules/deno/deno"

fail() { echo "build.sh: $*" >&2; exit 1; }
for tool in podman ldd tar; do
  command -v "$tool" >/dev/null || fail "$tool not found; run scripts/setup.sh --test (or apt-get install podman)"
done
bwrap=$(command -v bwrap) || fail "bwrap not found; apt-get install -y bubblewrap"
bash_bin=$(command -v bash)
ldd_bin=$(command -v ldd)

if [ -z "$binary" ]; then
  echo "build.sh: cargo build --release -p atrund" >&2
  cargo build --release -p atrund --bin at-rund >&2
  binary="${CARGO_TARGET_DIR:-target}/release/at-rund"
fi
[ -x "$binary" ] || fail "'$binary' is not an executable at-rund binary (--binary)"
[ -x "$deno" ] || fail "'$deno' is not an executable Deno; run scripts/setup.sh (or pass --deno)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$tag" ] || tag="localhost/at-rund:${version:?no version in Cargo.toml}"

root=$(mktemp -d "${TMPDIR:-/tmp}/at-rund-image.XXXXXX")
trap 'rm -rf "$root"' EXIT

# Debian's merged /usr: /bin, /lib and friends are links, so a library `ldd` names under /lib
# lands in /usr/lib as it does on the host.
mkdir -p "$root"/usr/{bin,sbin,lib,lib64,local/bin} "$root"/{etc/at-rund,etc/ssl/certs,tmp,root} \
  "$root"/{var/lib/at-rund,srv/examples,proc,dev,sys,run}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
# at-rund gives its data dir its final mode at start; 0711 lets the instances' uid pass through
# to a data dir below it (ATRUND_DATA_DIR=/var/lib/at-rund/a for a second runner on the volume).
chmod 0711 "$root/var/lib/at-rund"

install -m 0755 "$binary" "$root/usr/local/bin/at-rund"
install -m 0755 "$deno" "$root/usr/local/bin/deno"
install -m 0755 "$bwrap" "$root/usr/bin/bwrap"
# The container backend assembles its instances' root at run time with `ldd` (a bash script).
install -m 0755 "$ldd_bin" "$root/usr/bin/ldd"
install -m 0755 "$bash_bin" "$root/usr/bin/bash"
ln -s bash "$root/usr/bin/sh"

# The libraries, found by the loader as the backend's root does (no list is kept here).
for b in "$binary" "$deno" "$bwrap" "$bash_bin"; do
  out=$(LC_ALL=C ldd "$b" 2>&1) || fail "\`ldd $b\` failed: $out"
  if missing=$(grep 'not found' <<<"$out"); then
    fail "$b needs a library this machine lacks: $missing"
  fi
  # "name => /path (addr)" and "/path (addr)" lines; the vDSO has no path.
  sed -n 's/.*=> \(\/[^ ]*\) (.*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' <<<"$out"
done | sort -u | while read -r lib; do
  dest="$root/${lib#/}"
  mkdir -p "$(dirname "$dest")"
  # -L: plain files at the paths the loader asks for.
  cp -L "$lib" "$dest"
done

# Identity: the runner is root (cgroups, bubblewrap, the uid switch: docs/operating.md), instances
# run as nobody (sandbox.run_as_uid/gid, 65534).
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/usr/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
# podman bind-mounts its own /etc/hosts and /etc/resolv.conf over these.
: > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi

cat > "$root/etc/at-rund/config.toml" <<'TOML'
# at-rund in its OCI image (ops/image/build.sh; docs/operating.md "Container image").
# Every key can be overridden with an ATRUND_* variable (`podman run -e ATRUND_POLICY=...`);
# docs/configuration.md. `at-rund check-config` prints the result.

# Inside the container: publish the port to choose who can reach it (`-p 127.0.0.1:3000:3000`).
listen = "0.0.0.0:3000"
# A volume (`-v at-rund-data:/var/lib/at-rund`): the bundle store, keys and state.
data_dir = "/var/lib/at-rund"

[deno]
path = "/usr/local/bin/deno"
TOML
cp -r examples/hello "$root/srv/examples/hello"
chmod -R a+rX "$root/srv/examples"

# One layer; fixed owners and order so the same pieces give the same tar.
echo "build.sh: importing $tag" >&2
tar -C "$root" --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf - . |
  podman import --quiet \
    --change 'ENTRYPOINT ["/usr/local/bin/at-rund"]' \
    --change 'CMD ["serve"]' \
    --change 'ENV ATRUND_CONFIG=/etc/at-rund/config.toml' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin' \
    --change 'ENV HOME=/root' \
    --change 'EXPOSE 3000' \
    --change 'VOLUME /var/lib/at-rund' \
    --change 'WORKDIR /' \
    --change 'STOPSIGNAL SIGTERM' \
    --message "at-rund $version" \
    - "$tag" >/dev/null
if [ -n "$archive" ]; then
  rm -f "$archive"
  podman save --quiet --format oci-archive -o "$archive" "$tag"
  echo "build.sh: wrote $archive" >&2
fi
echo "$tag"
