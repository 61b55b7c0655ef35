#!/usr/bin/env bash
# Installs or upgrades the call recorder on Raspberry Pi OS or Debian (bookworm or later), from
# the repository this script is in:  sudo ./install.sh
#
# Every step says what it changed, or "nothing changed": running it again changes nothing, and
# an upgrade never overwrites a file you edited (the new version goes next to it as FILE.dist).
# At the end it starts the services and prints the web address and the one-time setup code.
# See docs/install.md.
set -euo pipefail
umask 022

SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PREFIX=/opt/callrec
VENV=$PREFIX/venv
SHIPPED=$PREFIX/share/shipped       # each file as this installer last wrote it: edited or not?
CONF_DIR=/etc/callrec
CONFIG=$CONF_DIR/appliance.toml
DATA_DIR=/var/lib/callrec           # the default data_dir, and callrec's home
UNIT_DIR=/etc/systemd/system
DROP_IN=50-callrec-data-dir.conf    # in each unit's .d folder while data_dir is elsewhere
USER_NAME=callrec
WEB_USER=callrec-web                # the web UI's own user, in $USER_NAME's group (docs/security.md)
SECRETS_DIR=$CONF_DIR/secrets       # secret files only $USER_NAME reads (webhook, S3, SSH, SMTP)
UNITS=(callrec-signer.service callrec-recorder.service callrec-web.service)
# As scripts/setup-env (rsync and ssh offload recordings to a NAS), and the system tools the
# services use: certificates for HTTPS webhooks, kill for `systemctl reload`, Avahi to answer to
# callrec.local on the LAN.
APT_PACKAGES=(python3 python3-venv python3-dev gcc libasound2-dev alsa-utils rsync openssh-client
              ca-certificates procps espeak-ng avahi-daemon)
HOST_NAME=callrec                   # the name on the sticker: https://callrec.local/
DEFAULT_HOST_NAMES=" raspberrypi debian localhost "   # names nobody chose: replaced by HOST_NAME

changed_anything=false

report() {      # report STEP WHAT: one line per step
    printf '%-36s %s\n' "$1:" "$2"
    case "$2" in "nothing changed"*) ;; *) changed_anything=true ;; esac
}

joined() {      # joined ITEM...: "a; b; c"
    local IFS=';'
    echo "$*" | sed 's/;/; /g'
}

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

systemd_running() {
    [ -d /run/systemd/system ]
}

as_callrec() {  # run a command as the service's user, with its groups and a clean environment
    setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups --reset-env -- "$@"
}

as_web() {      # the same as the web UI's user, making files the group shares (as its unit does)
    (umask 0007 && setpriv --reuid="$WEB_USER" --regid="$USER_NAME" --init-groups --reset-env -- "$@")
}

# -- what this machine is -----------------------------------------------------------------------

check_system() {
    [ "$(id -u)" -eq 0 ] || fail "run me as root: sudo $0"
    # shellcheck disable=SC1091
    . /etc/os-release
    case " ${ID:-} ${ID_LIKE:-} " in
        *" debian "*|*" raspbian "*) ;;
        *) fail "this is ${PRETTY_NAME:-an unknown system}; I need Raspberry Pi OS or Debian" ;;
    esac
    if [ -n "${VERSION_ID:-}" ] && [ "${VERSION_ID%%.*}" -lt 12 ]; then     # testing and sid have none
        fail "this is ${PRETTY_NAME}; I need bookworm (12) or later"
    fi
    PI_MODEL=""
    if [ -r /proc/device-tree/model ]; then
        PI_MODEL=$(tr -d '\0' < /proc/device-tree/model)
        case "$PI_MODEL" in "Raspberry Pi"*) ;; *) PI_MODEL="" ;; esac
    fi
}

# -- Debian packages ------------------------------------------------------------------------------

install_packages() {
    local packages=("${APT_PACKAGES[@]}") missing=() package
    if [ -n "$PI_MODEL" ] && apt-cache show liblgpio-dev >/dev/null 2>&1; then
        packages+=(swig liblgpio-dev)     # to build lgpio where no wheel fits
    fi
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        report "Debian packages" "nothing changed"
        return
    fi
    echo "  ... installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    report "Debian packages" "installed ${missing[*]}"
}

# -- the service's user -----------------------------------------------------------------------------

ensure_user() {
    local done=() group
    if ! getent group gpio >/dev/null; then
        # Raspberry Pi OS has it; elsewhere 85-callrec-gpio.rules gives it the GPIO devices.
        groupadd --system gpio
        done+=("created group gpio")
    fi
    if ! getent group "$USER_NAME" >/dev/null; then
        groupadd --system "$USER_NAME"
        done+=("created group $USER_NAME")
    fi
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --gid "$USER_NAME" --groups audio,gpio,dialout --home-dir "$DATA_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "call recorder" "$USER_NAME"
        done+=("created user $USER_NAME in groups audio, gpio, dialout")
    else
        for group in audio gpio dialout; do
            if ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$group"; then
                usermod -a -G "$group" "$USER_NAME"
                done+=("added $USER_NAME to $group")
            fi
        done
    fi
    if ! getent passwd "$WEB_USER" >/dev/null; then
        # In the recorder's group (the catalogue, the signer's socket); not in audio, gpio, dialout.
        useradd --system --gid "$USER_NAME" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "call recorder web UI" "$WEB_USER"
        done+=("created user $WEB_USER in group $USER_NAME")
    fi
    if [ ${#done[@]} -eq 0 ]; then report "user" "nothing changed"; else report "user" "$(joined "${done[@]}")"; fi
}

# -- the program ---------------------------------------------------------------------------------------

package_files() {   # what goes into the Python package, as paths relative to the repository
    (cd "$SOURCE" && find pyproject.toml README.md appliance web -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' -print | LC_ALL=C sort)
}

install_program() {
    local extras="" pi_packages=() stamp fingerprint build
    if [ -n "$PI_MODEL" ]; then
        pi_packages=(lgpio)
        case "$PI_MODEL" in
            "Raspberry Pi 5"*|"Raspberry Pi 500"*|"Raspberry Pi Compute Module 5"*) ;;  # no RPi.GPIO on the RP1
            *) extras="[rpi-gpio]" ;;
        esac
    fi
    stamp=$PREFIX/installed-from.sha256
    fingerprint=$( { (cd "$SOURCE" && package_files | xargs -d '\n' sha256sum)
                     python3 --version; echo "$extras ${pi_packages[*]}"; } | sha256sum | cut -d' ' -f1)
    if [ -x "$VENV/bin/callrec" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$fingerprint" ] \
        && "$VENV/bin/python" -c "" 2>/dev/null; then
        report "program" "nothing changed"
        return
    fi
    if ! "$VENV/bin/python" -c "" 2>/dev/null || [ "$("$VENV/bin/python" --version)" != "$(python3 --version)" ]; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    echo "  ... building the program in $VENV (a few minutes on a Pi)"
    # Build from a copy: a build writes into the source folder, which is not ours to change.
    build=$(mktemp -d)
    (cd "$SOURCE" && package_files | tar -cf - -T -) | tar -xf - -C "$build"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --root-user-action=ignore --use-pep517 \
        "$build$extras" "${pi_packages[@]}"
    rm -rf "$build"
    echo "$fingerprint" > "$stamp"
    if [ -n "$PI_MODEL" ]; then
        report "program" "installed callrec $("$VENV/bin/callrec" --version | awk '{print $NF}') in $VENV with ${pi_packages[*]}${extras:+ and RPi.GPIO} ($PI_MODEL)"
    else
        report "program" "installed callrec $("$VENV/bin/callrec" --version | awk '{print $NF}') in $VENV (not a Raspberry Pi: no GPIO backend)"
    fi
    PROGRAM_CHANGED=true
}

# -- files ---------------------------------------------------------------------------------------------

# install_file STEP SOURCE TARGET MODE OWNER:GROUP
# A file of ours that nobody edits (units, the command): replaced whenever it differs. Sets
# CHANGED (a status would turn `set -e` off in the function: bash ignores it in a condition).
install_file() {
    local step=$1 source=$2 target=$3 mode=$4 owner=$5
    CHANGED=false
    if cmp -s "$source" "$target" && [ "$(stat -c '%a %U:%G' "$target")" = "${mode#0} $owner" ]; then
        report "$step" "nothing changed"
        return
    fi
    install -D -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$source" "$target"
    report "$step" "installed $target"
    CHANGED=true
}

# install_conffile STEP SOURCE TARGET MODE OWNER:GROUP
# A file the technician (or the web UI) may edit: installed when missing, upgraded while still
# as shipped, never overwritten once edited (the new version then goes to TARGET.dist). Sets
# CHANGED when it changed TARGET.
install_conffile() {
    local step=$1 source=$2 target=$3 mode=$4 owner=$5
    local shipped=$SHIPPED$target what
    if [ ! -e "$target" ]; then
        install -D -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$source" "$target"
        what="installed $target"
    elif cmp -s "$source" "$target"; then
        what="nothing changed"
    elif [ -e "$shipped" ] && cmp -s "$target" "$shipped"; then
        install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$source" "$target"
        what="upgraded $target (it was not edited)"
    elif [ -e "$shipped" ] && cmp -s "$source" "$shipped"; then
        what="nothing changed"      # edited, and we ship the same as last time
    elif cmp -s "$source" "$target.dist"; then
        what="nothing changed"
    else
        install -m "$mode" -o "${owner%:*}" -g "${owner#*:}" "$source" "$target.dist"
        what="kept your edited $target; the new version is $target.dist"
    fi
    cmp -s "$source" "$shipped" || install -D -m 0644 "$source" "$shipped"
    report "$step" "$what"
    CHANGED=false
    case "$what" in installed*|upgraded*) CHANGED=true ;; esac
}

install_config() {
    local what=()
    if [ "$(stat -c '%a %U:%G' "$CONF_DIR" 2>/dev/null)" != "2770 root:$USER_NAME" ]; then
        # The web UI saves settings here (as callrec); setgid keeps new files in the group.
        install -d -m 2770 -o root -g "$USER_NAME" "$CONF_DIR"
        what+=("made $CONF_DIR root:$USER_NAME 2770")
    fi
    if [ ! -e "$CONF_DIR/notice-en.wav" ]; then
        install -m 0640 -o root -g "$USER_NAME" "$SOURCE/appliance/demo/notice-en.wav" "$CONF_DIR/notice-en.wav"
        what+=("installed the example notice $CONF_DIR/notice-en.wav")
    fi
    if [ "$(stat -c '%a %U:%G' "$SECRETS_DIR" 2>/dev/null)" != "700 $USER_NAME:$USER_NAME" ]; then
        # Secret files ([webhook] secret_file, …): the recorder reads them, the web UI may not.
        install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$SECRETS_DIR"
        chmod g-s "$SECRETS_DIR"       # set by $CONF_DIR's setgid bit, and of no use here
        what+=("made $SECRETS_DIR $USER_NAME:$USER_NAME 0700")
    fi
    if [ ${#what[@]} -eq 0 ]; then report "config folder" "nothing changed"; else report "config folder" "$(joined "${what[@]}")"; fi
    install_conffile "config" "$SOURCE/firmware-config/appliance.toml.template" "$CONFIG" 0660 "root:$USER_NAME"
    CONFIG_CHANGED=$CHANGED
    if ! as_callrec test -r "$CONFIG" -a -w "$CONFIG"; then
        chgrp "$USER_NAME" "$CONFIG"
        chmod g+rw "$CONFIG"
        report "config" "let $USER_NAME read and write $CONFIG"
    fi
}

# -- the data folder -----------------------------------------------------------------------------------

read_data_dir() {   # CONFIGURED_DATA_DIR: [recorder] data_dir, resolved by the program's own loader
    local out
    # -I: the installed program, not the source folder this may be run from. realpath: the
    # folder the kernel ends in, as the units must name it (no "..", no symlink).
    if ! out=$("$VENV/bin/python" -I -c 'import os, sys
from appliance.config import load_config
from appliance.errors import CallrecError
try:
    print(os.path.realpath(load_config(sys.argv[1]).recorder.data_dir))
except CallrecError as exc:
    sys.exit(str(exc))' "$CONFIG" 2>&1); then
        fail "the data folder ([recorder] data_dir) is not known: $out
  Correct $CONFIG and run me again."
    fi
    CONFIGURED_DATA_DIR=$out
}

install_data_dir() {
    local was
    was=$(stat -c '%a %U:%G' "$DATA_DIR" 2>/dev/null || true)
    if [ "$was" = "770 $USER_NAME:$USER_NAME" ]; then
        report "data folder" "nothing changed"
    else
        install -d -m 0770 -o "$USER_NAME" -g "$USER_NAME" "$DATA_DIR"
        report "data folder" "made $DATA_DIR $USER_NAME:$USER_NAME 0770"
        [ "$was" != "750 $USER_NAME:$USER_NAME" ] || share_data_dir "$DATA_DIR"
    fi
    if [ "$CONFIGURED_DATA_DIR" != "$DATA_DIR" ]; then
        install_data_dir_elsewhere "$CONFIGURED_DATA_DIR"
    fi
}

# share_data_dir DIR: on an upgrade from a version where the web UI ran as $USER_NAME (the data
# folder was 0750), what it made for one user becomes the group's to read and write, so the web
# UI's own user shares it, and the web UI's folder becomes its user's. Private files (0600: keys,
# certificates) stay as they are, and keys/ and ledger/ stay $USER_NAME's (the signer opens keys/
# to the group as far as it should; the group reads the ledger, which only $USER_NAME writes).
share_data_dir() {
    local dir=$1
    find "$dir" -mindepth 1 \( -path "$dir/keys" -o -path "$dir/ledger" \) -prune -o \( -type d -o -type f ! -perm 600 ! -name alarm-mail.password \) -exec chmod g+rwX {} +
    [ ! -d "$dir/web" ] || chown -R "$WEB_USER:$USER_NAME" "$dir/web"
    report "data shared with the web UI" "let group $USER_NAME read and write $dir (not keys/, ledger/ nor private files); web/ is $WEB_USER's"
}

# A new box's store is sealed before its first call (recordings and personal data readable only
# after a login, see docs/security.md); its recovery key is shown once, in the summary. A box that
# has recorded already is left as it is: sealing its calls is the technician's step (`callrec seal`).
install_sealing() {
    local dir=$CONFIGURED_DATA_DIR sealed
    if [ -e "$dir/keys/store.pub" ]; then
        report "sealed store" "nothing changed"
    elif [ -e "$dir/catalogue.db" ]; then
        report "sealed store" "nothing changed (this box recorded before it was sealed: stop the recorder, then run \`sudo callrec seal\`)"
    else
        sealed=$( (umask 0007 && as_callrec "$VENV/bin/callrec" seal --config "$CONFIG") ) || fail "cannot seal the store in $dir"
        RECOVERY_KEY=$(sed -n 's/^    \([A-Z2-7-]\{20,\}\)$/\1/p' <<<"$sealed")
        [ -n "$RECOVERY_KEY" ] || fail "callrec seal did not show the recovery key"
        chown -R "$WEB_USER:$USER_NAME" "$dir/web"      # the key slots are the web UI's
        report "sealed store" "recordings and personal data in $dir are sealed from the first call"
    fi
}

# install_data_dir_elsewhere DIR: data_dir on another disk, made as $DATA_DIR is. A folder that
# already holds someone else's files is refused: their owners are never changed.
install_data_dir_elsewhere() {
    local dir=$1 target was foreign error
    case "$dir" in *[\"\\]*|*$'\n'*)
        fail "data_dir $dir in $CONFIG: a path with a quote, a backslash or a line break cannot go into a systemd unit; choose another" ;;
    esac
    case "$dir/" in //|/usr/*|/etc/*|/boot/*|/proc/*|/sys/*|/dev/*|/run/*|/tmp/*|/var/tmp/*|/home/*|/root/*)
        fail "data_dir $dir in $CONFIG: the services may not write there (their sandbox keeps the system read-only and hides /home, /root and /tmp); choose a folder on a data disk, e.g. /srv/callrec or /mnt/usb/callrec" ;;
    esac
    while IFS= read -r target; do
        case "$dir/" in "${target%/}"/*) ;; *) continue ;; esac
        [ "$target" = / ] || mountpoint -q "$target" \
            || fail "data_dir $dir is on the disk that /etc/fstab mounts on $target, which is not mounted: plug it in and mount it (sudo mount $target), then run me again (or the folder would be made on the system disk under $target)"
    done < <(findmnt --fstab --list --noheadings --output TARGET 2>/dev/null || true)
    [ ! -e "$dir" ] || [ -d "$dir" ] || fail "data_dir $dir in $CONFIG is a file, not a folder"
    was=$(stat -c '%a %U:%G' "$dir" 2>/dev/null || true)
    if [ "$was" = "770 $USER_NAME:$USER_NAME" ]; then
        report "data_dir" "nothing changed"
    else
        foreign=$([ -z "$was" ] || find "$dir" -mindepth 1 ! -user "$USER_NAME" ! -user "$WEB_USER" -print -quit)
        [ -z "$foreign" ] || fail "data_dir $dir already holds files that are not $USER_NAME's (e.g. $foreign, owned by $(stat -c %U "$foreign")), and I change no one else's files. Give data_dir a folder of its own (e.g. $dir/callrec), or make this one $USER_NAME's yourself (sudo chown -R $USER_NAME:$USER_NAME $dir), then run me again."
        if ! error=$(install -d -m 0770 -o "$USER_NAME" -g "$USER_NAME" "$dir" 2>&1); then
            fail "cannot make $dir $USER_NAME:$USER_NAME 0770 ($error). A disk formatted FAT, exFAT or NTFS has no Unix owners: format it as ext4, or mount it with uid=$USER_NAME,gid=$USER_NAME,umask=0007"
        fi
        report "data_dir" "made $dir $USER_NAME:$USER_NAME 0770${was:+ (it was $was)}"
        [ "$was" != "750 $USER_NAME:$USER_NAME" ] || share_data_dir "$dir"
    fi
    as_callrec test -w "$dir" -a -x "$dir" \
        || fail "$USER_NAME cannot reach $dir: a folder above it is closed to others (ls -ld each one); open it (chmod o+x) and run me again"
}

data_dir_drop_in() {    # what lets a unit write data_dir elsewhere (quoted: a path may have spaces)
    local path="\"${CONFIGURED_DATA_DIR//'%'/%%}\""
    cat <<END
# Written by install.sh for [recorder] data_dir in $CONFIG: each run
# replaces or removes this file, so run it again after changing data_dir. Put other local
# changes in another drop-in.
[Unit]
# At boot, wait until the disk that holds it is mounted (an /etc/fstab entry), rather than
# record onto the system disk under an empty mount point.
RequiresMountsFor=$path

[Service]
ReadWritePaths=$path
END
}

install_drop_in() {     # install_drop_in UNIT: the data_dir drop-in while data_dir is elsewhere. Sets CHANGED.
    local unit=$1 drop_in=$UNIT_DIR/$1.d/$DROP_IN file
    CHANGED=false
    if [ "$CONFIGURED_DATA_DIR" != "$DATA_DIR" ]; then
        file=$(mktemp)
        data_dir_drop_in > "$file"
        install_file "drop-in ${unit%.service}" "$file" "$drop_in" 0644 root:root
        rm -f "$file"
    elif [ -e "$drop_in" ]; then
        rm -f "$drop_in"
        rmdir --ignore-fail-on-non-empty "$UNIT_DIR/$unit.d"
        report "drop-in ${unit%.service}" "removed $drop_in (data_dir is $DATA_DIR again)"
        CHANGED=true
    fi
}

install_system_files() {
    local fw=$SOURCE/firmware-config udev_changed=false rules
    install_conffile "ALSA names" "$fw/asound.conf" /etc/alsa/conf.d/50-callrec.conf 0644 root:root
    for rules in 85-callrec-sound.rules 85-callrec-modem.rules 85-callrec-gpio.rules; do
        install_conffile "udev $rules" "$fw/$rules" "/etc/udev/rules.d/$rules" 0644 root:root
        if $CHANGED; then udev_changed=true; fi
    done
    if $udev_changed && systemd_running; then
        udevadm control --reload && udevadm trigger --action=add --subsystem-match=sound \
            --subsystem-match=tty --subsystem-match=gpio || true
    fi
    install_conffile "journal" "$fw/journald.conf" /etc/systemd/journald.conf.d/50-callrec.conf 0644 root:root
    if $CHANGED && systemd_running; then
        systemctl restart systemd-journald
    fi
    install_boot_config
    install_host_name
    install_announcement
}

# A line still on the one-card names of earlier versions (or of the template) gets the names of
# the USB port its card is in, the only USB sound card present; otherwise the technician runs
# `callrec doctor --identify`. After install_system_files: the udev rules have named the cards.
install_lines() {
    local what
    what=$("$VENV/bin/python" -I -c 'import sys
from appliance.errors import CallrecError
from appliance.lines import upgrade_legacy_names
try:
    print(upgrade_legacy_names(sys.argv[1]))
except CallrecError as exc:
    sys.exit(str(exc))' "$CONFIG" 2>&1) || fail "$what"
    report "lines" "$what"
    case "$what" in "nothing changed"*) ;; *) CONFIG_CHANGED=true ;; esac
}

https_port() {
    "$VENV/bin/python" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get("web", {}).get("https_port", 443))' "$CONFIG" 2>/dev/null || echo 443
}

# The box answers to callrec.local over mDNS (Avahi announces the host name): a host name nobody
# chose becomes HOST_NAME; one the technician gave is kept. Takes effect at the next boot, or at
# once where systemd runs (never `hostname` here: in a chroot it would rename the host machine).
install_host_name() {
    local current
    current=$(cat /etc/hostname 2>/dev/null | tr -d '[:space:]')
    if [[ "$DEFAULT_HOST_NAMES" != *" ${current:-localhost} "* ]]; then
        report "host name" "nothing changed (${current})"
        return
    fi
    echo "$HOST_NAME" > /etc/hostname
    if grep -q '^127\.0\.1\.1' /etc/hosts 2>/dev/null; then
        sed -i "s/^127\.0\.1\.1.*/127.0.1.1\t$HOST_NAME/" /etc/hosts
    else
        printf '127.0.1.1\t%s\n' "$HOST_NAME" >> /etc/hosts
    fi
    if systemd_running; then
        hostnamectl set-hostname "$HOST_NAME"
    fi
    report "host name" "named the box $HOST_NAME (was ${current:-none}): https://$HOST_NAME.local/"
}

install_announcement() {
    local announcement
    announcement=$(mktemp)
    sed "s/HTTPS_PORT/$(https_port)/" "$SOURCE/firmware-config/avahi-callrec.service" > "$announcement"
    install_file "mDNS announcement" "$announcement" /etc/avahi/services/callrec.service 0644 root:root
    rm -f "$announcement"
}

install_boot_config() {
    local config_txt="" block current
    for config_txt in /boot/firmware/config.txt /boot/config.txt ""; do
        [ -z "$config_txt" ] || [ -f "$config_txt" ] && break
    done
    if [ -z "$PI_MODEL" ] || [ -z "$config_txt" ]; then
        report "config.txt" "nothing changed (not a Raspberry Pi)"
        return
    fi
    # [all]: whatever filter section ends the file, the pull-ups apply to every model.
    block=$(printf '# BEGIN callrec (install.sh replaces this block)\n[all]\n%s\n# END callrec' \
        "$(cat "$SOURCE/firmware-config/config.txt.fragment")")
    current=$(sed -n '/^# BEGIN callrec/,/^# END callrec/p' "$config_txt")
    if [ "$current" = "$block" ]; then
        report "config.txt" "nothing changed"
        return
    fi
    cp -p "$config_txt" "$config_txt.callrec-backup"
    { sed '/^# BEGIN callrec/,/^# END callrec/d' "$config_txt.callrec-backup"; echo "$block"; } > "$config_txt"
    report "config.txt" "pull-ups on the detector inputs in $config_txt (from the next boot: reboot once)"
}

install_units() {
    local unit units_changed=false wrapper
    for unit in "${UNITS[@]}"; do
        install_file "unit ${unit%.service}" "$SOURCE/systemd/$unit" "$UNIT_DIR/$unit" 0644 root:root
        if $CHANGED; then units_changed=true; fi
        install_drop_in "$unit"
        if $CHANGED; then units_changed=true; fi
    done
    wrapper=$(mktemp)
    command_wrapper > "$wrapper"
    install_file "command" "$wrapper" /usr/local/bin/callrec 0755 root:root
    rm -f "$wrapper"
    install_file "docs" "$SOURCE/docs/install.md" "$PREFIX/share/docs/install.md" 0644 root:root
    if systemd_running && $units_changed; then
        systemctl daemon-reload
    fi
    for unit in "${UNITS[@]}"; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            report "enable ${unit%.service}" "nothing changed"
        else
            systemctl enable --quiet "$unit"
            report "enable ${unit%.service}" "enabled $unit (starts at every boot)"
        fi
    done
    if ! systemd_running; then
        report "start" "nothing changed (systemd is not running here, e.g. a chroot: the services start at the next boot)"
        return
    fi
    for unit in "${UNITS[@]}"; do
        if $PROGRAM_CHANGED || $units_changed || $CONFIG_CHANGED; then
            start_unit restart "$unit" restarted
        elif ! systemctl is-active --quiet "$unit"; then
            start_unit start "$unit" started
        else
            report "start ${unit%.service}" "nothing changed"
        fi
    done
}

start_unit() {      # start_unit start|restart UNIT WORD
    if systemctl "$1" "$2"; then
        report "start ${2%.service}" "$3 $2"
    else
        report "start ${2%.service}" "FAILED: $2 does not start; see journalctl -u ${2%.service}"
        SERVICE_FAILED=true
    fi
}

command_wrapper() {   # /usr/local/bin/callrec
    cat <<EOF
#!/bin/sh
# callrec as the services' user, so that what it writes in $DATA_DIR stays theirs.
# Installed by install.sh.
umask 0007          # what it writes in $DATA_DIR the web UI shares (group $USER_NAME)
if [ "\$(id -u)" -eq 0 ]; then
    exec setpriv --reuid=$USER_NAME --regid=$USER_NAME --init-groups --reset-env -- $VENV/bin/callrec "\$@"
fi
exec $VENV/bin/callrec "\$@"
EOF
}

# -- what the technician needs to know now ----------------------------------------------------------

summary() {
    local port addresses code
    port=$(https_port)
    [ "$port" = 443 ] && port="" || port=":$port"
    addresses=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -v ':' | grep . || true)
    echo
    if $changed_anything; then echo "callrec is installed."; else echo "callrec is installed; this run changed nothing."; fi
    echo "Web UI:"
    echo "  https://$(cat /etc/hostname 2>/dev/null || hostname).local$port/"
    for address in $addresses; do echo "  https://$address$port/"; done
    if [ -n "$RECOVERY_KEY" ]; then
        echo "Recovery key of the store (shown only now: print it for the owner, who types it at setup,"
        echo "and keep it away from the box; it opens every recording if all passwords are lost):"
        echo "  $RECOVERY_KEY"
    fi
    if code=$(as_web "$VENV/bin/callrec" setup-code --keep --config "$CONFIG" 2>&1); then
        echo "One-time setup code (for the first admin account): $code"
    elif [[ "$code" == *"set up already"* ]]; then
        echo "${code#callrec: }"
    else
        echo "Setup code: not available yet (${code##*$'\n'});"
        echo "  run \`sudo callrec setup-code\` once the web UI is up."
    fi
    if systemd_running; then
        echo
        echo "Checking the appliance (sudo callrec doctor):"
        as_callrec "$VENV/bin/callrec" doctor --config "$CONFIG" || true
    fi
}

check_system
install_packages
ensure_user
PROGRAM_CHANGED=false
CONFIG_CHANGED=false
RECOVERY_KEY=""
SERVICE_FAILED=false
install_program
install_config
read_data_dir
install_data_dir
install_sealing
install_system_files
install_lines
install_units
summary
if $SERVICE_FAILED; then
    echo "install.sh: a service does not start: the lines above and \`sudo callrec doctor\` say why" >&2
    exit 1
fi
