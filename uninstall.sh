#!/usr/bin/env bash
# Removes the call recorder that install.sh installed:  sudo ./uninstall.sh [--purge]
#
# Keeps the recordings and the catalogue (/var/lib/callrec), the configuration (/etc/callrec),
# the user callrec that owns them, and any system file you edited. With --purge, removes those
# too: the recordings are gone for good.
set -euo pipefail

PREFIX=/opt/callrec
SHIPPED=$PREFIX/share/shipped
CONF_DIR=/etc/callrec
DATA_DIR=/var/lib/callrec
UNIT_DIR=/etc/systemd/system
USER_NAME=callrec
UNITS=(callrec-recorder.service callrec-web.service)
SYSTEM_FILES=(/etc/alsa/conf.d/50-callrec.conf /etc/udev/rules.d/85-callrec-sound.rules
              /etc/udev/rules.d/85-callrec-modem.rules /etc/udev/rules.d/85-callrec-gpio.rules
              /etc/systemd/journald.conf.d/50-callrec.conf)

purge=false
case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) echo "usage: sudo $0 [--purge]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run me as root: sudo $0" >&2; exit 1; }

for unit in "${UNITS[@]}"; do
    if [ -d /run/systemd/system ]; then
        systemctl stop "$unit" 2>/dev/null || true
    fi
    if [ -e "$UNIT_DIR/$unit" ]; then
        systemctl disable --quiet "$unit" 2>/dev/null || true
        rm -f "$UNIT_DIR/$unit"
        echo "removed $unit"
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

if [ -e /usr/local/bin/callrec ] || [ -e "$PREFIX" ]; then
    rm -rf /usr/local/bin/callrec "$PREFIX"
    echo "removed the program ($PREFIX)"
fi

if $purge; then
    rm -rf "$CONF_DIR" "$DATA_DIR"
    echo "removed the configuration ($CONF_DIR) and every recording ($DATA_DIR)"
    if getent passwd "$USER_NAME" >/dev/null; then
        userdel "$USER_NAME"
        echo "removed the user $USER_NAME"
    fi
    if getent group "$USER_NAME" >/dev/null; then
        groupdel "$USER_NAME"
    fi
else
    [ ! -e "$CONF_DIR" ] || echo "kept the configuration in $CONF_DIR"
    if [ -e "$DATA_DIR" ]; then
        echo "kept the recordings and the catalogue in $DATA_DIR ($(du -sh "$DATA_DIR" | cut -f1)); remove them with: sudo $0 --purge"
    fi
fi
