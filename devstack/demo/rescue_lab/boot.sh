#!/bin/sh
# A lab server's power-on: firmware + GRUB + init, from the disk's own files, in the
# server's own namespaces (devstack/demo/rescue_lab/sandbox.py runs it with sh -c).
# "$@" = capability-bounding-set disk partition rootdir nic
set -u
bounding=$1 disk=$2 part=$3 root=$4  # $5, the NIC: the disk's own interfaces file names it
say() { echo "boot: $*"; }
hang() { say "$*"; exec sleep 2147483647; }  # hangs here, as a stuck boot does
head -c 440 "$disk" | grep -aq GRUB || hang "no boot loader in the MBR: no bootable device"
cfg=$(grub-fstest "$disk" cat '(loop0,msdos1)/boot/grub/grub.cfg' 2>&1) \
    || hang "GRUB cannot read /boot/grub/grub.cfg: grub rescue> ($cfg)"
grub-fstest "$disk" cat '(loop0,msdos1)/boot/grub/i386-pc/normal.mod' >/dev/null 2>&1 \
    || hang "GRUB: file /boot/grub/i386-pc/normal.mod not found: grub rescue>"
kernel=$(printf '%s\n' "$cfg" | awk '$1 == "linux" { print $2; exit }')
[ -n "$kernel" ] || hang "GRUB: no menu entry with a kernel"
grub-fstest "$disk" cat "(loop0,msdos1)$kernel" >/dev/null 2>&1 \
    || hang "GRUB: kernel $kernel not found"
say "GRUB: booting $kernel"
e2fsck -p "$part"; rc=$?
[ "$rc" -lt 4 ] || hang "fsck $part failed (exit $rc): emergency mode, no services started"
say "fsck: $part clean (exit $rc)"
mount "$part" "$root" || hang "cannot mount the root filesystem"
mount -t tmpfs -o mode=0755 dev "$root/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    # shellcheck disable=SC2086 # "name major minor", split on purpose
    set -- $n; mknod -m 0666 "$root/dev/$1" c "$2" "$3"
done
mkdir "$root/dev/pts" && mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount -t tmpfs -o mode=0755 run "$root/run"
mkdir -m 0755 "$root/run/sshd"
ip link set lo up
awk '$1 == "iface" { name = $2; method = $4 }
     $1 == "address" && method == "static" { print name, "address", $2 }
     $1 == "gateway" && method == "static" { print name, "gateway", $2 }' \
    "$root/etc/network/interfaces" | while read -r name what value; do
    if ! ip link show "$name" >/dev/null 2>&1; then
        say "networking: no interface $name"; continue
    fi
    ip link set "$name" up
    case $what in
        address) ip addr add "$value" dev "$name" && say "networking: $name $value" ;;
        gateway) ip route add default via "$value" dev "$name" 2>/dev/null ;;
    esac
done
wants=$root/etc/systemd/system
if [ -L "$wants/sysinit.target.wants/nftables.service" ] && [ -f "$root/etc/nftables.conf" ]; then
    if chroot "$root" /usr/sbin/nft -f /etc/nftables.conf; then say "nftables: ruleset loaded"
    else say "nftables: ruleset failed to load"; fi
fi
[ -L "$wants/multi-user.target.wants/ssh.service" ] || hang "ssh.service: not enabled"
[ "$(readlink "$wants/ssh.service")" != /dev/null ] || hang "ssh.service: masked"
chroot "$root" /usr/sbin/sshd -t || hang "ssh.service: configuration test failed"
# The disk's root filesystem becomes this mount namespace's root and this machine's mount
# tree is detached (pivot_root): the server's processes have nothing else to get back to.
# From here on the commands are the disk's own (umount, setpriv: util-linux and mount).
# shellcheck disable=SC2015 # any step failing (cd / cannot) means the boot hangs
cd "$root" && pivot_root . . && umount -l . && cd / \
    || hang "cannot switch to the root filesystem"
say "ssh.service: started"
exec setpriv --bounding-set "$bounding" -- /usr/sbin/sshd -D -e
