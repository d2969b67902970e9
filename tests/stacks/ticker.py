"""Prints a numbered tick every 200 ms: output to follow."""
import time

for i in range(100000):
    print("tick", i, flush=True)
    time.sleep(0.2)
