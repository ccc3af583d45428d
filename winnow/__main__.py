from winnow.pipeline.cli import main

main()
