"""Property-based fuzzing of Verifier.verify (a longer run: fuzz/run.py)."""
