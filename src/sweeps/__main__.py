from sweeps.train import cli

cli()
