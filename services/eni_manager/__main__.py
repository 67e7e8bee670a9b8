from services.eni_manager.main import main

main()
