#!/usr/bin/env bash
# Builds the Debian package with plain dpkg-deb: scripts/package.sh [BINARY] [OUT_DIR]
# (default: target/release/stickwarden, target/debian). `make package` builds the release binary
# first. The man pages and completions are made by the binary itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/stickwarden}"
out="${2:-target/debian}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/stickwarden_${version}_${arch}"

install -D -m 755 "$bin" "$root/usr/bin/stickwarden"
# Debian ships binaries without their debug information.
strip --strip-unneeded "$root/usr/bin/stickwarden"
install -D -m 644 packaging/stickwarden.toml "$root/etc/stickwarden/stickwarden.toml"
for f in rules/*.toml; do
    install -D -m 644 "$f" "$root/etc/stickwarden/rules/$(basename "$f")"
done
install -D -m 644 contrib/stickwarden.service "$root/lib/systemd/system/stickwarden.service"
"$bin" man "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$root/usr/share/bash-completion/completions/stickwarden"
"$bin" completions zsh >"$root/usr/share/zsh/vendor-completions/_stickwarden"
"$bin" completions fish >"$root/usr/share/fish/vendor_completions.d/stickwarden.fish"
install -D -m 644 packaging/copyright "$root/usr/share/doc/stickwarden/copyright"
gzip -9n <packaging/changelog >"$root/usr/share/doc/stickwarden/changelog.gz"
for d in docs/*.md; do
    install -D -m 644 "$d" "$root/usr/share/doc/stickwarden/$(basename "$d")"
done
find "$root/usr/share" -type f -exec chmod 644 {} +

install -d "$root/DEBIAN"
install -m 755 packaging/postinst packaging/postrm "$root/DEBIAN/"
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) >"$root/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<CONTROL
Package: stickwarden
Version: $version
Architecture: $arch
Maintainer: stickwarden maintainers <maintainers@stickwarden.example.org>
Installed-Size: $size
Depends: adduser, libc6 (>= 2.36)
Recommends: haproxy
Section: net
Priority: optional
Description: adaptive security controller for HAProxy stick tables
 stickwarden reads HAProxy's stick tables through the Runtime API, scores
 abusive clients with rules, and blocks, escalates and releases them (tags,
 ACL entries, map-driven responses, session kills), recording every decision.
 Comes with a review console, an HTTP API and a hardened systemd unit.
CONTROL
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$root" "$out/" >/dev/null
echo "$out/stickwarden_${version}_${arch}.deb"
