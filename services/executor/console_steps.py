"""What an engineer is asked to do at a console (IP-KVM, VNC), in the data centre, or in a
rescue system by hand: exact instructions and what to verify, per OS family and category.

Pure data. Instructions name the backups to take before each change (the procedure's
minimal-change and reversibility rule holds for people too) and end with a check from
outside, which is what the customer experiences.
"""

from __future__ import annotations

from schemas.events import AccessMethod, ResolvedServer
from schemas.scope import Category

BACKUP_DIR = "/root/os-intervention/<ticket>"
WIN_BACKUP_DIR = r"C:\os-intervention\<ticket>"

_WHERE: dict[str, str] = {
    "ipkvm": "the IP-KVM console", "vnc": "the VNC console",
    "datacenter": "the server's console in the data centre (on site)",
    "rescue": "the provider's rescue system (boot it from the provider panel)",
    "ssh": "SSH", "windows_openssh": "Windows OpenSSH",
}

_LINUX: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "boot_repair": ((
        "Boot the server from the rescue/live image (virtual media on the console, or the "
        "provider's rescue system).",
        "Find the root filesystem (lsblk -f), mount it at /mnt, and bind /dev, /proc, /sys "
        "and /run into it (mount --rbind /dev /mnt/dev; mount -t proc proc /mnt/proc; "
        "mount -t sysfs sys /mnt/sys; mount -t tmpfs run /mnt/run). Mount /boot and "
        "/boot/efi too if /mnt/etc/fstab lists them.",
        f"Back up first: mkdir -p /mnt{BACKUP_DIR}; dd if=/dev/<disk> "
        f"of=/mnt{BACKUP_DIR}/disk-first-1MiB.img bs=512 count=2048; "
        f"cp -a /mnt/boot/grub /mnt{BACKUP_DIR}/.",
        "BIOS: chroot /mnt grub-install /dev/<disk>. UEFI: chroot /mnt grub-install "
        "--target=x86_64-efi --efi-directory=/boot/efi, then check the boot entry with "
        "efibootmgr -v.",
        "chroot /mnt update-grub (or grub-mkconfig -o /boot/grub/grub.cfg), then "
        "grub-script-check /mnt/boot/grub/grub.cfg.",
        "Unmount everything (umount -R /mnt) and boot from disk, watching the console.",
    ), (
        "The GRUB menu appears on the console and the system boots to a login prompt.",
        "SSH login works from outside with the customer's credentials.",
    )),
    "filesystem_repair": ((
        "Boot the rescue/live image; do not mount the filesystems to be checked.",
        "Check the disk first: smartctl -H -A /dev/<disk> and dmesg | grep -i 'I/O error'. "
        "If the disk is failing, stop here and open a hardware ticket: do not run fsck -y.",
        "Before summary: e2fsck -f -n /dev/<partition> (note the exit status and the "
        "summary line).",
        "Repair with an undo file kept off that filesystem: e2fsck -f -y "
        "-z /root/<partition>.e2undo /dev/<partition>.",
        "After summary: e2fsck -f -n /dev/<partition> must exit 0; copy the undo file to "
        f"{BACKUP_DIR}/ on the repaired system.",
        "Boot from disk.",
    ), (
        "e2fsck -f -n reports the filesystem clean (exit 0).",
        "The server boots and SSH login works from outside.",
    )),
    "root_password_reset": ((
        "At the GRUB menu press e, append init=/bin/bash to the linux line and boot with "
        "Ctrl-X (or boot the rescue image and chroot into the mounted root).",
        "mount -o remount,rw /; mkdir -p /root/os-intervention; cp -a /etc/shadow "
        f"{BACKUP_DIR}-shadow.",
        "passwd root with a new strong password; deliver it through the customer's account "
        "area, never on the ticket.",
        "sync; mount -o remount,ro /; reboot -f.",
    ), (
        "root logs in with the new password on the console (and over SSH if the customer's "
        "sshd_config allows root password logins).",
    )),
    "network_recovery": ((
        "Log in on the console as root.",
        f"Save the current state: mkdir -p {BACKUP_DIR}; nft list ruleset > "
        f"{BACKUP_DIR}/ruleset-before.nft; cp -a /etc/nftables.conf /etc/network/interfaces "
        f"{BACKUP_DIR}/ (and /etc/iptables/rules.v* if present).",
        "Compare ip -br link / ip -br addr with the configuration: the interface name and the "
        "server's address must match.",
        "Insert an SSH accept rule first in each input chain that drops it (nft insert rule "
        "<family> <table> <chain> tcp dport <ssh port> accept) and make it persistent "
        "(nft list ruleset into /etc/nftables.conf, keeping 'flush ruleset' on top).",
        "Fix only what is broken in the interface configuration, then restart networking.",
    ), (
        "From outside: the server answers ping and SSH login works.",
        "The customer's other firewall rules are still in place (compare with the saved "
        "ruleset).",
    )),
    "remote_access_restoration": ((
        "Log in on the console as root.",
        f"Back up: mkdir -p {BACKUP_DIR}; cp -a /etc/ssh {BACKUP_DIR}/.",
        "sshd -t: fix or comment out only the lines it rejects; ssh-keygen -A creates only "
        "missing host keys.",
        "systemctl unmask ssh; systemctl enable --now ssh; systemctl status ssh.",
        "Check that the firewall accepts the SSH port (nft list ruleset).",
    ), (
        "SSH login works from outside with the customer's credentials.",
        "The host key fingerprints are unchanged unless a key was missing.",
    )),
}

_WINDOWS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "boot_repair": ((
        "Mount the Windows Server installation ISO as virtual media, boot from it and choose "
        "Repair your computer > Troubleshoot > Command Prompt.",
        f"Back up the boot configuration first: mkdir {WIN_BACKUP_DIR} and bcdedit /export "
        f"{WIN_BACKUP_DIR}\\bcd-before (use the drive letter of the Windows volume as seen "
        "in the recovery environment; check with diskpart > list vol).",
        "BIOS/MBR: bootrec /fixmbr, bootrec /fixboot, bootrec /scanos, bootrec /rebuildbcd.",
        "UEFI/GPT: diskpart > select disk 0 > list vol > select vol <EFI FAT32 volume> > "
        "assign letter=S > exit; then bcdboot C:\\Windows /s S: /f UEFI.",
        "Remove the virtual media and boot from disk.",
    ), (
        "Windows boots to the login screen on the console.",
        "RDP login works from outside.",
    )),
    "remote_access_restoration": ((
        "Log in on the console as an administrator and open PowerShell as administrator.",
        f"Back up: mkdir {WIN_BACKUP_DIR}; reg export \"HKLM\\SYSTEM\\CurrentControlSet\\"
        f"Control\\Terminal Server\" {WIN_BACKUP_DIR}\\terminal-server.reg; netsh advfirewall "
        f"export {WIN_BACKUP_DIR}\\firewall.wfw.",
        "Set-ItemProperty -Path 'HKLM:\\System\\CurrentControlSet\\Control\\Terminal Server' "
        "-Name fDenyTSConnections -Value 0",
        "Enable-NetFirewallRule -DisplayGroup 'Remote Desktop'",
        "Set-Service TermService -StartupType Automatic; Start-Service TermService",
        "Check the RDP port: Get-ItemProperty 'HKLM:\\System\\CurrentControlSet\\Control\\"
        "Terminal Server\\WinStations\\RDP-Tcp' -Name PortNumber.",
    ), (
        "From outside: Test-NetConnection <server ip> -Port <RDP port> succeeds and an RDP "
        "login works.",
        "The customer's other firewall rules are unchanged (compare with the export).",
    )),
    "network_recovery": ((
        "Log in on the console as an administrator and open PowerShell as administrator.",
        f"Back up: mkdir {WIN_BACKUP_DIR}; netsh advfirewall export "
        f"{WIN_BACKUP_DIR}\\firewall.wfw; ipconfig /all > {WIN_BACKUP_DIR}\\ipconfig.txt.",
        "Compare Get-NetIPConfiguration with the addresses the provider assigned; fix only "
        "what differs.",
        "Allow the remote-access port: New-NetFirewallRule -DisplayName 'OS intervention "
        "RDP' -Direction Inbound -Protocol TCP -LocalPort <RDP port> -Action Allow.",
    ), (
        "From outside: the server answers and RDP login works.",
    )),
    "filesystem_repair": ((
        "Boot the installation ISO > Repair your computer > Command Prompt (or log in on the "
        "console if Windows starts).",
        "Check the disk first: wmic diskdrive get status; if it is not OK, stop and open a "
        "hardware ticket.",
        "Before summary: chkdsk C: (read-only), note the result.",
        "Repair: chkdsk C: /f (schedule at restart if the volume is in use); note the result.",
    ), (
        "chkdsk C: reports no problems.",
        "Windows boots and RDP login works from outside.",
    )),
    "root_password_reset": ((
        "Log in on the console with another administrator account.",
        "net user Administrator * and set a new strong password; deliver it through the "
        "customer's account area, never on the ticket.",
    ), (
        "The Administrator account logs in with the new password.",
    )),
}

_GENERIC: dict[str, str] = {
    "service_restart": "Check the configuration of the service the customer named, restart "
                       "it once, and read its log.",
    "diagnostics": "Collect OS diagnostics (load, memory, disks, errors, SMART, RAID, ECC).",
    "software_installation": "Install the packages the customer asked for with the system's "
                             "package manager, simulating first.",
}


def console_instructions(server: ResolvedServer, category: Category, method: AccessMethod
                         ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(instructions, verification)`` for an engineer doing ``category`` by hand."""
    where = _WHERE.get(method, method)
    opening = (f"Open {where} for server {server.service_name} ({server.service_id}, "
               f"{server.ip}, {server.datacenter}, {server.os_family}).")
    closing = ("Record every command you run and its result in your report on this step; "
               "keep the backups where the instructions say, so the customer can review them.")
    table = _WINDOWS if server.os_family == "windows" else _LINUX
    steps, verify = table.get(category, ((_GENERIC.get(
        category, "Do what the ticket asks, with minimal changes."),), ()))
    verification = verify or ("The customer can log in to the server again (SSH or RDP from "
                              "outside).",)
    return ((opening, *steps, closing),
            (*verification, "Nothing beyond what the ticket asked for was changed."))
