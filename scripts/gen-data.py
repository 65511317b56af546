#!/usr/bin/env python3
"""Generates data/data.csv, the demo feed: the seed's columns (id, name, value) plus a category and
an event timestamp, 3000 rows, deterministic (fixed seed) so the file is reproducible."""
import csv
import datetime
import random
import sys

rng = random.Random(20261124)
first = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger",
         "Radia", "Donald", "Shafi", "Leslie", "Sophie", "Tim", "Anita", "Guido", "Yukihiro"]
last = ["Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen",
        "Dijkstra", "Perlman", "Knuth", "Goldwasser", "Lamport", "Wilson", "Berners-Lee", "Borg",
        "van Rossum", "Matsumoto", "O'Neil", "García"]
categories = ["sensor", "billing", "search", "checkout", "auth"]
out = open(sys.argv[1] if len(sys.argv) > 1 else "data/data.csv", "w", newline="", encoding="utf-8")
w = csv.writer(out, lineterminator="\n")
w.writerow(["id", "name", "value", "category", "created_at"])
t = datetime.datetime(2026, 11, 1, 8, 0, 0)
for i in range(1, 3001):
    t += datetime.timedelta(milliseconds=rng.randint(50, 2000))
    name = f"{rng.choice(first)} {rng.choice(last)}"
    value = round(rng.lognormvariate(3.5, 0.8), 2)
    w.writerow([i, name, value, rng.choice(categories), t.isoformat(timespec="milliseconds")])
