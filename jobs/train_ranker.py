"""spark-submit entry for the train stage (the attention ranker), through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/train_ranker.py --conf conf/local.yaml --date D [--resume]
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
