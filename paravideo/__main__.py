"""`python -m paravideo ...` (and `torchrun -m paravideo ...`) run the CLI."""

from paravideo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
