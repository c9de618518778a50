//! Turns the PostgreSQL half of the test suite on when `HOOKLINE_TEST_DATABASE_URL` is
//! set at build time (`cfg(hookline_postgres)`), and the console's browser test when
//! `HOOKLINE_TEST_CHROMIUM` is (`cfg(hookline_chromium)`); otherwise those tests are
//! listed as ignored, with the reason, so a run with Rust alone says plainly what it
//! skipped. `.ci/run` sets both.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hookline_postgres)");
    println!("cargo::rustc-check-cfg=cfg(hookline_chromium)");
    println!("cargo::rerun-if-env-changed=HOOKLINE_TEST_DATABASE_URL");
    println!("cargo::rerun-if-env-changed=HOOKLINE_TEST_CHROMIUM");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=migrations");
    if std::env::var_os("HOOKLINE_TEST_DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=hookline_postgres");
    }
    if std::env::var_os("HOOKLINE_TEST_CHROMIUM").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=hookline_chromium");
    }
}
