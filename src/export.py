"""`python src/export.py` = `cliptune-export`: export a checkpoint (code in cliptune/cli/export.py)."""
from cliptune.cli.export import main

if __name__ == "__main__":
    main()
