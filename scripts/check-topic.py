#!/usr/bin/env python3
"""Independent check of a topic sluice replayed into, with confluent-kafka (no sluice code).

Reads every partition of TOPIC from the beginning up to its end offsets at start (manual
assignment, no consumer group, nothing committed), decodes each message as the JSON object
sluice writes (see host/src/source/wire.rs), and, with --csv, compares it with the CSV file:
every well-formed CSV record must be on the topic exactly once (matched by the `sluice.line`
header), with the same values, and nothing else may be.

    .venv/bin/python scripts/check-topic.py --bootstrap 127.0.0.1:9092 --topic rows --csv data/data.csv

Exit status: 0 when the topic matches (or, without --csv, when it could be read), 1 otherwise.
"""

import argparse
import csv
import datetime
import json
import math
import sys
from collections import Counter

from confluent_kafka import Consumer, TopicPartition


def read_topic(bootstrap, topic, timeout_s):
    c = Consumer({
        "bootstrap.servers": bootstrap,
        # librdkafka wants a group id even for manual assignment; nothing is committed.
        "group.id": "check-topic",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    md = c.list_topics(topic, timeout=timeout_s)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise SystemExit(f"topic {topic} not found: {t.error if t else 'no metadata'}")
    ends = {}
    for p in sorted(t.partitions):
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        ends[p] = (low, high)
    todo = {p for p, (low, high) in ends.items() if high > low}
    c.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
    messages = []
    idle = 0.0
    while todo:
        m = c.poll(1.0)
        if m is None:
            idle += 1.0
            if idle > timeout_s:
                raise SystemExit(f"timed out; still waiting on partitions {sorted(todo)}")
            continue
        idle = 0.0
        if m.error():
            raise SystemExit(f"read error: {m.error()}")
        messages.append(m)
        if m.offset() + 1 >= ends[m.partition()][1]:
            todo.discard(m.partition())
    c.close()
    return ends, messages


def csv_records(path, delimiter):
    """Yields (start line, fields) for every record; lines count '\\n' like sluice does."""
    with open(path, "rb") as f:
        # Binary iteration splits on b"\n" only, as sluice counts lines (not on a lone "\r").
        def lines():
            for i, raw in enumerate(f):
                if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                yield raw.decode("utf-8", errors="surrogateescape")

        reader = csv.reader(lines(), delimiter=delimiter)
        prev_end = 0
        for fields in reader:
            start = prev_end + 1
            prev_end = reader.line_num
            if fields:
                yield start, fields


def parse_ts(s):
    s = s.strip().replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is not None:
        dt = dt.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return dt


def same(value, ty, text, null_if=()):
    """Whether a typed JSON value from the topic equals a CSV field."""
    if text in null_if:
        return value is None
    # Python's csv module reads `""` and an empty field alike, where sluice reads `""` in a
    # string column as an empty string and an empty field as null: either is right here.
    if text == "" and ty == "string":
        return value in (None, "")
    if text == "" or (ty != "string" and text.strip() == ""):
        return value is None
    if ty == "string":
        return value == text
    if ty == "int":
        return isinstance(value, int) and value == int(text)
    if ty == "float":
        want = float(text)
        if isinstance(value, str):
            value = float(value.replace("inf", "Infinity") if value != "NaN" else "nan")
        return (math.isnan(want) and math.isnan(value)) or float(value) == want
    if ty == "bool":
        return value == (text.strip().lower() in ("true", "t", "yes", "y", "1"))
    if ty == "timestamp":
        return parse_ts(value) == parse_ts(text)
    if ty in ("json", "json_text"):
        got = json.loads(value) if ty == "json_text" else value
        return got == json.loads(text)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--csv", help="the CSV file that was replayed (once)")
    ap.add_argument("--delimiter", default=",")
    ap.add_argument("--null-if", action="append", default=[], metavar="TEXT",
                    help="the source's null_if, one text each time")
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()

    ends, messages = read_topic(args.bootstrap, args.topic, args.timeout)
    per_partition = Counter(m.partition() for m in messages)
    print(f"topic {args.topic}: {len(messages)} messages in {len(ends)} partitions "
          + ", ".join(f"p{p}={per_partition.get(p, 0)}" for p in sorted(ends)))
    if not args.csv:
        return 0

    problems = []
    by_line = {}
    for m in messages:
        headers = {k: (v or b"").decode() for k, v in (m.headers() or [])}
        line = int(headers.get("sluice.line", "0"))
        if line in by_line:
            problems.append(f"line {line} is on the topic twice (p{m.partition()}@{m.offset()})")
        by_line[line] = (m, headers)

    records = list(csv_records(args.csv, args.delimiter))
    header = records[0][1]
    checked = 0
    missing = []
    for line, fields in records[1:]:
        if len(fields) != len(header):
            continue  # ragged: a dead letter, not a message
        entry = by_line.pop(line, None)
        if entry is None:
            missing.append(line)
            continue
        m, headers = entry
        obj = json.loads(m.value())
        types = headers.get("sluice.types", "").split(",")
        if list(obj.keys()) != [h.strip() for h in header]:
            problems.append(f"line {line}: fields {list(obj.keys())} != header {header}")
            continue
        for (name, value), ty, text in zip(obj.items(), types, fields):
            try:
                ok = same(value, ty, text, args.null_if)
            except (ValueError, TypeError) as e:
                ok = False
                text = f"{text} ({e})"
            if not ok:
                problems.append(f"line {line}: {name} is {value!r} ({ty}) on the topic, {text!r} in the CSV")
        checked += 1
    if missing:
        problems.append(f"{len(missing)} CSV records not on the topic, lines {missing[:10]}...")
    if by_line:
        problems.append(f"{len(by_line)} messages match no CSV record, lines {sorted(by_line)[:10]}...")
    print(f"csv {args.csv}: {len(records) - 1} records, {checked} matched field by field")
    for p in problems[:20]:
        print("MISMATCH", p)
    if problems:
        print(f"FAIL: {len(problems)} problems")
        return 1
    print("OK: the topic holds exactly the CSV's rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
