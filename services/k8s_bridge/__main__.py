from services.k8s_bridge.main import main

main()
