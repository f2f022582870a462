"""Benchmarks that print figures (`stepfoley bench NAME`); speed targets live here, never in
timed unit tests. Each module's `main(argv)` is one benchmark."""
