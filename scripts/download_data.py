"""Download MNIST, Fashion-MNIST and CIFAR-10 into the data folder (`make data`).

The folder is the first argument, else `$CNNZOO_DATA`, else `./data`, in the layout `cnnzoo`
reads (`MNIST/raw/`, `FashionMNIST/raw/`, `cifar-10-batches-bin/`). Every file's md5 is
checked; a dataset already there is not fetched again. Offline, it says in one line what could
not be fetched from where and leaves nothing behind (`cnnzoo.zoo.downloads`);
`CNNZOO_DATA_MIRROR=URL` fetches the same files from another server.
"""

from __future__ import annotations

import sys

from cnnzoo.errors import CnnzooError
from cnnzoo.zoo.datasets import resolve_data_dir
from cnnzoo.zoo.downloads import download_dataset

DATASETS = ("mnist", "fashion-mnist", "cifar10")


def main(argv: list[str]) -> int:
    root = resolve_data_dir(argv[0] if argv else None)
    for name in DATASETS:
        try:
            folder = download_dataset(name, root)
        except CnnzooError as err:
            print(f"download_data: error: {err.reason}", file=sys.stderr)
            return err.exit_code
        print(f"{name}: ready in {folder}")
    print(f"use it with: export CNNZOO_DATA={root.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
