from services.node_datapath.main import main

main()
