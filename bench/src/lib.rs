//! Shared helpers for the benchmark drivers: split files, process memory, JSON lines.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Reads a headerless `user<TAB>item` file (the split format shared with the Python peers).
pub fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        let mut parts = line.split('\t');
        match (parts.next(), parts.next()) {
            (Some(u), Some(i)) => out.push((u.to_owned(), i.to_owned())),
            _ => anyhow::bail!("{}:{}: expected user<TAB>item", path.display(), n + 1),
        }
    }
    Ok(out)
}

/// Writes pairs in the shared split format.
pub fn write_pairs<'a>(path: &Path, pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::new(f);
    for (u, i) in pairs {
        writeln!(w, "{u}\t{i}")?;
    }
    w.flush()?;
    Ok(())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Rounds for printing.
pub fn r4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
