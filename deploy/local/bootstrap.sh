#!/usr/bin/env bash
# Everything a fresh machine needs before `intervene up` or the tests: system packages
# (only those missing, so a warm run costs nothing) and the Python distribution.
# Kafka's jars and the FerretDB binary are fetched on first `up` into .cache/.
set -euo pipefail
cd "$(dirname "$0")/../.."

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
for tool in java mvn go; do
  command -v "$tool" >/dev/null || { echo "bootstrap: \`$tool\` is required (see README: prerequisites)" >&2; exit 2; }
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing system packages ${need_apt[*]}; install them as root" >&2; exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp=.cache/pip-installed
# Reinstall when pyproject changed, or when the installed `services` package is another
# checkout's (an editable install points at one directory).
installed_here() {
  [ "$(cd /tmp && python3 -c 'import services, os; print(os.path.dirname(os.path.dirname(os.path.realpath(services.__file__))))' 2>/dev/null)" = "$(pwd -P)" ]
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! installed_here; then
  python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
  mkdir -p .cache && touch "$stamp"
fi
