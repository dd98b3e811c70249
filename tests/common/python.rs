//! Running the Python clients of the suites (what a non-Rust upstream
//! service does). `scripts/test` creates the virtualenv with
//! `confluent-kafka`; `SECKILL_TEST_PYTHON` names its interpreter.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The interpreter of the test virtualenv.
pub(crate) fn interpreter() -> PathBuf {
    if let Some(p) = std::env::var_os("SECKILL_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("SECKILL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/seckill-tools")
        });
    let venv = tools.join("venv/bin/python");
    assert!(
        venv.exists(),
        "no Python test client: {} is missing; run scripts/test (it creates the \
         virtualenv with confluent-kafka) or set SECKILL_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// Runs `tests/python/<script>` with `args` and parses what it prints as
/// JSON; panics with its stderr when it fails.
pub(crate) fn run_json(script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/python")
        .join(script);
    let out = Command::new(interpreter())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{} printed no JSON ({e}): {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
