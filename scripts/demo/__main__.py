"""`python -m scripts.demo [--serve] [--force]` from the repository root (what `make demo` runs)."""

from scripts.demo.run import main

main()
