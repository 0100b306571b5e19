//! Shared by the benches: SEAL's reference timings from `benches/seal_ref.py`, run in the same
//! process tree so both sides see the same machine state.

/// One line of `seal_ref.py`: (operation, size, microseconds). `None` (with a printed reason)
/// when Python or tenseal is not available.
pub fn seal_reference(mode: &str) -> Option<Vec<(String, String, f64)>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/seal_ref.py");
    let out = match std::process::Command::new("python3").args([script, mode]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!("SEAL comparison skipped: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            println!("SEAL comparison skipped: cannot run python3 ({e})");
            return None;
        }
    };
    let rows = out
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [_, op, size, us] = f[..] else { return None };
            Some((op.to_string(), size.to_string(), us.parse().ok()?))
        })
        .collect();
    Some(rows)
}
