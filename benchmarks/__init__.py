"""prac_dist's benchmarks: run each one as a module from the repository root, for example
`python -m benchmarks.compute`. They import each other as `benchmarks.<name>` (never by putting this
folder on `sys.path`, where a file could shadow an installed package of the same name)."""
