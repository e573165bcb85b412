"""`python src/make_shards.py` = `cliptune-make-shards`: write a dataset as webdataset shards
(code in cliptune/cli/make_shards.py)."""
from cliptune.cli.make_shards import main

if __name__ == "__main__":
    main()
