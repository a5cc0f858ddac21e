#!/usr/bin/env bash
# Everything a fresh machine needs before `intervene up` or the tests: system packages
# (only those missing, so a warm run costs nothing) and the project's own virtual
# environment `.venv`, into which the Python distribution is installed. Nothing is ever
# installed into the system interpreter: a distribution's python3 (Debian 12, Ubuntu 24.04)
# refuses that (PEP 668, "externally-managed-environment"), and rightly so.
# Kafka's jars and the FerretDB binary are fetched on first `up` into .cache/.
#
# The interpreter is $PYTHON if set, else the first `python3` on PATH; it must be >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "bootstrap: $*" >&2; }
die() { say "$*"; exit 2; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "no \`$python\` on PATH: install Python >= 3.11 (Debian/Ubuntu: apt-get install python3 python3-venv)"
python=$(command -v "$python")
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); the project needs >= 3.11. Put a newer python3 first on PATH or set PYTHON=/path/to/python3.11"

is_root() { [ "$(id -u)" = 0 ]; }
have_deb() { command -v apt-get >/dev/null && apt-cache show "$1" >/dev/null 2>&1; }

need_apt=()
command -v /usr/sbin/sshd >/dev/null || need_apt+=(openssh-server)
command -v sudo >/dev/null || need_apt+=(sudo)
command -v promtool >/dev/null || need_apt+=(prometheus)  # promtool tests the alert rules
command -v nft >/dev/null || need_apt+=(nftables)  # demo servers behind a firewall
command -v ip >/dev/null || need_apt+=(iproute2)
# Rescue-mode tests build and repair real disk images.
command -v grub-install >/dev/null || need_apt+=(grub-pc-bin grub2-common)
command -v sfdisk >/dev/null || need_apt+=(fdisk)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)  # the rescue lab's boot and rescue scripts
command -v udevadm >/dev/null || need_apt+=(udev)
# The shipped WHMCS hook is tested with PHP (deploy/helpdesk/whmcs).
command -v php >/dev/null || need_apt+=(php-cli php-curl)
# A distribution's python3 ships venv (and ensurepip, which venv needs for pip) separately.
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  venv_deb=python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv
  case $python in /usr/bin/*) have_deb "$venv_deb" && need_apt+=("$venv_deb") ;; *) false ;; esac ||
    die "$python cannot create a virtual environment (no ensurepip): install its venv module (Debian/Ubuntu: apt-get install python3-venv)"
fi
# The broker needs Java 17+; Maven fetches its jars. Debian packages both.
java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
if ! command -v java >/dev/null; then
  have_deb openjdk-17-jdk-headless && need_apt+=(openjdk-17-jdk-headless) ||
    die "\`java\` (JDK 17 or newer) is needed to run the Kafka broker: install one and retry"
elif [ "$(java_major)" -lt 17 ] 2>/dev/null; then
  die "\`java\` is version $(java_major); the Kafka 4 broker needs 17 or newer (Debian: apt-get install openjdk-17-jdk-headless, then update-alternatives --config java)"
fi
if ! command -v mvn >/dev/null; then
  have_deb maven && need_apt+=(maven) ||
    die "\`mvn\` (Maven) is needed to fetch the Kafka broker's jars: install it and retry"
fi
# FerretDB is built from source with Go once (into .cache/bin). Its go.mod says `go 1.24`,
# and distributions lag (Debian 12's golang-go is 1.19), so Go is not installed from apt.
ferretdb_go=1.24
if [ ! -x .cache/bin/ferretdb ] && [ -z "${MONGODB_URI:-}" ]; then
  go_have=$(go env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9]*\.[0-9]*\).*/\1/p' || true)
  if [ -z "$go_have" ] || ! printf '%s\n%s\n' "$ferretdb_go" "$go_have" | sort -V -C; then
    die "FerretDB 1.24 is built with Go >= $ferretdb_go, found ${go_have:+go$go_have}${go_have:-no \`go\` on PATH}. Install Go $ferretdb_go or newer from the Go project's release archive (go${ferretdb_go}.linux-amd64.tar.gz unpacked into /usr/local, then PATH=/usr/local/go/bin:\$PATH); distribution packages such as Debian 12's golang-go (1.19) are too old. Or set MONGODB_URI to a MongoDB you run."
  fi
fi
if ((${#need_apt[@]})); then
  is_root || die "missing system packages ${need_apt[*]}; install them as root (apt-get install ${need_apt[*]})"
  say "installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The project's virtual environment. Rebuilt when it is broken or too old, e.g. after the
# checkout moved (its scripts carry absolute paths) or the interpreter it came from went.
venv=.venv
here=$(pwd -P)
venv_ok() {
  "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11) or sys.prefix == sys.base_prefix)' 2>/dev/null
}
if ! venv_ok; then
  say "creating the virtual environment $venv with $python ($("$python" -c 'import platform; print(platform.python_version())'))"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
stamp=$venv/.installed
# Reinstall when pyproject changed, or when the installed `services` package is another
# checkout's (an editable install points at one directory).
installed_here() {
  [ "$(cd /tmp && "$here/$venv/bin/python" -c 'import services, os; print(os.path.dirname(os.path.dirname(os.path.realpath(services.__file__))))' 2>/dev/null)" = "$(pwd -P)" ]
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! installed_here; then
  say "installing the project and its dev tools into $venv (pip; the first time takes a minute or two)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
