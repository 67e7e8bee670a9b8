from services.route_manager.main import main

main()
