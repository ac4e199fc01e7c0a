#!/usr/bin/env bash
# Make the local base image dragon-base:bookworm from Debian packages.
#
# No container registry is reachable here, so every FROM must name a local image. This script
# builds a minimal Debian bookworm root file system with debootstrap (variant minbase, plus
# python3, python3-venv and ca-certificates), removes the apt lists and cached .debs, and turns
# it into an image with `docker import`.
#
# The Debian mirror is read at run time from the host's apt sources
# (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); set DEBIAN_MIRROR (and optionally
# DEBIAN_SECURITY_MIRROR) to override. Needs root and debootstrap.
#
# Idempotent: when the image already exists, it does nothing (set FORCE=1 to rebuild; images
# built FROM the old one keep it alive, so rebuild those too: scripts/build-images.sh).
set -euo pipefail

IMAGE=dragon-base:bookworm
SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates

die() { echo "make-base-image: ERROR: $*" >&2; exit 1; }
log() { echo "make-base-image: $*" >&2; }

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is dockerd running?)"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists, nothing to do"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"

# --- Debian mirror from the host's apt sources -------------------------------------------------
# Prints "URI<TAB>SUITE" for every deb source (deb822 .sources files and one-line sources.list).
apt_sources() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && enabled != "no")
                    for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i] "\t" s[j]
                types = ""; enabled = ""; nu = 0; ns = 0
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = tolower($1); sub(/:$/, "", key)
                $1 = ""; sub(/^[ \t]+/, "")
                if (key == "types") types = $0
                else if (key == "enabled") enabled = tolower($0)
                else if (key == "uris") nu = split($0, u, /[ \t]+/)
                else if (key == "suites") ns = split($0, s, /[ \t]+/)
            }
            END { flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk '
            $1 != "deb" { next }
            {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }   # skip [options]
                print $i "\t" $(i + 1)
            }
        ' "$f"
    done
}

SOURCES=$(apt_sources || true)
MIRROR="${DEBIAN_MIRROR:-$(awk -F'\t' -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$SOURCES")}"
SECURITY="${DEBIAN_SECURITY_MIRROR:-$(awk -F'\t' -v s="$SUITE-security" '$2 == s || $2 == s "/updates" { print $1; exit }' <<<"$SOURCES")}"
[[ -n $MIRROR ]] || die "no '$SUITE' deb source found in /etc/apt/sources.list{,.d/*}; set DEBIAN_MIRROR"
MIRROR=${MIRROR%/}
SECURITY=${SECURITY%/}
log "Debian mirror: $MIRROR${SECURITY:+ (security: $SECURITY)}"

# --- debootstrap --------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/dragon-base.XXXXXX")
ROOTFS="$WORK/rootfs"
cleanup() {
    # debootstrap mounts proc/sys inside the target; never rm -rf through a live mount.
    local m
    if [[ -d $ROOTFS ]]; then
        for m in $(awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
            umount -l "$m" 2>/dev/null || true
        done
        if awk -v r="$ROOTFS" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
            log "WARNING: mounts left under $ROOTFS, not removing $WORK"
            return
        fi
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

t0=$SECONDS
log "debootstrap --variant=minbase --include=$INCLUDE $SUITE (takes a minute or two)"
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
log "debootstrap done in $((SECONDS - t0)) s"

# --- tidy the root file system ------------------------------------------------------------------
{
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    [[ -n $SECURITY ]] && echo "deb $SECURITY $SUITE-security main"
} >"$ROOTFS/etc/apt/sources.list"

# Never start services during image builds (mosquitto, redis postinst).
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
# Keep derived apt layers small even when a Dockerfile forgets to clean (same as Debian's images).
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Binary::apt::APT::Keep-Downloaded-Packages "false";
CONF
echo 'force-unsafe-io' >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
# Like Debian's "slim" images: no man pages, info, translations or docs (license files stay),
# now and in every package a derived image installs.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CONF'
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
CONF
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends"

rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/archives/partial/* \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/apt/* "$ROOTFS"/var/log/dpkg.log "$ROOTFS"/var/log/bootstrap.log \
       "$ROOTFS"/debootstrap "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
: >"$ROOTFS/etc/resolv.conf"      # docker provides its own at run time
: >"$ROOTFS/etc/hostname"

# --- import -------------------------------------------------------------------------------------
old_id=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
log "docker import -> $IMAGE"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase --include=$INCLUDE $SUITE" \
    - "$IMAGE" >/dev/null
new_id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then   # FORCE=1: drop the replaced image if unused
    docker rmi "$old_id" >/dev/null 2>&1 || log "note: old image $old_id is still in use, left in place"
fi
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "made $IMAGE ($((size / 1000000)) MB) in $((SECONDS - t0)) s"
