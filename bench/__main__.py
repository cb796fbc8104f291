"""python -m bench: ptlab against TRL's GRPOTrainer, step times side by side (bench/throughput.py)."""
from bench.throughput import main

main()
