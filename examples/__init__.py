"""The shipped examples as package data: MNIST test digits and one CIFAR-10 test image per class
as PNG, and job files. `cnnzoo examples DEST` copies them out of the installed package."""
