# Sourced by msrv-check.sh and windows-test.sh: a scratch workspace holding
# only crates/cport, built by the current cargo driving Debian's rustc 1.63
# (crates/cport's rust-version; Debian's Windows std is 1.63 too).
#
# rust163_workspace TOP WORK: copies TOP/crates/cport into WORK/ws, writes
# WORK/rustc163 (a wrapper dropping the flags the current cargo passes that
# rustc 1.63 does not know), and resolves a lockfile whose dependency
# versions support 1.63. Leaves the caller in WORK/ws. Debian's own cargo
# (1.65) is not used: it cannot read lockfile v4 or the edition 2024
# manifests of the other workspace members.
rust163_workspace() {
    local top=$1 work=$2
    rm -rf "$work/ws" && mkdir -p "$work/ws/crates"
    cp -r "$top/crates/cport" "$work/ws/crates/"
    sed 's/^members = .*/members = ["crates\/cport"]/' "$top/Cargo.toml" > "$work/ws/Cargo.toml"
    cat > "$work/rustc163" <<'W'
#!/usr/bin/env bash
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
}
