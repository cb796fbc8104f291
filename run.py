"""ptlab's command line: compose, check, build, fit, summarise (the page is ptlab/run.py).

    python run.py algorithm=gvpo beta=0.1
    python run.py -m algorithm=grpo,gvpo seed=0,1,2
"""
from ptlab.run import cli

if __name__ == "__main__":
    cli()
