from services.cni_gateway.main import main

main()
