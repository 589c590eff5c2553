from kdsweep.main import main

main()
