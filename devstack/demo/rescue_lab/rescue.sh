#!/bin/sh
# The provider's network-booted rescue system, in the server's own namespaces
# (devstack/demo/rescue_lab/sandbox.py runs it with sh -c).
# "$@" = capability-bounding-set workdir disk partition [smartctl output];
# stdin: the root password line for chpasswd.
set -eu
bounding=$1 work=$2 disk=$3 part=$4 smart=${5:-}
mount -t tmpfs -o mode=0755 rescue "$work"
mkdir "$work/upper" "$work/wd" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/wd" "$work/root"
r=$work/root
mount -t proc proc "$r/proc"
mount -t sysfs sys "$r/sys"
mount -t tmpfs -o mode=0755 run "$r/run"
mkdir -m 0755 "$r/run/sshd"
mount -t tmpfs -o mode=1777 tmp "$r/tmp"
mount -t tmpfs -o mode=0755 dev "$r/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    # shellcheck disable=SC2086 # "name major minor", split on purpose
    set -- $n; mknod -m 0666 "$r/dev/$1" c "$2" "$3"
done
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
ln -s /proc/self/fd "$r/dev/fd"
# The customer's disk is the only block device with a node here (and sshd starts without
# CAP_MKNOD: no login can make another).
for dev in "$disk" "$part"; do
    # shellcheck disable=SC2046 # the device's major and minor, two words on purpose
    mknod -m 0660 "$r$dev" b $(stat -L -c '0x%t 0x%T' "$dev")
done
if [ -n "$smart" ]; then
    # The disk's SMART answer: loop devices have none, so the failing-disk test gives the
    # rescue system a smartctl that prints a real failing disk's output.
    mkdir -p "$r${smart%/*}" && cp "$smart" "$r$smart"
    printf '#!/bin/sh\ncat %s\nexit 24\n' "$smart" > "$r/usr/local/sbin/smartctl"
    chmod 755 "$r/usr/local/sbin/smartctl"
fi
chroot "$r" /usr/sbin/chpasswd
ssh-keygen -q -t ed25519 -N '' -C rescue -f "$r/etc/ssh/rescue_host_ed25519_key"
cat > "$r/etc/ssh/rescue_sshd_config" <<EOF
Port 22
HostKey /etc/ssh/rescue_host_ed25519_key
PidFile /run/rescue-sshd.pid
PermitRootLogin yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
UsePAM yes
AllowUsers root
PrintMotd no
EOF
# The overlay becomes this mount namespace's root and this machine's mount tree (its /dev
# with its disks among it) is detached: no chroot escape leads back to it.
cd "$r"
pivot_root . .
umount -l .
cd /
echo "rescue: ready"
cat /etc/ssh/rescue_host_ed25519_key.pub
exec setpriv --bounding-set "$bounding" -- \
    /usr/sbin/sshd -D -e -f /etc/ssh/rescue_sshd_config
