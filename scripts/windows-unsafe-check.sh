#!/usr/bin/env bash
# The unsafe discipline of the Windows backend, which the host's clippy never
# sees (the current toolchain has no Windows std here):
#
# 1. A text check of crates/cport/src/sys/windows/: every `unsafe {` block and
#    `unsafe impl` is immediately preceded by a `// SAFETY:` comment listing
#    its obligations as `// - ` bullets, and every `unsafe fn` has a
#    `# Safety` section in its doc comment (the workspace denies clippy's
#    undocumented_unsafe_blocks and missing_safety_doc; the bullets are the
#    project's rule). It runs first on counter-examples, which must fail.
# 2. Real clippy: Debian's clippy 1.63 (rust-clippy) over crates/cport built
#    for x86_64-pc-windows-gnu against Debian's Windows std 1.63, in the
#    scratch workspace of scripts/rust163.sh, as the library and as its unit
#    tests. Any diagnostic in sys/windows/ fails, and so does any compile
#    error; lints elsewhere are printed only (the host's clippy, a newer one,
#    rules there).
#
# Usage: scripts/windows-unsafe-check.sh [--text-only] [DIR...]
#   DIR: text-check these directories instead (to try the checker out).
#   --text-only: skip clippy.
# WINDOWS_CLIPPY_DIR overrides the scratch directory (default target/windows-clippy).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
clippy=1
if [ "${1:-}" = --text-only ]; then clippy=0; shift; fi

text_check() {
    python3 - "$@" <<'PY'
import pathlib, re, sys

BLOCK = re.compile(r"\bunsafe\s*\{")
IMPL = re.compile(r"\bunsafe\s+impl\b")
FN = re.compile(r"\bunsafe\s+(?:extern\s+\"[^\"]*\"\s+)?fn\s+\w")

def code(line):
    """The line without a trailing // comment (a naive cut; good enough
    for this code, which has no "//" inside string literals)."""
    s = line.strip()
    if s.startswith("//"):
        return ""
    cut = line.find("//")
    return line if cut < 0 else line[:cut]

def check(path):
    lines = path.read_text().splitlines()
    bad = []
    for i, line in enumerate(lines):
        c = code(line)
        if BLOCK.search(c) or IMPL.search(c):
            what = "unsafe impl" if IMPL.search(c) else "unsafe block"
            j = i - 1
            above = []
            while j >= 0 and lines[j].strip().startswith("//") \
                    and not lines[j].strip().startswith(("///", "//!")):
                above.insert(0, lines[j].strip())
                j -= 1
            safety = [k for k, l in enumerate(above) if re.match(r"//\s*SAFETY:", l)]
            if not safety:
                bad.append(f"{path}:{i + 1}: {what} not immediately preceded by a // SAFETY: comment")
            elif not any(re.match(r"//\s*-\s", l) for l in above[safety[-1] + 1:]):
                bad.append(f"{path}:{i + 1}: {what}: its // SAFETY: comment lists no '// - ' bullet")
        if FN.search(c):
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#["):
                j -= 1
            doc = []
            while j >= 0 and lines[j].strip().startswith("///"):
                doc.append(lines[j].strip())
                j -= 1
            if not any(re.match(r"///\s*#\s*Safety\b", l) for l in doc):
                bad.append(f"{path}:{i + 1}: unsafe fn without a '# Safety' section in its doc comment")
    return bad

files = sorted(f for d in sys.argv[1:] for f in pathlib.Path(d).rglob("*.rs"))
if not files:
    sys.exit(f"no .rs files under {' '.join(sys.argv[1:])}")
bad = [b for f in files for b in check(f)]
for b in bad:
    print(b)
blocks = sum(len(BLOCK.findall(code(l))) for f in files for l in f.read_text().splitlines())
print(f"{len(files)} files, {blocks} unsafe blocks: {len(bad)} undocumented")
sys.exit(1 if bad else 0)
PY
}

# The checker must fail on each counter-example and pass the good one.
self_test() {
    local dir status=0 name
    dir=$(mktemp -d)
    mkdir -p "$dir"/{block,far,nobullet,impl,fn,good}
    printf 'fn f() {\n    let x = unsafe { g() };\n}\n' > "$dir/block/a.rs"
    printf 'fn f() {\n    // SAFETY:\n    // - g has no contract.\n    let y = 1;\n    let x = unsafe { g() };\n}\n' > "$dir/far/a.rs"
    printf 'fn f() {\n    // SAFETY: g has no contract.\n    unsafe { g() };\n}\n' > "$dir/nobullet/a.rs"
    printf 'struct S(*mut u8);\nunsafe impl Send for S {}\n' > "$dir/impl/a.rs"
    printf '/// Does g.\n#[inline]\npub(super) unsafe fn f() {}\n' > "$dir/fn/a.rs"
    cat > "$dir/good/a.rs" <<'RS'
type F = unsafe extern "system" fn(u32) -> i32;
struct S(*mut u8);
// SAFETY:
// - S owns what it points at.
unsafe impl Send for S {}
/// Does g.
///
/// # Safety
///
/// None needed. // an unsafe { in a doc comment is not code
#[inline]
pub(super) unsafe fn f() -> bool {
    // SAFETY:
    // - g has no contract;
    // - nor has h.
    let x = unsafe { g() } && unsafe { h() };
    x
}
RS
    for name in block far nobullet impl fn; do
        if text_check "$dir/$name" >/dev/null; then
            echo "self-test: the text check passed the counter-example '$name'" >&2
            status=1
        fi
    done
    if ! text_check "$dir/good" >/dev/null; then
        echo "self-test: the text check failed the good example" >&2
        text_check "$dir/good" >&2 || true
        status=1
    fi
    rm -rf "$dir"
    [ $status = 0 ] && echo "self-test: the text check fails each counter-example and passes the good one"
    return $status
}

if [ $# -gt 0 ]; then
    text_check "$@"
    exit
fi
echo "Windows backend's unsafe discipline: SAFETY comments, then clippy 1.63 for the Windows target"
self_test
echo "text check of crates/cport/src/sys/windows/:"
text_check "$top/crates/cport/src/sys/windows"
[ $clippy = 1 ] || exit 0

target=x86_64-pc-windows-gnu
need=()
[ -x /usr/bin/rustc ] || need+=(rustc)
[ -d /usr/lib/rustlib/$target ] || need+=(libstd-rust-dev-windows)
[ -x /usr/bin/clippy-driver ] || need+=(rust-clippy)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
/usr/bin/clippy-driver --version

work=${WINDOWS_CLIPPY_DIR:-$top/target/windows-clippy}
. "$top/scripts/rust163.sh"
rust163_workspace "$top" "$work"
# Cargo runs a RUSTC_WORKSPACE_WRAPPER as `wrapper rustc args...` on the
# workspace's own crates only. clippy-driver 1.63 wants the literal `rustc`
# there, the flags rustc 1.63 knows, and Debian's sysroot, which holds the
# Windows std.
cat > "$work/clippy163" <<'W'
#!/usr/bin/env bash
shift
args=(); skip=0
for a in "$@"; do
  if [ $skip = 1 ]; then skip=0; continue; fi
  case "$a" in
    --check-cfg) skip=1 ;;
    --check-cfg=*|--print=split-debuginfo) ;;
    *) args+=("$a") ;;
  esac
done
exec /usr/bin/clippy-driver rustc --sysroot "$(/usr/bin/rustc --print sysroot)" "${args[@]}"
W
chmod +x "$work/clippy163"
export RUSTC="$work/rustc163" RUSTC_WORKSPACE_WRAPPER="$work/clippy163" CARGO_TARGET_DIR="$work/target"
{
    cargo check -p cport --target $target --lib --message-format=json || true
    cargo check -p cport --target $target --lib --profile test --message-format=json || true
} > "$work/clippy.json"
python3 - "$work/clippy.json" <<'PY'
import json, re, sys
seen, fail, notes = set(), [], []
runs, errors = [], 0
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "build-finished":
        runs.append(m["success"] or errors > 0)
        errors = 0
        continue
    if m.get("reason") != "compiler-message":
        continue
    d = m["message"]
    errors += d["level"] == "error"
    text = d.get("rendered") or d["message"]
    if text in seen or d["level"] not in ("warning", "error"):
        continue
    seen.add(text)
    files = [s["file_name"] for s in d["spans"] if s["is_primary"]]
    ours = any("src/sys/windows/" in f for f in files)
    code = (d.get("code") or {}).get("code") or ""
    compile_error = d["level"] == "error" and bool(files) and (not code or bool(re.fullmatch(r"E\d{4}", code)))
    (fail if ours or compile_error else notes).append(text)
for t in notes:
    print("note (outside sys/windows, not failing):\n" + t)
for t in fail:
    print(t)
if len(runs) != 2 or not all(runs):
    # A build that failed with no diagnostic of its own: clippy never ran.
    print(f"cargo did not lint both targets (runs: {runs}); see the output above")
    sys.exit(1)
print(f"clippy 1.63: {len(fail)} diagnostics in sys/windows or compile errors, {len(notes)} lints elsewhere")
sys.exit(1 if fail else 0)
PY
echo "crates/cport/src/sys/windows: SAFETY comments present, clippy 1.63 clean for $target"
