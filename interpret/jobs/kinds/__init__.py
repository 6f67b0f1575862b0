"""One module per analysis kind (see `cnnzoo.interpret.jobs.analysis`)."""
