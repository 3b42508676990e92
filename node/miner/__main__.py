"""`python -m node.miner run` (settings from INFERD_* env and INFERD_CONFIG): the miner CLI alone."""

from node.cli.miner import app

if __name__ == "__main__":  # vLLM spawns worker processes: never run on import
    app()
