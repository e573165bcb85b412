"""`python src/retrieve.py` = `cliptune-retrieve`: query a checkpoint (code in cliptune/cli/retrieve.py)."""
from cliptune.cli.retrieve import main

if __name__ == "__main__":
    main()
