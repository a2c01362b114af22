from quantir.cli import entry

entry()
