//! The README's section "The model in cport" quotes the handler of cport's
//! `examples/echo.rs`: exactly the lines between the example's two
//! markers, which its build compiles, so what the README shows is code that
//! compiles. Checked here rather than in crates/cport: the Rust 1.63
//! workspace that builds cport's tests for the MSRV check and for Windows
//! holds only crates/cport, without the README.

/// The lines strictly between the line holding `begin` and the one holding
/// `end`.
fn between<'a>(text: &'a str, begin: &str, end: &str) -> &'a str {
    let start = text.find(begin).unwrap_or_else(|| panic!("no {begin:?}"));
    let rest = &text[start..];
    let rest = &rest[rest.find('\n').map_or(rest.len(), |i| i + 1)..];
    let stop = rest.find(end).unwrap_or_else(|| panic!("no {end:?}"));
    let body = &rest[..stop];
    // Up to the start of the end marker's own line.
    &body[..body.rfind('\n').map_or(0, |i| i + 1)]
}

#[test]
fn readme_quotes_the_compiled_echo_handler() {
    let readme = include_str!("../../../../README.md");
    let echo = include_str!("../../../cport/examples/echo.rs");
    let region = between(echo, "// README excerpt: begin", "// README excerpt: end");
    let section = between(readme, "\n## The model in cport\n", "\n## ");
    let block = between(section, "```rust", "```");
    assert!(
        !region.is_empty(),
        "the marked region of examples/echo.rs is empty"
    );
    assert_eq!(
        block, region,
        "README.md's echo handler differs from crates/cport/examples/echo.rs: copy the marked lines"
    );
}
