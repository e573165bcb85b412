"""`python src/optimize.py` = `cliptune-optimize`: an Optuna study (code in cliptune/cli/optimize.py)."""
from cliptune.cli.optimize import main

if __name__ == "__main__":
    main()
