"""prac_dist's benchmarks, grouped by what they measure: memory/, compute/, quality/, kernels/ and gpu/.

Run each one as a module from the repository root, for example `python -m benchmarks.compute.compute`;
they import each other and the shared modules here (`_harness`, `_bench_env`, ...) as
`benchmarks.<group>.<name>` and `benchmarks._<name>`. The group folders have no `__init__.py` on purpose:
as namespace folders they cannot hide an installed package of the same name (PyPI's `kernels`, which
transformers imports) should this folder ever land on `sys.path` (tests/test_no_shadowing.py)."""
