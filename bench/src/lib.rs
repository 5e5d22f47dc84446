//! Shared helpers for the benchmark drivers: data files, synthetic shops, metrics output.
