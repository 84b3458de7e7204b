//! What must not compile, and what the compiler says about it: the
//! `.stderr` files under `tests/ui/` are part of the documentation.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
