from nova.cli.main import run

run()
