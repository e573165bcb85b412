"""`python src/evaluate.py` = `cliptune-evaluate`: evaluate a checkpoint on a split (code in cliptune/cli/evaluate.py)."""
from cliptune.cli.evaluate import main

if __name__ == "__main__":
    main()
