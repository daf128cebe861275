"""Self cost per function in a callgrind dump, for the events named (summed).

Usage: python3 callgrind_events.py DUMP [N] [EVENTS]
EVENTS is a comma-separated list of the dump's event names (default `Ir`); with a dump of
`--cache-sim=yes --branch-sim=yes` (`h1_callgrind.py --cache-sim --dump-dir DIR`) e.g.
`D1mr,D1mw` (first-level data misses), `I1mr`, `Dw`, `Bcm,Bim`. Prints the N costliest
functions (default 30) with their share and their instructions. Calls' inclusive costs are
left out: each figure is what the function's own code spent."""
import collections
import re
import sys

path = sys.argv[1]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
wanted = sys.argv[3].split(",") if len(sys.argv) > 3 else ["Ir"]

names = {}


def name(spec):
    """callgrind compresses names: `(12) name` the first time, `(12)` after."""
    m = re.match(r"\((\d+)\)(?: (.*))?", spec)
    if not m:
        return spec
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), spec)


cost, instructions = collections.Counter(), collections.Counter()
positions, columns, function, in_call = 1, [], None, False
for line in open(path):
    line = line.rstrip("\n")
    if line.startswith("positions:"):
        positions = len(line.split()) - 1
    elif line.startswith("events:"):
        events = line.split()[1:]
        columns = [events.index(event) for event in wanted]
    elif line.startswith("fn="):
        function = name(line[3:])
    elif line.startswith(("cfn=", "cfi=", "cfl=")):
        if line.startswith("cfn="):
            name(line[4:])
    elif line.startswith("calls="):
        in_call = True
    elif line and (line[0].isdigit() or line[0] in "+-*"):
        if in_call:  # the call's inclusive cost line
            in_call = False
            continue
        values = line.split()[positions:]
        get = lambda i: int(values[i]) if i < len(values) else 0
        cost[function] += sum(get(i) for i in columns)
        instructions[function] += get(0)

total = sum(cost.values())
print(f"total {'+'.join(wanted)}: {total:,}")
for function, c in cost.most_common(top):
    print(f"{c:>12,} {100 * c / max(total, 1):5.1f}%  Ir {instructions[function]:>12,}  {function[:110]}")
