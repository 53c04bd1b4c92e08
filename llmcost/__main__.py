from llmcost.cli import cli

cli(prog_name="llmcost")
