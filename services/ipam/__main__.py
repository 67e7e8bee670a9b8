from services.ipam.main import main

main()
