"""`python src/main.py` = `cliptune-train`: train one CLIP (code in cliptune/cli/train.py)."""
from cliptune.cli.train import main

if __name__ == "__main__":
    main()
