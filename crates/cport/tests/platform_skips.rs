//! Says which test files do not run on this system and why: a skipped
//! case prints its reason instead of vanishing from the run.

#[cfg(not(target_os = "linux"))]
#[test]
fn linux_only_test_files() {
    eprintln!(
        "skipped: tests/exhaustion.rs (SEMANTICS R2) needs prlimit(1), /proc/self/fd and \
         /dev/null; tests/backend_choice.rs (R1) chooses between the Linux backends and \
         needs prlimit(1) and /proc/self/fd"
    );
}
