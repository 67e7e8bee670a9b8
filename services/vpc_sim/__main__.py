from services.vpc_sim.main import main

main()
