#!/usr/bin/env bash
# Checks that the library, its examples and its tests build with Rust 1.63
# (crates/cport's rust-version: the Windows backend is built with Debian's
# Rust 1.63 toolchain). Uses Debian's rustc 1.63 behind the current cargo,
# in a scratch workspace whose lockfile picks dependency versions that
# support 1.63.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x /usr/bin/rustc ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc libstd-rust-dev
fi
/usr/bin/rustc -V
work=${MSRV_DIR:-$top/target/msrv}
rm -rf "$work/ws" && mkdir -p "$work/ws/crates"
cp -r "$top/crates/cport" "$work/ws/crates/"
sed 's/^members = .*/members = ["crates\/cport"]/' "$top/Cargo.toml" > "$work/ws/Cargo.toml"
cat > "$work/rustc163" <<'W'
#!/usr/bin/env bash
# Drops the flags the current cargo passes that rustc 1.63 does not know.
args=(); skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  case "$a" in
    --check-cfg) skip=1 ;;
    --check-cfg=*|--print=split-debuginfo) ;;
    *) args+=("$a") ;;
  esac
done
exec /usr/bin/rustc "${args[@]}"
W
chmod +x "$work/rustc163"
cd "$work/ws"
CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo generate-lockfile -q
RUSTC="$work/rustc163" CARGO_TARGET_DIR="$work/target" cargo check -p cport --all-targets
echo "crates/cport builds with $(/usr/bin/rustc -V)"
