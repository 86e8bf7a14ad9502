#!/usr/bin/env bash
# Puts GnuPG 2.4 (from Debian trixie) into a cache directory without building or installing it,
# so the test suite can check the facade against both stock gpg 2.2 (bookworm's) and 2.4.
# The packages are unpacked with `dpkg -x` and run through trixie's own dynamic loader, which
# keeps them from ever touching the system's libraries.
#
# Usage: scripts/fetch-gpg24.sh [CACHE_DIR]
#   default CACHE_DIR: ${XDG_CACHE_HOME:-$HOME/.cache}/keytether/gpg24
# Prints the path of the gpg wrapper on success. Idempotent: a working cache is left alone.
#
# Caveat: gpg 2.4 started this way locates gpg-agent, dirmngr and keyboxd at its compiled-in
# /usr/bin, so when it autostarts an agent it runs the system's (2.2) gpg-agent. Our tests point
# gpg at an agent socket we serve (or pass --no-autostart), so that never matters to them.
set -euo pipefail

cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/keytether/gpg24}
suite=trixie

if [[ -x "$cache/bin/gpg" ]] && "$cache/bin/gpg" --version 2>/dev/null | head -1 | grep -q ' 2\.4\.'; then
  echo "$cache/bin/gpg"
  exit 0
fi

for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "fetch-gpg24: $tool is needed (Debian/Ubuntu only)" >&2; exit 1; }
done

# Use the mirror this machine already uses for Debian (its bookworm entry), so a machine that can
# only reach a local mirror still works.
mirror=
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
  [[ -r "$f" ]] || continue
  m=$(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == "bookworm") { print $i; exit } }' "$f")
  if [[ -n "$m" ]]; then mirror=$m; break; fi
done
if [[ -z "$mirror" ]]; then
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r "$f" ]] || continue
    # deb822 stanzas are separated by blank lines; take URIs of the stanza whose Suites has bookworm.
    m=$(awk 'BEGIN { RS = ""; FS = "\n" }
      { uri = ""; hit = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) hit = 1
        }
        if (hit && uri != "") { print uri; exit } }' "$f")
    if [[ -n "$m" ]]; then mirror=$m; break; fi
  done
fi
mirror=${mirror:-http://deb.debian.org/debian}

arch=$(dpkg --print-architecture)
work=$(mktemp -d "${TMPDIR:-/tmp}/kt-gpg24.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/etc"
: >"$work/state/status"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ -r "$keyring" ]]; then
  echo "deb [arch=$arch signed-by=$keyring] $mirror $suite main" >"$work/etc/sources.list"
else
  echo "deb [arch=$arch] $mirror $suite main" >"$work/etc/sources.list"
fi

apt_opts=(
  -o "Dir::State=$work/state"
  -o "Dir::State::status=$work/state/status"
  -o "Dir::Cache=$work/cache"
  -o "Dir::Etc::SourceList=$work/etc/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "APT::Architecture=$arch"
  -o "APT::Architectures=$arch"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=1"
  -o "Acquire::Languages=none"
  -q
)

echo "fetch-gpg24: reading the $suite package index from $mirror" >&2
apt-get "${apt_opts[@]}" update >"$work/update.log" 2>&1 || {
  cat "$work/update.log" >&2
  echo "fetch-gpg24: apt-get update for $suite failed" >&2
  exit 1
}

pkgs=(gpg gpgconf gpg-agent libgcrypt20 libgpg-error0 libassuan9 libnpth0t64 libksba8
  libsqlite3-0 zlib1g libbz2-1.0 libreadline8t64 libtinfo6 libc6)
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}") >"$work/download.log" 2>&1 || {
  cat "$work/download.log" >&2
  echo "fetch-gpg24: downloading the $suite packages failed" >&2
  exit 1
}

# Build the new cache beside the old one and swap it in, so an interrupted run never leaves a
# half-filled cache that the idempotence check above would trust.
mkdir -p "$(dirname "$cache")"
staging=$(mktemp -d "$(dirname "$cache")/.gpg24.XXXXXX")
mkdir -p "$staging/root" "$staging/bin"
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$staging/root"
done

loader=
for cand in "$staging"/root/usr/lib64/ld-linux-*.so.* "$staging"/root/lib64/ld-linux-*.so.* \
  "$staging"/root/usr/lib/*-linux-gnu/ld-linux*.so.* "$staging"/root/lib/*-linux-gnu/ld-linux*.so.*; do
  if [[ -e "$cand" ]]; then loader=$cand; break; fi
done
[[ -n "$loader" ]] || { rm -rf "$staging"; echo "fetch-gpg24: no dynamic loader in libc6" >&2; exit 1; }
loader=${loader#"$staging/"}

libdirs=()
for d in usr/lib/*-linux-gnu lib/*-linux-gnu usr/lib lib; do
  for real in "$staging"/root/$d; do
    [[ -d "$real" && ! -L "$real" ]] && libdirs+=("${real#"$staging/"}")
  done
done

made=0
for prog in gpg gpg-agent gpgconf gpg-connect-agent; do
  [[ -x "$staging/root/usr/bin/$prog" ]] || continue
  # The wrapper resolves its own directory at run time so the cache can be moved or renamed.
  {
    echo '#!/bin/sh'
    echo 'top=$(cd "$(dirname "$0")/.." && pwd)'
    printf 'exec "$top/%s" --library-path "' "$loader"
    sep=
    for d in "${libdirs[@]}"; do printf '%s$top/%s' "$sep" "$d"; sep=:; done
    printf '" "$top/root/usr/bin/%s" "$@"\n' "$prog"
  } >"$staging/bin/$prog"
  chmod 755 "$staging/bin/$prog"
  made=$((made + 1))
done
[[ $made -gt 0 ]] || { rm -rf "$staging"; echo "fetch-gpg24: no gpg programs in the packages" >&2; exit 1; }

version=$("$staging/bin/gpg" --version 2>&1 | head -1 || true)
if [[ "$version" != *" 2.4."* ]]; then
  rm -rf "$staging"
  echo "fetch-gpg24: the unpacked gpg does not run as 2.4 (it said: $version)" >&2
  exit 1
fi

rm -rf "$cache"
mv "$staging" "$cache"
echo "fetch-gpg24: $version in $cache" >&2
echo "$cache/bin/gpg"
