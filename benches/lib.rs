//! Benchmarks for ringfence live in this package's `[[bench]]` and
//! `[[example]]` targets; the library itself is empty.
