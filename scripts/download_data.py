"""Download MNIST, Fashion-MNIST and CIFAR-10 with torchvision into the data folder.

`make data` runs it: the folder is the first argument, else `$CNNZOO_DATA`, else `./data`, in
the layout `cnnzoo` reads (`MNIST/raw/`, `FashionMNIST/raw/`, `cifar-10-batches-py/`).
torchvision checks every file's md5; a dataset already there is not fetched again.
"""

from __future__ import annotations

import sys

from torchvision import datasets

from cnnzoo.zoo.datasets import resolve_data_dir


def main(argv: list[str]) -> int:
    root = resolve_data_dir(argv[0] if argv else None)
    root.mkdir(parents=True, exist_ok=True)
    for reader in (datasets.MNIST, datasets.FashionMNIST, datasets.CIFAR10):
        for train in (True, False):
            reader(str(root), train=train, download=True)
        print(f"{reader.__name__}: ready in {root}")
    print(f"use it with: export CNNZOO_DATA={root.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
