from sweeps.train import main

main()
