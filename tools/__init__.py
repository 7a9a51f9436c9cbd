"""Developer tools that ship beside the library, not in it: run as `python -m tools.<name>` from the
repository root (`tools.aot`: build every Triton kernel for sm_80/sm_90 without a GPU)."""
