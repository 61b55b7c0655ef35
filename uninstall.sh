#!/usr/bin/env bash
# Removes the call recorder that install.sh installed:  sudo ./uninstall.sh [--purge]
#
# Keeps the recordings and the catalogue (/var/lib/callrec, and data_dir where the configuration
# puts it elsewhere), the configuration (/etc/callrec), the users callrec and callrec-web that own them, and any
# system file you edited. With --purge, removes those too: the recordings are gone for good.
set -euo pipefail

PREFIX=/opt/callrec
SHIPPED=$PREFIX/share/shipped
CONF_DIR=/etc/callrec
CONFIG=$CONF_DIR/appliance.toml
DATA_DIR=/var/lib/callrec
UNIT_DIR=/etc/systemd/system
DROP_IN=50-callrec-data-dir.conf    # install.sh's, while data_dir is elsewhere
USER_NAME=callrec
WEB_USER=callrec-web
UNITS=(callrec-signer.service callrec-recorder.service callrec-web.service)
SYSTEM_FILES=(/etc/alsa/conf.d/50-callrec.conf /etc/udev/rules.d/85-callrec-sound.rules
              /etc/udev/rules.d/85-callrec-modem.rules /etc/udev/rules.d/85-callrec-gpio.rules
              /etc/systemd/journald.conf.d/50-callrec.conf)

purge_data_dir_elsewhere() {   # purge_data_dir_elsewhere DIR: only if every file in it is ours
    local dir=$1 foreign
    if [ ! -d "$dir" ]; then
        echo "data_dir $dir is not there (is its disk plugged in and mounted?): removed nothing there"
        return
    fi
    foreign=$(find "$dir" -mindepth 1 ! -user "$USER_NAME" ! -user "$WEB_USER" -print -quit)
    if [ -n "$foreign" ]; then
        echo "kept data_dir $dir: it holds files that are not $USER_NAME's (e.g. $foreign); remove it yourself"
        return
    fi
    find "$dir" -mindepth 1 -delete
    # A mount point stays, or the disk could not be mounted there again.
    mountpoint -q "$dir" || findmnt --fstab --mountpoint "$dir" >/dev/null || rmdir "$dir"
    echo "removed every recording in data_dir $dir (from [recorder] data_dir in $CONFIG)"
}

purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) echo "usage: sudo $0 [--purge]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run me as root: sudo $0" >&2; exit 1; }

# [recorder] data_dir, resolved as the recorder does (relative to the config's folder), read
# before the program goes: with the system's Python, as the program's own is removed below.
data_dir=$DATA_DIR
if [ -e "$CONFIG" ] && ! data_dir=$(python3 -I -c 'import os, sys, tomllib
with open(sys.argv[1], "rb") as f:
    data_dir = tomllib.load(f).get("recorder", {}).get("data_dir", sys.argv[2])
print(os.path.realpath(os.path.join(os.path.dirname(sys.argv[1]), data_dir)))' "$CONFIG" "$DATA_DIR" 2>&1); then
    echo "uninstall.sh: cannot read [recorder] data_dir in $CONFIG (${data_dir##*$'\n'}): if it puts the recordings elsewhere, they stay there" >&2
    data_dir=$DATA_DIR
fi

for unit in "${UNITS[@]}"; do
    if [ -d /run/systemd/system ]; then
        systemctl stop "$unit" 2>/dev/null || true
    fi
    if [ -e "$UNIT_DIR/$unit" ]; then
        systemctl disable --quiet "$unit" 2>/dev/null || true
        rm -f "$UNIT_DIR/$unit"
        echo "removed $unit"
    fi
    if [ -e "$UNIT_DIR/$unit.d/$DROP_IN" ]; then
        rm -f "$UNIT_DIR/$unit.d/$DROP_IN"
        rmdir --ignore-fail-on-non-empty "$UNIT_DIR/$unit.d"
        echo "removed $UNIT_DIR/$unit.d/$DROP_IN"
    fi
done
[ ! -d /run/systemd/system ] || systemctl daemon-reload

for file in "${SYSTEM_FILES[@]}"; do
    [ -e "$file" ] || continue
    if $purge || cmp -s "$file" "$SHIPPED$file"; then
        rm -f "$file" "$file.dist"
        echo "removed $file"
    else
        echo "kept $file: you edited it"
    fi
done

for config_txt in /boot/firmware/config.txt /boot/config.txt; do
    if [ -f "$config_txt" ] && grep -q '^# BEGIN callrec' "$config_txt"; then
        sed -i '/^# BEGIN callrec/,/^# END callrec/d' "$config_txt"
        echo "removed the callrec block from $config_txt"
    fi
done

if [ -e /etc/avahi/services/callrec.service ]; then
    rm -f /etc/avahi/services/callrec.service
    echo "removed the web UI's mDNS announcement (the host name stays)"
fi

if [ -e /usr/local/bin/callrec ] || [ -e "$PREFIX" ]; then
    rm -rf /usr/local/bin/callrec "$PREFIX"
    echo "removed the program ($PREFIX)"
fi

if $purge; then
    rm -rf "$CONF_DIR" "$DATA_DIR"
    echo "removed the configuration ($CONF_DIR) and every recording ($DATA_DIR)"
    if [ "$data_dir" != "$DATA_DIR" ]; then
        purge_data_dir_elsewhere "$data_dir"
    fi
    if getent passwd "$WEB_USER" >/dev/null; then
        userdel "$WEB_USER"
        echo "removed the user $WEB_USER"
    fi
    if getent passwd "$USER_NAME" >/dev/null; then
        userdel "$USER_NAME"
        echo "removed the user $USER_NAME"
    fi
    if getent group "$USER_NAME" >/dev/null; then
        groupdel "$USER_NAME"
    fi
else
    [ ! -e "$CONF_DIR" ] || echo "kept the configuration in $CONF_DIR"
    folders=("$DATA_DIR")
    [ "$data_dir" = "$DATA_DIR" ] || folders+=("$data_dir")
    for folder in "${folders[@]}"; do
        if [ -e "$folder" ]; then
            echo "kept the recordings and the catalogue in $folder ($(du -sh "$folder" | cut -f1)); remove them with: sudo $0 --purge"
        fi
    done
fi
