"""python -m ptlab.bench: ptlab against TRL's GRPOTrainer, step times side by side (bench/throughput.py)."""
from ptlab.bench.throughput import main

main()
